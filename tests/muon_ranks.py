"""The parameters, gradients and steps of tests/test_muon.py, and what its spawned ranks run. A module of its own that
imports only torch and muon: each spawned rank imports the module its function lives in, and test_muon.py (through
conftest.py) imports the whole project, which took a rank ~3.3 s to start instead of ~1.5 s (x 8 ranks on 2 cores)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: muon.py

import torch

from muon import MuonAdamW


def muon_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(64, 32), (64, 32), (32, 96), (64, 32), (48, 48)]  # same-shape stacks and odd ones out
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]


def grads(params, step):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g) for p in params]


def run_steps(runs, n, grads_of=grads):
    """n steps of each (optimizer, its parameters) in runs, each given the same gradients, grads_of(params, step)."""
    for step in range(n):
        for opt, params in runs:
            for p, gr in zip(params, grads_of(params, step)):
                p.grad = gr
            opt.step()


def four_muon_steps():
    params = muon_params()
    run_steps([(MuonAdamW([dict(params=params, use_muon=True, lr=0.02, weight_decay=0.1)]), params)], 4)
    return [p.detach() for p in params]


def distributed_muon_worker(rank, world, init_file, out_file):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.save(four_muon_steps(), f"{out_file}.{rank}")
    dist.destroy_process_group()
