"""
Reinforcement learning with verifiable rewards (GRPO, DeepSeek-R1's recipe): the model answers each prompt
`group_size` times, a program scores every answer, and the policy gradient pushes up the answers that scored above
their group's mean and down those below -- no value network, no learned reward.

    python rl.py --init_from=out_sft --prompts=prompts.jsonl --reward=rewards.py:concise --out_dir=out_rl
    python rl.py --init_from=out_poem --prompts=data/poetry_raw/rl_prompts.jsonl \\
        --reward=bench/poetry_rules.py:reward --out_dir=out_poem_rl          # the poem recipe (README)
    python rl.py --out_dir=out_rl --init_from=resume                           # resume exactly after a kill

prompts: a .jsonl file, one prompt a line: {"prompt": "..."} (one user turn) or {"messages": [...]} (a chat that
ends with a user turn); any other fields of the line go to the reward as keyword arguments (an "answer" to check).
reward: `module:function` (a module name or a .py path), several joined by commas; each is a plain function
`reward(prompt, completion, **fields) -> float` or a dict of named float parts (summed), prompt the line's "prompt"
or "messages", completion the model's text (rewards.py shows how); one that names a parameter `group_completions`
also gets the texts of the prompt's whole group, itself included, to compare answers (the poem reward's variety).

One step: `prompts_per_step` prompts (chosen by the step number alone, so a resume repeats the step) are rolled out
`group_size` times each through generate.Decoder -- one batch on the static KV cache and the Triton step (CUDA
graphs) of a bf16 copy of the policy, refreshed in place after every update. Advantages: the rewards minus their
group's mean (/ the group's std with scale_rewards); groups whose answers all scored alike are skipped. The update
packs a prompt once with its answers after it (pack: model.py's branches); the loss is PPO's clipped surrogate per
token (DAPO's asymmetric clip), summed over tokens and divided by a constant (sequences x max_new_tokens, Dr. GRPO's:
a short answer's tokens weigh no more), plus kl_coef x the k3 estimate of KL to the starting model. The rest is
train.py's: model/optimizer, WSD, checkpoints, DDP, log, export.
"""
import importlib, importlib.util, inspect, json, math, os, random, signal, sys, time
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from checkpoint import load_model
from generate import Decoder, default_step   # (never the compiled step: it freezes the weights in)
from muon import wsd_lr_factor
from tokenizer import EOT, IM_END, get_tokenizer, render_chat

# ------------------------------------------------------------------------------------------------ settings
out_dir = "out_rl"
init_from = "out_sft"         # the model to improve: an out_dir, a checkpoint, a HF Qwen3 directory | resume
overwrite, allow_config_change = False, False   # as train.py's
prompts = ""                  # .jsonl: {"prompt": ...} or {"messages": [...]} a line, plus the reward's fields
reward = "rewards.py:concise"  # module:function[,module:function...]
chat_template = "qwen3"       # the template the model was tuned with
enable_thinking = False       # Qwen3's switch: False closes an empty think block in the generation prompt
group_size = 8                # answers per prompt
prompts_per_step = 16         # prompts per step (over all processes)
max_new_tokens = 256
temperature, top_k, top_p = 1.0, 0, 1.0   # rollout sampling; the loss scores tokens at the same temperature
scale_rewards = True          # divide the advantages by the group's std (GRPO, DAPO); False: Dr. GRPO's plain difference
clip_low, clip_high = 0.2, 0.28  # the ratio's clip range 1 - clip_low .. 1 + clip_high (DAPO's clip-higher)
kl_coef = 0.0                 # > 0: penalise KL to the starting model (a frozen copy is kept)
reference = ""                # the model KL is taken to: "" = the one init_from names (recorded for a resume)
updates_per_rollout = 1       # optimizer steps per rollout batch (> 1: the clip matters, old log-probs are kept)
max_steps, warmup_steps, decay_steps, min_lr_frac = 200, 10, 50, 0.0
muon_lr = 0.002               # hidden 2-D matrices
muon_lr_rule, muon_momentum = "original", 0.95
adamw_lr = 3e-6               # embedding and norm gains
beta1, beta2 = 0.9, 0.95
weight_decay, grad_clip = 0.0, 1.0
seq_len = 0                   # the update packs the answers into rows of this many tokens; 0: the model's context <= 2048
micro_batch, checkpointing = 8, "none"   # rows per forward/backward; activations: none | block | selective (less memory)
log_interval, log_seconds, ckpt_interval, keep_ckpts = 1, 30.0, 50, 3
export_at_end, export_dtype = True, "bfloat16"
wandb_log, wandb_project, wandb_run_name = False, "qwen3-rl", "rl"
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = "bfloat16" if torch.cuda.is_available() else "float32"
compile = torch.cuda.is_available()
seed = 1337
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configurator.py")).read())
config = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))}
# what fixes the prompts of a step and the model: a resume that changes them is another run
SAME_RUN_KEYS = ("prompts", "reward", "group_size", "prompts_per_step", "max_new_tokens", "temperature", "top_k",
                 "top_p", "seed", "chat_template", "enable_thinking")
STATS = ("loss", "clip_frac", "kl", "entropy", "tokens", "grad_norm")   # an update's sums, for the log


# ------------------------------------------------------------------------------------------------ rewards
def load_rewards(spec):
    """'module:function[,...]' -> [(name, function, takes group_completions)]: a module importable here, or a .py."""
    fns = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        mod_name, _, fn_name = item.rpartition(":")
        if not mod_name or not fn_name:
            sys.exit(f"error: --reward={item!r}: expected module:function (e.g. rewards.py:concise)")
        try:
            if mod_name.endswith(".py"):   # as given, else in this checkout (config/rl_poem.py's, from any cwd)
                here = os.path.join(os.path.dirname(os.path.abspath(__file__)), mod_name)
                path = here if not os.path.exists(mod_name) and os.path.exists(here) else mod_name
                spec_ = importlib.util.spec_from_file_location(os.path.basename(mod_name)[:-3], os.path.abspath(path))
                module = importlib.util.module_from_spec(spec_)
                spec_.loader.exec_module(module)
            else:
                module = importlib.import_module(mod_name)
        except (ImportError, OSError) as e:
            sys.exit(f"error: --reward={item!r}: cannot load {mod_name} ({e})")
        if not callable(fn := getattr(module, fn_name, None)):
            sys.exit(f"error: --reward={item!r}: {mod_name} has no function {fn_name}")
        if fn_name in (f[0] for f in fns):   # the parts are summed by name: a second one would replace the first
            sys.exit(f"error: --reward={spec!r} names the function {fn_name} twice: give one of them another name")
        fns.append((fn_name, fn, "group_completions" in inspect.signature(fn).parameters))
    if not fns:
        sys.exit("error: --reward is empty: name at least one module:function")
    return fns


def score(rewards, prompt, completion, fields, group=()):
    """{component: value} for one completion: each function's float under its name, or its dict's entries. A reward
    that raises or gives a non-finite or non-number value stops the run with one line naming it."""
    out = {}
    for name, fn, asks in rewards:
        try:
            value = fn(prompt, completion, **fields, **({"group_completions": list(group)} if asks else {}))
        except Exception as e:
            sys.exit(f"error: reward {name} raised {type(e).__name__}: {e} (on the completion {completion[:80]!r})")
        for key, v in (value.items() if isinstance(value, dict) else [(name, value)]):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                sys.exit(f"error: reward {name} returned {key}={v!r} (on the completion {completion[:80]!r}): "
                         "a reward must be a finite number, or a dict of them")
            out[key] = float(v)
    return out


# ------------------------------------------------------------------------------------------------ the loss
def group_advantages(rewards, group_size, scale=True):
    """rewards [n_groups * group_size] (groups consecutive) -> (advantages, mask of the groups that differ).
    A = r - mean(group), / (std(group) + 1e-4) with scale (TRL's and DAPO's normalisation; unbiased std)."""
    r = rewards.view(-1, group_size)
    adv = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4 if scale else 1)
    return adv.reshape(-1), (r.max(1).values > r.min(1).values)


def policy_loss(logp, old_logp, adv, normalizer, clip_low=0.2, clip_high=0.28, ref_logp=None, kl_coef=0.0):
    """The clipped surrogate over tokens: -min(ratio A, clip(ratio, 1-clip_low, 1+clip_high) A), summed and divided
    by `normalizer` (a constant: no length bias), plus kl_coef x the k3 estimate exp(ref-logp) - (ref-logp) - 1 of
    KL(policy || reference). All per token [N]; returns (loss, stats of the batch)."""
    ratio = torch.exp(logp - old_logp)
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high)
    surrogate = torch.minimum(ratio * adv, clipped * adv)
    loss = -surrogate.sum() / normalizer
    stats = {"clip_frac": (clipped * adv < ratio * adv).float().sum().item()}   # the clipped side won: no gradient
    if ref_logp is not None:
        kl = torch.exp(ref_logp - logp) - (ref_logp - logp) - 1
        stats["kl"] = kl.detach().sum().item()
        loss = loss + kl_coef * kl.sum() / normalizer
    return loss, stats


# ------------------------------------------------------------------------------------------------ data
def read_prompts(path):
    """[(prompt, messages, fields)] from the prompts .jsonl; a bad line stops with one line naming it."""
    if not path or not os.path.isfile(path):
        sys.exit(f"error: --prompts={path!r}: " + ("no such file" if path else "required") + " (a .jsonl of {\"prompt\": ...} lines)")
    rows = []
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                sys.exit(f"error: {path}:{n}: not a JSON line")
            p = row.pop("prompt", None) if isinstance(row, dict) else None
            msgs = row.pop("messages", None) if isinstance(row, dict) else None
            if isinstance(p, str) and p.strip():
                msgs = [{"role": "user", "content": p}]
            elif not (isinstance(msgs, list) and msgs and all(isinstance(m, dict) for m in msgs)
                      and msgs[-1].get("role") == "user"):
                sys.exit(f"error: {path}:{n}: needs \"prompt\" (a string) or \"messages\" (a list ending in a user turn)")
            rows.append((p if p is not None else msgs, msgs, row))
    return rows or sys.exit(f"error: {path} holds no prompt")


def step_prompts(n_prompts, step, per_step, seed):
    """The prompt indices of `step`: consecutive slices of a seeded permutation, a new permutation each epoch. A
    function of the step alone, so a resumed run (on any number of GPUs) continues with the same prompts."""
    orders, out = {}, []   # a step spans at most a few epochs: each permutation is shuffled once, not once a prompt
    for i in range(step * per_step, (step + 1) * per_step):
        epoch, j = divmod(i, n_prompts)
        if epoch not in orders:
            orders[epoch] = list(range(n_prompts))
            random.Random(seed * 100_003 + epoch).shuffle(orders[epoch])
        out.append(orders[epoch][j])
    return out


def pack(answers, row_len, pad):
    """[(prompt ids, answer ids)] -> (x, y, doc_ids, branch_ids, owner) rows of row_len tokens. Consecutive answers to
    one prompt share it: the prompt is written once a row (all but its last token: model.py's prefix) and each answer
    follows as a branch (the prompt's last token, then the answer's tokens but the last) that sees the prompt and
    itself only -- each scores as prompt + answer alone, and a group's prompt costs once, not once an answer. y is
    -100 except on answer tokens; owner: the answer of each kept target, row-major. A group that fills a row goes
    on in the next, its prompt written again there."""
    rows, used = [], 0
    for n, (prompt, a) in enumerate(answers):
        if len(prompt) - 1 + len(a) > row_len:
            sys.exit(f"error: a prompt + completion of {len(prompt) + len(a)} tokens does not fit --seq_len={row_len}")
        here = bool(rows) and rows[-1][-1][0] == prompt   # the prompt is in the last row
        if not rows or used + len(a) + (0 if here else len(prompt) - 1) > row_len:
            rows, used, here = rows + [[]], 0, False
        if not here:
            rows[-1].append((prompt, []))
            used += len(prompt) - 1
        rows[-1][-1][1].append((n, a))
        used += len(a)
    x, y = torch.full((len(rows), row_len), pad), torch.full((len(rows), row_len), -100)
    doc, branch, owner = torch.zeros_like(y), torch.zeros_like(y), []
    for r, row in enumerate(rows):
        at = 0
        for d, (prompt, group) in enumerate(row):
            for k, (i, a) in enumerate([(None, [])] + group):   # k = 0: the prompt but its last token (no targets)
                seg = prompt[:-1] if k == 0 else prompt[-1:] + a[:-1]
                span, at = slice(at, at + len(seg)), at + len(seg)
                x[r, span], doc[r, span], branch[r, span] = torch.tensor(seg, dtype=torch.long), d, k
                y[r, span] = torch.tensor(a, dtype=torch.long) if k else -100
                owner += [i] * len(a)
        doc[r, at:] = len(row)   # the padding is a document of its own
    return x, y, doc, branch, torch.tensor(owner, dtype=torch.long)


# ------------------------------------------------------------------------------------------------ rollouts
def rollout(decoder, prompt_ids, gen, enc):
    """Every prompt (token lists) answered group_size times, as one batch on the Decoder (right-padded prompts, each
    prefilled once for its group), sampling until <|im_end|> / <|endoftext|> or max_new_tokens. -> (completion ids,
    each with its end token if it has one; completion texts; whether each was cut off), group after group."""
    dev = decoder.tok.device
    longest = max(map(len, prompt_ids))
    x = torch.tensor([p + [EOT] * (longest - len(p)) for p in prompt_ids], device=dev)
    decoder.reset()
    out = decoder.generate(x, max_new_tokens, temperature, top_k or None, top_p, eos=[IM_END, EOT], generator=gen,
                           lengths=[len(p) for p in prompt_ids], repeat=group_size)[:, longest:].tolist()
    ends = [next((j for j, t in enumerate(row) if t in (IM_END, EOT)), None) for row in out]
    completions = [row if e is None else row[:e + 1] for row, e in zip(out, ends)]
    texts = [enc.decode([t for t in c if t < enc.n_vocab and t not in (IM_END, EOT)]) for c in completions]
    return completions, texts, [e is None for e in ends]


def sync_rollout_model(rollout_model, model, decoder):
    """The policy's new weights into the rollout copy (bf16 on CUDA), in place: the decoder's graphs stay valid."""
    with torch.no_grad():
        for a, b in zip(rollout_model.parameters(), model.parameters()):
            a.copy_(b)
    decoder.refresh_weights()


# ------------------------------------------------------------------------------------------------ the update
def token_logprobs(h, weight, targets, temperature=1.0, chunk_rows=None):
    """log p(target) of each row of h [N, hidden] under softmax(h @ weight.T / temperature), and that distribution's
    entropy (only logged), in chunks under activation checkpointing: [N, vocab] logits never exist at once. One chunk
    at least: a DDP rank's micro-batch of padding rows has no target, and its empty loss must reach every weight."""
    chunk_rows = chunk_rows or max(64, (1 << 27) // weight.shape[0])

    def chunk_terms(h_c, t_c):
        logits = F.linear(h_c, weight).float() / temperature
        norm = logits.logsumexp(-1)
        with torch.no_grad():
            entropy = norm - (logits.softmax(-1) * logits).sum(-1)
        return logits.gather(1, t_c[:, None])[:, 0] - norm, entropy

    parts = [checkpoint(chunk_terms, h[i:i + chunk_rows], targets[i:i + chunk_rows], use_reentrant=False)
             if h.requires_grad else chunk_terms(h[i:i + chunk_rows], targets[i:i + chunk_rows])
             for i in range(0, max(1, h.shape[0]), chunk_rows)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def per_token_terms(model, batch, dev, autocast, grad):
    """(log-probs, entropies) of a packed micro-batch's completion tokens (model: the Qwen3, or its DDP wrapper)."""
    x, y, doc, branch = (t.to(dev) for t in batch)
    with (nullcontext() if grad else torch.no_grad()), autocast:
        h = model(x, y, doc, hidden_only=True, branch_ids=branch)[1]
        return token_logprobs(h, getattr(model, "module", model).lm_head_weight, y[y != -100], temperature)


def micro_batches(packed, n_micro):
    """The packed rows (x, y, doc, branch) in n_micro micro-batches (DDP: alike on every rank), padded with no targets."""
    need, fills = n_micro * micro_batch - len(packed[0]), (EOT, -100, 0, 0)   # a padding row's x, y, doc, branch
    padded = [torch.cat([t, t.new_full((need, t.shape[1]), fill)]) for t, fill in zip(packed, fills)]
    return [tuple(t[i:i + micro_batch] for t in padded) for i in range(0, n_micro * micro_batch, micro_batch)]


def update(T, model, train_model, optimizer, ref_model, parts, ddp, dev, autocast, normalizer, master, step):
    """updates_per_rollout optimizer steps, one per part [(micro-batches, per-token advantages)]. Returns stats."""
    stats = dict.fromkeys(STATS, 0.0)
    old = None
    if len(parts) > 1:   # the policy before any of this rollout's updates: what the ratios are taken against
        old = [[per_token_terms(model, mb, dev, autocast, False)[0] for mb in mbs] for mbs, _ in parts]
    for p, (mbs, adv) in enumerate(parts):
        at = 0
        for m, mb in enumerate(mbs):
            sync = not ddp or m == len(mbs) - 1
            with nullcontext() if sync else train_model.no_sync():
                logp, entropy = per_token_terms(train_model, mb, dev, autocast, True)
                ref = per_token_terms(ref_model, mb, dev, autocast, False)[0] if ref_model is not None else None
                a, at = adv[at:at + len(logp)].to(dev), at + len(logp)
                loss, s = policy_loss(logp, logp.detach() if old is None else old[p][m], a, normalizer / len(parts),
                                      clip_low, clip_high, ref, kl_coef)
                loss.backward()
            for k, v in (("loss", loss.item()), ("clip_frac", s["clip_frac"]), ("kl", s.get("kl", 0.0)),
                         ("entropy", entropy.sum().item()), ("tokens", len(logp))):
                stats[k] += v
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf")).item()
        if not math.isfinite(grad_norm):
            T.stop_non_finite(f"gradient norm is {grad_norm} at step {step + 1}; stopped without an optimizer step", master)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stats["grad_norm"] += grad_norm / len(parts)
    if ddp:   # the log's sums over every rank's answers (the loss: their mean; the gradient norm is every rank's)
        sums = torch.tensor([stats[k] for k in STATS[:-1]], device=dev, dtype=torch.float64)
        dist.all_reduce(sums)
        stats.update(zip(STATS[:-1], sums.tolist()), loss=sums[0].item() / dist.get_world_size())
    return stats


# ------------------------------------------------------------------------------------------------ main
def use_train_py():
    """train.py imported with this run's settings: its functions (processes, model + optimizer, checkpoints, log,
    export) read train.py's module globals, so they are pointed at ours."""
    argv, sys.argv = sys.argv, sys.argv[:1]   # train.py parses its command line on import: an empty one
    import train as T
    sys.argv = argv
    for k, v in config.items():
        if k in vars(T):
            setattr(T, k, v)
    T.config, T.SAME_RUN_KEYS = config, SAME_RUN_KEYS + T.MODEL_KEYS   # recorded in checkpoints, compared on resume
    return T


def resumed_reference(T):
    """The model a resumed run started from, which its checkpoints record: the KL term's reference."""
    try:   # a missing or damaged checkpoint: build_model says so
        return torch.load(os.path.join(T.list_checkpoints(out_dir)[-1], "state.pt"), weights_only=True,
                          mmap=True)["train_config"]["reference"]
    except Exception:
        return ""


def main():
    T = use_train_py()
    signal.signal(signal.SIGTERM, T.stop_now), signal.signal(signal.SIGINT, T.stop_now)   # as train.py: nothing to save yet
    rank, local_rank, world, dev = T.setup_processes()
    ddp, master, cuda = world > 1 or "RANK" in os.environ, rank == 0, dev.startswith("cuda")
    check_ranges(globals(), {"group_size": 2, **dict.fromkeys(("max_new_tokens", "prompts_per_step", "updates_per_rollout",
                 "micro_batch", "max_steps", "log_interval", "keep_ckpts"), 1), **dict.fromkeys(("kl_coef", "seq_len",
                 "warmup_steps", "decay_steps", "ckpt_interval", "grad_clip", "top_k", "clip_low", "clip_high",
                 "muon_lr", "adamw_lr", "weight_decay"), 0)}, unit=("top_p", "min_lr_frac"))   # configurator.py's
    check_choices(globals(), {"checkpointing": ("none", "block", "selective")})   # train.py's, applied by its build_model
    if not temperature > 0 or prompts_per_step % world:
        sys.exit(f"error: --temperature must be > 0 (got {temperature}) and --prompts_per_step a multiple of the "
                 f"{world} process(es) (got {prompts_per_step})")
    rows, rewards, enc = read_prompts(prompts), load_rewards(reward), get_tokenizer()
    if master:
        T.make_writable_dir(out_dir)
    lock = T.lock_out_dir(out_dir) if master else None  # noqa: F841 (held until the process ends)
    torch.manual_seed(seed)
    T.use_cuda_kernels(cuda)
    autocast = torch.autocast("cuda", dtype=getattr(torch, dtype)) if cuda and dtype != "float32" else nullcontext()
    config["reference"] = reference or (init_from if init_from != "resume" else resumed_reference(T))
    model, optimizer, step = T.build_model(dev, False, master)
    row_len = seq_len or min(2048, model.config.max_position_embeddings)   # (the CPU demo model's context: 1024)
    prompt_ids = [render_chat(m, add_generation_prompt=True, enable_thinking=enable_thinking, template=chat_template)[0]
                  for _, m, _ in rows]
    longest = max(map(len, prompt_ids)) + max_new_tokens
    if longest > min(model.config.max_position_embeddings, row_len + 1):
        sys.exit(f"error: the longest prompt + max_new_tokens = {longest} tokens exceed the model's context or "
                 f"--seq_len={row_len}: lower --max_new_tokens or shorten the prompts")
    # rollouts: a copy of the policy in the autocast dtype, so that the Triton step (16-bit weights) serves it
    rollout_dtype = getattr(torch, dtype) if cuda else torch.float32
    rollout_model = type(model)(model.config).to(dev, rollout_dtype).eval()
    per_rank = prompts_per_step // world
    decoder = Decoder(rollout_model, per_rank * group_size, max_len=longest, step=default_step(rollout_model, compiled=False))
    sync_rollout_model(rollout_model, model, decoder)
    ref_model = load_model(config["reference"], dtype=rollout_dtype, device=dev)[0].eval() if kl_coef > 0 else None
    train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if cuda else None) if ddp else model
    log = T.open_log(master)
    normalizer = per_rank * group_size * max_new_tokens   # DDP averages the ranks' gradients: the global constant / world
    if master:
        print(f"rl: {len(rows):,} prompts, {prompts_per_step} x {group_size} answers a step, {world} process(es), "
              f"reward {reward}, from step {step} to {max_steps}")
    t_start, first, last_line, stop = time.time(), step, time.time(), False
    while step < max_steps and not stop:
        torch.cuda.synchronize(dev) if cuda else None
        t0 = time.time()
        for g in optimizer.param_groups:
            g["lr"] = g["initial_lr"] * wsd_lr_factor(step, max_steps, warmup_steps, decay_steps, min_lr_frac)
        mine = step_prompts(len(rows), step, prompts_per_step, seed)[rank * per_rank:(rank + 1) * per_rank]
        gen = torch.Generator(device=dev).manual_seed(seed * 1_000_003 + step * 7919 + rank)
        completions, texts, cut = rollout(decoder, [prompt_ids[i] for i in mine], gen, enc)
        t_roll = time.time() - t0
        scores = [score(rewards, rows[mine[j // group_size]][0], t, rows[mine[j // group_size]][2],
                        texts[j - j % group_size:][:group_size]) for j, t in enumerate(texts)]
        names = sorted(scores[0])   # ranks sum the parts by position: every answer must name the same parts
        if (odd := next((sorted(s) for s in scores if sorted(s) != names), None)) is not None:
            sys.exit(f"error: --reward={reward}: parts {names} for one answer, {odd} for another: name the same parts every time")
        total = torch.tensor([sum(s.values()) for s in scores])
        adv, differ = group_advantages(total, group_size, scale_rewards)
        keep = [j for j in range(len(texts)) if differ[j // group_size]]
        # what every rank agrees on: the sums behind the logged means, the stop request, the micro-batch count
        chunks = [keep[i::updates_per_rollout] for i in range(updates_per_rollout)]
        packed = [pack([(prompt_ids[mine[j // group_size]], completions[j]) for j in c], row_len, EOT) for c in chunks]
        shared = torch.tensor([total.sum().item(), sum(map(len, completions)), sum(cut), len(keep), float(bool(T.STOP_SIGNALS)),
                               *[sum(s.get(n, 0.0) for s in scores) for n in names]], device=dev, dtype=torch.float64)
        n_micro = torch.tensor([-(-len(p[0]) // micro_batch) for p in packed], device=dev)
        if ddp:
            dist.all_reduce(shared), dist.all_reduce(n_micro, op=dist.ReduceOp.MAX)
        stop = shared[4].item() > 0
        t1 = time.time()
        stats = dict.fromkeys(STATS, 0.0)   # a step with no group to learn from makes no update
        if shared[3].item() > 0:   # some group, on some rank, has answers that differ
            parts = [(micro_batches(p[:4], int(n)), adv[torch.tensor(c, dtype=torch.long)][p[4]] if c else torch.zeros(0))
                     for p, c, n in zip(packed, chunks, n_micro.tolist())]
            stats = update(T, model, train_model, optimizer, ref_model, parts, ddp, dev, autocast, normalizer, master, step)
            sync_rollout_model(rollout_model, model, decoder)
        torch.cuda.synchronize(dev) if cuda else None
        t2 = time.time()
        step += 1
        for sig in (signal.SIGTERM, signal.SIGINT) if step == first + 1 else ():   # now a stop has a step to save:
            signal.signal(sig, lambda signum, _: T.STOP_SIGNALS.append(signal.Signals(signum).name))   # after this one
        n_all, n_tok = prompts_per_step * group_size, max(stats["tokens"], 1)
        eta = (t2 - t_start) / (step - first) * (max_steps - step)
        rec = {"step": step, "loss": stats["loss"], "reward": shared[0].item() / n_all,
               **{f"reward_{n}": shared[5 + i].item() / n_all for i, n in enumerate(names)},
               "kl": stats["kl"] / n_tok if ref_model is not None else None, "entropy": stats["entropy"] / n_tok if stats["tokens"] else None,
               "completion_len": shared[1].item() / n_all, "truncated": shared[2].item() / n_all,
               "skipped_groups": 1 - shared[3].item() / n_all, "clip_frac": stats["clip_frac"] / n_tok,
               "grad_norm": stats["grad_norm"], "lr": optimizer.param_groups[0]["lr"],
               "rollout_tok_per_s": shared[1].item() / t_roll, "train_tok_per_s": stats["tokens"] / (t2 - t1),
               "step_s": t2 - t0, "rollout_s": t_roll, "eta_s": eta}
        if step % log_interval == 0 or step == max_steps or stop or time.time() - last_line >= log_seconds:
            last_line = time.time()
            log(rec, f"step {step}/{max_steps} | reward {rec['reward']:.3f} ("
                     + ", ".join(f"{n} {rec['reward_' + n]:.3f}" for n in names) + f") | len {rec['completion_len']:.0f} | "
                     f"skipped {rec['skipped_groups']:.0%} | entropy "
                     f"{'n/a (no update)' if rec['entropy'] is None else format(rec['entropy'], '.3f')} | rollout "
                     f"{rec['rollout_tok_per_s']:,.0f} tok/s | {rec['step_s']:.2f} s | ETA {int(eta) // 60}:{int(eta) % 60:02d}")
        T.maybe_checkpoint(step, model, optimizer, dev, ddp, master, stop)
    if stop and master:
        print(f"stopped by {(T.STOP_SIGNALS or ['a signal'])[0]} after step {step}: {T.list_checkpoints(out_dir)[-1]} "
              "written; --init_from=resume continues")
    if master and export_at_end and not stop:
        T.export_hf(model, os.path.join(out_dir, "hf"), dtype=getattr(torch, export_dtype), chat_template=chat_template)
    if ddp:
        del train_model
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
