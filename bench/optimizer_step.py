"""
Where the optimizer's time goes: MuonAdamW's step on the Qwen3-0.6B parameters (built as train.py builds them,
fp32 master weights, random gradients), and the part of it that is Newton-Schulz, per same-shape stack, with the
TFLOP/s those matmuls reach. One JSON line per muon.py given, so two versions compare in one call:

    python bench/optimizer_step.py                               # this checkout's muon.py
    git show HEAD~1:muon.py > /tmp/muon_old.py && python bench/optimizer_step.py muon.py /tmp/muon_old.py

Then one PRODUCTS line: each of Newton-Schulz's three products alone (X X^T, b*A + c*A A, a*X + B X) on each stack,
with torch's matmuls, in ms and TFLOP/s -- what a faster kernel for one of them would have to beat.
"""
import importlib.util
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from model import Qwen3, Qwen3Config  # noqa: E402


def load_muon(path):
    spec = importlib.util.spec_from_file_location(f"muon_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed_ms(fn, dev, repeat):
    """Median milliseconds of `repeat` calls after two warm-up calls."""
    fn(), fn()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(dev)
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def ns_flops(shape, count, steps):
    """Matmul FLOPs of `steps` Newton-Schulz iterations on `count` matrices of `shape`: X X^T, A A, B X."""
    m, n = min(shape), max(shape)
    return count * steps * (2 * m * m * n + 2 * m ** 3 + 2 * m * m * n)


def main(paths, repeat=20):
    dev = "cuda"
    model = Qwen3(Qwen3Config()).to(dev)  # fp32: train.py's master weights
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    for path in paths:
        muon = load_muon(path)
        opt = muon.build_optimizer(model)
        step_ms = timed_ms(opt.step, dev, repeat)
        shapes = {}
        for p in opt.param_groups[0]["params"]:
            shapes[tuple(p.shape)] = shapes.get(tuple(p.shape), 0) + 1
        ns = {}
        for shape, count in shapes.items():
            stack = torch.randn((count,) + shape, device=dev, dtype=torch.bfloat16)
            ms = timed_ms(lambda: muon.newton_schulz(stack, 5), dev, repeat)
            ns["x".join(map(str, shape)) + f" x{count}"] = {"ms": round(ms, 2),
                                                            "tflops": round(ns_flops(shape, count, 5) / ms / 1e9)}
        ns_ms = sum(v["ms"] for v in ns.values())
        print("OPT " + json.dumps({"muon_py": path, "gpu": torch.cuda.get_device_name(dev), "step_ms": round(step_ms, 2),
                                   "newton_schulz_ms": round(ns_ms, 2), "rest_ms": round(step_ms - ns_ms, 2),
                                   "newton_schulz": ns}), flush=True)
    products(shapes, dev, muon.NS_COEFFS, repeat)


def products(shapes, dev, coeffs, repeat=20):
    """Each Newton-Schulz product alone, as its iterations run it, on a bf16 stack made wide (as newton_schulz
    transposes it): A = X X^T, B = b*A + c*A A, a*X + B X."""
    a, b, c = coeffs
    res = {}
    for shape, count in shapes.items():
        m, n = min(shape), max(shape)
        X = torch.randn(count, m, n, device=dev, dtype=torch.bfloat16) / n ** 0.5
        A = X @ X.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        row = {}
        for name, fn, flops in [("X X^T", lambda: X @ X.mT, 2 * m * m * n),
                                ("b*A + c*A A", lambda: torch.baddbmm(A, A, A, beta=b, alpha=c), 2 * m ** 3),
                                ("a*X + B X", lambda: torch.baddbmm(X, B, X, beta=a), 2 * m * m * n)]:
            ms = timed_ms(fn, dev, repeat)
            row[name] = {"ms": round(ms, 3), "tflops": round(count * flops / ms / 1e9)}
        res["x".join(map(str, shape)) + f" x{count}"] = row
    print("PRODUCTS " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or [os.path.join(ROOT, "muon.py")])
