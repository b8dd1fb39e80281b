# The CPU demo's RL stage (`python sft_demo.py rl`, after `python sft_demo.py`): GRPO on the SFT demo model out_sft
# with a verifiable reward -- the review's true label (rewards.py:exact_answer) -- over the SFT demo's training reviews.
init_from = "out_sft"
out_dir = "out_rl_demo"
prompts = "data/sft_demo/rl_prompts.jsonl"
reward = "rewards.py:exact_answer"
group_size = 8
prompts_per_step = 16
max_new_tokens = 4            # a label and <|im_end|>
max_steps = 60
warmup_steps = 5
decay_steps = 20
muon_lr = 0.005
adamw_lr = 1e-4
seq_len = 256
micro_batch = 16
ckpt_interval = 60
compile = False
dtype = "float32"
device = "cpu"
