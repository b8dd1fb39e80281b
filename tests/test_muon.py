"""Muon + AdamW: equal to torch's own Muon and AdamW, and distributed Newton-Schulz equal to one process."""
import re

import pytest
import torch
from conftest import TIMEOUT

from muon import MuonAdamW
from muon_ranks import distributed_muon_worker, four_muon_steps, grads, muon_params, run_steps


@pytest.mark.parametrize("rule", ["original", "match_rms_adamw"])
def test_muon_equals_torch_muon(rule):
    ours, ref = muon_params(), muon_params()
    opt = MuonAdamW([dict(params=ours, use_muon=True, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.1,
                          lr_rule=rule)])
    opt_ref = torch.optim.Muon(ref, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.1, adjust_lr_fn=rule)
    start = [p.detach().clone() for p in ours]
    run_steps([(opt, ours), (opt_ref, ref)], 6)
    for a, b, s in zip(ours, ref, start):
        moved = (b - s).abs().max()
        # bf16 Newton-Schulz (batched vs per-matrix): differences far below the distance moved
        assert (a - b).abs().max() <= 2e-3 * moved, ((a - b).abs().max(), moved)


def uneven_grads(params, step):
    """grads() with rows of very different scales (0.01x to 10x): where NorMuon's row scaling differs from Muon's."""
    return [g * torch.logspace(-2, 1, g.shape[0])[:, None] for g in grads(params, step)]


def normuon_reference(params, steps, lr, momentum, beta2, weight_decay, rule):
    """NorMuon as its paper writes it, one matrix at a time in fp32 (after our Newton-Schulz, which the Muon test above
    checks against torch's): Nesterov momentum, orthogonalise, EMA of each row's mean square, rows divided by its
    root, the update's norm restored, the shape's lr scale."""
    from muon import muon_lr_scale, newton_schulz
    bufs, moments = [torch.zeros_like(p) for p in params], [torch.zeros(p.shape[0]) for p in params]
    with torch.no_grad():
        for step in range(steps):
            for p, g, buf, v in zip(params, uneven_grads(params, step), bufs, moments):
                buf.lerp_(g, 1 - momentum)
                o = newton_schulz(g.lerp(buf, momentum)).float()
                v.lerp_(o.square().mean(-1), 1 - beta2)
                normed = o / (v.sqrt() + 1e-10)[:, None]
                normed *= o.norm() / normed.norm()
                p.mul_(1 - lr * weight_decay).add_(normed, alpha=-lr * muon_lr_scale(p.shape, rule))


@pytest.mark.parametrize("rule", ["original", "match_rms_adamw"])
def test_normuon_equals_its_reference_and_moves_otherwise_than_muon(rule):
    ours, ref, muon = muon_params(), muon_params(), muon_params()
    opt = MuonAdamW([dict(params=ours, use_muon=True, lr=0.02, weight_decay=0.1, lr_rule=rule, normuon=0.95)])
    plain = MuonAdamW([dict(params=muon, use_muon=True, lr=0.02, weight_decay=0.1, lr_rule=rule)])
    start = [p.detach().clone() for p in ours]
    run_steps([(opt, ours), (plain, muon)], 6, uneven_grads)
    normuon_reference(ref, 6, 0.02, 0.95, 0.95, 0.1, rule)
    for a, b, m, s in zip(ours, ref, muon, start):
        moved = (b - s).abs().max()
        # the row scaling applied to the bf16 stack (the reference: in fp32): differences far below the distance moved
        assert (a - b).abs().max() <= 5e-3 * moved, ((a - b).abs().max(), moved)
        assert (m - b).abs().max() > 0.1 * moved   # and NorMuon is not Muon
    assert all(opt.state[p]["row_moment"].shape == (p.shape[0],) for p in ours)   # its state: a moment per row


def test_polar_express_is_its_polynomials_and_nearer_orthogonal_than_one_quintic():
    """ns="polar_express": each step its own (a, b, c) after X / (1.02 ||X||_F), equal (to bf16) to the iteration
    written plainly in float64; its singular values end nearer 1 than the fixed quintic's. An unknown method is an
    error naming the methods."""
    from muon import NS_METHODS, POLAR_EXPRESS, newton_schulz
    G = torch.randn(3, 96, 48, generator=torch.Generator().manual_seed(1))
    X = G.double().mT / (G.double().norm(dim=(-2, -1), keepdim=True) * 1.02)
    for a, b, c in POLAR_EXPRESS:
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    coeffs, safety = NS_METHODS["polar_express"]
    ours = newton_schulz(G, 5, coeffs, safety=safety).double()
    assert (ours - X.mT).abs().max() < 0.03 * X.abs().max()
    spread = lambda Y: (torch.linalg.svdvals(Y.double()) - 1).abs().max()
    assert spread(ours) < 0.6 * spread(newton_schulz(G, 5)), (spread(ours), spread(newton_schulz(G, 5)))   # 0.14 vs 0.32
    params = muon_params()
    for p, gr in zip(params, grads(params, 0)):
        p.grad = gr
    before = [p.detach().clone() for p in params]
    MuonAdamW([dict(params=params, use_muon=True, lr=0.02, ns="polar_express")]).step()
    assert all(not torch.equal(a, b) for a, b in zip(params, before))
    with pytest.raises(ValueError, match=re.escape("(jordan | polar_express)")):
        MuonAdamW([dict(params=muon_params(), use_muon=True, ns="polar")])


def test_adamw_part_equals_torch_adamw():
    ours, ref = muon_params(1), muon_params(1)
    opt = MuonAdamW([dict(params=ours, use_muon=False, lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)])
    opt_ref = torch.optim.AdamW(ref, lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01, foreach=False)
    run_steps([(opt, ours), (opt_ref, ref)], 6)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
    # a parameter without a gradient for two steps takes its own bias correction (the group's first one's was used)
    ours, ref = muon_params(1), muon_params(1)
    opt = MuonAdamW([dict(params=ours, use_muon=False, lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)])
    opt_ref = torch.optim.AdamW(ref, lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01, foreach=False)
    torch.manual_seed(5)
    for step in range(4):
        for i, (a, b) in enumerate(zip(ours, ref)):
            a.grad = None if i == 0 and step < 2 else torch.randn_like(a)
            b.grad = None if a.grad is None else a.grad.clone()
        opt.step(), opt_ref.step()
    assert opt.state[ours[0]]["step"] == 2 and opt.state[ours[1]]["step"] == 4
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


@pytest.mark.parametrize("normuon", [0.0, 0.95])
def test_step_makes_no_fp32_temporaries(normuon):
    """The step's traffic is the momentum update, the bf16 stack Newton-Schulz reads and the parameter update: no
    fp32 copy of an update (the Nesterov lerp, a stack, a cast back, NorMuon's row scaling) and no AdamW temporaries.
    Counted as the bytes of every fresh fp32 tensor an op returns (in-place and out= results excluded), against the
    parameters' bytes."""
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
    opt = MuonAdamW([dict(params=muon, use_muon=True, lr=0.02, weight_decay=0.1, normuon=normuon),
                     dict(params=adamw, use_muon=False, lr=3e-3, weight_decay=0.01)])
    for step in range(2):  # the first step also creates the state (zeros_like: fp32, and counted once)
        for ps in (muon, adamw):
            for p, gr in zip(ps, grads(ps, step)):
                p.grad = gr
        Fp32Allocations.bytes = 0
        with Fp32Allocations():
            opt.step()
    param_bytes = sum(p.numel() * 4 for p in muon + adamw)
    rows = 16 * 4 * sum(p.shape[0] for p in muon) if normuon else 0   # NorMuon's vectors of rows (at 0.6B: ~0.1%)
    assert Fp32Allocations.bytes < 0.01 * param_bytes + rows, (Fp32Allocations.bytes, param_bytes)
