"""
Models on disk: the Hugging Face directory (read and write), a training run's checkpoints (save, load, resume), and
finding the model a path names.

- HF interop: the parameter names are those of `Qwen3ForCausalLM` (model.py), so a model directory is a plain
  safetensors write/read plus config.json, and it loads in transformers with no custom code. Weights are read only
  through safetensors: no pickle is ever unpickled.
- a training out_dir holds ckpt-NNNNNNN/ folders (a HF directory in fp32 plus state.pt: optimizer, step, RNG and the
  training settings), log.jsonl and, at the end, the exported hf/ folder. A checkpoint is written to a temp folder,
  fsynced and renamed into place, so a power cut leaves at least one complete checkpoint.
"""
import fcntl
import json
import os
import re
import shutil
import sys
from dataclasses import fields

import torch
from safetensors import SafetensorError

from data import no_space_message
from model import Qwen3, Qwen3Config
from tokenizer import EOT, IM_END, QWEN_VOCAB, save_tokenizer


# ---------------------------------------------------------------------------------- Hugging Face interop
def from_pretrained(path, dtype=torch.float32, device="cpu", loss="chunked"):
    """Load a Hugging Face Qwen3 directory (config.json + model.safetensors or a sharded index); `loss` is Qwen3's
    (chunked | liger)."""
    from safetensors.torch import load_file
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{path} is not a Hugging Face model directory: no config.json")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            hf = json.load(f)
    except ValueError as e:   # bad JSON or bad UTF-8: a damaged file, named
        raise ValueError(f"{cfg_path} is damaged ({' '.join(str(e).split())[:200]}); use another checkpoint or "
                         "re-export it") from None
    if not isinstance(hf, dict):
        raise ValueError(f"{cfg_path} is not a model config (a JSON object); use another checkpoint or re-export it")
    if hf.get("model_type") != "qwen3":
        raise ValueError(f"{path}: model_type is {hf.get('model_type')!r} (architectures "
                         f"{hf.get('architectures')}); only Qwen3 (model_type 'qwen3') can be loaded")
    rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}   # (4.x's name; 5.x's, with rope_theta in it)
    if hf.get("attention_bias") or hf.get("use_sliding_window") or "sliding_attention" in (hf.get("layer_types") or ()) \
            or hf.get("hidden_act", "silu") != "silu" \
            or rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ValueError(f"{path}: attention_bias, a sliding window, an activation other than silu or rope scaling: "
                         "variants of Qwen3 this model does not compute")
    known = {f.name for f in fields(Qwen3Config)}
    kw = {k: v for k, v in hf.items() if k in known}
    try:
        if "rope_theta" not in kw and "rope_parameters" in hf:  # transformers >= 5 nests it
            kw["rope_theta"] = hf["rope_parameters"]["rope_theta"]
        if missing := [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                   "num_attention_heads") if k not in hf]:   # the shape: no default stands in for it
            raise KeyError(", ".join(missing))
        kw.setdefault("head_dim", 128)   # transformers' Qwen3 defaults where config.json says nothing (not the shape's)
        kw.setdefault("tie_word_embeddings", False)
        config = Qwen3Config(**kw)
    except (KeyError, TypeError, ZeroDivisionError) as e:
        raise ValueError(f"{cfg_path} lacks or garbles a model setting ({type(e).__name__}: {e}); use another "
                         "checkpoint or re-export it") from None

    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.isfile(os.path.join(path, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{path}: neither model.safetensors nor model.safetensors.index.json "
                                "(.bin / pickle checkpoints are not loaded, on purpose)")
    sd = {}
    for fn in files:
        try:
            sd.update(load_file(os.path.join(path, fn)))
        except Exception as e:  # truncated / overwritten file: name it instead of a safetensors traceback
            raise ValueError(f"{os.path.join(path, fn)} is damaged and cannot be read ({type(e).__name__}: "
                             f"{str(e)[:200]}); use another checkpoint or re-export it") from None
    if config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)  # official tied checkpoints store a copy of the embedding
    sd = {k: v for k, v in sd.items() if not k.endswith("rotary_emb.inv_freq")}   # RoPE's table, computed here
    with torch.device("meta"):
        model = Qwen3(config, loss=loss)
    try:
        model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=True, assign=True)
    except RuntimeError as e:   # missing / unexpected / misshapen tensors: the weights are not config.json's model
        raise ValueError(f"{path}: the weights do not match config.json ({' '.join(str(e).split())[:200]}); use "
                         "another checkpoint or re-export it") from None
    return model.to(device)


def load_model(init_from, dtype=torch.float32, device="cpu", loss="chunked"):
    """(model, its directory) for an entry point's --init_from: find_model_dir + from_pretrained, a missing or
    damaged model as one line naming the file instead of a traceback."""
    model_dir = find_model_dir(init_from)
    try:
        return from_pretrained(model_dir, dtype=dtype, device=device, loss=loss), model_dir
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None


def hf_config(config, dtype="bfloat16", eos_token_id=None):
    """config.json of HF's Qwen3ForCausalLM for a Qwen3Config."""
    c = config
    return {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
        **{f.name: getattr(c, f.name) for f in fields(Qwen3Config)},
        "hidden_act": "silu", "rope_scaling": None, "attention_bias": False, "attention_dropout": 0.0,
        "use_sliding_window": False, "sliding_window": None, "max_window_layers": c.num_hidden_layers,
        "use_cache": True, "torch_dtype": dtype,
        # the first transformers with Qwen3; without the key, transformers 5.0-5.17 warn that a local tokenizer has
        # "an incorrect regex pattern" (their Mistral check), which is not true of ours
        "transformers_version": "4.51.0",
        **({"bos_token_id": eos_token_id, "eos_token_id": eos_token_id} if eos_token_id is not None else {}),
    }


def save_pretrained(model, out_dir, dtype=torch.bfloat16, eos_token_id=None, generation=None):
    """Write a Hugging Face model directory: model.safetensors, config.json and generation_config.json, so
    `AutoModelForCausalLM.from_pretrained(out_dir)` works with no custom code. The tokenizer files are written by
    export_hf (tokenizer.save_tokenizer). `generation` are the sampling defaults written to
    generation_config.json."""
    from safetensors.torch import save_file
    os.makedirs(out_dir, exist_ok=True)
    sd = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    weights = os.path.join(out_dir, "model.safetensors")
    save_file(sd, weights, metadata={"format": "pt"})
    umask = os.umask(0)   # safetensors creates the file 0600: give it the mode open() gives config.json
    os.umask(umask)
    os.chmod(weights, 0o666 & ~umask)
    config = hf_config(model.config, str(dtype).removeprefix("torch."), eos_token_id)
    eos = {k: config[k] for k in ("bos_token_id", "eos_token_id") if k in config}
    for name, obj in (("config.json", config), ("generation_config.json", {**eos, **(generation or {})})):
        with open(os.path.join(out_dir, name), "w") as f:
            json.dump(obj, f, indent=2)


def export_hf(model, path, chat_template=None, dtype=torch.bfloat16):
    """A complete Hugging Face directory: weights in `dtype` (bf16: half the size; fp32 gives the checkpoint's own
    numbers), config, generation defaults and -- when every Qwen token id fits the embedding -- the tokenizer files
    with a chat template: `chat_template`, the one an SFT model was trained with (it then stops generating at
    <|im_end|>), else Qwen3's."""
    fits = model.config.vocab_size >= QWEN_VOCAB
    generation = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20}
    if fits and chat_template:
        generation["eos_token_id"] = [IM_END, EOT]
    tmp = path.rstrip(os.sep) + ".tmp"   # written aside and renamed: a full disk never leaves a half export at `path`
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_pretrained(model, tmp, dtype=dtype, eos_token_id=EOT if fits else None, generation=generation)
        if fits:
            save_tokenizer(tmp, chat_template=chat_template or "qwen3")
    except (OSError, SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        need = sum(t.numel() for t in model.state_dict().values()) * torch.finfo(dtype).bits // 8
        sys.exit(no_space_message(path, need, e if isinstance(e, OSError) else OSError(str(e)),
                                  "free space and export again (--init_from=resume --export_only=True)"))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    print(f"exported a Hugging Face directory to {path}")


# ---------------------------------------------------------------------------------- a training run's folder
def list_checkpoints(out_dir):
    """Finished checkpoints ckpt-NNNNNNN of a training out_dir, oldest first (a .tmp folder is one still being
    written, or killed mid-write, and never counts). Only the exact name counts: a user's copy named ckpt-best
    sorted after ckpt-0000004, was resumed from as the newest, and pruning then deleted the real ones."""
    if not os.path.isdir(out_dir):
        return []
    steps = sorted(int(d[5:]) for d in os.listdir(out_dir) if re.fullmatch(r"ckpt-\d{7,}", d))
    return [os.path.join(out_dir, f"ckpt-{s:07d}") for s in steps]


def find_model_dir(path):
    """What --init_from points at: a directory with config.json (a HF directory or one checkpoint) is used as is;
    otherwise it is a training out_dir and we take its newest complete checkpoint (ckpt-NNNNNNN with
    state.pt), else its exported hf/ folder."""
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    if not os.path.isdir(path):
        raise SystemExit(f"error: --init_from={path!r}: no such directory (train first, or pass a HF Qwen3 directory)")
    ckpts = [c for c in list_checkpoints(path) if os.path.isfile(os.path.join(c, "state.pt"))]
    if ckpts:
        return ckpts[-1]
    if os.path.isfile(os.path.join(path, "hf", "config.json")):
        return os.path.join(path, "hf")
    raise SystemExit(f"error: {path} holds no checkpoint (ckpt-*/) and no config.json")


def starting_shape(init_from, out_dir):
    """The Qwen3Config fields of the weights a run starts from (a model directory, or for a resume out_dir's newest
    checkpoint), read from config.json before the model is built, so that the first line names the right model;
    {} when it starts from scratch or the file is unreadable (building the model then says why)."""
    try:
        path = list_checkpoints(out_dir)[-1] if init_from == "resume" else find_model_dir(init_from)
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            saved = json.load(f)
        return {k.name: saved[k.name] for k in fields(Qwen3Config) if k.name in saved}
    except (Exception, SystemExit):
        return {}


def start_out_dir(out_dir, init_from, overwrite, master):
    """A fresh run must not mix with another run's checkpoints, exported model or log in the same out_dir, nor
    delete the model it starts from."""
    old = list_checkpoints(out_dir)
    log = os.path.join(out_dir, "log.jsonl")   # empty: a run that stopped before its first step (a bad reward, say)
    other = [p for p in (os.path.join(out_dir, "hf"), log) if os.path.exists(p) and (p != log or os.path.getsize(p))]
    inside = os.path.join(os.path.realpath(init_from), "").startswith(os.path.join(os.path.realpath(out_dir), ""))
    if init_from != "scratch" and inside:
        sys.exit(f"error: --init_from={init_from} is inside --out_dir={out_dir}, which a fresh run replaces: copy the "
                 "model out of it first, or choose another --out_dir")
    if (old or other) and not overwrite:
        what = f"checkpoints ({os.path.basename(old[-1])}, ...)" if old else " and ".join(map(os.path.basename, other))
        sys.exit(f"error: {out_dir} already holds {what} of another run: {'resume it with --init_from=resume, ' * bool(old)}"
                 "choose another --out_dir, or pass --overwrite=True to delete them")
    if master:
        for path in old + other:
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
        os.makedirs(out_dir, exist_ok=True)


def lock_out_dir(out_dir):
    """Hold an exclusive lock on out_dir for the life of this process, so two runs never write one out_dir; the
    kernel drops it when the process dies, so a killed run's lock never blocks its resume."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, ".lock")
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        sys.exit(f"error: {out_dir} is in use by another training run (pid {f.read().strip() or '?'}, see {path}): "
                 "wait for it to end or choose another --out_dir")
    try:  # the pid is only for that message: a full disk must not stop a resume here
        f.truncate(0), f.write(str(os.getpid())), f.flush()
    except OSError:
        pass
    return f


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY)   # a file or a directory: both must reach the disk
    os.fsync(fd), os.close(fd)


def save_checkpoint(model, optimizer, step, out_dir, train_config, keep):
    """A HF model directory (fp32 save_pretrained) plus state.pt (optimizer, step, RNG, training config). Written
    to a temp folder, every file and the folder fsynced, renamed into place, the parent fsynced -- only then do
    the checkpoints beyond the newest `keep` go, so a power cut leaves at least one complete checkpoint. A failed
    write (disk full) removes the temp folder and stops with one line; the older checkpoints stay."""
    final = os.path.join(out_dir, f"ckpt-{step:07d}")
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_pretrained(model, tmp, dtype=torch.float32, eos_token_id=EOT if model.config.vocab_size > EOT else None)
        state = {"step": step, "optimizer": optimizer.state_dict(), "train_config": train_config,
                 "rng_cpu": torch.get_rng_state(),
                 "rng_cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else torch.zeros(0, dtype=torch.uint8)}
        torch.save(state, os.path.join(tmp, "state.pt"))
        for name in os.listdir(tmp):
            fsync_path(os.path.join(tmp, name))
        fsync_path(tmp)
    except (OSError, RuntimeError, SafetensorError) as e:   # torch.save: a RuntimeError; safetensors: its own
        shutil.rmtree(tmp, ignore_errors=True)
        tensors = list(model.state_dict().values()) + [t for s in optimizer.state.values() for t in s.values()
                                                         if torch.is_tensor(t)]
        need, free = sum(t.numel() * 4 for t in tensors), shutil.disk_usage(out_dir).free
        kept = list_checkpoints(out_dir)
        sys.exit(f"error: writing checkpoint {final} failed ({e.strerror if isinstance(e, OSError) else e}): it needs "
                 f"about {need / 2**20:.0f} MiB, {free / 2**20:.0f} MiB are free; the partial copy is removed and "
                 + (f"{kept[-1]} is the last good checkpoint" if kept else "no checkpoint was written yet (a rerun "
                    "needs --overwrite=True)"))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    fsync_path(out_dir)
    for old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path, model, optimizer, check_config):
    """Restore weights, optimizer state and RNG; `check_config(saved train_config)` is called first (it prints the
    changed settings and stops on a breaking one). The optimizer's hyper-parameters (lr, betas, weight decay, ...)
    are the current config's, not the checkpoint's. Returns the step to continue from."""
    from safetensors.torch import load_file
    current = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    try:
        state = torch.load(os.path.join(path, "state.pt"), weights_only=True, map_location="cpu")
    except Exception as e:
        state = e
    if isinstance(state, dict) and isinstance(state.get("train_config", {}), dict):
        check_config(state.get("train_config", {}))
    try:
        if isinstance(state, Exception):
            raise state
        if not isinstance(state, dict):
            raise TypeError(f"state.pt holds a {type(state).__name__}, not a checkpoint's state")
        missing = [k for k in ("step", "optimizer", "rng_cpu", "rng_cuda") if k not in state]
        if missing:   # checked before anything is restored, so a bad file changes nothing
            raise KeyError(f"state.pt lacks {', '.join(missing)}")
        model.load_state_dict(load_file(os.path.join(path, "model.safetensors")), strict=True)
        optimizer.load_state_dict(state["optimizer"])
        rng_cpu, rng_cuda, step = state["rng_cpu"], state["rng_cuda"], int(state["step"])
        torch.set_rng_state(rng_cpu)
    except Exception as e:
        out_dir, saved = os.path.dirname(path), state.get("train_config", {}) if isinstance(state, dict) else {}
        changed = [f"{k} {saved[k]} -> {v}" for k, v in vars(model.config).items() if saved.get(k, v) != v
                   and k not in ("rms_norm_eps", "rope_theta", "max_position_embeddings", "initializer_range")]
        if changed and isinstance(e, RuntimeError):   # the weights are fine: this run asks another shape of them
            sys.exit(f"error: {path} holds a model of another shape ({', '.join(changed)}): a resume keeps the shape, "
                     "even with --allow_config_change (to train another shape, start a new run)")
        sys.exit(f"error: checkpoint {path} is corrupt or incompatible ({type(e).__name__}: {str(e)[:300]}). "
                 f"Delete it to resume from the previous one ({len(list_checkpoints(out_dir)) - 1} others in {out_dir}).")
    for g, hyper in zip(optimizer.param_groups, current):
        g.update(hyper)
    if torch.cuda.is_available() and rng_cuda.numel():
        torch.cuda.set_rng_state(rng_cuda)
    return step


def compare_config(saved, current, same_run_keys, allow_change, master):
    """Print every setting that differs from the checkpoint's run; stop if one of `same_run_keys` (what fixes the
    data order or the model) changed, unless allow_change."""
    ignore = ("init_from", "overwrite", "export_only", "allow_config_change")
    diff = {k: (saved[k], current[k]) for k in current if k in saved and k not in ignore and saved[k] != current[k]}
    for k in ("data_dir", "sft_data"):   # the same directory, named differently
        if k in diff and diff[k][0] and diff[k][1] and os.path.abspath(diff[k][0]) == os.path.abspath(diff[k][1]):
            del diff[k]
    if master:
        for k, (old, new) in diff.items():
            print(f"resume: {k} {old!r} -> {new!r}")
    breaking = [k for k in diff if k in same_run_keys]
    if breaking and not allow_change:
        sys.exit(f"error: resuming with a different {', '.join(breaking)} changes the data order or the model, so it "
                 "is no longer the same run; pass --allow_config_change=True if that is what you want")


def run_log(path, on_failure, wandb_run=None):
    """log(record, text=None) for rank 0: prints the text, appends the record to the run's log.jsonl and, with
    wandb_run = (project, name, config), to wandb. A failed write (a full disk) calls on_failure(one-line message)
    once, and nothing more is appended to the torn line, which trim_log drops on the resume."""
    f, failed = open(path, "a"), []
    if wandb_run:
        import wandb
        wandb.init(project=wandb_run[0], name=wandb_run[1], config=wandb_run[2])

    def log(rec, text=None):
        print(text) if text else None
        if not failed:
            try:
                f.write(json.dumps(rec) + "\n"), f.flush()
            except OSError as e:
                failed.append(no_space_message(path, len(json.dumps(rec)) + 1, e, "free space and resume with "
                                               "--init_from=resume"))
                on_failure(failed[0])
        if wandb_run:
            wandb.log({k: v for k, v in rec.items() if k != "step"}, step=rec["step"])
    return log


def trim_log(path, step):
    """After a resume at `step`, drop the records the killed run wrote past it (and its evaluation at `step`,
    which the resumed run repeats on the same weights), so log.jsonl is one curve; a last line torn by a kill or
    zero-filled by a power cut is dropped too. Only truncates: a full disk does not stop a resume."""
    if not os.path.exists(path):
        return
    with open(path, "rb") as f:
        lines = f.readlines()
    end = keep_bytes = 0
    for i, line in enumerate(lines):
        end += len(line)
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not line.endswith(b"\n"):
                raise ValueError("no newline")
        except ValueError:
            if i < len(lines) - 1:
                sys.exit(f"error: {path} line {i + 1} is not a JSON record: repair or delete that line to resume")
            print(f"{path}: dropped an incomplete last line (the run was killed while writing it)")
            break
        if rec.get("step", 0) > step or (rec.get("step") == step and "loss" not in rec):
            break   # the records past `step` are the log's tail
        keep_bytes = end
    if keep_bytes != os.path.getsize(path):
        os.truncate(path, keep_bytes)
