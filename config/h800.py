# The reference recipe: Qwen3-0.6B (rope_theta 1e4, 4k positions), seq 2048, Muon + AdamW, WSD, bf16, compile,
# liger when installed. Global batch 384 x 2048 = 786,432 tokens/step = micro-batch 12 x accumulation 8 x 4 GPUs;
# with 8 GPUs the accumulation becomes 4, with 1 GPU 32 -- same run either way.
out_dir = "out"
data_dir = "data/fineweb-edu-zh"
seq_len = 2048
micro_batch = 12
global_batch = 384
max_steps = 100_000
warmup_steps = 20_000
decay_steps = 60_000
muon_lr = 0.02
adamw_lr = 3e-4
beta1, beta2 = 0.9, 0.95
weight_decay = 0.01
grad_clip = 1.0
eval_interval = 1000
eval_batches = 20
ckpt_interval = 1000
dtype = "bfloat16"
compile = True
liger = True
checkpointing = "none"
