# The reference recipe is train.py's defaults (Qwen3-0.6B, seq 2048, global batch 384 x 2048 tokens, Muon 0.02 +
# AdamW 3e-4, WSD 20k warmup / 60k decay over 100k steps, bf16, compile, liger): this file only names the data.
# Micro-batch 12 fits an 80 GB card; the accumulation follows from the GPU count (8 GPUs: 4, 4 GPUs: 8, 1 GPU: 32).
data_dir = "data/fineweb-edu-zh"
