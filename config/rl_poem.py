# The poem model's RL stage (README: "A model that writes poems"): GRPO on the SFT model out_poem against
# bench/poetry_rules.py's reward (form, Pingshui rhyme and tones; penalties for copied / repeated lines and stray text),
# prompts from the training titles (bench/poetry.py build's rl_prompts.jsonl; the held-out titles are never seen).
init_from = "out_poem"
out_dir = "out_poem_rl"
prompts = "data/poetry_raw/rl_prompts.jsonl"
reward = "bench/poetry_rules.py:reward"
group_size = 8
prompts_per_step = 32
max_new_tokens = 256
temperature = 1.0
max_steps = 320        # LOG 26: at 200 the rules-kept share was still rising; LOG 29: 350 steps took 14 min 23 s of the
                       # stage's 15, and variety and shape leave fewer groups skipped (more tokens to update a step)
warmup_steps = 10
decay_steps = 100
muon_lr = 0.002
adamw_lr = 2e-5
kl_coef = 0.06      # GRPO's beta (DeepSeekMath): holds the poems near the SFT model's language (fluency: LOG 24 +9.9% without,
                    # LOG 29 +10.1% at turn 2 with 0.04 over 350 steps)
micro_batch = 8
ckpt_interval = 100    # a save every ~3.5 min of RL: the stage must fit in 15 min (LOG 29: 14 min 23 s, 37 s to spare)
