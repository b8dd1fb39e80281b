"""Muon + AdamW: equal to torch's own Muon and AdamW, and distributed Newton-Schulz equal to one process."""
import pytest
import torch
from conftest import TIMEOUT

from muon import MuonAdamW
from muon_ranks import distributed_muon_worker, four_muon_steps, grads, muon_params


@pytest.mark.parametrize("rule", ["original", "match_rms_adamw"])
def test_muon_equals_torch_muon(rule):
    ours, ref = muon_params(), muon_params()
    opt = MuonAdamW([dict(params=ours, use_muon=True, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.1,
                          lr_rule=rule)])
    opt_ref = torch.optim.Muon(ref, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.1, adjust_lr_fn=rule)
    start = [p.detach().clone() for p in ours]
    for step in range(6):
        for ps in (ours, ref):
            for p, gr in zip(ps, grads(ps, step)):
                p.grad = gr.clone()
        opt.step(), opt_ref.step()
    for a, b, s in zip(ours, ref, start):
        moved = (b - s).abs().max()
        # bf16 Newton-Schulz (batched vs per-matrix): differences far below the distance moved
        assert (a - b).abs().max() <= 2e-3 * moved, ((a - b).abs().max(), moved)


def test_adamw_part_equals_torch_adamw():
    ours, ref = muon_params(1), muon_params(1)
    opt = MuonAdamW([dict(params=ours, use_muon=False, lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)])
    opt_ref = torch.optim.AdamW(ref, lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01, foreach=False)
    for step in range(6):
        for ps in (ours, ref):
            for p, gr in zip(ps, grads(ps, step)):
                p.grad = gr.clone()
        opt.step(), opt_ref.step()
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])  # 2: a stack of 3 split 2 + 1; 4: more ranks than matrices in every stack, so some ranks get none
def test_distributed_muon_equals_single_process(tmp_path, world):
    ctx = torch.multiprocessing.spawn(distributed_muon_worker, args=(world, str(tmp_path / "init"), str(tmp_path / "p")),
                                      nprocs=world, join=False)
    for _ in range(TIMEOUT):
        if ctx.join(timeout=1):
            break
    else:
        for p in ctx.processes:
            p.kill()
        pytest.fail(f"distributed Muon with {world} processes did not finish in {TIMEOUT} s")
    params = four_muon_steps()  # no process group here: plain single-process Muon
    for rank in range(world):
        for a, b in zip(torch.load(tmp_path / f"p.{rank}"), params):
            assert torch.equal(a, b)


def test_step_makes_no_fp32_temporaries():
    """The step's traffic is the momentum update, the bf16 stack Newton-Schulz reads and the parameter update: no
    fp32 copy of an update (the Nesterov lerp, a stack, a cast back) and no AdamW temporaries. Counted as the bytes of
    every fresh fp32 tensor an op returns (in-place and out= results excluded), against the parameters' bytes."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Fp32Allocations(TorchDispatchMode):
        bytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            fresh = func._schema.name.endswith("_") is False and "out" not in (kwargs or {})
            for t in out if isinstance(out, (list, tuple)) else [out]:
                if fresh and isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                    Fp32Allocations.bytes += t.numel() * 4
            return out

    muon, adamw = muon_params(), muon_params(1)
    opt = MuonAdamW([dict(params=muon, use_muon=True, lr=0.02, weight_decay=0.1),
                     dict(params=adamw, use_muon=False, lr=3e-3, weight_decay=0.01)])
    for step in range(2):  # the first step also creates the state (zeros_like: fp32, and counted once)
        for ps in (muon, adamw):
            for p, gr in zip(ps, grads(ps, step)):
                p.grad = gr
        Fp32Allocations.bytes = 0
        with Fp32Allocations():
            opt.step()
    param_bytes = sum(p.numel() * 4 for p in muon + adamw)
    assert Fp32Allocations.bytes < 0.01 * param_bytes, (Fp32Allocations.bytes, param_bytes)
