"""What loses data or corrupts a run, injected on purpose: a fresh run into an old out_dir, a changed input, two
runs on one out_dir, a torn log, a full disk, SIGTERM, a hung peer."""
import errno, json, os, signal, subprocess, sys, time

import numpy as np
import pytest
import torch

from conftest import PY, ROOT, free_port, losses, run, small_config, small_train_args, synthetic_dataset, torchrun

import checkpoint
import data
import prepare
from model import Qwen3
from muon import build_optimizer
from tokenizer import get_tokenizer


def _start(args, **kw):
    return subprocess.Popen([PY] + args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **kw.pop("env", {})), **kw)


def _wait_for_steps(out, n, proc, timeout=300):
    """Until log.jsonl holds n loss records (the run is mid-way)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        if os.path.exists(os.path.join(out, "log.jsonl")) and len(losses(out)) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"{out}: fewer than {n} steps in {timeout} s")


# ------------------------------------------------------------------------------------ 1: nothing deleted
def test_fresh_run_neither_deletes_hf_nor_appends_to_an_old_log_without_overwrite(tmp_path):
    out = str(tmp_path / "o")
    checkpoint.save_pretrained(Qwen3(small_config()), os.path.join(out, "hf"))   # an old run's export and log
    open(os.path.join(out, "log.jsonl"), "w").write(json.dumps({"step": 1, "loss": 5.0}) + "\n")
    for init_from, overwrite, why in (("scratch", False, "already holds hf and log.jsonl"),
                                      (os.path.join(out, "hf"), False, "inside --out_dir"),
                                      (os.path.join(out, "hf"), True, "inside --out_dir")):
        with pytest.raises(SystemExit) as e:
            checkpoint.start_out_dir(out, init_from, overwrite, master=True)
        assert why in str(e.value), (init_from, overwrite, e.value)
        assert os.path.isfile(os.path.join(out, "hf", "model.safetensors")) and len(losses(out)) == 1
    checkpoint.start_out_dir(out, "scratch", True, master=True)   # with --overwrite=True the old run goes
    assert os.listdir(out) == []


def test_a_run_that_stopped_before_its_first_step_does_not_block_its_rerun(tmp_path):
    """An empty log.jsonl (rl.py stopped at step 0 by a reward that raised) is no run to protect: the rerun starts
    as if the out_dir were new. A log with lines but no checkpoint blocks it, and does not offer a resume."""
    out = str(tmp_path / "o")
    os.makedirs(out)
    open(os.path.join(out, "log.jsonl"), "w").close()
    checkpoint.start_out_dir(out, "scratch", False, master=True)
    open(os.path.join(out, "log.jsonl"), "w").write(json.dumps({"step": 1, "loss": 5.0}) + "\n")
    with pytest.raises(SystemExit) as e:
        checkpoint.start_out_dir(out, "scratch", False, master=True)
    assert "already holds log.jsonl" in str(e.value) and "--init_from=resume" not in str(e.value)


# ------------------------------------------------------------------------------- 2: a changed input is redone
@pytest.mark.parametrize("tool", ["prepare", "sft"])
def test_an_input_that_changed_since_its_shards_is_redone(tmp_path, tool):
    """Same settings, same size (so the same shard sizes): only the input's identity says the shards are stale."""
    import sft
    src, out = tmp_path / "in.jsonl", str(tmp_path / "out")
    row = lambda i, word: ({"text": f"{word} text number {i}"} if tool == "prepare" else
                           {"messages": [{"role": "user", "content": f"{word} {i}"}, {"role": "assistant", "content": "ok"}]})
    make = lambda: (prepare.prepare([str(src)], out, val_fraction=0.0, workers=1, quiet=True) if tool == "prepare" else
                    sft.prepare([str(src)], out, val_fraction=0.0, quiet=True))
    src.write_text("".join(json.dumps(row(i, "old")) + "\n" for i in range(20)))
    make()
    src.write_text("".join(json.dumps(row(i, "new")) + "\n" for i in range(20)))   # same size
    st = os.stat(src)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    make()
    (shard,) = [os.path.join(out, "train", f) for f in os.listdir(os.path.join(out, "train")) if "mask" not in f
                and "lens" not in f]
    text = get_tokenizer().decode(list(map(int, data.open_shard(shard))))
    assert "new 7" in text.replace(" text number", "") and "old" not in text


# ----------------------------------------------------------------------------------- 3: one run per out_dir
@pytest.mark.slow
def test_second_run_on_an_out_dir_is_refused_naming_the_holder_and_a_killed_holders_lock_is_gone(tmp_path):
    d = synthetic_dataset(str(tmp_path / "ds"))
    out = str(tmp_path / "o")
    first = _start(["train.py"] + small_train_args(d, out, max_steps=100000, ckpt_interval=2, decay_steps=0))
    try:
        _wait_for_steps(out, 1, first)
        with pytest.raises(SystemExit) as e:   # what a second train.py on this out_dir meets first
            checkpoint.lock_out_dir(out)
        assert f"is in use by another training run (pid {first.pid}" in str(e.value)
    finally:
        first.kill()
        first.communicate()
    checkpoint.lock_out_dir(out).close()   # the kernel dropped the killed run's lock: its resume may start


# ------------------------------------------------------------------------------------------ 4: a torn log
@pytest.mark.parametrize("tail", [b'{"step": 4, "lo', b"\0" * 4096], ids=["torn", "zero-filled"])
def test_resume_drops_a_torn_or_zero_filled_last_log_line(tmp_path, tail, capsys):
    path = str(tmp_path / "log.jsonl")
    good = b"".join(json.dumps({"step": s, "loss": 1.0 / s}).encode() + b"\n" for s in range(1, 4))
    open(path, "wb").write(good + tail)
    checkpoint.trim_log(path, 3)
    assert open(path, "rb").read() == good and "incomplete last line" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ 5: disk full
def _no_space(*args, **kw):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_on_a_checkpoint_keeps_the_last_good_one_and_says_how_much_space(tmp_path, monkeypatch):
    model = Qwen3(small_config())
    opt = build_optimizer(model)
    checkpoint.save_checkpoint(model, opt, 1, str(tmp_path), {}, keep=1)

    def half_written(obj, path):   # what a full disk does: part of the file, then the error
        open(path, "wb").write(b"\0" * 1000)
        _no_space()
    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(SystemExit) as e:
        checkpoint.save_checkpoint(model, opt, 2, str(tmp_path), {}, keep=1)
    assert "MiB" in str(e.value) and "needs about" in str(e.value) and "ckpt-0000001" in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["ckpt-0000001"]   # no partial ckpt-0000002.tmp
    monkeypatch.undo()
    assert checkpoint.load_checkpoint(str(tmp_path / "ckpt-0000001"), model, opt, lambda saved: None) == 1


def test_resume_trims_the_log_without_writing_a_byte(tmp_path, monkeypatch):
    """On a full disk a resume must still start: trimming the killed run's records past the checkpoint writes no
    new file."""
    path = str(tmp_path / "log.jsonl")
    open(path, "w").write("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 9)))
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, mode="r", *a, **k: _no_space() if set(mode) & set("wax+")
                        else real_open(f, mode, *a, **k))
    monkeypatch.setattr(os, "replace", _no_space)
    checkpoint.trim_log(path, 5)
    monkeypatch.undo()
    assert [json.loads(l)["step"] for l in open(path)] == [1, 2, 3, 4, 5]


def test_disk_full_in_prepare_leaves_no_partial_shard_and_says_how_much_space(tmp_path, monkeypatch):
    src, out = tmp_path / "in.jsonl", tmp_path / "out"
    src.write_text("".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(50)))
    monkeypatch.setattr(os, "fsync", _no_space)   # the shard's bytes are in the page cache; the disk has no room
    with pytest.raises(SystemExit) as e:
        prepare.prepare([str(src)], str(out), workers=1, quiet=True)
    assert "No space left" in str(e.value) and "MiB" in str(e.value) and "in.jsonl" in str(e.value)
    monkeypatch.undo()
    left = [os.path.join(r, f) for r, _, fs in os.walk(out) for f in fs]
    assert not [f for f in left if f.endswith(".tmp") or "done" in f], left


def test_prepare_lets_its_workers_leave_instead_of_sigterming_them(tmp_path, monkeypatch):
    """A fork keeps its caller's signal handlers, and train.py (which prepares the demo corpus) installs a SIGTERM
    handler that only records the signal: a pool worker sent SIGTERM by Pool.terminate() kept running, and the pool
    waited for it forever (a full test run hung so, in prepare's pool under a handler an in-process test had left).
    A finished prep closes its pool and joins it: no worker is sent SIGTERM, whatever handler it inherited."""
    import multiprocessing.process
    sent, real_terminate = [], multiprocessing.process.BaseProcess.terminate
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "terminate",
                        lambda self: (sent.append(self.pid), real_terminate(self))[1])
    os.makedirs(tmp_path / "in")
    for k in range(3):
        (tmp_path / "in" / f"{k}.jsonl").write_text("".join(json.dumps({"text": f"doc {k} {i}"}) + "\n" for i in range(20)))
    meta = prepare.prepare([str(tmp_path / "in")], str(tmp_path / "out"), workers=2, quiet=True)
    assert meta["docs"] == 60 and sent == [], sent


# ---------------------------------------------------------------------------------------------- 6: SIGTERM
def _children(pid):
    kids = []
    for p in os.listdir("/proc"):
        try:
            if p.isdigit() and int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(p))
        except (OSError, IndexError):
            pass
    return kids


@pytest.mark.slow
def test_sigterm_on_two_gloo_ranks_checkpoints_the_current_step_exits_0_and_resumes_exactly(tmp_path):
    """What a scheduler does before it kills a job: SIGTERM to every rank. The constant lr after warmup
    (decay_steps=0) makes the schedule independent of max_steps, so the stopped run, resumed up to step 16, must
    give the losses of an uninterrupted run of 16 steps (started alongside, to save time)."""
    d = synthetic_dataset(str(tmp_path / "ds"))
    out, ref = str(tmp_path / "o"), str(tmp_path / "ref")
    args = lambda o, n, **kw: small_train_args(d, o, max_steps=n, decay_steps=0, ckpt_interval=1000, **kw)
    torchrun_cmd = lambda: ["-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", "train.py"]
    reference = _start(torchrun_cmd() + args(ref, 16))
    launcher = _start(torchrun_cmd() + args(out, 100000))
    try:
        _wait_for_steps(out, 4, launcher)
        ranks = _children(launcher.pid)
        assert len(ranks) == 2, ranks
        for pid in ranks:
            os.kill(pid, signal.SIGTERM)
        stdout, stderr = launcher.communicate(timeout=300)
    except BaseException:
        reference.kill()
        raise
    finally:
        launcher.kill()
    assert launcher.returncode == 0, stderr[-2000:]
    n = max(losses(out))
    assert [c for c in os.listdir(out) if c.startswith("ckpt-")] == [f"ckpt-{n:07d}"], os.listdir(out)
    assert "stopped by " in stdout and f" after step {n}: " in stdout and n < 16   # a rank signalled a moment later says "a signal"
    r = torchrun(2, args(out, 16, init_from="resume"))
    assert r.returncode == 0, r.stderr[-2000:]
    ref_err = reference.communicate(timeout=300)[1]   # reads its pipes: a full pipe would block it
    assert reference.returncode == 0, ref_err[-2000:]
    assert losses(out) == losses(ref) and sorted(losses(ref)) == list(range(1, 17))


# ------------------------------------------------------------------------------------------ 7: a hung peer
@pytest.mark.slow
def test_a_rank_whose_peer_hangs_stops_after_the_timeout_with_one_line(tmp_path):
    d = synthetic_dataset(str(tmp_path / "ds"))
    out = str(tmp_path / "o")
    port = free_port()
    ranks = [_start(["train.py"] + small_train_args(d, out, max_steps=100000, decay_steps=0, pg_timeout_s=5),
                    env=dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(r), LOCAL_RANK=str(r),
                             WORLD_SIZE="2")) for r in range(2)]
    try:
        _wait_for_steps(out, 2, ranks[0])
        os.kill(ranks[1].pid, signal.SIGSTOP)   # hung, not dead: its sockets stay open
        _, stderr = ranks[0].communicate(timeout=120)
    finally:
        for p in ranks:
            p.kill()
    assert ranks[0].returncode == 1 and "Traceback" not in stderr, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert "rank 0 waited more than pg_timeout_s=5 s for a hung peer" in last, last


def test_the_reference_recipe_on_a_cpu_says_what_it_starts_and_stops_at_once_on_sigterm(tmp_path):
    """Issue 36 point 18: `python train.py` with no config on a CPU started the 0.6B recipe (786,432 tokens a step)
    printing nothing for a minute, and SIGTERM waited for a first step of hours. Now its first line says what runs
    and how long a step takes there, and a signal before the first step stops it at once."""
    d = synthetic_dataset(str(tmp_path / "ds"))
    p = _start(["train.py", f"--data_dir={d}", f"--out_dir={tmp_path / 'o'}", "--device=cpu", "--compile=False"])
    try:
        first = p.stdout.readline()
        assert first.startswith("training a 596M-parameter Qwen3 (28 layers x 1024) on 1 x cpu: 384 x 2048 = "
                                "786,432 tokens a step, 100,000 steps; on a CPU about "), first
        assert first.rstrip().endswith("h a step -- for the CPU demo run `python train.py config/tiny.py`"), first
        p.send_signal(signal.SIGTERM)
        stdout, stderr = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 0 and "stopped by SIGTERM before the first step ended: nothing new to save" in stdout, stderr[-2000:]


def test_sigterm_during_the_first_evaluation_or_step_stops_at_once_and_the_first_line_names_the_weights(tmp_path):
    """A newcomer's `python train.py` on a CPU ran the 0.6B recipe's first evaluation for ~10 minutes after SIGTERM
    (the handler that only records a stop for after the step was installed before the first step), and a run from
    weights announced the default 0.6B model. Now SIGTERM stops at once until the first step has ended, and the
    first line names the model the weights hold."""
    from conftest import small_config
    from checkpoint import save_pretrained
    from model import Qwen3
    d = synthetic_dataset(str(tmp_path / "ds"), val=1_000_000)   # an evaluation of many seconds
    save_pretrained(Qwen3(small_config()), str(tmp_path / "w"), dtype=torch.float32)
    p = _start(["train.py", f"--data_dir={d}", f"--out_dir={tmp_path / 'o'}", f"--init_from={tmp_path / 'w'}",
                "--device=cpu", "--compile=False", "--seq_len=64", "--micro_batch=1", "--global_batch=1",
                "--val_tokens=1000000"])   # the signal arrives during the first evaluation
    try:
        first = p.stdout.readline()
        assert first.startswith("training a 0M-parameter Qwen3 (2 layers x 64)"), first
        while not p.stdout.readline().startswith("params "):   # the last line before the loop
            pass
        time.sleep(1)
        p.send_signal(signal.SIGTERM)
        stdout, stderr = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == 0 and "stopped by SIGTERM before the first step ended" in stdout, stderr[-2000:]
    assert not [c for c in os.listdir(tmp_path / "o") if c.startswith("ckpt-")]
