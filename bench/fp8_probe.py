"""
Exploration (issue 15, FP8): what do rowwise-scaled FP8 matmuls (torch._scaled_mm, e4m3, written here in a few
lines) buy at this model's shapes? One micro-step's tokens (12 x 2048) through each block projection, in the three
GEMMs of training: forward (x W^T), input gradient (dY W), weight gradient (dY^T x). For each: bf16 time, FP8 time
of the matmul alone, and FP8 including the quantisation of both operands (compiled: amax + scale + cast in one
kernel per operand). Prints JSON lines.  python bench/fp8_probe.py
"""
import json
import torch

M = 12 * 2048
SHAPES = [("q/k/v (fused)", 1024, 4096), ("o_proj", 2048, 1024), ("gate/up (fused)", 1024, 6144), ("down_proj", 3072, 1024)]


def timed(fn, n=20):
    for _ in range(3):
        fn()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(n):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / n / 1000


@torch.compile
def quant_rows(t):
    """Rowwise e4m3: each row scaled so that its largest |value| maps to 448. Returns (fp8, 1 / scale)."""
    amax = t.abs().amax(-1, keepdim=True).float().clamp(min=1e-12)
    scale = 448.0 / amax
    return (t.float() * scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn), 1.0 / scale


def fp8_mm(a, b_t):
    """a [m, k] @ b_t.T ([n, k] given row-major) with rowwise scales on both; bf16 out."""
    qa, sa = quant_rows(a)
    qb, sb = quant_rows(b_t)
    return torch._scaled_mm(qa, qb.t(), scale_a=sa, scale_b=sb.t(), out_dtype=torch.bfloat16)


def main():
    torch.manual_seed(0)
    tot = {"bf16": 0.0, "fp8_mm": 0.0, "fp8_with_quant": 0.0}
    for name, K, N in SHAPES:
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
        dy = torch.randn(M, N, device="cuda", dtype=torch.bfloat16)
        # (label, a [m, k], b_t [n, k]) so that the GEMM is a @ b_t.T
        gemms = [("fwd", x, w), ("dgrad", dy, w.t().contiguous()), ("wgrad", dy.t().contiguous(), x.t().contiguous())]
        for label, a, b_t in gemms:
            flops = 2 * a.shape[0] * a.shape[1] * b_t.shape[0]
            t_bf = timed(lambda: a @ b_t.t())
            qa, sa = quant_rows(a)
            qb, sb = quant_rows(b_t)
            t_mm = timed(lambda: torch._scaled_mm(qa, qb.t(), scale_a=sa, scale_b=sb.t(), out_dtype=torch.bfloat16))
            t_q = timed(lambda: fp8_mm(a, b_t))
            err = ((fp8_mm(a, b_t).float() - (a @ b_t.t()).float()).norm() / (a @ b_t.t()).float().norm()).item()
            for k, v in (("bf16", t_bf), ("fp8_mm", t_mm), ("fp8_with_quant", t_q)):
                tot[k] += v
            print(json.dumps({"gemm": f"{name} {label}", "m_k_n": [a.shape[0], a.shape[1], b_t.shape[0]],
                              "bf16_us": round(t_bf * 1e6, 1), "bf16_tflops": round(flops / t_bf / 1e12),
                              "fp8_mm_us": round(t_mm * 1e6, 1), "fp8_with_quant_us": round(t_q * 1e6, 1),
                              "speedup_mm": round(t_bf / t_mm, 2), "speedup_with_quant": round(t_bf / t_q, 2),
                              "rel_err": round(err, 4)}), flush=True)
    print(json.dumps({"per_layer_ms": {k: round(v * 1e3, 3) for k, v in tot.items()},
                      "x28_layers_ms": {k: round(28 * v * 1e3, 1) for k, v in tot.items()},
                      "device": torch.cuda.get_device_name(), "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
