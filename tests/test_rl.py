"""rl.py: the group advantages and the clipped loss against a hand-computed case, packing (a packed sequence scores
as it would alone), a tiny model learning a toy verifiable reward, exact resume after kill -9, and rewards that
raise or return NaN."""
import json, math, os, signal, subprocess, sys, time

import pytest
import torch
from conftest import PY, ROOT, run_script, small_config

from checkpoint import save_pretrained
from model import Qwen3
from tokenizer import get_tokenizer

sys.argv = ["rl.py"]   # rl.py parses its command line on import: the tests import only its functions
import rl  # noqa: E402

TOY_REWARD = '''import re
def han(prompt, completion):
    """The share of the answer's characters that are Han characters (~17% of the vocabulary's tokens)."""
    return len(re.findall(r"[\\u4e00-\\u9fff]", completion)) / max(1, len(completion))
def broken(prompt, completion):
    raise KeyError("no_such_field")
def nan(prompt, completion):
    return float("nan")
def parts(prompt, completion):
    parts.calls = getattr(parts, "calls", 0) + 1   # a part only every other call: ranks could not sum them
    return {"han": 1.0} if parts.calls % 2 else {"han": 1.0, "length": len(completion) / 10}
def grouped(prompt, completion, group_completions):
    import json, os
    with open(os.environ["GROUP_LOG"], "a") as f:
        f.write(json.dumps({"prompt": prompt, "completion": completion, "group": group_completions}) + "\\n")
    return 0.0
def alike_for_cat(prompt, completion):
    return 0.0 if "cat" in prompt else float(len(completion))   # the cat's group is skipped, no other is
def slow(prompt, completion):
    import time
    time.sleep(0.5)   # a first step of seconds: a signal lands inside it
    return 0.0
'''


def test_group_advantages_and_clipped_loss_by_hand():
    adv, differ = rl.group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0]), 4)
    s = math.sqrt(1 / 3) + 1e-4   # the unbiased std of (1, 0, 0, 1)
    torch.testing.assert_close(adv, torch.tensor([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s, 0, 0, 0, 0]))
    assert differ.tolist() == [True, False]   # the second group's answers all scored alike: nothing to learn
    plain, _ = rl.group_advantages(torch.tensor([3.0, 1.0]), 2, scale=False)
    assert plain.tolist() == [1.0, -1.0]
    # ratios 1.5 (A=+1: clipped at 1.28), 0.5 (A=-1: clipped at 0.8, min(-0.5, -0.8) = -0.8), 1.0 (A=+1: 1), and
    # 0.5 with A=+1: min(0.5, 0.8) keeps the ratio, so its gradient flows and it is not counted as clipped
    logp = torch.log(torch.tensor([1.5, 0.5, 1.0, 0.5]))
    old, a = torch.zeros(4), torch.tensor([1.0, -1.0, 1.0, 1.0])
    loss, stats = rl.policy_loss(logp, old, a, normalizer=10, clip_low=0.2, clip_high=0.28)
    assert loss.item() == pytest.approx(-(1.28 - 0.8 + 1.0 + 0.5) / 10) and stats["clip_frac"] == 2
    ref = torch.log(torch.tensor([1.0, 1.0, 2.0, 1.0]))   # k3 = exp(d) - d - 1 with d = ref - logp
    k3 = sum(math.exp(d) - d - 1 for d in (ref - logp).tolist())
    loss_kl, stats = rl.policy_loss(logp, old, a, 10, 0.2, 0.28, ref_logp=ref, kl_coef=0.5)
    assert loss_kl.item() == pytest.approx(loss.item() + 0.5 * k3 / 10) and stats["kl"] == pytest.approx(k3)


def test_packed_answers_share_their_prompt_and_score_as_each_alone():
    """Answers packed into rows by prompt (each prompt written once a row, its answers as branches): the per-token
    log-probs of the answers are those of each prompt + answer run alone, in order, and a group too long for one
    row goes on in the next with its prompt again."""
    torch.manual_seed(0)
    model = Qwen3(small_config()).eval()
    r = lambda n: torch.randint(0, 320, (n,)).tolist()
    groups = [(r(4), [r(5), r(3), r(6)]), (r(10), [r(4)]), (r(2), [r(4), r(1)]), (r(5), [r(6), r(7), r(9)])]
    answers = [(p, a) for p, ans in groups for a in ans]
    x, y, doc, branch, owner = rl.pack(answers, row_len=24, pad=0)
    assert owner.tolist() == [i for i, (_, a) in enumerate(answers) for _ in a]
    # 3 + 14 | 9 + 4, 1 + 5 | 4 + 13 (the last group's prompt, two answers) | 4 + 9 (its third answer, prompt again)
    assert len(x) == 4 and (y != -100).sum(1).tolist() == [14, 9, 13, 9] and x[3, :4].tolist() == groups[3][0][:4]
    with torch.no_grad():
        logp, entropy = rl.token_logprobs(model(x, y, doc, hidden_only=True, branch_ids=branch)[1], model.lm_head_weight,
                                          y[y != -100], 0.7)
        alone = []
        for p, a in answers:
            logits = model(torch.tensor([(p + a)[:-1]]))[0][0, len(p) - 1:] / 0.7
            alone.append(logits.log_softmax(-1).gather(1, torch.tensor(a)[:, None])[:, 0])
    torch.testing.assert_close(logp, torch.cat(alone), rtol=1e-4, atol=1e-5)
    assert (entropy > 0).all() and entropy.max() <= math.log(320) + 1e-4


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A tiny model with Qwen's vocabulary (the chat template's ids), prompts and the toy rewards."""
    d = tmp_path_factory.mktemp("rl")
    torch.manual_seed(0)
    save_pretrained(Qwen3(small_config(vocab_size=151936, hidden_size=32, intermediate_size=48, head_dim=16,
                                       max_position_embeddings=128)), str(d / "tiny"), dtype=torch.float32)
    with open(d / "prompts.jsonl", "w") as f:
        for w in ("cat", "dog", "sun", "moon"):
            f.write(json.dumps({"prompt": f"Write about the {w}."}) + "\n")
    (d / "toy.py").write_text(TOY_REWARD)
    return d


def toy_args(toy, out, *extra):
    # top_k: the random model spreads its mass over 152k tokens; sampling among each context's 16 most likely lets a
    # few dozen steps see the same candidates again, so the toy is learnable that fast
    return [f"--init_from={toy / 'tiny'}", f"--prompts={toy / 'prompts.jsonl'}", f"--reward={toy / 'toy.py'}:han",
            f"--out_dir={out}", "--group_size=8", "--prompts_per_step=2", "--max_new_tokens=6", "--top_k=16",
            "--micro_batch=4", "--warmup_steps=0", "--decay_steps=0", "--muon_lr=0.02",
            "--adamw_lr=0.02", "--export_at_end=False", *extra]


def records(out):
    return [json.loads(l) for l in open(os.path.join(out, "log.jsonl"))]


@pytest.mark.slow
def test_tiny_model_learns_a_toy_verifiable_reward(toy, tmp_path, train_module, monkeypatch):
    out = tmp_path / "out"
    assert run_script(monkeypatch, "rl.py", *toy_args(toy, out, "--max_steps=40", "--ckpt_interval=0",
                                                      "--export_at_end=True")) == 0
    rewards = [r["reward"] for r in records(out)]
    first, last = sum(rewards[:8]) / 8, sum(rewards[-8:]) / 8
    assert last > 2 * first and last > 0.4, rewards
    # the export is the tuned model, with the chat template: transformers and chat.py read it as they read SFT's
    from transformers import AutoTokenizer
    from checkpoint import from_pretrained
    from tokenizer import render_chat
    chat = [{"role": "user", "content": "Write about the cat."}]
    ids = AutoTokenizer.from_pretrained(out / "hf").apply_chat_template(chat, add_generation_prompt=True, enable_thinking=False)
    assert list(getattr(ids, "input_ids", ids)) == render_chat(chat, add_generation_prompt=True, enable_thinking=False)[0]
    tuned, start = from_pretrained(str(out / "hf")), from_pretrained(str(toy / "tiny"))
    assert not torch.equal(tuned.model.norm.weight, start.model.norm.weight)
    rec = records(out)[-1]
    for key in ("reward_han", "entropy", "completion_len", "rollout_tok_per_s", "train_tok_per_s", "eta_s", "skipped_groups"):
        assert key in rec


@pytest.mark.slow
def test_resume_after_kill_9_repeats_the_uninterrupted_runs_next_step(toy, tmp_path, train_module, monkeypatch):
    whole = tmp_path / "whole"
    args = ["--max_steps=4", "--ckpt_interval=2", "--log_interval=1", "--seq_len=128"]
    assert run_script(monkeypatch, "rl.py", *toy_args(toy, whole, *args)) == 0
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([PY, "rl.py", *toy_args(toy, killed, *args, "--max_steps=4")], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:   # kill -9 once step 3 is logged (ckpt-2 written, not ckpt-4)
        log = killed / "log.jsonl"
        if log.exists() and any(json.loads(l)["step"] == 3 for l in open(log) if l.endswith("\n")):
            p.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL and not (killed / "ckpt-0000004").exists()
    assert run_script(monkeypatch, "rl.py", *toy_args(toy, killed, *args, "--init_from=resume")) == 0
    a, b = records(whole), records(killed)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for key in ("reward", "entropy", "grad_norm", "completion_len"):
        assert [r[key] for r in a[2:]] == [r[key] for r in b[2:]], key


@pytest.mark.parametrize("fn, says", [("broken", "reward broken raised KeyError"), ("nan", "reward nan returned nan=nan"),
                                      ("parts", "parts ['han'] for one answer, ['han', 'length'] for another")])
def test_a_reward_that_raises_or_returns_nan_is_named(toy, tmp_path, train_module, monkeypatch, fn, says):
    msg = run_script(monkeypatch, "rl.py", *toy_args(toy, tmp_path / "o", "--max_steps=1", f"--reward={toy / 'toy.py'}:{fn}"))
    assert isinstance(msg, str) and msg.startswith("error: ") and says in msg and "\n" not in msg


def test_a_reward_that_names_group_completions_gets_its_prompts_whole_group(toy, tmp_path, train_module, monkeypatch):
    monkeypatch.setenv("GROUP_LOG", str(tmp_path / "calls.jsonl"))
    assert run_script(monkeypatch, "rl.py", *toy_args(toy, tmp_path / "o", "--max_steps=1", f"--reward={toy / 'toy.py'}:grouped")) == 0
    calls = [json.loads(l) for l in open(tmp_path / "calls.jsonl")]
    groups = {c["prompt"]: c["group"] for c in calls}
    assert len(calls) == 16 and len(groups) == 2 and all(len(g) == 8 for g in groups.values())
    assert all(c["group"] == groups[c["prompt"]] and c["completion"] in c["group"] for c in calls)
    # every answer scored 0: no group to learn from, no update -- the entropy of no tokens is not 0 (newcomer, LOG 29)
    assert records(tmp_path / "o")[0]["skipped_groups"] == 1.0 and records(tmp_path / "o")[0]["entropy"] is None


def test_bad_reward_specs_and_prompts_are_one_line(toy, tmp_path):
    for spec, says in (("nocolon", "expected module:function"), (f"{toy / 'toy.py'}:missing", "has no function missing"),
                       ("no_such_module_xyz:f", "cannot load no_such_module_xyz"),
                       (f"{toy / 'toy.py'}:han,rewards.py:concise,{toy / 'toy.py'}:han", "names the function han twice")):
        with pytest.raises(SystemExit, match=says):
            rl.load_rewards(spec)
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"messages": [{"role": "assistant", "content": "x"}]}\n')
    with pytest.raises(SystemExit, match=r"p.jsonl:2: needs"):
        rl.read_prompts(str(bad))
    with pytest.raises(SystemExit, match=r"^error: --prompts='': required \(a .jsonl"):   # not "no such file"
        rl.read_prompts("")


def test_a_reward_path_in_this_checkout_loads_from_another_directory(tmp_path, monkeypatch):
    """config/rl_poem.py names bench/poetry_rules.py: run from outside the checkout it could not be loaded."""
    monkeypatch.chdir(tmp_path)
    (name, fn, _), = rl.load_rewards("rewards.py:concise")
    assert name == "concise" and fn("p", "short answer") == 1.0
    (tmp_path / "rewards.py").write_text("def concise(prompt, completion):\n    return 7.0\n")   # the cwd's comes first
    assert rl.load_rewards("rewards.py:concise")[0][1]("p", "x") == 7.0


def test_example_rewards():
    import rewards
    assert rewards.exact_answer("17*23?", "<think>\nx\n</think>\n\n391", answer="391") == 1.0
    assert rewards.exact_answer("17*23?", "391 or 392", answer=391) == 0.0
    assert rewards.exact_answer("q", "391.", answer=391) == rewards.exact_answer("q", "1,234", answer="1234") == 1.0
    for wrong in ("3,91", "39,1", "3_91", "３９１"):   # float() takes these (commas deleted): not numbers as written
        assert rewards.exact_answer("17*23?", wrong, answer="391") == 0.0, wrong
    assert rewards.concise("q", "short") == 1.0 and rewards.concise("q", "x" * 300) == pytest.approx(0.5)
    assert rewards.concise("q", "<think>") == -1.0 and rewards.concise("q", "  ") == -1.0


def test_step_prompts_depend_on_the_step_alone_and_cover_every_prompt():
    a = [rl.step_prompts(10, s, 4, seed=1) for s in range(5)]
    assert a == [rl.step_prompts(10, s, 4, seed=1) for s in range(5)]
    flat = [i for s in a for i in s]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))


@pytest.mark.slow
def test_two_processes_split_the_prompts_and_train_together(toy, tmp_path):
    """torchrun, 2 CPU processes (gloo): each rolls out half the step's prompts, DDP averages the gradients, rank 0
    logs the rewards of all of them and checkpoints. One step's cat prompt scores all its answers alike: that rank
    has nothing to learn from while the other has, and still takes part in the update (micro-batches of padding)."""
    from conftest import torchrun
    out = tmp_path / "ddp"
    r = torchrun(2, toy_args(toy, out, "--max_steps=3", "--ckpt_interval=2", f"--reward={toy / 'toy.py'}:alike_for_cat"),
                 script="rl.py")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert [rec["step"] for rec in records(out)] == [1, 2, 3] and (out / "ckpt-0000002").is_dir()
    assert sorted(rec["skipped_groups"] for rec in records(out)) == [0.0, 0.5, 0.5]   # the cat on rank 1, then rank 0
    # the logged update covers both ranks' answers (rank 0's alone said "no update" when its group was the cat's)
    assert all(rec["entropy"] is not None and rec["train_tok_per_s"] > 0 for rec in records(out)), records(out)
    assert "2 process(es)" in r.stdout


def test_numeric_settings_are_checked_before_any_work(toy, tmp_path, train_module, monkeypatch):
    for arg, says in (("--group_size=1", "--group_size must be >= 2"), ("--top_p=1.5", "--top_p must be in [0, 1]"),
                      ("--temperature=0.0", "--temperature must be > 0")):
        msg = run_script(monkeypatch, "rl.py", *toy_args(toy, tmp_path / "o", arg))
        assert isinstance(msg, str) and says in msg and "\n" not in msg


def test_sigterm_before_the_first_step_ends_stops_at_once_without_a_checkpoint(toy, tmp_path):
    """As train.py (issue 36 point 18): rl.py recorded a stop for after the step from the start, so a signal during
    loading, compiling or the first step (minutes on a GPU) waited for that step and wrote a checkpoint of it."""
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([PY, "rl.py", *toy_args(toy, out, "--max_steps=4", "--ckpt_interval=1",
                                                  f"--reward={toy / 'toy.py'}:slow")],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not p.stdout.readline().startswith("rl: "):   # the line before the first step
            assert p.poll() is None, p.stderr.read()[-2000:]
        time.sleep(1)
        p.send_signal(signal.SIGTERM)
        stdout, stderr = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == 0 and "stopped by SIGTERM before the first step ended" in stdout, (stdout, stderr[-2000:])
    assert not [c for c in os.listdir(out) if c.startswith("ckpt-")]


def test_activation_checkpointing_reaches_train_py_and_trains_the_same_steps(toy, tmp_path, train_module, monkeypatch):
    """--checkpointing (train.py's: recompute each block in the backward) for RL on a smaller card: the same
    steps as without it; a value that is not a choice is one line."""
    runs = {}
    for mode in ("none", "block"):
        out = tmp_path / mode
        assert run_script(monkeypatch, "rl.py", *toy_args(toy, out, "--max_steps=2", "--ckpt_interval=0",
                                                          f"--checkpointing={mode}")) == 0
        assert sys.modules["train"].checkpointing == mode   # what train.py's build_model put on each block
        runs[mode] = records(out)
    for key in ("reward", "loss", "grad_norm", "entropy"):
        assert [r[key] for r in runs["block"]] == pytest.approx([r[key] for r in runs["none"]], rel=1e-5), key
    msg = run_script(monkeypatch, "rl.py", *toy_args(toy, tmp_path / "bad", "--max_steps=1", "--checkpointing=all"))
    assert isinstance(msg, str) and "checkpointing" in msg and "\n" not in msg


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled decode step exists on CUDA only")
def test_cuda_rollouts_never_take_the_compiled_step(toy, tmp_path, train_module, monkeypatch):
    """fp32 weights (no Triton step for them): the Decoder's default was the compiled step, which freezes the weights
    in, and the first refresh after an update raised. rl.py takes the eager step there."""
    assert run_script(monkeypatch, "rl.py", *toy_args(toy, tmp_path / "o", "--max_steps=2", "--ckpt_interval=0",
                                                      "--dtype=float32", "--device=cuda")) == 0
