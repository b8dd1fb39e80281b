"""Bad input answered with one line naming the file (issue 23, points 8-14): damaged checkpoints in every entry
point, token ids over the vocab, deeply nested JSON rows, a read-only output directory, bad C-Eval files, bad
sampling arguments, and the smaller promises (settings-only config keys, named files, true messages)."""
import csv, errno, json, os, sys

import numpy as np
import pytest
import torch
from conftest import small_config, synthetic_dataset

import data
from checkpoint import load_checkpoint, save_checkpoint, save_pretrained
from model import Qwen3
from muon import build_optimizer


def one_line(excinfo):
    """The message of a SystemExit, checked to be one line."""
    msg = str(excinfo.value)
    assert "\n" not in msg.strip() and "Traceback" not in msg, msg
    return msg


def tiny_model_dir(path, vocab_size=320):
    torch.manual_seed(0)
    model = Qwen3(small_config(vocab_size=vocab_size))
    save_pretrained(model, str(path), dtype=torch.float32)
    return model


# ------------------------------------------------------------------------------------- 8: damaged checkpoints
def test_damaged_checkpoints_are_one_line_naming_the_file_in_every_entry_point(tmp_path, monkeypatch, train_module):
    import chat, eval as ev
    train = train_module
    good = tmp_path / "good"
    model = tiny_model_dir(good)

    def entry_points(model_dir):
        """Load model_dir the way eval.py, chat.py and train.py --init_from=<dir> do; each must stop in one line."""
        monkeypatch.setattr(sys, "argv", ["eval.py", f"--init_from={model_dir}", f"--data_dir={tmp_path}",
                                          "--device=cpu", "--dtype=float32"])
        with pytest.raises(SystemExit) as e:
            ev.main()
        yield one_line(e)
        monkeypatch.setattr(chat, "init_from", str(model_dir), raising=False)
        monkeypatch.setattr(chat, "device", "cpu", raising=False)
        monkeypatch.setattr(chat, "dtype", "float32", raising=False)
        with pytest.raises(SystemExit) as e:
            chat.main()
        yield one_line(e)
        monkeypatch.setattr(train, "init_from", str(model_dir))
        with pytest.raises(SystemExit) as e:
            train.build_model("cpu", False, True)
        yield one_line(e)

    half = tmp_path / "half"
    tiny_model_dir(half)
    blob = (half / "model.safetensors").read_bytes()
    (half / "model.safetensors").write_bytes(blob[:len(blob) // 2])
    bad_json = tmp_path / "bad_json"
    tiny_model_dir(bad_json)
    (bad_json / "config.json").write_text('{"model_type": "qwen3", "hidden_')
    no_shape = tmp_path / "no_shape"
    tiny_model_dir(no_shape)
    cfg = json.loads((no_shape / "config.json").read_text())
    del cfg["hidden_size"]
    (no_shape / "config.json").write_text(json.dumps(cfg))
    for model_dir, file in ((half, "model.safetensors"), (bad_json, "config.json"), (no_shape, "config.json")):
        for msg in entry_points(model_dir):
            assert msg.startswith("error: ") and os.path.join(str(model_dir), file) in msg, msg

    # eval.py reads the training settings from state.pt: random bytes there are named too
    (good / "state.pt").write_bytes(os.urandom(1000))
    with pytest.raises(SystemExit) as e:
        ev.val_settings(str(good))
    assert str(good / "state.pt") in one_line(e)

    # a resume from a state.pt that lacks a key: named, and nothing restored
    out = tmp_path / "run"
    out.mkdir()
    opt = build_optimizer(model, muon_lr=0.02, adamw_lr=3e-4, betas=(0.9, 0.95), weight_decay=0.0)
    save_checkpoint(model, opt, 5, str(out), {}, keep=2)
    ckpt = out / "ckpt-0000005"
    state = torch.load(ckpt / "state.pt", weights_only=True)
    del state["rng_cpu"]
    torch.save(state, ckpt / "state.pt")
    with pytest.raises(SystemExit) as e:
        load_checkpoint(str(ckpt), model, opt, lambda saved: None)
    assert str(ckpt) in one_line(e) and "rng_cpu" in str(e.value)


# ------------------------------------------------------------------------------------ 9: token ids over the vocab
def _sft_dir(tmp_path):
    import sft
    rows = [{"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"hello {i}"}]}
            for i in range(4)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = str(tmp_path / "sft")
    sft.prepare([str(tmp_path / "c.jsonl")], d, max_len=64, val_fraction=0, quiet=True)
    return d, os.path.join(d, "train", json.load(open(os.path.join(d, "meta.json")))["shards"][0]["name"])


def test_ids_over_the_vocab_and_inconsistent_sft_shards_are_one_line_naming_the_file(tmp_path, monkeypatch,
                                                                                       train_module):
    from types import SimpleNamespace
    train = train_module
    model = Qwen3(small_config(vocab_size=320))
    # a val shard with an id the model has no row for (meta.json honest about the train split only)
    d = synthetic_dataset(str(tmp_path / "ds"), vocab=300)
    val = os.path.join(d, "val", "s1.bin")
    tokens = data.open_shard(val).copy()
    tokens[::10] = 400
    data.write_shard(val, tokens)
    meta = json.load(open(os.path.join(d, "meta.json")))
    for s in meta["shards"]:
        s["max_token"] = 299
    json.dump(meta, open(os.path.join(d, "meta.json"), "w"))
    with pytest.raises(ValueError, match="s1.bin holds token id 400"):
        data.val_loss_bpb(model, d, 32, 10**6, 64, "cpu")   # every val window

    # a train shard whose ids meta.json understates: a read in the training loop stops in one line naming it
    train_shard = os.path.join(d, "train", "s0.bin")
    data.write_shard(train_shard, np.full(data.shard_length(train_shard), 400, dtype=np.uint32))
    for k, v in dict(data_dir=d, seq_len=32, micro_batch=2, doc_mask=False, sft_data="").items():
        monkeypatch.setattr(train, k, v)
    get = train.make_batches(model, 1, 0, 1, "cpu", True, False)
    with pytest.raises(SystemExit) as e:
        for step in range(200):
            get(step, 0)
    assert "s0.bin holds token id 400" in one_line(e)

    # SFT shards: lengths that do not add up, and ids over the vocab, are refused when the data is opened
    chat_vocab = SimpleNamespace(config=SimpleNamespace(vocab_size=151936))
    sft_dir, base = _sft_dir(tmp_path)
    monkeypatch.setattr(train, "sft_data", sft_dir)
    monkeypatch.setattr(train, "seq_len", 64)
    lens = data.open_shard(base + ".lens.bin").copy()
    data.write_shard(base + ".lens.bin", lens + 1)
    with pytest.raises(SystemExit) as e:
        train.data_or_exit(train.make_batches, chat_vocab, 1, 0, 1, "cpu", True, False)   # as main() calls it
    assert base in one_line(e) and "disagree" in str(e.value)
    data.write_shard(base + ".lens.bin", lens)
    toks = data.open_shard(base + ".tokens.bin").copy()
    toks[3] = 200000
    data.write_shard(base + ".tokens.bin", toks)
    with pytest.raises(SystemExit) as e:
        train.data_or_exit(train.make_batches, chat_vocab, 1, 0, 1, "cpu", True, False)   # as main() calls it
    assert base + ".tokens.bin holds token id 200000" in one_line(e)


# ------------------------------------------------------------------------------------ 10: deeply nested JSON rows
def test_a_deeply_nested_json_row_is_one_bad_row_and_the_run_goes_on(tmp_path):
    import prepare, sft
    deep = "[" * 100_000 + "\n"
    (tmp_path / "text.jsonl").write_text(json.dumps({"text": "hello world"}) + "\n" + deep)
    (tmp_path / "other.jsonl").write_text(json.dumps({"text": "another good file"}) + "\n")
    meta = prepare.prepare([str(tmp_path / "text.jsonl"), str(tmp_path / "other.jsonl")], str(tmp_path / "pre"),
                           val_fraction=0.0, workers=1, quiet=True)
    assert meta["skipped_rows"] == {"too_deeply_nested": 1} and meta["docs"] == 2
    assert os.path.exists(tmp_path / "pre" / "meta.json")
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    (tmp_path / "chat.jsonl").write_text(json.dumps(chat) + "\n" + deep)
    meta = sft.prepare([str(tmp_path / "chat.jsonl")], str(tmp_path / "sft"), max_len=64, val_fraction=0, quiet=True)
    assert meta["skipped_rows"] == {"too_deeply_nested": 1} and meta["conversations"]["train"] == 1
    assert os.path.exists(tmp_path / "sft" / "meta.json")


# ------------------------------------------------------------------------------------ 11: a read-only output dir
def read_only(monkeypatch, directory):
    """Writes under `directory` fail as on a read-only mount (Errno 30); chmod would not stop root."""
    import builtins
    real_open = builtins.open

    def guarded(file, mode="r", *a, **kw):
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(file).startswith(str(directory)) \
                and any(c in mode for c in "wax+"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real_open(file, mode, *a, **kw)
    monkeypatch.setattr(builtins, "open", guarded)


def test_a_read_only_output_directory_is_one_line_in_prep_and_train(tmp_path, monkeypatch, train_module):
    import prepare
    from conftest import small_train_args
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
    out = tmp_path / "ro"
    out.mkdir()
    d = synthetic_dataset(str(tmp_path / "ds"))
    read_only(monkeypatch, out)
    with pytest.raises(SystemExit) as e:
        prepare.prepare([str(tmp_path / "t.jsonl")], str(out), workers=1, quiet=True)
    assert str(out) in one_line(e) and "Read-only file system" in str(e.value)
    for arg in small_train_args(d, str(out)):
        k, v = arg[2:].split("=", 1)
        monkeypatch.setattr(train_module, k, type(getattr(train_module, k))(v) if not isinstance(
            getattr(train_module, k), bool) else v == "True")
    with pytest.raises(SystemExit) as e:
        train_module.main()
    assert str(out) in one_line(e) and "Read-only file system" in str(e.value)


# ------------------------------------------------------------------------------------ 12: C-Eval files
def test_ceval_files_are_validated_before_any_inference(tmp_path):
    import eval as ev
    from tokenizer import get_tokenizer
    val = tmp_path / "val"
    val.mkdir()

    def write(subject, rows):
        with open(val / f"{subject}_val.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([["id", "question", "A", "B", "C", "D", "answer"]] + rows)
        return str(val / f"{subject}_val.csv")
    good = write("a_good", [[0, "一加一", "1", "2", "3", "4", "b"], [1, "二加二", "1", "2", "3", "4", " d "]])
    assert [r["answer"] for r in ev.read_ceval_csv(good, True)] == ["B", "D"]   # case and spaces normalised
    bad = write("b_bad", [[0, "q", "1", "2", "3", "4", "A"], [1, "q", "1", "2", "3", "4", "E"]])
    # model None: any inference before the check would be an AttributeError, not this one line
    with pytest.raises(SystemExit) as e:
        ev.ceval(None, get_tokenizer(), str(tmp_path), mode="ppl")
    assert f"{bad} line 3" in one_line(e) and "'E'" in str(e.value)
    write("b_bad", [[0, "q", "1", "2", "3", "4", "A"], [1, "q", "1", "2"]])
    with pytest.raises(SystemExit) as e:
        ev.ceval(None, get_tokenizer(), str(tmp_path), mode="gen")
    assert f"{bad} line 3" in one_line(e) and "short" in str(e.value)
    (val / "b_bad_val.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe" * 100)   # a binary file
    with pytest.raises(SystemExit) as e:
        ev.ceval(None, get_tokenizer(), str(tmp_path), mode="ppl")
    assert bad in one_line(e)


# ------------------------------------------------------------------------------------ 13: sampling arguments
@pytest.mark.parametrize("arg,key", [("--max_new_tokens=-5", "max_new_tokens"), ("--num_samples=0", "num_samples"),
                                     ("--top_k=-5", "top_k"), ("--temperature=-1", "temperature"),
                                     ("--top_p=1.5", "top_p")])
def test_sample_and_chat_refuse_bad_sampling_settings_before_loading_a_model(arg, key, tmp_path, monkeypatch):
    import runpy, chat
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    missing = str(tmp_path / "no_model_here")   # the check comes first: no model is loaded for a bad setting
    monkeypatch.setattr(sys, "argv", ["sample.py", f"--init_from={missing}", arg])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(os.path.join(root, "sample.py"), run_name="__main__")
    assert one_line(e).startswith(f"error: --{key} must be"), str(e.value)
    if key == "num_samples":
        return   # chat.py has no such setting
    name, value = arg[2:].split("=")
    monkeypatch.setattr(chat, "init_from", missing)
    monkeypatch.setattr(chat, name, type(getattr(chat, name))(float(value)))
    with pytest.raises(SystemExit) as e:
        chat.main()
    assert one_line(e).startswith(f"error: --{key} must be"), str(e.value)


# ------------------------------------------------------------------------------------ 14: the smaller promises
def test_config_keys_named_files_sft_out_dirs_mixing_weights_and_the_zh_en_line(tmp_path, capsys):
    import configurator, prepare
    # only settings are keys: an imported constant is not (it would be written into the checkpoint)
    with pytest.raises(SystemExit) as e:
        configurator._apply_args(["--EOT=7"], {"EOT": 151643, "max_steps": 30})
    assert "--EOT" in one_line(e)
    # SFT data: a broken meta.json and a truncated shard are named, and the fix is sft.py's
    sft_dir, base = _sft_dir(tmp_path)
    meta_path = os.path.join(sft_dir, "meta.json")
    meta_text = open(meta_path).read()
    with open(base + ".tokens.bin", "r+b") as f:
        f.truncate(os.path.getsize(base + ".tokens.bin") - 8)
    with pytest.raises(ValueError) as e:
        data.PackedConversations(sft_dir, "train", 64)
    assert base + ".tokens.bin is truncated" in str(e.value) and "sft.py" in str(e.value) and "prepare.py" not in str(e.value)
    open(meta_path, "w").write(meta_text[:40])
    with pytest.raises(ValueError, match=f"{meta_path} is broken"):
        data.PackedConversations(sft_dir, "train", 64)
    # prepare.py --out into an SFT directory leaves its meta.json alone
    open(meta_path, "w").write(meta_text)
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "hello world"}) + "\n")
    with pytest.raises(SystemExit) as e:
        prepare.prepare([str(tmp_path / "t.jsonl")], sft_dir, workers=1, quiet=True)
    assert sft_dir in one_line(e) and open(meta_path).read() == meta_text
    # mixing weights must be finite and positive
    for w in ("nan", "inf", "-1"):
        with pytest.raises(SystemExit) as e:
            prepare.expand_inputs([f"{tmp_path / 't.jsonl'}@{w}"])
        assert "weight must be" in one_line(e)
    # an English-only corpus: the zh:en line says there is no Chinese, not "no English"
    meta = prepare.prepare([str(tmp_path / "t.jsonl")], str(tmp_path / "en"), workers=1, quiet=True)
    prepare.report(meta)
    out = capsys.readouterr().out
    assert "zh:en chars = 0 (no Chinese)" in out, out
