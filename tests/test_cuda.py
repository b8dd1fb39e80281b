"""The CUDA fast path computes the same function as the plain path (skipped without a GPU)."""
import sys

import pytest
import torch
from conftest import cuda

from model import Qwen3, Qwen3Config


def _apply_fast_path(model, checkpointing):
    """train.py's own apply_fast_path (compiled blocks, activation checkpointing), its settings set here."""
    argv, sys.argv = sys.argv, ["train.py"]   # train.py parses its command line on import
    try:
        import train
    finally:
        sys.argv = argv
    train.compile, train.checkpointing = True, checkpointing
    return train.apply_fast_path(model)


def _gpu_pair(seed=0, checkpointing="none", **kw):
    """The same weights twice on the GPU: `plain` (eager, chunked loss) and `fast` (compiled blocks, liger)."""
    torch.manual_seed(seed)
    cfg = Qwen3Config(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=64, **kw)
    plain = Qwen3(cfg).cuda()
    fast = _apply_fast_path(Qwen3(cfg, loss="liger"), checkpointing).cuda()
    fast.load_state_dict(plain.state_dict())
    return plain, fast


@cuda
def test_fast_path_equals_plain_path_loss_and_grads():
    """bf16 autocast on both: |loss difference| <= 0.01 (bf16 has 8 mantissa bits; loss ~12) and every
    parameter's gradient within 3% relative L2 error of the plain path's (cosine > 0.999)."""
    pytest.importorskip("liger_kernel")
    plain, fast = _gpu_pair()
    x = torch.randint(0, 151936, (4, 513), device="cuda")
    y = x[:, 1:].clone()
    y[0, :100] = -100  # ignore_index inside the fused loss (the known liger-under-compile pitfall)
    results = []
    for m in (plain, fast):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = m(x[:, :-1], y)
        loss.backward()
        results.append((loss.item(), {n: p.grad.float() for n, p in m.named_parameters()}))
    (lp, gp), (lf, gf) = results
    assert abs(lp - lf) <= 1e-2, (lp, lf)
    for n in gp:
        rel = (gp[n] - gf[n]).norm() / gp[n].norm().clamp(min=1e-12)
        assert rel < 0.03, (n, rel.item())


@cuda
@pytest.mark.parametrize("mode", ["block", "selective"])
def test_activation_checkpointing_same_gradients(mode):
    _, a = _gpu_pair(seed=1)
    _, b = _gpu_pair(seed=1, checkpointing=mode)
    x = torch.randint(0, 151936, (2, 257), device="cuda")
    grads = []
    for m in (a, b):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = m(x[:, :-1], x[:, 1:])
        loss.backward()
        grads.append([p.grad.float() for p in m.parameters()])
    for ga, gb in zip(*grads):
        assert (ga - gb).norm() <= 1e-2 * ga.norm() + 1e-6
