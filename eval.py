"""
Evaluation: validation loss / bits-per-byte, and C-Eval (PPL and GEN modes) from local C-Eval files.

    python eval.py --init_from=out --data_dir=data/demo                      # val loss + bpb, newest checkpoint
    python eval.py --init_from=out/hf --ceval_dir=ceval-exam --mode=both --split=val --shots=5

C-Eval layout (the official ceval-exam release): <ceval_dir>/<split>/<subject>_<split>.csv with columns
id, question, A, B, C, D, answer (dev also has explanation; test has no answer). An optional
<ceval_dir>/subject_mapping.json (shipped with C-Eval) gives the Chinese subject names used in the prompt.

Prompt (the standard C-Eval format; k dev examples first when --shots=k):
    以下是中国关于{科目}考试的单项选择题，请选出其中的正确答案。\\n\\n
    {question}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\n答案：{answer}\\n\\n   (x k)
    {question}\\nA. ...\\nD. {D}\\n答案：
PPL mode: the option whose continuation (its letter, or with --ppl_continuation=text its text) has the highest
log-likelihood after the prompt; the four continuations go through the model as one batch. GEN mode: greedy
decoding, then the first option letter found in the output.
"""
import csv, json, math, os, re, sys
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from data import val_batches
from generate import generate
from tokenizer import EOT, token_byte_lengths

LETTERS = "ABCD"


@torch.no_grad()
def val_loss_bpb(model, data_dir, seq_len, n_tokens, batch_size, device, autocast=nullcontext()):
    """Mean next-token loss (nats) over the fixed held-out set, and bits per byte: the same total loss in bits
    divided by the UTF-8 bytes of the scored target tokens (special tokens such as <|endoftext|> count 0 bytes),
    i.e. bpb = loss / ln 2 * tokens / bytes. Unlike loss, bpb does not depend on the tokenizer."""
    was_training = model.training
    model.eval()
    nbytes = torch.from_numpy(token_byte_lengths(model.config.vocab_size)).to(device)
    total_nats, total_tokens, total_bytes = 0.0, 0, 0
    for x, y in val_batches(data_dir, seq_len, n_tokens, batch_size, device):
        with autocast:
            _, loss = model(x, y)
        total_nats += loss.item() * y.numel()
        total_tokens += y.numel()
        total_bytes += int(nbytes[y].sum())
    model.train(was_training)
    return total_nats / total_tokens, total_nats / math.log(2) / max(total_bytes, 1)


# ---------------------------------------------------------------------------------------------- C-Eval
def read_ceval_csv(path, need_answer):
    if not os.path.isfile(path):
        raise SystemExit(f"error: {path} not found (expected the C-Eval layout <dir>/<split>/<subject>_<split>.csv)")
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    cols = set(rows[0]) if rows else set()
    missing = {"question", "A", "B", "C", "D"} - cols
    if missing:
        raise SystemExit(f"error: {path} lacks column(s) {sorted(missing)}; C-Eval CSVs have id,question,A,B,C,D,answer")
    if need_answer and "answer" not in cols:
        raise SystemExit(f"error: {path} has no answer column (needed here, e.g. for few-shot examples)")
    return rows


def format_question(row, with_answer):
    text = f"{row['question']}\n" + "".join(f"{L}. {row[L]}\n" for L in LETTERS) + "答案："
    return text + (f"{row['answer']}\n\n" if with_answer else "")


def build_prompt(subject_name, row, shots):
    head = f"以下是中国关于{subject_name}考试的单项选择题，请选出其中的正确答案。\n\n"
    return head + "".join(format_question(s, True) for s in shots) + format_question(row, False)


@torch.no_grad()
def continuation_logprobs(model, prompt_ids, continuations, device, autocast=nullcontext()):
    """Sum of log p(continuation tokens | prompt) for each continuation, in one batched forward: the sequences
    prompt+continuation are right-padded and every continuation token's log-prob is read off its own row.
    The prompt is left-truncated so that the longest sequence fits max_position_embeddings."""
    max_len = model.config.max_position_embeddings
    longest = max(len(c) for c in continuations)
    prompt_ids = prompt_ids[-(max_len - longest):]
    seqs = [prompt_ids + c for c in continuations]
    T = max(len(s) for s in seqs)
    x = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, :len(s)] = torch.tensor(s)
    with autocast:
        logits, _ = model(x.to(device))  # right padding is harmless: causal attention never looks ahead
    logp = F.log_softmax(logits.float(), dim=-1)
    scores = []
    for i, c in enumerate(continuations):
        pos = torch.arange(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(c), device=logp.device)
        scores.append(logp[i, pos, torch.tensor(c, device=logp.device)].sum().item())
    return scores


def extract_choice(text):
    """The answer letter in generated text: '答案：B', '答案是B', '选B', '(B)', 'B.', ' B' ...; None if absent."""
    for pattern in (r"答案\s*[:：]?\s*(?:是|为|应该是|应选)?\s*[\(（]?\s*([ABCD])", r"选\s*[项择]?\s*[\(（]?\s*([ABCD])",
                    r"^\s*[\(（]?\s*([ABCD])(?![A-Za-z])", r"(?<![A-Za-z])([ABCD])(?![A-Za-z])"):
        m = re.search(pattern, text)
        if m:
            return m.group(1)
    return None


def ceval(model, enc, ceval_dir, mode="ppl", split="val", shots=0, subjects=None, device="cpu",
          autocast=nullcontext(), ppl_continuation="letter", max_new_tokens=8):
    """Score every subject; returns {subject: {"n", "ppl_acc", "gen_acc", "predictions"}}."""
    split_dir = os.path.join(ceval_dir, split)
    if not os.path.isdir(split_dir):
        raise SystemExit(f"error: {split_dir} not found (expected the C-Eval layout <dir>/{split}/<subject>_{split}.csv)")
    names = {}
    if os.path.isfile(os.path.join(ceval_dir, "subject_mapping.json")):
        names = {k: v[1] for k, v in json.load(open(os.path.join(ceval_dir, "subject_mapping.json"))).items()}
    available = sorted(f[:-len(f"_{split}.csv")] for f in os.listdir(split_dir) if f.endswith(f"_{split}.csv"))
    subjects = subjects or available
    unknown = set(subjects) - set(available)
    if unknown:
        raise SystemExit(f"error: no {split} file for subject(s) {sorted(unknown)} in {split_dir}")
    results = {}
    for subject in subjects:
        rows = read_ceval_csv(os.path.join(split_dir, f"{subject}_{split}.csv"), need_answer=False)
        has_answer = "answer" in rows[0]
        shot_rows = read_ceval_csv(os.path.join(ceval_dir, "dev", f"{subject}_dev.csv"), True)[:shots] if shots else []
        res = {"n": len(rows), "predictions": []}
        ppl_ok = gen_ok = 0
        for row in rows:
            prompt = build_prompt(names.get(subject, subject.replace("_", " ")), row, shot_rows)
            ids = enc.encode(prompt)
            pred = {"id": row.get("id")}
            if mode in ("ppl", "both"):
                conts = [enc.encode(L if ppl_continuation == "letter" else f"{L}. {row[L]}") for L in LETTERS]
                scores = continuation_logprobs(model, ids, conts, device, autocast)
                pred["ppl"] = LETTERS[int(np.argmax(scores))]
                ppl_ok += has_answer and pred["ppl"] == row["answer"].strip()
            if mode in ("gen", "both"):
                x = torch.tensor([ids[-(model.config.max_position_embeddings - max_new_tokens):]], device=device)
                with autocast:
                    out = generate(model, x, max_new_tokens, temperature=0, eos=EOT)
                pred["gen_text"] = enc.decode([t for t in out[0, x.shape[1]:].tolist() if t < EOT])
                pred["gen"] = extract_choice(pred["gen_text"])
                gen_ok += has_answer and pred["gen"] == row["answer"].strip()
            res["predictions"].append(pred)
        if has_answer:
            if mode in ("ppl", "both"):
                res["ppl_acc"] = ppl_ok / len(rows)
            if mode in ("gen", "both"):
                res["gen_acc"] = gen_ok / len(rows)
        results[subject] = res
    return results


# -------------------------------------------------------------------------------------------------- CLI
if __name__ == "__main__":
    from model import find_model_dir, from_pretrained
    from tokenizer import get_tokenizer
    init_from = "out"          # training out_dir (newest checkpoint), a checkpoint dir, or a HF Qwen3 directory
    data_dir = ""              # prepared data (python data.py ...): report val loss and bits-per-byte
    seq_len = 2048
    batch_size = 4
    val_tokens = 2**19         # the same fixed validation sample as train.py's val_tokens
    ceval_dir = ""             # local C-Eval files: report C-Eval
    mode = "both"              # ppl | gen | both
    split = "val"              # val | dev | test (test has no answers: predictions only)
    shots = 0                  # 0..5 dev examples in the prompt
    subjects = ""              # comma-separated subject ids; empty = all in the split
    ppl_continuation = "letter"  # letter | text
    out = "ceval_results.json"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configurator.py")).read())
    if mode not in ("ppl", "gen", "both") or split not in ("val", "dev", "test") or not 0 <= shots <= 5 \
            or ppl_continuation not in ("letter", "text"):
        sys.exit("error: --mode ppl|gen|both, --split val|dev|test, --shots 0..5, --ppl_continuation letter|text")
    if not data_dir and not ceval_dir:
        sys.exit("error: give --data_dir (val loss / bpb) and/or --ceval_dir (C-Eval)")
    model_dir = find_model_dir(init_from)
    model = from_pretrained(model_dir, device=device).eval()
    amp = torch.autocast("cuda", dtype=getattr(torch, dtype)) if device.startswith("cuda") and dtype != "float32" else nullcontext()
    print(f"[{model_dir}]")
    if data_dir:
        loss, bpb = val_loss_bpb(model, data_dir, min(seq_len, model.config.max_position_embeddings), val_tokens,
                                 batch_size, device, amp)
        print(f"val loss {loss:.4f} | val bpb {bpb:.4f}")
    if ceval_dir:
        res = ceval(model, get_tokenizer(), ceval_dir, mode, split, shots,
                    [s for s in subjects.split(",") if s] or None, device, amp, ppl_continuation)
        print(f"{'subject':<40} {'n':>5} {'PPL':>7} {'GEN':>7}")
        fmt = lambda v: f"{100 * v:6.2f}%" if v is not None else "     - "
        for s, r in res.items():
            print(f"{s:<40} {r['n']:>5} {fmt(r.get('ppl_acc'))} {fmt(r.get('gen_acc'))}")
        avg = {k: float(np.mean([r[k] for r in res.values()])) for k in ("ppl_acc", "gen_acc")
               if all(k in r for r in res.values())}
        print(f"{'average (over subjects)':<40} {sum(r['n'] for r in res.values()):>5} "
              f"{fmt(avg.get('ppl_acc'))} {fmt(avg.get('gen_acc'))}")
        if not avg:
            print(f"note: the {split} split has no answers (C-Eval keeps test answers private); predictions only")
        json.dump({"model": model_dir, "split": split, "shots": shots, "mode": mode, "average": avg, "subjects": res},
                  open(out, "w"), ensure_ascii=False, indent=1)
        print(f"wrote {out}")
