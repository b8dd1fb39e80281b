"""Several processes: a clean exit after checkpoint + eval + export, the same stop decision on every rank, and
two "nodes" x two processes on this machine (gloo, localhost rendezvous) equal to one process."""
import os, subprocess

import pytest
from conftest import PY, ROOT, free_port, losses, small_train_args, synthetic_dataset, torchrun


pytestmark = pytest.mark.slow   # end-to-end runs in subprocesses


def _together(commands, envs=None, timeout=300):
    """Start python commands at once (they meet in one process group); (return codes, [(stdout, stderr)])."""
    procs = [subprocess.Popen([PY] + c, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **(e or {})))
             for c, e in zip(commands, envs or [None] * len(commands))]
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [p.returncode for p in procs], outs


def test_two_processes_resume_evaluate_export_and_exit_cleanly(tmp_path):
    d = synthetic_dataset(str(tmp_path / "ds"))
    out = str(tmp_path / "o")
    common = dict(eval_interval=5, val_tokens=256, export_at_end=True, ckpt_interval=5)
    r = torchrun(2, small_train_args(d, out, max_steps=5, **common), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    r = torchrun(2, small_train_args(d, out, max_steps=10, init_from="resume", **common), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert os.path.isdir(os.path.join(out, "ckpt-0000010")) and os.path.isfile(os.path.join(out, "hf", "config.json"))
    assert sorted(losses(out)) == list(range(1, 11))


def test_non_finite_weights_stop_every_rank_by_its_own_decision(tmp_path):
    """An absurd weight decay makes the weights inf after step 1 while its loss and gradients were finite: the
    pre-save check must stop both ranks with exit code 2 -- not rank 0 alone, leaving rank 1 at a barrier.
    The two ranks are started by hand (no torchrun agent to kill the survivor), so each one's exit is its own."""
    d = synthetic_dataset(str(tmp_path / "ds"))
    args = small_train_args(d, str(tmp_path / "o"), weight_decay=1e45, warmup_steps=1, ckpt_interval=1, max_steps=5)
    port = free_port()
    rcs, outs = _together([["train.py"] + args] * 2, [dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(r),
                                                           LOCAL_RANK=str(r), WORLD_SIZE="2") for r in range(2)])
    assert rcs == [2, 2], [o[1][-1000:] for o in outs]
    assert "non-finite weights after step 1" in outs[0][0]
    assert not os.path.exists(str(tmp_path / "o" / "ckpt-0000001"))


def test_two_nodes_of_two_processes_equal_one_process(tmp_path, one_process_reference):
    """The README's multi-node recipe, on one machine: two torchrun launchers (node_rank 0 and 1) meeting at a
    localhost rendezvous, 4 processes in all (world 4 x accum 1), the same global batch -- the same losses as
    1 process x accum 4 (the session's reference run, which test_train.py's 2 processes also equal)."""
    d, args, _, one = one_process_reference
    port = free_port()
    rcs, outs = _together([["-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={i}", "--nproc_per_node=2",
                            "--master_addr=127.0.0.1", f"--master_port={port}", "train.py"] + args(tmp_path / "nodes")
                           for i in range(2)])
    assert rcs == [0, 0], [o[1][-1000:] for o in outs]
    assert "world 4 x micro_batch 2 x accum 1" in outs[0][0]
    a, b = losses(one), losses(tmp_path / "nodes")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    assert all(abs(a[s] - b[s]) <= 2e-5 * abs(a[s]) for s in a), (a, b)
