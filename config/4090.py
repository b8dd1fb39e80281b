# 8 x RTX 4090 (24 GB each): the reference recipe's model and global batch (384 x 2048 tokens). Micro-batch 6 with
# selective activation checkpointing (keeps matmul/attention outputs, recomputes elementwise ops) peaks at
# 18.8 GiB (measured with config/3090.py's identical per-GPU setup, BENCHMARKS.md); accumulation 8 at 8 GPUs.
exec(open("config/h800.py").read())
micro_batch = 6
checkpointing = "selective"
