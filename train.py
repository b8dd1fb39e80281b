"""
Pretrain Qwen3 from scratch (or continue a Hugging Face Qwen3) with Muon + AdamW.

    python train.py config/tiny.py                              # CPU demo: prepares data/demo if missing
    python train.py config/sft_demo.py                          # instruction tuning (SFT) of that model (sft.py)
    torchrun --nproc_per_node=8 train.py config/reference.py    # the reference recipe
    torchrun --nproc_per_node=4 train.py config/reference.py --init_from=resume   # any GPU count resumes exactly

Design: every default is a module global below -- the defaults *are* the reference recipe, so config files state
only what differs; config files and --key=value override them (configurator.py). The global batch (sequences per
optimizer step) is fixed by the config; gradient accumulation is derived from the number of processes, and the
data order depends only on the step (data.py), so a run is the same run on 1 or 8 GPUs and a resume needs nothing
but the step counter.
"""
import datetime, importlib.util, json, math, os, signal, sys, time
from contextlib import nullcontext
from dataclasses import fields

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from checkpoint import (compare_config, export_hf, list_checkpoints, load_checkpoint, load_model, lock_out_dir,
                        run_log, save_checkpoint, start_out_dir, starting_shape, trim_log)
from data import (data_or_exit, make_writable_dir, pretrain_batches, sft_batches, sft_chat_template, sft_val_loss,
                  val_loss_bpb)
from mfu import describe_run, flops_per_token_6n, peak_tflops
from model import Qwen3, Qwen3Config
from muon import NS_METHODS, build_optimizer, wsd_lr_factor
from prepare import DEMO_DIR, build_demo

# ------------------------------------------------------------------------------ defaults: the reference recipe
out_dir = "out"               # checkpoints, log.jsonl and hf/ (the exported model)
data_dir = DEMO_DIR           # prepared tokens (prepare.py); the default, this checkout's data/demo, is built on first use
sft_data = ""                 # instruction tuning: a directory made by sft.py (packed conversations, loss on answers)
doc_mask = False              # pretraining: attention and positions restart at each <|endoftext|> within a window
init_from = "scratch"         # scratch | resume (newest checkpoint in out_dir) | a model dir (HF, checkpoint, out_dir)
overwrite = False             # allow a fresh run in an out_dir holding another run's checkpoints, hf/, log (deleted)
allow_config_change = False   # allow a resume that changes the data order or the model (seq_len, global_batch, ...)
export_only = False           # with init_from=resume: write out_dir/hf from the newest checkpoint and exit
export_dtype = "bfloat16"     # out_dir/hf's weights: bfloat16 (half the size) | float32 (the checkpoint's numbers)
# model: the Qwen3Config fields (model.py), Qwen3-0.6B with rope_theta 1e4 and a 4k context
vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads = 151936, 1024, 3072, 28, 16
num_key_value_heads, head_dim, rms_norm_eps, rope_theta = 8, 128, 1e-6, 10000.0   # heads x head_dim != hidden_size
max_position_embeddings, tie_word_embeddings, initializer_range = 4096, True, 0.02
# batch: 384 x 2048 = 786,432 tokens per optimizer step (micro 12 x accumulation 8 x 4 GPUs; 8 GPUs: accumulation 4)
seq_len = 2048
micro_batch = 12              # sequences per GPU per micro-step
global_batch = 384            # sequences per optimizer step
# optimizer and WSD schedule: linear warmup, constant, linear decay to min_lr_frac x lr over the last decay_steps
max_steps, warmup_steps, decay_steps, min_lr_frac = 100_000, 20_000, 60_000, 0.0
muon_lr = 0.02                # hidden 2-D matrices
muon_lr_rule = "original"     # original: sqrt(max(1, rows/cols)) | match_rms_adamw: 0.2*sqrt(max(rows, cols))
muon_momentum, muon_normuon, muon_ns = 0.95, 0.0, "jordan"   # NorMuon's beta2 (0: off); jordan|polar_express
adamw_lr = 3e-4               # embedding / lm_head and norm gains
beta1, beta2 = 0.9, 0.95
weight_decay = 0.01
grad_clip = 1.0               # 0 = off
# evaluation, logging, checkpoints
eval_interval = 1000
val_tokens = 2**19            # size of the fixed validation sample (data.py val_batches; eval.py uses the same)
log_interval, log_seconds, ckpt_interval, keep_ckpts = 1, 30.0, 1000, 3   # steps, max s silent, steps, checkpoints kept
export_at_end = True
wandb_log, wandb_project, wandb_run_name = False, "qwen3-pretrain", "run"
# system
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = "bfloat16" if torch.cuda.is_available() else "float32"   # autocast dtype; master weights are fp32
compile = torch.cuda.is_available()
liger = True                  # fused linear+cross-entropy on CUDA when liger-kernel is importable
checkpointing = "none"        # activation checkpointing: none | block | selective
sdpa_backend = "auto"         # auto (PyTorch's choice) | cudnn | flash | efficient: attention kernel on CUDA
seed = 1337
pg_timeout_s = 300            # a rank waiting this long for the others (a hung peer) stops with one line
peak_tflops_override = 0.0    # TFLOP/s for MFU on a card the table does not know
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configurator.py")).read())
config = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))}
MODEL_KEYS = tuple(f.name for f in fields(Qwen3Config))
# a resume may change anything else (lr, schedule, intervals, GPU count...), but not what fixes the data order or model
SAME_RUN_KEYS = ("seq_len", "global_batch", "seed", "data_dir", "sft_data", "doc_mask") + MODEL_KEYS
STOP_SIGNALS = []   # SIGTERM / SIGINT received (main installs the handler): all ranks stop after the current step
LOG_FAILED = []     # the one-line message of a failed log.jsonl write (a full disk): the run stops as on SIGTERM


# ------------------------------------------------------------------------------------------------ setup
def setup_processes():
    """torchrun sets RANK/LOCAL_RANK/WORLD_SIZE; without them this is one process. NCCL on GPUs, gloo on CPU."""
    if "RANK" not in os.environ:
        return 0, 0, 1, device
    rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    dev = f"cuda:{local_rank}" if device.startswith("cuda") else "cpu"
    if dev.startswith("cuda"):  # device_id binds the NCCL communicator to this rank's GPU up front
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl", device_id=torch.device(dev), timeout=datetime.timedelta(seconds=pg_timeout_s))
    else:
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=pg_timeout_s))
    return rank, local_rank, world, dev


def check_settings(world):
    """Refuse what would silently train wrongly (or divide by zero later); returns the gradient accumulation."""
    at_least_1 = ("seq_len", "micro_batch", "global_batch", "log_interval", "keep_ckpts", "val_tokens", "pg_timeout_s")
    at_least_0 = ("max_steps", "warmup_steps", "decay_steps", "eval_interval", "ckpt_interval", "log_seconds",
                  "grad_clip", "muon_lr", "adamw_lr", "weight_decay", "peak_tflops_override")
    check_ranges(globals(), {**dict.fromkeys(at_least_1, 1), **dict.fromkeys(at_least_0, 0)},
                 ("beta1", "beta2", "muon_momentum", "muon_normuon", "min_lr_frac"))   # (configurator.py's)
    if global_batch % (micro_batch * world):  # e.g. 384 on 3 or 6 GPUs: say what would work
        fits = [m for m in range(1, global_batch // world + 1) if global_batch % (m * world) == 0]
        sys.exit(f"error: global_batch {global_batch} is not divisible by micro_batch {micro_batch} x {world} processes; "
                 + (f"micro_batch values that divide it on {world} process(es): {fits}" if fits else
                    f"no micro_batch does: make global_batch a multiple of {world}"))
    if dtype == "float16":  # fp16 gradients underflow without a loss scaler; bf16 has fp32's range
        sys.exit("error: dtype float16 is not supported (it needs a gradient scaler): use --dtype=bfloat16")
    check_choices(globals(), {"sdpa_backend": ("auto", "cudnn", "flash", "efficient"), "muon_ns": tuple(NS_METHODS),
                              "checkpointing": ("none", "block", "selective"), "export_dtype": ("bfloat16", "float32")})
    if export_only and init_from != "resume":
        sys.exit("error: --export_only=True exports the newest checkpoint: use it with --init_from=resume")
    return global_batch // (micro_batch * world)


def use_cuda_kernels(cuda):
    """TF32 for fp32 matmuls, the chosen attention kernel; returns whether liger's fused loss is usable."""
    if not cuda:
        return False
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if sdpa_backend != "auto":  # only the chosen kernel (and the math fallback) stays enabled
        torch.backends.cuda.enable_cudnn_sdp(sdpa_backend == "cudnn")
        torch.backends.cuda.enable_flash_sdp(sdpa_backend == "flash")
        torch.backends.cuda.enable_mem_efficient_sdp(sdpa_backend == "efficient")
    return liger and importlib.util.find_spec("liger_kernel") is not None


def adopt_model_shape(shape, only_defaults=False):
    """The model's shape is the weights' when training starts from weights: record it in the settings, so that
    the checkpoints' train_config is true and a resume rebuilds the same model without restating it. With
    only_defaults (a resume), a field set on the command line or in a config file is kept (compare_config then
    refuses the change unless allow_config_change)."""
    for f in fields(Qwen3Config):
        if f.name in shape and not (only_defaults and globals()[f.name] != f.default):
            globals()[f.name] = config[f.name] = shape[f.name]


def model_config():
    return Qwen3Config(**{k: globals()[k] for k in MODEL_KEYS})


def apply_fast_path(model):
    """Activation checkpointing and torch.compile per block (as torchtitan applies them): inductor fuses RMSNorm /
    RoPE / SwiGLU and the residual adds around the matmuls, and traces each block's checkpoint into its graph."""
    for block in model.model.layers:
        block.checkpointing = checkpointing
        if compile:
            block.compile()
    if compile:
        model.model.norm.compile()
    return model


def build_model(dev, use_liger, master):
    """The model (fresh, from weights, or resumed from out_dir's newest checkpoint) and its optimizer, on `dev`.
    Returns (model, optimizer, step to continue from)."""
    loss = "liger" if use_liger else "chunked"
    ckpts = list_checkpoints(out_dir) if init_from == "resume" else []
    if ckpts:
        cfg_path = os.path.join(ckpts[-1], "config.json")
        try:
            shape = json.load(open(cfg_path, encoding="utf-8"))
            assert isinstance(shape, dict)
        except (OSError, ValueError, AssertionError):
            sys.exit(f"error: {cfg_path} is missing or damaged: delete {ckpts[-1]} to resume from the previous checkpoint")
        adopt_model_shape(shape, only_defaults=True)
    if init_from in ("scratch", "resume"):
        model = Qwen3(model_config(), loss=loss)
    else:  # continue pretraining, or fine-tune, from weights: a HF Qwen3 directory, a checkpoint, or an out_dir
        model = load_model(init_from, dtype=torch.float32, loss=loss)[0]
        adopt_model_shape({f.name: getattr(model.config, f.name) for f in fields(Qwen3Config)})
    if seq_len > model.config.max_position_embeddings and not export_only:
        sys.exit(f"error: seq_len {seq_len} > the model's max_position_embeddings {model.config.max_position_embeddings}: "
                 f"pass --seq_len={model.config.max_position_embeddings} or less (or the config file it was trained with)")
    apply_fast_path(model).to(dev)
    optimizer = build_optimizer(model, muon_lr, adamw_lr, (beta1, beta2), weight_decay, momentum=muon_momentum,
                                lr_rule=muon_lr_rule, normuon=muon_normuon, ns=muon_ns)
    if init_from != "resume":
        start_out_dir(out_dir, init_from, overwrite, master)
        return model, optimizer, 0
    if not ckpts:
        sys.exit(f"error: --init_from=resume but {out_dir} has no checkpoint")
    def check(saved):   # an export of an SFT run takes its chat template from the run's SFT data, named in `saved`
        globals()["sft_data"] = sft_data or export_only and saved.get("sft_data") or ""
        compare_config(saved, config, MODEL_KEYS if export_only else SAME_RUN_KEYS, allow_config_change, master and not export_only)
    step = load_checkpoint(ckpts[-1], model, optimizer, check)
    if master and not export_only:   # an export writes the weights: the training settings and the log do not matter
        print(f"resumed from {ckpts[-1]} at step {step}")
        trim_log(os.path.join(out_dir, "log.jsonl"), step)
    return model, optimizer, step


# ------------------------------------------------------------------------------------------------- data
def make_batches(model, world, rank, grad_accum, dev, master, ddp):
    """get_batch(step, micro_step) for the configured data: packed SFT conversations -> (x, y, doc_ids), or
    pretraining windows -> (x, y), plus doc_ids cut at <|endoftext|> with doc_mask."""
    if sft_data:
        return sft_batches(sft_data, seq_len, seed, model.config.vocab_size, micro_batch, world, rank, grad_accum, dev,
                           master).get
    if master and os.path.abspath(data_dir) == DEMO_DIR and not os.path.exists(os.path.join(data_dir, "meta.json")):
        print("preparing the demo dataset (one time)...")
        build_demo()   # its summary line says what was made (files, tokens, skipped rows)
    if ddp:
        dist.barrier()
    get = pretrain_batches(data_dir, seq_len, seed, model.config.vocab_size, micro_batch, world, rank, grad_accum, dev,
                           doc_mask)
    return lambda step, micro_step: data_or_exit(get, step, micro_step)   # a shard read mid-run: one line too


def open_log(master):
    """log(record, text=None): rank 0 prints the text and appends the record to out_dir/log.jsonl (and wandb); a
    failed write (a full disk) stops the run after the next step as SIGTERM does, its checkpoint tried."""
    LOG_FAILED.clear()
    on_failure = lambda msg: (LOG_FAILED.append(msg), STOP_SIGNALS.append("a failed write to log.jsonl"))
    return run_log(os.path.join(out_dir, "log.jsonl"), on_failure, (wandb_project, wandb_run_name, config)
                   if wandb_log else None) if master else lambda rec, text=None: None


def evaluate(model, step, dev, autocast, log):
    """Validation loss (and bits per byte for pretraining) on the fixed held-out sample, logged at `step`."""
    at = {"step": step, "tokens": step * global_batch * seq_len}   # bench/plot_log.py's x-axis
    if sft_data:  # loss per assistant token on the held-out conversations
        loss = data_or_exit(sft_val_loss, model, sft_data, seq_len, micro_batch, dev, autocast)
        return log({**at, "val_loss": loss}, f"step {step}: val loss {loss:.4f}") if loss is not None else None
    loss, bpb = data_or_exit(val_loss_bpb, model, data_dir, seq_len, val_tokens, micro_batch, dev, autocast, doc_mask)
    log({**at, "val_loss": loss, "val_bpb": bpb}, f"step {step}: val loss {loss:.4f}, val bpb {bpb:.4f}")


# ------------------------------------------------------------------------------------------------- loop
def stop_non_finite(what, master):
    """NaN/inf: every rank reaches the same verdict (the values are all-reduced or replicated) and stops before
    anything is written, so the newest checkpoint is still the last good one."""
    if master:
        ckpts = list_checkpoints(out_dir)
        print(f"error: {what}. " + (f"The newest checkpoint, {ckpts[-1]}, is from before it: lower the lr and resume "
                                    "from it (--init_from=resume)." if ckpts else
                                    "No checkpoint has been written yet: lower the lr and start again."))
    if dist.is_initialized():  # every rank is here (same verdict): leave the group together, then exit
        dist.barrier(), dist.destroy_process_group()
    sys.exit(2)


def train_step(step, model, train_model, optimizer, get_batch, grad_accum, world, ddp, dev, autocast, master):
    """One optimizer step at `step`: the scheduled lr, grad_accum micro-steps (gradients all-reduced on the last),
    clipping, the update. Returns (mean loss, gradient norm, seconds of the step and of the optimizer, stop: whether
    any rank got SIGTERM/SIGINT)."""
    cuda = dev.startswith("cuda")
    if cuda:
        torch.cuda.synchronize(dev)
    t0 = time.time()
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * wsd_lr_factor(step, max_steps, warmup_steps, decay_steps, min_lr_frac)
    loss_sum = torch.tensor([0.0, float(bool(STOP_SIGNALS))], device=dev)   # the stop request rides on the all-reduce
    batches = [get_batch(step, micro) for micro in range(grad_accum)]   # x, y and, for packed documents, doc_ids
    n = torch.stack([(b[1] != -100).sum() for b in batches]).float()   # each micro-batch's targets
    total = n.sum()   # the step's loss is the mean over all its targets, however the ranks and micro-batches split them
    dist.all_reduce(total) if ddp else None   # (SFT rows differ in answer tokens: a mean of micro-batch means is not it)
    for micro, batch in enumerate(batches):
        sync = not ddp or micro == grad_accum - 1   # all-reduce gradients only on the last micro-step
        with (nullcontext() if sync else train_model.no_sync()), autocast:
            _, loss = train_model(*batch)
        share = n[micro] * world / total   # (x world: DDP averages the ranks' gradients)
        (loss * share).backward()
        loss_sum[0] += loss.detach() * share
    if ddp:
        dist.all_reduce(loss_sum, op=dist.ReduceOp.SUM)
    loss_val, stop = loss_sum[0].item() / world, loss_sum[1].item() > 0
    if not math.isfinite(loss_val):
        stop_non_finite(f"loss is {loss_val} at step {step + 1}; stopped without an optimizer step", master)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf")).item()
    if not math.isfinite(grad_norm):
        stop_non_finite(f"gradient norm is {grad_norm} at step {step + 1}; stopped without an optimizer step", master)
    t_opt = time.time()   # the .item() above waited for the backward pass
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize(dev)
    t1 = time.time()
    return loss_val, grad_norm, t1 - t0, t1 - t_opt, stop


def maybe_checkpoint(step, model, optimizer, dev, ddp, master, stop=False):
    """Every ckpt_interval steps, at the last and on a stop: rank 0 saves, unless a weight is non-finite (all stop)."""
    if not stop and (not ckpt_interval or (step % ckpt_interval and step != max_steps)):
        return
    finite = torch.tensor(float(all(torch.isfinite(p).all() for p in model.parameters())), device=dev)
    if ddp:  # never save a poisoned checkpoint, and every rank stops together
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if not finite.item():
        stop_non_finite(f"non-finite weights after step {step}; not saving", master)
    if master:
        save_checkpoint(model, optimizer, step, out_dir, config, keep_ckpts)
    if ddp:
        dist.barrier()   # nobody runs ahead while rank 0 writes


def stop_now(signum, _frame):
    """SIGTERM / SIGINT before the first step ends (building, compiling, a first step of hours on a CPU): stop at once."""
    print(f"stopped by {signal.Signals(signum).name} before the first step ended: nothing new to save", flush=True)
    raise SystemExit(0)


def main(get_batch=None):
    """Train. `get_batch(step, micro_step) -> (x, y) or (x, y, doc_ids)` on the device replaces the dataset
    (bench/train_speed.py feeds random tokens through it). Returns the per-step records."""
    # ---------------------------------------------------------------------------------------- setup
    signal.signal(signal.SIGTERM, stop_now), signal.signal(signal.SIGINT, stop_now)   # until the loop starts
    rank, local_rank, world, dev = setup_processes()
    ddp, master, cuda = world > 1 or "RANK" in os.environ, rank == 0, dev.startswith("cuda")
    if master:   # a read-only out_dir: one line now, not Errno 30 at the lock, the log or the first checkpoint
        make_writable_dir(out_dir)
    out_dir_lock = lock_out_dir(out_dir) if master else None  # noqa: F841 (held until the process ends)
    grad_accum = check_settings(world)
    if master and not export_only:   # before the minutes a large model takes to build
        shape = {**vars(model_config()), **({} if init_from == "scratch" else starting_shape(init_from, out_dir))}
        print(describe_run(Qwen3Config(**shape), global_batch, seq_len, max_steps, world, dev), flush=True)
    torch.manual_seed(seed)
    use_liger = use_cuda_kernels(cuda)
    autocast = torch.autocast("cuda", dtype=getattr(torch, dtype)) if cuda and dtype != "float32" else nullcontext()
    model, optimizer, step = build_model(dev, use_liger, master)
    if export_only:
        if master:
            export_hf(model, os.path.join(out_dir, "hf"), dtype=getattr(torch, export_dtype),
                      chat_template=data_or_exit(sft_chat_template, sft_data) if sft_data else None)
        return []
    if master and warmup_steps + decay_steps > max_steps:   # wsd_lr_factor would start the decay during warmup
        print(f"warning: warmup_steps {warmup_steps} + decay_steps {decay_steps} > max_steps {max_steps}: the lr "
              f"decay starts at step {max(0, max_steps - decay_steps)}, before warmup ends; lower them to fit")
    train_model = DDP(model, device_ids=[local_rank] if cuda else None) if ddp else model

    # ----------------------------------------------------------------------------------------- data
    get_batch = get_batch or data_or_exit(make_batches, model, world, rank, grad_accum, dev, master, ddp)
    tokens_per_step = global_batch * seq_len
    peak, peak_src = peak_tflops(torch.cuda.get_device_name(dev) if cuda else "cpu", peak_tflops_override)
    flops_per_token = flops_per_token_6n(model.config, seq_len)
    if master:
        print(f"params {sum(p.numel() for p in model.parameters()):,} | world {world} x micro_batch {micro_batch} x "
              f"accum {grad_accum} x seq {seq_len} = {tokens_per_step:,} tokens/step | compile {compile} liger "
              f"{use_liger} ckpt {checkpointing} | peak {peak or 'unknown'} TFLOP/s ({peak_src})")
    log = open_log(master)

    # ----------------------------------------------------------------------------------------- loop
    history, t_start, first, last_line, stop = [], time.time(), step, time.time(), False
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    while step < max_steps and not stop:
        if eval_interval and step % eval_interval == 0:
            evaluate(model, step, dev, autocast, log)
        loss, grad_norm, dt, dt_opt, stop = train_step(step, model, train_model, optimizer, get_batch, grad_accum,
                                                       world, ddp, dev, autocast, master)
        for sig in (signal.SIGTERM, signal.SIGINT) if step == first else ():   # from now on a stop has a step to save:
            signal.signal(sig, lambda signum, _: STOP_SIGNALS.append(signal.Signals(signum).name))   # see train_step
        step += 1
        tok_s = tokens_per_step / dt
        mfu = tok_s / world * flops_per_token / (peak * 1e12) if peak else None   # None: peak unknown (e.g. CPU)
        eta = (time.time() - t_start) / (step - first) * (max_steps - step)
        rec = {"step": step, "tokens": step * tokens_per_step, "loss": loss, "muon_lr": optimizer.param_groups[0]["lr"],
               "adamw_lr": optimizer.param_groups[1]["lr"], "grad_norm": grad_norm, "tok_per_s": tok_s, "mfu": mfu,
               "step_ms": 1000 * dt, "optimizer_ms": 1000 * dt_opt, "eta_s": eta}
        history.append(rec)
        if step % log_interval == 0 or step == max_steps or stop or time.time() - last_line >= log_seconds:
            last_line = time.time()
            log(rec, f"step {step}/{max_steps} | loss {loss:.4f} | lr {rec['muon_lr']:.2e} | grad norm {grad_norm:.3f} | "
                     f"{tok_s:,.0f} tok/s | MFU {'n/a' if mfu is None else f'{100 * mfu:.1f}%'} | "
                     f"{1000 * dt:.0f} ms | ETA {int(eta) // 3600}:{int(eta) % 3600 // 60:02d}:{int(eta) % 60:02d}")
        maybe_checkpoint(step, model, optimizer, dev, ddp, master, stop)
    if stop and master:
        print(f"stopped by {(STOP_SIGNALS or ['a signal'])[0]} after step {step}: {list_checkpoints(out_dir)[-1]} written; --init_from=resume continues")

    # ------------------------------------------------------------------------------------------ end
    if eval_interval and not stop:
        evaluate(model, step, dev, autocast, log)
    if master and export_at_end and not stop:
        export_hf(model, os.path.join(out_dir, "hf"), dtype=getattr(torch, export_dtype),
                  chat_template=data_or_exit(sft_chat_template, sft_data) if sft_data else None)
    if ddp:
        del train_model   # the DDP wrapper holds the process group: release it before the group goes
        dist.barrier()    # let rank 0 finish writing before anyone tears the group down
        dist.destroy_process_group()
    if LOG_FAILED:   # after the group is gone: the other ranks must not wait for a rank 0 that left
        sys.exit(LOG_FAILED[0])
    return history


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as e:   # gloo and NCCL report a peer that stopped answering as a timed-out collective
        if not (dist.is_initialized() and any(w in str(e).lower() for w in ("timed out", "timeout"))):
            raise
        print(f"error: rank {os.environ.get('RANK', 0)} waited more than pg_timeout_s={pg_timeout_s} s for a hung peer; stopping", file=sys.stderr)
        os._exit(1)   # the process group cannot be torn down cleanly with a peer that does not answer
