"""What a multi-day run meets: resuming with new settings, a clean log, out_dir hygiene, durable checkpoints,
honest stop messages, and clear errors for bad settings."""
import json, os, subprocess

import pytest

from conftest import PY, ROOT, TIMEOUT, losses, run, small_train_args, synthetic_dataset


def _records(out_dir):
    return [json.loads(l) for l in open(os.path.join(out_dir, "log.jsonl"))]


@pytest.mark.slow
def test_resume_uses_the_new_learning_rates_and_prints_the_changes(tmp_path):
    d = synthetic_dataset(str(tmp_path / "ds"))
    out = str(tmp_path / "o")
    assert run(["train.py"] + small_train_args(d, out, max_steps=10, warmup_steps=1, decay_steps=0)).returncode == 0
    r = run(["train.py"] + small_train_args(d, out, max_steps=14, warmup_steps=1, decay_steps=0, init_from="resume",
                                             muon_lr=1e-3, adamw_lr=1e-4))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resume: muon_lr 0.02 -> 0.001" in r.stdout and "resume: adamw_lr 0.003 -> 0.0001" in r.stdout
    assert "resume: max_steps 10 -> 14" in r.stdout
    rec = {x["step"]: x for x in _records(out) if "loss" in x}
    assert rec[10]["muon_lr"] == 0.02 and rec[11]["muon_lr"] == 1e-3 and rec[11]["adamw_lr"] == 1e-4


@pytest.mark.slow
def test_resume_refuses_a_change_of_data_order_or_model_unless_allowed(tmp_path):
    d = synthetic_dataset(str(tmp_path / "ds"))
    out = str(tmp_path / "o")
    assert run(["train.py"] + small_train_args(d, out, max_steps=10)).returncode == 0
    for key, value in (("seq_len", 16), ("global_batch", 8), ("seed", 7), ("num_hidden_layers", 3)):
        r = run(["train.py"] + small_train_args(d, out, max_steps=12, init_from="resume", **{key: value}))
        assert r.returncode != 0 and key in r.stderr and "allow_config_change" in r.stderr, (key, r.stderr[-500:])
    r = run(["train.py"] + small_train_args(d, out, max_steps=12, init_from="resume", seq_len=16, allow_config_change=True))
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.slow
def test_log_after_a_resume_is_one_clean_curve(tmp_path):
    """A run killed after its step-10 checkpoint logged steps 11..; the resume rewrites them, never twice."""
    d = synthetic_dataset(str(tmp_path / "ds"))
    out = str(tmp_path / "o")
    assert run(["train.py"] + small_train_args(d, out, max_steps=13, ckpt_interval=10)).returncode == 0
    os.remove(os.path.join(out, "ckpt-0000013", "state.pt"))  # as if killed between step 13's log and its save
    import shutil
    shutil.rmtree(os.path.join(out, "ckpt-0000013"))
    r = run(["train.py"] + small_train_args(d, out, max_steps=15, ckpt_interval=10, init_from="resume"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(losses(out)) == list(range(1, 16))   # losses() fails on a step logged twice


@pytest.mark.slow
def test_fresh_run_into_an_out_dir_with_checkpoints_is_refused_unless_overwrite(tmp_path):
    d = synthetic_dataset(str(tmp_path / "ds"))
    out = str(tmp_path / "o")
    assert run(["train.py"] + small_train_args(d, out, max_steps=10)).returncode == 0
    r = run(["train.py"] + small_train_args(d, out, max_steps=5, ckpt_interval=5))
    assert r.returncode != 0 and "already holds checkpoints" in r.stderr and "--overwrite=True" in r.stderr
    assert os.path.isdir(os.path.join(out, "ckpt-0000010"))   # nothing lost
    r = run(["train.py"] + small_train_args(d, out, max_steps=5, ckpt_interval=5, overwrite=True))
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(x for x in os.listdir(out) if x.startswith("ckpt-")) == ["ckpt-0000005"]
    assert sorted(losses(out)) == [1, 2, 3, 4, 5]


def test_checkpoint_files_and_directories_are_fsynced_around_the_rename(tmp_path):
    """Every file of the new checkpoint and its folder reach the disk before the rename; the parent after it;
    only then are older checkpoints deleted."""
    code = f"""
import os, shutil, sys, json
sys.path.insert(0, {ROOT!r})
import checkpoint
from model import Qwen3
from muon import build_optimizer
from conftest import small_config
events, real_fsync, real_replace, real_rmtree = [], os.fsync, os.replace, shutil.rmtree
def fsync(fd):
    events.append(('fsync', os.readlink(f'/proc/self/fd/{{fd}}'))); real_fsync(fd)
def replace(a, b):
    events.append(('replace', str(b))); real_replace(a, b)
def rmtree(p, *a, **k):
    events.append(('rmtree', str(p))); real_rmtree(p, *a, **k)
model = Qwen3(small_config()); opt = build_optimizer(model)
os.makedirs({str(tmp_path)!r}, exist_ok=True)
checkpoint.save_checkpoint(model, opt, 1, {str(tmp_path)!r}, {{}}, keep=1)
os.fsync, os.replace, shutil.rmtree = fsync, replace, rmtree
checkpoint.os.fsync, checkpoint.os.replace, checkpoint.shutil.rmtree = fsync, replace, rmtree
checkpoint.save_checkpoint(model, opt, 2, {str(tmp_path)!r}, {{}}, keep=1)
print(json.dumps(events))
"""
    r = subprocess.run([PY, "-c", code], cwd=os.path.join(ROOT, "tests"), capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr[-2000:]
    events = [tuple(e) for e in json.loads(r.stdout.splitlines()[-1])]
    final, tmp = str(tmp_path / "ckpt-0000002"), str(tmp_path / "ckpt-0000002.tmp")
    i_replace = events.index(("replace", final))
    synced_before = {p for kind, p in events[:i_replace] if kind == "fsync"}
    for name in ("model.safetensors", "config.json", "state.pt"):
        assert os.path.join(tmp, name) in synced_before, name
    assert tmp in synced_before
    i_parent = events.index(("fsync", str(tmp_path)), i_replace)
    i_delete = events.index(("rmtree", str(tmp_path / "ckpt-0000001")))
    assert i_replace < i_parent < i_delete


@pytest.mark.slow
def test_nan_stop_without_a_checkpoint_says_so_in_the_logs_numbering(tmp_path):
    d = synthetic_dataset(str(tmp_path / "ds"))
    out = str(tmp_path / "nan")
    r = run(["train.py"] + small_train_args(d, out, adamw_lr=1e9, muon_lr=1e9, warmup_steps=1, grad_clip=0.0,
                                             ckpt_interval=0, max_steps=50))
    assert r.returncode == 2, r.stdout[-1000:]
    last = r.stdout.strip().splitlines()[-1]
    assert "No checkpoint has been written yet" in last and "intact" not in last, last
    logged = max(losses(out))
    assert f"at step {logged + 1};" in last, (logged, last)


def test_float16_is_refused_with_a_pointer_to_bfloat16(tmp_path):
    d = synthetic_dataset(str(tmp_path / "ds"))
    r = run(["train.py"] + small_train_args(d, str(tmp_path / "o"), dtype="float16"))
    assert r.returncode != 0 and "bfloat16" in r.stderr.strip().splitlines()[-1]


def test_init_from_a_missing_directory_is_one_clear_line(tmp_path):
    d = synthetic_dataset(str(tmp_path / "ds"))
    r = run(["train.py"] + small_train_args(d, str(tmp_path / "o"), init_from="resmue"))
    assert r.returncode != 0 and "Traceback" not in r.stderr and "resmue" in r.stderr.strip().splitlines()[-1]


def test_data_problems_stop_with_one_line_not_a_traceback(tmp_path):
    d = synthetic_dataset(str(tmp_path / "ds"))
    r = run(["train.py"] + small_train_args(str(tmp_path / "nowhere"), str(tmp_path / "o")))
    assert r.returncode != 0 and "Traceback" not in r.stderr and "meta.json" in r.stderr.strip().splitlines()[-1]
    from conftest import small_config
    from checkpoint import save_pretrained
    from model import Qwen3
    save_pretrained(Qwen3(small_config()), str(tmp_path / "m"))
    open(os.path.join(d, "meta.json"), "w").write("{broken")
    r = run(["eval.py", f"--data_dir={d}", f"--init_from={tmp_path / 'm'}", "--seq_len=32"])
    assert r.returncode != 0 and "Traceback" not in r.stderr and "is broken" in r.stderr.strip().splitlines()[-1], r.stderr


@pytest.mark.slow
def test_export_only_needs_no_seq_len_that_fits_the_model(tmp_path):
    """Exporting writes weights; a seq_len longer than the model's context (e.g. the reference config's 2048 on the
    demo model) must not stop it, and the training settings that differ from the run's (the config file's
    max_steps, ...) are neither printed nor refused: they do not apply to an export. The log stays as it was."""
    d = synthetic_dataset(str(tmp_path / "ds"))
    out = str(tmp_path / "o")
    assert run(["train.py"] + small_train_args(d, out, max_steps=2, ckpt_interval=2, eval_interval=2)).returncode == 0
    log = open(os.path.join(out, "log.jsonl")).read()
    r = run(["train.py"] + small_train_args(d, out, init_from="resume", export_only=True, seq_len=4096, max_steps=200))
    assert r.returncode == 0 and os.path.isfile(os.path.join(out, "hf", "config.json")), r.stderr[-1500:]
    assert "resume" not in r.stdout and open(os.path.join(out, "log.jsonl")).read() == log, r.stdout
