"""
Model FLOPs utilisation: how many of the card's dense bf16 FLOP/s go into the model's useful arithmetic.

Per-token training FLOPs, two ways:
- `flops_per_token_6n`: the reference project's formula 6N(1 + s/(12h) + V/(16Lh)) (N = all unique parameters,
  s = sequence length): it counts the embedding as if it were a matmul and approximates attention, and is what
  the reference's "46% MFU" uses (and what train.py logs);
- `flops_per_token_matmul`: 6 FLOPs per matmul weight per token (forward 2, backward 4), the tied embedding
  counted once (as the lm_head; the lookup is free), norm gains excluded, plus attention scores and values
  12 * L * n_heads * head_dim * s (no causal discount, the usual convention).

`python mfu.py` prints both for Qwen3-0.6B; bench/train_speed.py measures the training speed and reports both MFUs.
"""

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


def flops_per_token_6n(cfg, seq_len):
    """The reference project's formula 6N(1 + s/(12h) + V/(16Lh)), what its "46% MFU" uses."""
    N, h, L, V = count_params(cfg), cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    return 6 * N * (1 + seq_len / (12 * h) + V / (16 * L * h))


def describe_run(cfg, global_batch, seq_len, max_steps, world, dev):
    """train.py's first line: the model, the tokens per step and, on a CPU, a warning when a step will take minutes
    or hours (the reference recipe there, not the demo). The guess is FLOPs at ~100 GFLOP/s: right in order of
    magnitude for the 0.6B model, 3x off either way for small ones (Python overhead; LOG 28), which the step lines
    time anyway -- so it is said only when it matters."""
    tokens = global_batch * seq_len
    line = (f"training a {count_params(cfg) / 1e6:,.0f}M-parameter Qwen3 ({cfg.num_hidden_layers} layers x "
            f"{cfg.hidden_size}) on {world} x {dev}: {global_batch} x {seq_len} = {tokens:,} tokens a step, "
            f"{max_steps:,} steps")
    seconds = flops_per_token_matmul(cfg, seq_len) * tokens / 1e11   # a CPU does ~100 GFLOP/s at best
    if dev.startswith("cuda") or seconds < 60:
        return line
    took = f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:,.1f} h"
    return line + f"; on a CPU about {took} a step" + (
        " -- for the CPU demo run `python train.py config/tiny.py`" if seconds > 360 else "")


def flops_per_token_matmul(cfg, seq_len):
    """6 FLOPs per matmul weight per token (tied embedding once, as the lm_head) + attention 12*L*heads*head_dim*s."""
    h, L, d = cfg.hidden_size, cfg.num_hidden_layers, cfg.head_dim
    norm_gains = L * (2 * h + 2 * d) + h
    # tied: the embedding counted once, as the lm_head; untied: the input embedding is a lookup, no FLOPs
    matmul_params = count_params(cfg) - norm_gains - (0 if cfg.tie_word_embeddings else cfg.vocab_size * h)
    return 6 * matmul_params + 12 * L * cfg.num_attention_heads * d * seq_len


def peak_tflops(device_name, override=None):
    """(peak, source). override (TFLOP/s) wins; an unknown GPU returns (None, reason) instead of guessing."""
    if override:
        return float(override), "override"
    for key, tf in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return float(tf), key
    return None, f"unknown device {device_name!r}: pass --peak_tflops_override=TFLOPS to get MFU"


if __name__ == "__main__":
    from model import Qwen3Config
    cfg = Qwen3Config()
    print(f"Qwen3-0.6B: {count_params(cfg):,} params; per token at s=2048: 6N formula "
          f"{flops_per_token_6n(cfg, 2048) / 1e9:.3f} GFLOP, matmul count {flops_per_token_matmul(cfg, 2048) / 1e9:.3f} GFLOP")
    print("the training speed benchmark (tok/s, step time, both MFUs): python bench/train_speed.py [config files] [--key=value ...]")
