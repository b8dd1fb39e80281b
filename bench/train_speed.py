"""
Training speed: train.py's own main() for a few steps with random tokens (evaluation, checkpoints and export off, a
temporary out_dir); prints one BENCH line of JSON with tok/s, step time, both MFUs (mfu.py), peak memory and the
optimizer's share. The arguments are train.py's (config files and --key=value); it works under torchrun.

    python bench/train_speed.py config/reference.py --global_batch=96                          # one GPU
    torchrun --nproc_per_node=8 bench/train_speed.py config/reference.py --global_batch=768    # DDP
"""
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: train.py

from mfu import flops_per_token_6n, flops_per_token_matmul, peak_tflops  # noqa: E402


def bench(argv, warmup=3, steps=10):
    """Median step of `steps` timed steps after `warmup`, through train.main() with random tokens."""
    import torch
    out = tempfile.mkdtemp(prefix="train_speed_")
    sys.argv = ["train.py"] + argv + [f"--out_dir={out}", "--init_from=scratch", "--eval_interval=0", "--ckpt_interval=0",
                                      "--export_at_end=False", "--wandb_log=False", f"--max_steps={warmup + steps}"]
    import train
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    dev = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if train.device.startswith("cuda") else train.device
    gen = torch.Generator().manual_seed(train.seed + rank)
    fixed = torch.randint(0, train.vocab_size, (train.micro_batch, train.seq_len + 1), generator=gen).to(dev)
    history = train.main(get_batch=lambda step, micro: (fixed[:, :-1], fixed[:, 1:]))
    if rank:
        return
    timed = history[warmup:]
    median = lambda xs: sorted(xs)[len(xs) // 2]
    dt = median([r["step_ms"] for r in timed]) / 1000
    cuda = dev.startswith("cuda")
    tok_s = train.global_batch * train.seq_len / dt
    cfg = train.model_config()
    peak, _ = peak_tflops(torch.cuda.get_device_name(dev) if cuda else "cpu", train.peak_tflops_override)
    res = {"gpu": torch.cuda.get_device_name(dev) if cuda else "cpu", "world": world, "micro_batch": train.micro_batch,
           "grad_accum": train.global_batch // (train.micro_batch * world), "seq": train.seq_len,
           "compile": train.compile, "liger": cuda and train.use_cuda_kernels(cuda), "checkpointing": train.checkpointing,
           "sdpa": train.sdpa_backend, "step_s": round(dt, 4), "tok_per_s": round(tok_s), "tok_per_s_per_gpu": round(tok_s / world),
           "mfu_6n": round(tok_s / world * flops_per_token_6n(cfg, train.seq_len) / (peak * 1e12), 4) if peak else None,
           "mfu_matmul": round(tok_s / world * flops_per_token_matmul(cfg, train.seq_len) / (peak * 1e12), 4) if peak else None,
           "peak_mem_gib": round(torch.cuda.max_memory_allocated(dev) / 2**30, 2) if cuda else None,
           "optimizer_share": round(median([r["optimizer_ms"] for r in timed]) / 1000 / dt, 4),
           "loss": round(timed[-1]["loss"], 4)}
    print("BENCH " + json.dumps(res))


if __name__ == "__main__":
    bench(sys.argv[1:])
