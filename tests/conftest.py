"""
Shared helpers for the tests. CPU tests run everywhere (CI); tests marked `cuda` skip without a GPU and prove the
fast path on the device. Run: python -m pytest -q tests (everything, the slow end-to-end runs included);
python -m pytest -q tests -m "not slow" for the quick part.

Every subprocess a test starts has a timeout, so a hang fails its test instead of eating CI's time.
"""
import json, os, signal, socket, subprocess, sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
PY = sys.executable
TIMEOUT = 600   # seconds, for any one subprocess

import data  # noqa: E402
import prepare  # noqa: E402
from model import Qwen3Config  # noqa: E402
from tokenizer import RANKS_SHA256  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: an end-to-end run in subprocesses (training, torchrun, the Triton "
                                       "interpreter); run by default, `-m 'not slow'` leaves them out")


@pytest.fixture
def train_module(monkeypatch):
    """train.py imported into this process, its settings parsed from an empty command line. Its settings (changed
    through monkeypatch, configure_train or by main() itself, which adopts a checkpoint's model shape) go back after
    the test, and so do the SIGTERM/SIGINT handlers train.main() installs (left in place, a forked worker of a later
    test inherits a SIGTERM handler that swallows its pool's terminate: a hang). Torch runs on one thread meanwhile,
    as the subprocess runs do (OMP_NUM_THREADS=1): a run here and one there with the same settings are bit-identical."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    monkeypatch.setattr(sys, "argv", ["train.py"])
    import train
    settings, config, threads = dict(vars(train)), dict(train.config), torch.get_num_threads()
    torch.set_num_threads(1)
    yield train
    torch.set_num_threads(threads)
    for key in set(vars(train)) - set(settings):
        delattr(train, key)
    vars(train).update(settings)
    train.config.clear(), train.config.update(config)
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def configure_train(train, args):
    """What `python train.py ARGS` does before main(), in this process: configurator.py applied to train.py's
    globals, and `config` (the settings checkpoints record and a resume compares) taken from them again. For a
    train_module that the fixture puts back after the test."""
    import configurator
    configurator._apply_args(args, vars(train))
    train.config.update({k: getattr(train, k) for k in train.config})


def run_script(monkeypatch, script, *args):
    """`python SCRIPT ARGS` in this process: the script run as __main__ (runpy: a fresh namespace each time) with
    sys.argv set -- the same code as the command line, without the ~3 s a new interpreter spends on imports. Returns
    the exit status as sys.exit gave it (0, 1, or the message of a one-line stop); what it prints goes to capsys."""
    import runpy
    monkeypatch.setattr(sys, "argv", [script, *args])
    try:
        runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
    except SystemExit as e:
        return 0 if e.code is None else e.code
    return 0


def exit_message(fn, *args):
    """The message fn(*args) stops with: a SystemExit (what a user sees as its one line), not another exception.
    Returned as text, so that no traceback keeps main()'s out_dir lock open for a later run in this process."""
    try:
        fn(*args)
    except SystemExit as e:
        return str(e.code)
    pytest.fail(f"{fn.__name__} did not stop")


def small_config(**kw):
    """Keeps what makes Qwen3 Qwen3: head_dim (24) != hidden/heads (16), GQA ratio 2, QK-norm."""
    base = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=24, max_position_embeddings=256)
    base.update(kw)
    return Qwen3Config(**base)


def run(args, env=None, timeout=TIMEOUT, **kw):
    e = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    e.update(env or {})
    return subprocess.run([PY] + args, cwd=ROOT, capture_output=True, text=True, env=e, timeout=timeout, **kw)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc, args, script="train.py", timeout=TIMEOUT):
    return run(["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}", script]
               + args, timeout=timeout)


def synthetic_dataset(d, n_tokens=20000, vocab=300, val=3000, seed=0, n_shards=3):
    """Shards written directly (ids < vocab) so small-vocab models can train on them quickly: a learnable
    stream where token t+1 = (t * 7 + noise) % vocab."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(d, "train"), exist_ok=True), os.makedirs(os.path.join(d, "val"), exist_ok=True)

    def stream(n):
        x = np.zeros(n, dtype=np.int64)
        x[0] = 1
        for i in range(1, n):
            x[i] = (x[i - 1] * 7 + rng.integers(0, 3)) % vocab
        return x.astype(np.uint32)
    shards = []
    for i in range(n_shards):
        name = f"s{i}"
        tr, va = stream(n_tokens // n_shards + 17 * i), stream(val // n_shards)
        data.write_shard(os.path.join(d, "train", name + ".bin"), tr)
        data.write_shard(os.path.join(d, "val", name + ".bin"), va)
        shards.append({"name": name, "input": name, "source": 0, "weight": None, "max_token": int(max(tr.max(), va.max())),
                       "tokens": {"train": len(tr), "val": len(va)}, "use_tokens": {"train": len(tr), "val": len(va)}})
    json.dump({"tokenizer_sha256": RANKS_SHA256, "shards": shards}, open(os.path.join(d, "meta.json"), "w"))
    return d


def small_train_args(data_dir, out_dir, **over):
    args = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, max_position_embeddings=128, seq_len=32, micro_batch=2,
                global_batch=4, warmup_steps=3, decay_steps=10, max_steps=30, eval_interval=0, ckpt_interval=10,
                keep_ckpts=10, compile=False, dtype="float32", device="cpu", export_at_end=False, log_interval=1,
                data_dir=data_dir, out_dir=out_dir, muon_lr=0.02, adamw_lr=3e-3)
    args.update(over)
    return [f"--{k}={v}" for k, v in args.items()]


def losses(out_dir):
    """{step: loss} from log.jsonl; fails if a step is logged twice (the log must be one clean curve)."""
    per_step = {}
    for line in open(os.path.join(out_dir, "log.jsonl")):
        rec = json.loads(line)
        if "loss" in rec:
            assert rec["step"] not in per_step, f"step {rec['step']} logged twice in {out_dir}/log.jsonl"
            per_step[rec["step"]] = rec["loss"]
    return per_step


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """(data_dir, out_dir) of one finished 30-step run of small_train_args on the synthetic dataset (checkpoints at
    10, 20 and 30), trained once per test session: the tests that resume, damage or export a finished run start
    from a copy of it (shutil.copytree) instead of each training its own."""
    root = tmp_path_factory.mktemp("finished_run")
    d, out = synthetic_dataset(str(root / "ds")), str(root / "o")
    r = run(["train.py"] + small_train_args(d, out))
    assert r.returncode == 0, r.stderr[-2000:]
    return d, out


@pytest.fixture(scope="session")
def one_process_reference(tmp_path_factory):
    """(data_dir, run args(out_dir), the finished train.py process, its out_dir) of one process training a global batch
    of 8 sequences by accumulating 4 micro-batches of 2, once per session: the reference the multi-process runs of
    test_train.py and test_processes.py (the same settings) must equal."""
    root = tmp_path_factory.mktemp("one_process")
    d = synthetic_dataset(str(root / "ds"))
    args = lambda out: small_train_args(d, str(out), max_steps=8, global_batch=8)
    r = run(["train.py"] + args(root / "one"))
    assert r.returncode == 0, r.stderr[-2000:]
    return d, args, r, str(root / "one")


@pytest.fixture(scope="session")
def mixed_prepared(tmp_path_factory):
    """1,500 mixed parquet/jsonl/txt inputs of two sources (test_rehearsal.make_mixed_inputs) prepared once per session
    by prepare.py's command line, the README's kind of command: weights 3:1, a score filter, per-source counts.
    Returns (the prep's finished process, its --out, what make_mixed_inputs says the prep must report);
    test_rehearsal.py checks the prep, test_real_run.py trains on it."""
    from test_rehearsal import make_mixed_inputs
    root = tmp_path_factory.mktemp("mixed")
    raw, out = str(root / "raw"), str(root / "prepared")
    expect = make_mixed_inputs(raw, 1500)
    r = run(["prepare.py", "--input", f"{raw}/zh/*@3", f"{raw}/en/*@1", "--out", out, "--min_score=0.75",
             "--score_field=score", "--source_field=source", "--val_fraction=0.05", "--workers=2"])
    return r, out, expect


@pytest.fixture(scope="session")
def tokenizer_files(tmp_path_factory):
    """A directory of save_tokenizer()'s files (Qwen3's chat template), written once per session: making them takes
    ~3 s, so the tests that need them in a model directory copy them (copy_tokenizer) and the tests of the files
    themselves read them here."""
    from tokenizer import save_tokenizer
    d = str(tmp_path_factory.mktemp("tokenizer"))
    save_tokenizer(d)
    return d


def copy_tokenizer(tokenizer_files, model_dir):
    """What save_tokenizer(model_dir) writes, copied from the session's tokenizer_files."""
    import shutil
    shutil.copytree(tokenizer_files, model_dir, dirs_exist_ok=True)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """The offline demo corpus, built once per test session in a temp dir (never into the checkout)."""
    d = str(tmp_path_factory.mktemp("demo"))
    prepare.build_demo(d, quiet=True)
    return d
