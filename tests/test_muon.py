"""Muon + AdamW: equal to torch's own Muon and AdamW, and distributed Newton-Schulz equal to one process."""
import pytest
import torch
from conftest import TIMEOUT

from muon import MuonAdamW


def _muon_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(64, 32), (64, 32), (32, 96), (64, 32), (48, 48)]  # same-shape stacks and odd ones out
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]


def _grads(params, step):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g) for p in params]


@pytest.mark.parametrize("rule", ["original", "match_rms_adamw"])
def test_muon_equals_torch_muon(rule):
    ours, ref = _muon_params(), _muon_params()
    opt = MuonAdamW([dict(params=ours, use_muon=True, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.1,
                          lr_rule=rule)])
    opt_ref = torch.optim.Muon(ref, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.1, adjust_lr_fn=rule)
    start = [p.detach().clone() for p in ours]
    for step in range(6):
        for ps in (ours, ref):
            for p, gr in zip(ps, _grads(ps, step)):
                p.grad = gr.clone()
        opt.step(), opt_ref.step()
    for a, b, s in zip(ours, ref, start):
        moved = (b - s).abs().max()
        # bf16 Newton-Schulz (batched vs per-matrix): differences far below the distance moved
        assert (a - b).abs().max() <= 2e-3 * moved, ((a - b).abs().max(), moved)


def test_adamw_part_equals_torch_adamw():
    ours, ref = _muon_params(1), _muon_params(1)
    opt = MuonAdamW([dict(params=ours, use_muon=False, lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)])
    opt_ref = torch.optim.AdamW(ref, lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01, foreach=False)
    for step in range(6):
        for ps in (ours, ref):
            for p, gr in zip(ps, _grads(ps, step)):
                p.grad = gr.clone()
        opt.step(), opt_ref.step()
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)


def _four_muon_steps():
    params = _muon_params()
    opt = MuonAdamW([dict(params=params, use_muon=True, lr=0.02, weight_decay=0.1)])
    for step in range(4):
        for p, gr in zip(params, _grads(params, step)):
            p.grad = gr
        opt.step()
    return [p.detach() for p in params]


def _distributed_muon_worker(rank, world, init_file, out_file):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.save(_four_muon_steps(), f"{out_file}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 8])  # 8: more ranks than matrices in a stack, so some ranks get none
def test_distributed_muon_equals_single_process(tmp_path, world):
    ctx = torch.multiprocessing.spawn(_distributed_muon_worker, args=(world, str(tmp_path / "init"), str(tmp_path / "p")),
                                      nprocs=world, join=False)
    for _ in range(TIMEOUT):
        if ctx.join(timeout=1):
            break
    else:
        for p in ctx.processes:
            p.kill()
        pytest.fail(f"distributed Muon with {world} processes did not finish in {TIMEOUT} s")
    params = _four_muon_steps()  # no process group here: plain single-process Muon
    for rank in range(world):
        for a, b in zip(torch.load(tmp_path / f"p.{rank}"), params):
            assert torch.equal(a, b)
