"""
Model FLOPs utilisation: how many of the card's dense bf16 FLOP/s go into the model's useful arithmetic.

Per-token training FLOPs, two ways:
- the seed's formula 6N(1 + s/(12h) + V/(16Lh)) (N = all unique parameters, s = sequence length): it counts the
  embedding as if it were a matmul and approximates attention, and is what the reference's "46% MFU" uses;
- the precise count: 6 FLOPs per matmul weight per token (forward 2, backward 4), the tied embedding counted once
  (as the lm_head; the lookup is free), norm gains excluded, plus attention scores and values
  12 * L * n_heads * head_dim * s (no causal discount, the usual convention).

`python mfu.py --bench [config files] [--key=value ...]` runs train.py in bench mode (random tokens, same model,
optimizer, compile and DDP setup) and prints tok/s, step time, both MFUs, peak memory and the optimizer's share.
It works under torchrun. `python mfu.py --fusions [micro_batch]` is the kernel A/B of bench_fusions below.
"""
import json
import os
import sys

# dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, by a substring of torch.cuda.get_device_name().
# Order matters: the first match wins, so PCIe/NVL variants come before the plain name.
PEAK_BF16_TFLOPS = [
    ("H100 PCIe", 756), ("H100 NVL", 835), ("H100", 989), ("H800 PCIe", 756), ("H800", 989), ("H200", 989),
    ("H20", 148), ("GH200", 989), ("B200", 2250), ("A100", 312), ("A800", 312), ("A40", 150), ("A30", 165),
    ("A10G", 70), ("A10", 125), ("L40S", 362), ("L40", 181), ("L4", 121), ("RTX 6000 Ada", 364),
    ("RTX A6000", 155), ("RTX 5090", 210), ("RTX 4090", 165), ("RTX 4080", 97), ("RTX 3090", 71), ("RTX 3080", 60),
]


def count_params(cfg):
    """Unique parameters of the model described by a Qwen3Config (596,049,920 for the default)."""
    h, L, V, d = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size, cfg.head_dim
    attn = h * d * (2 * cfg.num_attention_heads + 2 * cfg.num_key_value_heads)
    per_layer = attn + 3 * h * cfg.intermediate_size + 2 * h + 2 * d
    return V * h * (1 if cfg.tie_word_embeddings else 2) + L * per_layer + h


def flops_per_token_seed(cfg, seq_len):
    N, h, L, V = count_params(cfg), cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    return 6 * N * (1 + seq_len / (12 * h) + V / (16 * L * h))


def flops_per_token_precise(cfg, seq_len):
    h, L, d = cfg.hidden_size, cfg.num_hidden_layers, cfg.head_dim
    norm_gains = L * (2 * h + 2 * d) + h
    matmul_params = count_params(cfg) - norm_gains   # tied: the embedding counted once, as the lm_head
    return 6 * matmul_params + 12 * L * cfg.num_attention_heads * d * seq_len


def peak_tflops(device_name, override=None):
    """(peak, source). override (TFLOP/s) wins; an unknown GPU returns (None, reason) instead of guessing."""
    if override:
        return float(override), "override"
    for key, tf in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return float(tf), key
    return None, f"unknown device {device_name!r}: pass --peak_tflops_override=TFLOPS to get MFU"


def bench_fusions(micro_batch=12, seq_len=2048, steps=10, warmup=3):
    """The A/B behind "RMSNorm, RoPE and SwiGLU are fused by torch.compile, not by liger" (BENCHMARKS.md): the
    full 0.6B model's forward+backward on one bf16 micro-batch, four ways -- eager (the plain definition), eager
    with liger-kernel's RMSNorm/RoPE/SwiGLU Triton kernels (how the reference stack fuses them), compiled blocks
    (our fast path), and compiled blocks calling liger's kernels. The loss goes through liger's fused linear+CE
    in all four, so only the block kernels differ. Prints time per micro-batch, tok/s, peak memory, and the loss
    and gradient difference from the eager definition on the same weights and batch."""
    import torch
    import model as M
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
        model = M.Qwen3(M.Qwen3Config()).cuda().fast_path(compile=compile, loss="liger")
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
    if "--fusions" in sys.argv:  # python mfu.py --fusions [micro_batch]
        rest = [a for a in sys.argv[1:] if a != "--fusions"]
        bench_fusions(int(rest[0]) if rest else 12)
        sys.exit(0)
    if "--bench" not in sys.argv:
        from model import Qwen3Config
        cfg = Qwen3Config()
        print(f"Qwen3-0.6B: {count_params(cfg):,} params; per token at s=2048: seed "
              f"{flops_per_token_seed(cfg, 2048) / 1e9:.3f} GFLOP, precise {flops_per_token_precise(cfg, 2048) / 1e9:.3f} GFLOP")
        print("usage: python mfu.py --bench [config files] [--key=value ...]   (also under torchrun)")
        sys.exit(0)
    import runpy
    sys.argv = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")] + \
               [a for a in sys.argv[1:] if a != "--bench"] + ["--bench=True"]
    runpy.run_path(sys.argv[0], run_name="__main__")
