"""
Peer baseline for rl.py (issue 33): TRL's GRPOTrainer (PyPI `trl`, the field's standard GRPO) on the same SFT model,
prompts, reward, group size, lengths and card. Prints one BENCH line of JSON: seconds per RL step (median of the timed
steps after the warm-up), rollout seconds per step, rollout tokens/s, mean completion length, versions, GPU. Run it in
the same device call as rl.py and compare the ratios, never numbers from different calls.

    pip install trl        # this peer only (not a project requirement; see requirements-rl.txt)
    python bench/peers/trl_grpo.py --model out_poem/hf --prompts data/poetry_raw/rl_prompts.jsonl \\
        --reward bench/poetry_rules.py:reward --group_size 8 --prompts_per_step 16 --max_new_tokens 256 \\
        --warmup 2 --steps 5                                      # add --trl_generation paged / --dtype bfloat16

Matched with rl.py: the model (a HF Qwen3 directory, loaded by transformers' own Qwen3), the prompts file read by
rl.py's read_prompts ({"prompt"} -> one user turn; {"messages"} as they are) and rendered with the model directory's
chat template with enable_thinking=False (TRL's chat_template_kwargs), the rewards loaded and scored by rl.py's own
load_rewards / score (components summed; the reward gets the line's "prompt" or "messages" and its other fields),
group size (num_generations), prompts per step x group size completions generated in ONE rollout batch and consumed by
ONE optimizer step (generation_batch_size = per_device_train_batch_size x gradient_accumulation_steps =
prompts_per_step x group_size; num_iterations 1, so no extra old-log-prob pass, as rl.py with updates_per_rollout=1),
max_new_tokens (max_completion_length), sampling (temperature 1, top_k 0, top_p 1; ends at <|im_end|> / <|endoftext|>),
advantages scaled by the group's std (scale_rewards "group", rl.py's default), the Dr. GRPO loss (token terms summed
and divided by the constant batch x max_completion_length, as rl.py's normaliser), DAPO clip-higher (epsilon 0.2,
epsilon_high 0.28), beta 0 (no KL, no reference model: rl.py's kl_coef 0), grad clip 1.0, fp32 master weights with
bf16 autocast (--dtype float32, the default; rl.py's training numerics), one GPU, no eval, no checkpoints.

Not matched (TRL's design or defaults): generation is transformers' `generate` on the training model itself (dynamic
KV cache, left-padded batch, eager per-token steps, under the autocast of the fp32 weights) -- rl.py decodes on a bf16
copy with the static cache, Triton step and CUDA graphs; the update runs on padded micro-batches of --micro_batch
completions (rl.py packs sequences into 2048-token rows); AdamW with a constant LR (rl.py: Muon + AdamW, WSD); groups
whose answers all scored alike still run forward/backward with zero advantage (rl.py skips them); prompts are drawn by
TRL's seeded RepeatSampler (rl.py's own permutation: different prompts, so the completion lengths differ -- compare
tokens/s, and read mean_completion_len beside it); TRL decodes completions with skip_special_tokens=True (rl.py drops
only <|im_end|> / <|endoftext|>); no torch.compile unless --torch_compile (rl.py compiles on CUDA); gradient
checkpointing off (TRL's default is on; --gradient_checkpointing turns it on).

TRL's generation settings (use_vllm=False; vLLM is TRL's fastest path but a separate engine, not TRL's own generation):
  --trl_generation default   model.generate with the dynamic cache (TRL's default)
  --trl_generation paged     transformers' continuous batching (use_transformers_continuous_batching: paged KV cache,
                             generate_batch); usually TRL's fastest non-vLLM setting on a GPU. NB TRL casts the model
                             to bf16 in place before it (with bf16 on), so training is then pure bf16
  --trl_generation static    cache_implementation="static"; TRL hard-sets disable_compile=True, so without compiled
                             decoding a static cache gives no speed-up (listed for completeness)
  --dtype bfloat16           the weights in bf16 (what TRL does when given a bf16 model directory's path: dtype from
                             config.json): faster generation and update, pure-bf16 AdamW

Timing: a step is the wall time between consecutive optimizer steps' ends (TrainerCallback.on_step_end, after a CUDA
sync): generation, rewards, forward/backward, optimizer step and TRL's per-step logging. The rollout is timed by
wrapping GRPOTrainer._generate_single_turn (TRL's own profiling_context neither syncs CUDA nor reports outside wandb
etc.) with CUDA syncs: the batched generation and the ids' trip to CPU lists, as rl.py's rollout() includes its
.tolist(); tokens are the completion ids it returns, each with its end token (as rl.py counts).
"""
import argparse, json, math, os, statistics, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a HF Qwen3 directory (out_poem/hf): weights, tokenizer, template")
    ap.add_argument("--prompts", required=True, help="rl.py's prompts .jsonl")
    ap.add_argument("--reward", required=True, help="rl.py's module:function[,module:function...]")
    ap.add_argument("--group_size", type=int, default=8)
    ap.add_argument("--prompts_per_step", type=int, default=16)
    ap.add_argument("--max_new_tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top_k", type=int, default=0)
    ap.add_argument("--top_p", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    ap.add_argument("--lr", type=float, default=1e-6, help="AdamW (TRL's default 1e-6)")
    ap.add_argument("--micro_batch", type=int, default=0,
                    help="completions per forward/backward (per_device_train_batch_size); 0: the largest divisor of "
                         "prompts_per_step x group_size up to 32")
    ap.add_argument("--trl_generation", choices=("default", "paged", "static"), default="default")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                    help="the weights' dtype (float32: master weights + bf16 autocast, as rl.py)")
    ap.add_argument("--torch_compile", action="store_true", help="TrainingArguments.torch_compile (the update's model)")
    ap.add_argument("--gradient_checkpointing", action="store_true")
    ap.add_argument("--seed", type=int, default=1337)
    a = ap.parse_args()

    import torch
    import transformers, trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    argv, sys.argv = sys.argv, ["rl.py"]   # rl.py parses its command line on import: give it an empty one
    try:
        import rl
    finally:
        sys.argv = argv
    rows, rewards = rl.read_prompts(a.prompts), rl.load_rewards(a.reward)
    cuda = torch.cuda.is_available()
    n = a.prompts_per_step * a.group_size
    micro = a.micro_batch or max(d for d in range(1, min(n, 32) + 1) if n % d == 0)
    if a.group_size < 2 or n % micro:
        sys.exit(f"error: group_size >= 2 and --micro_batch ({micro}) dividing prompts_per_step x group_size ({n})")

    # the prompts as TRL's conversational rows; "idx" names the line, so the reward gets what rl.py gives it. Tiled
    # so that a step's prompts_per_step distinct prompts exist (rl.py cycles a small file the same way)
    reps = max(1, math.ceil(a.prompts_per_step / len(rows)))
    data = Dataset.from_list([{"prompt": msgs, "idx": i} for _ in range(reps) for i, (_, msgs, _) in enumerate(rows)])

    def reward(prompts, completions, idx, **_):
        """TRL's reward signature -> rl.py's score() summed, per completion (conversational: the assistant's text)."""
        out = []
        for c, i in zip(completions, idx):
            text = c[-1]["content"] if isinstance(c, list) else c
            out.append(sum(rl.score(rewards, rows[i][0], text, rows[i][2]).values()))
        return out
    reward.__name__ = "rl_reward"

    dtype = getattr(torch, a.dtype)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(a.model)
    out_dir = tempfile.mkdtemp(prefix="trl_grpo_")
    cfg = GRPOConfig(
        output_dir=out_dir, report_to="none", save_strategy="no", eval_strategy="no", logging_steps=1,
        disable_tqdm=True, seed=a.seed, max_steps=a.warmup + a.steps, learning_rate=a.lr, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch_fused" if cuda else "adamw_torch",
        bf16=cuda, use_cpu=not cuda, gradient_checkpointing=a.gradient_checkpointing, torch_compile=a.torch_compile,
        per_device_train_batch_size=micro, gradient_accumulation_steps=n // micro, generation_batch_size=n,
        num_generations=a.group_size, num_iterations=1, max_completion_length=a.max_new_tokens,
        temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, beta=0.0, loss_type="dr_grpo",
        scale_rewards="group", epsilon=0.2, epsilon_high=0.28, mask_truncated_completions=False,
        chat_template_kwargs={"enable_thinking": False}, use_vllm=False, log_completions=False,
        use_transformers_continuous_batching=a.trl_generation == "paged",
        cache_implementation="static" if a.trl_generation == "static" else None,
        dataloader_num_workers=0)
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=cfg, train_dataset=data, processing_class=tok)

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    gens = []   # (global step, seconds, completion tokens, completions) per rollout
    inner = trainer._generate_single_turn

    def timed_generation(*args, **kwargs):
        sync()
        t0 = time.perf_counter()
        completion_ids, logprobs = inner(*args, **kwargs)
        sync()
        gens.append((trainer.state.global_step, time.perf_counter() - t0, sum(map(len, completion_ids)),
                     len(completion_ids)))
        return completion_ids, logprobs
    trainer._generate_single_turn = timed_generation

    ends = []

    class StepClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            sync()
            ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            sync()
            ends.append(time.perf_counter())
    trainer.add_callback(StepClock())
    trainer.train()

    steps = [t1 - t0 for t0, t1 in zip(ends, ends[1:])]
    by_step = {}
    for s, dt, ntok, ncomp in gens:   # one rollout a step; summed in case a step ever generates twice
        acc = by_step.setdefault(s, [0.0, 0, 0])
        acc[0], acc[1], acc[2] = acc[0] + dt, acc[1] + ntok, acc[2] + ncomp
    timed = [by_step[s] for s in sorted(by_step) if s >= a.warmup]
    if len(steps) != a.warmup + a.steps or len(timed) != a.steps:
        sys.exit(f"error: expected {a.warmup + a.steps} steps with one rollout each, got {len(steps)} steps and "
                 f"rollouts at steps {sorted(by_step)}")
    roll_s, roll_tok, roll_n = (sum(t[k] for t in timed) for k in range(3))
    res = {"peer": "trl-grpo", "trl_generation": a.trl_generation, "dtype": a.dtype,
           "dtype_at_end": str(next(model.parameters()).dtype).removeprefix("torch."),   # paged + bf16: cast by TRL
           "torch_compile": a.torch_compile,
           "gradient_checkpointing": a.gradient_checkpointing, "gpu": torch.cuda.get_device_name() if cuda else "cpu",
           "model": a.model, "group_size": a.group_size, "prompts_per_step": a.prompts_per_step,
           "max_new_tokens": a.max_new_tokens, "micro_batch": micro, "grad_accum": n // micro,
           "warmup": a.warmup, "steps": a.steps,
           "step_s": round(statistics.median(steps[a.warmup:]), 4),
           "rollout_s": round(statistics.median(t[0] for t in timed), 4),
           "rollout_tok_per_s": round(roll_tok / roll_s, 1),
           "mean_completion_len": round(roll_tok / roll_n, 2),
           "step_s_all": [round(s, 3) for s in steps],
           "rollout_s_all": [round(by_step[s][0], 3) for s in sorted(by_step)],
           "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
           "trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__}
    print("BENCH " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
