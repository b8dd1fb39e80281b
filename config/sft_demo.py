# Instruction tuning (SFT) of the demo base model (python train.py config/tiny.py -> out/) on review sentiment,
# run by `python sft_demo.py`, which prepares data/sft_demo first. The model shape comes from the
# weights; a few hundred steps of ~3 packed conversations per row take a few minutes on a laptop CPU.
init_from = "out"
out_dir = "out_sft"
sft_data = "data/sft_demo"
seq_len = 256
micro_batch = 8
global_batch = 8
max_steps = 300
warmup_steps = 20
decay_steps = 100
muon_lr = 0.01
adamw_lr = 0.003
weight_decay = 0.0
eval_interval = 100
log_interval = 20
ckpt_interval = 300
compile = False
dtype = "float32"
device = "cpu"
