# A ~10M-parameter Qwen3 (9.7M of it the 151,936 x 64 tied embedding, so it uses the real Qwen tokenizer)
# that trains on the offline demo corpus (python prepare.py --demo) on a laptop CPU in a few minutes.
out_dir = "out"
hidden_size, intermediate_size = 64, 192
num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim = 4, 4, 2, 32
max_position_embeddings = 1024
# a 151,936-way softmax per token dominates on a CPU, so batches stay small: 512 tokens/step
seq_len = 128
micro_batch = 4
global_batch = 4
max_steps = 200
warmup_steps = 10
decay_steps = 60
muon_lr = 0.03
adamw_lr = 0.006          # small models and few steps want a larger AdamW lr for the embedding
weight_decay = 0.0
eval_interval = 100
val_tokens = 8192          # 64 windows of 128
log_interval = 10
ckpt_interval = 100
compile = False
dtype = "float32"
device = "cpu"
