"""A full disk anywhere (issue 36, points 1 and 8): one line naming the file and the space it needs, nothing
half-written left for a rerun to trust, and the same command rerun with room gives what a run that never failed
gives. The disk is made full by a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored: a write past it fails with
EFBIG as a full disk fails with ENOSPC) in a subprocess, placed just below each file the tool writes in turn."""
import errno, hashlib, json, os, shutil, subprocess, sys

import pytest
import torch

from conftest import PY, ROOT, configure_train, exit_message, losses, small_train_args

import checkpoint
import prepare
import sft

resource = pytest.importorskip("resource", reason="RLIMIT_FSIZE needs a POSIX system")

LIMITED = """import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
sys.argv = {argv!r}
runpy.run_path({script!r}, run_name="__main__")
"""


def run_limited(limit, script, *args):
    """`python SCRIPT ARGS` with no file allowed past `limit` bytes."""
    code = LIMITED.format(limit=limit, argv=[script, *args], script=os.path.join(ROOT, script))
    return subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def tree(d):
    """{relative path: sha256} of every file below d."""
    out = {}
    for root, _, files in os.walk(d):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, d)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def assert_one_line_and_nothing_half_written(r, out):
    assert r.returncode != 0, r.stdout
    err = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr and err[-1].startswith("error: writing "), r.stderr[-2000:]
    assert "MiB" in err[-1] and "File too large" in err[-1], err[-1]
    left = [p for p in tree(out) if p.endswith(".tmp")]
    assert not left, left


@pytest.mark.parametrize("tool", ["prepare.py", "sft.py"])
def test_disk_full_at_every_file_of_a_prep_then_a_rerun_gives_the_never_failed_output(tmp_path, tool):
    """Point 1: meta.json and the done/ records were written unclosed and unchecked: a full disk left meta.json cut
    at 4 KiB (or empty) under an exit 0. Each file's size minus one as the limit fails at that file."""
    src = tmp_path / "in.jsonl"
    if tool == "prepare.py":   # 300 sources make the done/ record and meta.json long (per-source token counts)
        src.write_text("".join(json.dumps({"text": f"文档 {i} " * (i % 7 + 10), "source": f"s{i}"}) + "\n"
                               for i in range(300)))
        extra, smallest = ["--source_field", "source", "--workers", "1"], 4097   # multiprocessing's 4 KiB arena file
    else:
        src.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"问题 {i}"},
                                                        {"role": "assistant", "content": f"回答 {i}"}]}) + "\n"
                               for i in range(60)))
        extra, smallest = [], 41
    args = lambda out: ["--input", str(src), "--out", str(out), "--val_fraction", "0.1"] + extra
    ref = tmp_path / "ref"
    assert subprocess.run([PY, tool] + args(ref), cwd=ROOT, capture_output=True, timeout=300).returncode == 0
    want = tree(ref)
    sizes = sorted({os.path.getsize(ref / p) for p in want if os.path.getsize(ref / p) >= smallest})
    assert len(sizes) >= 3, sizes   # at least a shard, the done/ record and meta.json
    for i, size in enumerate(sizes):
        out = tmp_path / f"o{i}"
        r = run_limited(size - 1, tool, *args(out))
        assert_one_line_and_nothing_half_written(r, out)
        if tool == "prepare.py":   # the rerun in this process: the same code as the command line, faster
            prepare.prepare([str(src)], str(out), val_fraction=0.1, quiet=True, source_field="source", workers=1)
        else:
            sft.prepare([str(src)], str(out), val_fraction=0.1, quiet=True)
        assert tree(out) == want, size


def test_disk_full_on_a_checkpoint_is_one_line_with_no_tmp_left(tmp_path):
    """Point 8: safetensors reports a full disk as its own SafetensorError, which was not caught: a traceback and
    a ckpt-*.tmp left behind. The first checkpoint fails: the message says a rerun needs --overwrite=True."""
    from conftest import synthetic_dataset
    d, out = synthetic_dataset(str(tmp_path / "ds")), tmp_path / "o"
    r = run_limited(20000, "train.py", *small_train_args(d, str(out), max_steps=2, ckpt_interval=2))
    assert_one_line_and_nothing_half_written(r, out)
    assert "ckpt-0000002" in r.stderr and "--overwrite=True" in r.stderr
    assert checkpoint.list_checkpoints(str(out)) == []


def test_disk_full_on_the_hf_export_keeps_no_half_export(tmp_path, monkeypatch):
    """Point 8: the export wrote into out_dir/hf directly; it is now written aside and renamed."""
    from conftest import small_config
    from model import Qwen3
    model = Qwen3(small_config())
    checkpoint.export_hf(model, str(tmp_path / "hf"))
    before = tree(tmp_path / "hf")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(checkpoint, "save_tokenizer", full)
    model.config.vocab_size = checkpoint.QWEN_VOCAB   # so that the tokenizer is written (and fails)
    with pytest.raises(SystemExit) as e:
        checkpoint.export_hf(model, str(tmp_path / "hf"))
    assert str(e.value).startswith(f"error: writing {tmp_path / 'hf'} failed (No space left on device)")
    assert tree(tmp_path / "hf") == before and sorted(os.listdir(tmp_path)) == ["hf"]


def test_a_failed_log_write_checkpoints_stops_with_one_line_and_the_resume_finishes_the_same_run(
        tmp_path, finished_run, train_module, monkeypatch):
    """Point 8: a full disk at log.jsonl was an OSError traceback with no checkpoint tried. Now the run stops after
    the next step as on SIGTERM (its checkpoint written), with one line; the resume ends where the run that never
    failed ended, weights bit for bit."""
    d, out = finished_run[0], str(tmp_path / "o")
    real_open, writes = open, []

    class FullAfter:   # log.jsonl on a disk that fills up at the 15th record
        def __init__(self, f):
            self.f, self.name = f, f.name

        def write(self, text):
            writes.append(text)
            if len(writes) >= 15:
                self.f.write(text[:10])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(text)

        def flush(self):
            self.f.flush()
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: FullAfter(real_open(f, *a, **k))
                        if str(f).endswith("log.jsonl") and a[:1] == ("a",) else real_open(f, *a, **k))
    configure_train(train_module, small_train_args(d, out))
    try:
        msg = exit_message(train_module.main)   # as text: a kept traceback would hold main()'s out_dir lock
    finally:
        monkeypatch.undo()
        train_module.STOP_SIGNALS.clear()
    assert msg.startswith(f"error: writing {out}/log.jsonl failed (No space left on device)"), msg
    assert checkpoint.list_checkpoints(out)[-1].endswith("ckpt-0000016")
    configure_train(train_module, small_train_args(d, out, init_from="resume"))
    train_module.main()
    from safetensors.torch import load_file
    got, want = (load_file(os.path.join(o, "ckpt-0000030", "model.safetensors")) for o in (out, finished_run[1]))
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert sorted(losses(out)) == [s for s in range(1, 31) if s not in (15, 16)]   # the two the full disk lost
