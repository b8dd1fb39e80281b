"""
The kernel A/B behind "RMSNorm, RoPE and SwiGLU are fused by torch.compile, not by liger" (dev/LOG.md): an
experiment, not part of the library, so it lives here beside benchmarks.sh.

    python bench/fusions.py [--micro_batch=12]      # one CUDA GPU, liger-kernel importable
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the repo root: model.py

micro_batch = 12


def bench_fusions(micro_batch=12, seq_len=2048, steps=10, warmup=3):
    """The A/B behind "RMSNorm, RoPE and SwiGLU are fused by torch.compile, not by liger" (dev/LOG.md): the
    full 0.6B model's forward+backward on one bf16 micro-batch, four ways -- eager (the plain definition), eager
    with liger-kernel's RMSNorm/RoPE/SwiGLU Triton kernels (how the reference stack fuses them), compiled blocks
    (our fast path), and compiled blocks calling liger's kernels. The loss goes through liger's fused linear+CE
    in all four, so only the block kernels differ. Prints time per micro-batch, tok/s, peak memory, and the loss
    and gradient difference from the eager definition on the same weights and batch."""
    import torch
    import model as M
    if not torch.cuda.is_available():
        sys.exit("bench/fusions.py needs a CUDA GPU")
    from liger_kernel.ops.rms_norm import LigerRMSNormFunction
    from liger_kernel.ops.rope import LigerRopeFunction
    from liger_kernel.ops.swiglu import LigerSiLUMulFunction
    plain = (M.RMSNorm.forward, M.MLP.forward, M.apply_rope)
    liger = (lambda self, x: LigerRMSNormFunction.apply(x, self.weight, self.eps, 0.0, "llama", False),
             lambda self, x: self.down_proj(LigerSiLUMulFunction.apply(self.gate_proj(x), self.up_proj(x))),
             LigerRopeFunction.apply)  # (q, k, cos [T, head_dim], sin) -> (q, k): the same signature as ours
    tokens = torch.randint(0, M.Qwen3Config().vocab_size, (micro_batch, seq_len + 1),
                           generator=torch.Generator().manual_seed(0)).cuda()
    x, y = tokens[:, :-1], tokens[:, 1:]
    ref_grads = None
    for name, kernels, compile in [("eager", plain, False), ("eager+liger", liger, False),
                                   ("compile", plain, True), ("compile+liger", liger, True)]:
        M.RMSNorm.forward, M.MLP.forward, M.apply_rope = kernels
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = M.Qwen3(M.Qwen3Config(), loss="liger").cuda()
        if compile:   # as train.py's apply_fast_path compiles: each block and the final norm
            for block in model.model.layers:
                block.compile()
            model.model.norm.compile()
        torch.cuda.reset_peak_memory_stats()
        times, start, end = [], torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        try:
            for i in range(warmup + steps):
                model.zero_grad(set_to_none=True)
                start.record()
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    _, loss = model(x, y)
                loss.backward()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1000)
                if i == 0:
                    first_loss = loss.item()
                    grads = torch.cat([p.grad.float().flatten() for p in model.parameters()])
                    if ref_grads is None:
                        ref_loss, ref_grads = first_loss, grads
                    grad_rel = ((grads - ref_grads).norm() / ref_grads.norm()).item()
                    del grads
                    torch.cuda.reset_peak_memory_stats()  # steady state; the 2.4 GB reference is in every row
        except Exception as e:  # a variant that cannot run is a result too
            print("FUSIONS " + json.dumps({"variant": name, "error": f"{type(e).__name__}: {str(e)[:300]}"}))
            continue
        finally:
            M.RMSNorm.forward, M.MLP.forward, M.apply_rope = plain
            del model
            torch.cuda.empty_cache()
        dt = sorted(times[warmup:])[steps // 2]
        print("FUSIONS " + json.dumps({"variant": name, "gpu": torch.cuda.get_device_name(), "micro_batch": micro_batch,
                                       "seq": seq_len, "fwd_bwd_s": round(dt, 4), "tok_per_s": round(micro_batch * seq_len / dt),
                                       "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                                       "loss_minus_eager": round(first_loss - ref_loss, 5), "grad_rel_l2_vs_eager": round(grad_rel, 5)}))


if __name__ == "__main__":
    exec(open(os.path.join(ROOT, "configurator.py")).read())
    bench_fusions(micro_batch)
