"""
Evaluation: validation loss / bits-per-byte, and C-Eval (PPL and GEN modes) from local C-Eval files.

    python eval.py --init_from=out --data_dir=data/demo                      # val loss + bpb, newest checkpoint
    python eval.py --init_from=out/hf --ceval_dir=ceval-exam --mode=both --split=val --shots=5
    python eval.py --init_from=out/hf --ceval_dir=ceval-exam --shots=5 --prompt_style=opencompass
    python eval.py --init_from=out/hf --ceval_dir=ceval-exam --results=out/ceval.json   # where the results go

Val loss and bits per byte are data.val_loss_bpb's, the function train.py logs with.

Val loss uses the checkpoint's own training seq_len and val_tokens (from state.pt's train_config) when
--init_from is a training checkpoint, so it matches the val loss logged during training; --seq_len / --val_tokens
win when given; a plain Hugging Face directory (e.g. out/hf) uses 2048 -- or the model's max_position_embeddings
when that is shorter (1024 for the demo model) -- and 2**19: pass the training run's --seq_len and --val_tokens to
compare with its log.

C-Eval layout (the official ceval-exam release): <ceval_dir>/<split>/<subject>_<split>.csv with columns
id, question, A, B, C, D, answer (dev also has explanation; test has no answer). <ceval_dir>/subject_mapping.json
(shipped with C-Eval) gives the Chinese subject names used in the prompt; without it the prompt names the subject
by its id and a warning says so. Few-shot examples are the first k dev rows; with --split=dev a question is never
its own example (so at most 4 shots there: dev has 5 rows per subject).

Prompt styles (--prompt_style):
  ceval (default; the standard C-Eval format, k dev examples first when --shots=k):
    以下是中国关于{科目}考试的单项选择题，请选出其中的正确答案。\\n\\n
    {question}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\n答案：{answer}\\n\\n   (x k)
    {question}\\nA. ...\\nD. {D}\\n答案：
  opencompass: OpenCompass's ceval_ppl / ceval_gen configs (ceval_ppl_578f8d, ceval_gen_5f30c7) as rendered for a
    base model (no meta template), byte for byte: every shot repeats the subject header, ASCII "答案: ", the answer
    on its own line; PPL joins shots with "\\n\\n\\n" and puts 5 newlines before the question, GEN joins every
    part with one "\\n". GEN reads the first capital letter of the output (first_capital_postprocess), decoding
    until one appears (up to 1024 tokens, OpenCompass's max_out_len for base models; stopping at the first capital
    changes nothing, since the prediction is decided there). Use it to compare with numbers from OpenCompass.

PPL mode: the option whose continuation has the highest log-likelihood after the prompt. --ppl_continuation:
  letter (default): the option letter. All four letters are one token after the same prompt, so ONE forward of
    the prompt scores them (OpenCompass's PPL -- mean loss over prompt+letter -- ranks the options the same way:
    the four sequences differ only in that last token);
  text: "{letter}. {option text}", summed log-probs -- favours short options (fewer tokens, fewer penalties);
  text_mean: the same, divided by its token count (mean log-prob per token; the length-normalised choice, as
    OpenCompass's PPLInferencer averages the loss per token).
Speed: only the scored positions are multiplied by the lm_head (never [B, T, vocab] logits), and questions of all
subjects are sorted by length and packed into right-padded batches of up to --batch_tokens tokens (causal
attention never looks ahead, so the padding changes nothing). The text continuations go as four rows
prompt+option in those same batches: the prompt is computed four times, but there is one code path and no cache
to manage, in a mode that is not the default. GEN: greedy decoding through generate.Decoder, prompts sorted by length
in right-padded batches (each row decodes from its own position); the default style reads the answer with
extract_choice (an explicit "答案…X" wins over a leading letter).
"""
import copy, csv, json, os, re, sys
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from checkpoint import load_model
from configurator import check_ranges
from data import make_writable_dir, no_space_message, val_loss_bpb, write_json
from generate import Decoder, default_step
from tokenizer import EOT, get_tokenizer

LETTERS = "ABCD"
PROMPT_STYLES = ("ceval", "opencompass")
CONTINUATIONS = ("letter", "text", "text_mean")
OPENCOMPASS_MAX_OUT = 1024  # OpenCompass's max_out_len for Hugging Face base models


def checkpoint_train_config(model_dir):
    """The training settings saved with a training checkpoint (state.pt's "train_config"), {} for a plain Hugging
    Face directory. mmap: only the small config is read, not the optimizer state (GBs for the 0.6B model)."""
    path = os.path.join(model_dir, "state.pt")
    if not os.path.isfile(path):
        return {}
    try:
        state = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except Exception as e:   # truncated, random or foreign bytes: name the file, not torch's unpickler
        raise SystemExit(f"error: {path} is damaged ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                         "use another checkpoint")
    config = state.get("train_config") or {} if isinstance(state, dict) else None
    if not isinstance(config, dict):
        raise SystemExit(f"error: {path} is not a state.pt written by train.py (no training config)")
    return config


def val_settings(model_dir, seq_len=None, val_tokens=None, max_len=None, doc_mask=None):
    """(seq_len, val_tokens, doc_mask, where the defaults came from): explicit values win, then the checkpoint's
    training config (so the val loss matches the one logged in training), then 2048 / 2**19 / False; seq_len capped
    at max_len."""
    train_cfg = checkpoint_train_config(model_dir)
    seq_len = seq_len if seq_len is not None else train_cfg.get("seq_len", 2048)
    val_tokens = val_tokens if val_tokens is not None else train_cfg.get("val_tokens", 2**19)
    doc_mask = doc_mask if doc_mask is not None else train_cfg.get("doc_mask", False)
    if not (isinstance(seq_len, int) and isinstance(val_tokens, int)):
        raise SystemExit(f"error: --seq_len and --val_tokens must be integers, got {seq_len!r}, {val_tokens!r}")
    return (min(seq_len, max_len or seq_len), val_tokens, bool(doc_mask),
            "the checkpoint's training config" if train_cfg else "default")


# ---------------------------------------------------------------------------------------------- C-Eval
def read_ceval_csv(path, need_answer):
    if not os.path.isfile(path):
        raise SystemExit(f"error: {path} not found (expected the C-Eval layout <dir>/<split>/<subject>_<split>.csv)")
    rows = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            for row in reader:
                rows.append((reader.line_num, row))
            cols = set(reader.fieldnames or ())
    except (UnicodeDecodeError, csv.Error) as e:   # a binary file (NUL bytes, not UTF-8)
        raise SystemExit(f"error: {path} is not a UTF-8 CSV file ({type(e).__name__}: {' '.join(str(e).split())[:120]})")
    missing = {"question", "A", "B", "C", "D"} - cols
    if missing:
        raise SystemExit(f"error: {path} lacks column(s) {sorted(missing)}; C-Eval CSVs have id,question,A,B,C,D,answer")
    if need_answer and "answer" not in cols:
        raise SystemExit(f"error: {path} has no answer column (needed here, e.g. for few-shot examples)")
    # every row is checked here, before any inference: a bad one found after an hour of scoring would waste it
    for line, row in rows:
        short = [k for k in ("question", *LETTERS) + (("answer",) if "answer" in cols else ()) if row.get(k) is None]
        if short:
            raise SystemExit(f"error: {path} line {line}: the row is short (no {', '.join(short)})")
        if "answer" in cols:
            row["answer"] = row["answer"].strip().upper()   # 'd' is D
            if row["answer"] not in LETTERS:
                raise SystemExit(f"error: {path} line {line}: answer {row['answer']!r} is not one of A, B, C, D")
    return [row for _, row in rows]


def subject_names(ceval_dir):
    """{subject id: Chinese name} from subject_mapping.json; {} (and a warning) without it."""
    path = os.path.join(ceval_dir, "subject_mapping.json")
    if not os.path.isfile(path):
        print(f"warning: {path} not found: prompts name subjects by their id ('high school physics' instead of "
              f"'高中物理'), so scores are not comparable with the standard prompt. It ships with C-Eval.",
              file=sys.stderr)
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            mapping = json.load(f)
    except ValueError as e:   # bad JSON or bad UTF-8
        raise SystemExit(f"error: {path} is not valid JSON ({' '.join(str(e).split())[:200]}): restore it from "
                         "C-Eval (ceval-exam.zip), or delete it to name subjects by their id") from None
    shape = isinstance(mapping, dict) and all(isinstance(v, list) and len(v) >= 2 and isinstance(v[1], str)
                                              for v in mapping.values())
    if not shape:
        raise SystemExit(f"error: {path} is not C-Eval's subject mapping ({{subject id: [English name, Chinese name, "
                         "category]}}): restore it from C-Eval (ceval-exam.zip), or delete it")
    return {k: v[1] for k, v in mapping.items()}


def format_question(row, with_answer):
    text = f"{row['question']}\n" + "".join(f"{L}. {row[L]}\n" for L in LETTERS) + "答案："
    return text + (f"{row['answer']}\n\n" if with_answer else "")


def build_prompt(subject_name, row, shots, style="ceval", mode="ppl"):
    """The text before the answer. For style "ceval" PPL and GEN share it; for "opencompass" they differ, as
    OpenCompass renders its label-keyed PPL template and its GEN template differently (module docstring); there
    the PPL prompt ends with the newline before the answer letter."""
    head = f"以下是中国关于{subject_name}考试的单项选择题，请选出其中的正确答案。"
    if style == "ceval":
        return head + "\n\n" + "".join(format_question(s, True) for s in shots) + format_question(row, False)
    turn = lambda r: f"{head}\n{r['question']}\n" + "".join(f"{L}. {r[L]}\n" for L in LETTERS) + "答案: "
    if mode == "gen":   # ice separator/eos '' (meta template); every non-empty item joined by '\n'
        return "\n".join([x for s in shots for x in (turn(s), s["answer"])] + [turn(row)]) if shots else "\n" + turn(row)
    # PPL: ice separator and ice eos '\n' each become an item of their own, so 3 newlines between shots and 5
    # after the last; zero-shot leaves the lone eos item: 2 newlines before the question
    ice = "\n\n\n".join(turn(s) + "\n" + s["answer"] for s in shots) + "\n\n\n\n\n" if shots else "\n\n"
    return ice + turn(row) + "\n"


def right_padded(seqs):
    """Token lists -> one [len(seqs), longest] long tensor, each row left-aligned and padded with 0 on the right."""
    x = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
    for row, seq in zip(x, seqs):
        row[:len(seq)] = torch.tensor(seq)
    return x


@torch.no_grad()
def score_positions(model, seqs, queries, device, autocast=nullcontext(), batch_tokens=16384, chunk_rows=256):
    """log p(token | seq[:pos + 1]) for every (pos, token) in queries[i], for all sequences seqs[i].

    Sequences are sorted by length and packed into right-padded batches of at most batch_tokens tokens (padding
    is harmless: causal attention never looks ahead). Only the queried positions are multiplied by the lm_head:
    [positions, vocab] logits (chunk_rows at a time) instead of [B, T, vocab] -- the full vocabulary is still
    needed there, for the log-softmax normaliser. Returns a list (per sequence) of lists (per query)."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    # the logits in fp32: bf16's steps of 1/16 at a logit of ~10 tied close options, and a tie goes to A
    out, weight = [None] * len(seqs), model.lm_head_weight.float()
    i = 0
    while i < len(order):
        j = i + 1   # sorted ascending: the newest member is the longest, so rows x length is the padded size
        while j < len(order) and (j + 1 - i) * len(seqs[order[j]]) <= batch_tokens:
            j += 1
        batch = order[i:j]
        x = right_padded([seqs[k] for k in batch])
        with autocast:
            h = model.hidden_states(x.to(device))
        # logits once per distinct (row, position): the four letters after one prompt share one row of logits
        where = sorted({(b, p) for b, k in enumerate(batch) for p, _ in queries[k]})
        slot = {bp: n for n, bp in enumerate(where)}
        rows = torch.tensor([slot[(b, p)] for b, k in enumerate(batch) for p, _ in queries[k]], device=h.device)
        toks = torch.tensor([t for k in batch for _, t in queries[k]], device=h.device)
        b_idx, p_idx = (torch.tensor(v, device=h.device) for v in zip(*where))
        hs, picked = h[b_idx, p_idx], torch.empty(len(rows), device=h.device)
        for c in range(0, len(where), chunk_rows):
            logp = F.log_softmax(F.linear(hs[c:c + chunk_rows].float(), weight), dim=-1)
            sel = (rows >= c) & (rows < c + chunk_rows)
            picked[sel] = logp[rows[sel] - c, toks[sel]]
        picked, n = picked.tolist(), 0
        for k in batch:
            out[k] = picked[n:n + len(queries[k])]
            n += len(queries[k])
        i = j
    return out


def continuation_logprobs(model, prompt_ids, continuations, device, autocast=nullcontext(), reduce="sum"):
    """Sum (reduce="mean": mean per token) of log p(continuation tokens | prompt) for each continuation. One-token
    continuations (letters) are all read off one forward of the prompt; longer ones go as rows prompt+continuation.
    The prompt is left-truncated so that the longest sequence fits max_position_embeddings."""
    return score_continuations(model, [(prompt_ids, continuations)], device, autocast, reduce)[0]


def score_continuations(model, items, device, autocast=nullcontext(), reduce="sum", batch_tokens=16384):
    """continuation_logprobs for many (prompt_ids, continuations) items at once, batched across items."""
    max_len = model.config.max_position_embeddings
    seqs, queries, owner = [], [], []
    for n, (prompt_ids, conts) in enumerate(items):
        prompt_ids = prompt_ids[-(max_len - max(len(c) for c in conts)):]
        P = len(prompt_ids)
        if all(len(c) == 1 for c in conts):   # one forward of the prompt scores every one-token continuation
            seqs.append(prompt_ids), queries.append([(P - 1, c[0]) for c in conts]), owner.append((n, None))
        else:   # rows prompt+continuation: 4x the prompt compute, but one code path and fully batched
            for m, c in enumerate(conts):
                seqs.append(prompt_ids + c), queries.append([(P - 1 + k, t) for k, t in enumerate(c)]), owner.append((n, m))
    scored = score_positions(model, seqs, queries, device, autocast, batch_tokens)
    res = [[None] * len(conts) for _, conts in items]
    for (n, m), lp in zip(owner, scored):
        if m is None:   # one-token continuations: sum == mean == the one log-prob
            res[n] = lp
        else:
            res[n][m] = sum(lp) / (len(lp) if reduce == "mean" else 1)
    return res


def extract_choice(text):
    """The answer letter in generated text: '答案：B', '答案是：B', '选B', '(B)', 'B.', ' B' ...; None if absent.
    An explicit '答案…X' anywhere wins over a leading letter ('B\\n\\n…答案：C' -> C)."""
    for pattern in (r"答案\s*(?:是|为|应该是|应选|应为)?\s*[:：]?\s*(?:是|为|选)?\s*[\(（【\[]?\s*([ABCD])(?![A-Za-z])",
                    r"选\s*[项择]?\s*[\(（]?\s*([ABCD])(?![A-Za-z])",
                    r"^\s*[\(（]?\s*([ABCD])(?![A-Za-z])", r"(?<![A-Za-z])([ABCD])(?![A-Za-z])"):
        m = re.search(pattern, text)
        if m:
            return m.group(1)
    return None


def first_capital(text):
    """OpenCompass's first_capital_postprocess: the first upper-case character, whatever it is; None if none."""
    return next((ch for ch in text if ch.isupper()), None)


@torch.no_grad()
def generate_answers(model, enc, prompts, device, max_new_tokens=8, style="ceval", batch_size=32,
                     cache_tokens=2**16):
    """Greedy continuations (decoded text) of prompts (token lists), batched: prompts sorted by length go as
    right-padded rows through one generate.Decoder, each row decoding from its own position (up to batch_size
    rows, and rows x cache length <= cache_tokens: 7.5 GB of bf16 cache for the 0.6B model). Style "opencompass"
    decodes max_new_tokens at a time until a capital letter appears (or EOT, or OPENCOMPASS_MAX_OUT tokens): the
    answer is fixed by then. On CUDA the rows run on a bf16 copy of the weights (autocast's bf16 matmuls, without
    autocast, whose cast cache a CUDA graph must not read), with the step in a CUDA graph and never compiled (the
    Triton step needs no compilation; eight tokens a question would not pay a compilation back)."""
    max_pos = model.config.max_position_embeddings
    if str(device).startswith("cuda"):
        model = copy.deepcopy(model).to(torch.bfloat16).eval()
    limit = min(OPENCOMPASS_MAX_OUT, max_pos // 2) if style == "opencompass" else max_new_tokens  # // 2: tiny test models
    ids = [p[-(max_pos - limit):] for p in prompts]
    new = [[] for _ in prompts]
    decoder, shape = None, None
    todo = sorted(range(len(prompts)), key=lambda i: len(ids[i]))
    while todo:
        seqs = [ids[i] + new[i] for i in todo]
        step = min(max_new_tokens, min(limit - len(new[i]) for i in todo))
        max_len = min(max_pos, max(map(len, seqs)) + step)
        rows = max(1, min(batch_size, len(todo), cache_tokens // max_len))
        if shape != (rows, max_len):   # one Decoder for all; opencompass rounds may need a longer cache
            decoder, shape = Decoder(model, rows, max_len, step=default_step(model, compiled=False)), (rows, max_len)
        again = []
        for b in range(0, len(todo), rows):
            group = list(range(b, min(b + rows, len(todo))))
            real = len(group)
            group += group[-1:] * (rows - real)   # a short last batch: repeat its last row, discard the copies
            lengths = [len(seqs[g]) for g in group]
            x = right_padded([seqs[g] for g in group])
            decoder.reset()
            out = decoder.generate(x.to(device), step, temperature=0, eos=EOT, lengths=lengths)[:, x.shape[1]:]
            for g, toks in zip(group[:real], out.tolist()):
                i = todo[g]
                new[i] += toks
                done = EOT in toks or len(new[i]) >= limit
                if style == "opencompass" and not done and first_capital(_decode(enc, new[i])) is None:
                    again.append(i)
        todo = again
    return [_decode(enc, n) for n in new]


def _decode(enc, toks):
    toks = toks[:toks.index(EOT)] if EOT in toks else toks
    return enc.decode([t for t in toks if t < EOT])


def ceval(model, enc, ceval_dir, mode="ppl", split="val", shots=0, subjects=None, device="cpu",
          autocast=nullcontext(), ppl_continuation="letter", max_new_tokens=8, prompt_style="ceval",
          batch_tokens=16384):
    """Score every subject; returns {subject: {"n", "ppl_acc", "gen_acc", "predictions"}}. All questions of all
    subjects are scored together (batched by length), then handed back per subject."""
    if prompt_style not in PROMPT_STYLES or ppl_continuation not in CONTINUATIONS:
        raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, ppl_continuation one of {CONTINUATIONS}")
    split_dir = os.path.join(ceval_dir, split)
    if not os.path.isdir(split_dir):
        raise SystemExit(f"error: {split_dir} not found (expected the C-Eval layout <dir>/{split}/<subject>_{split}.csv)")
    names = subject_names(ceval_dir)
    available = sorted(f[:-len(f"_{split}.csv")] for f in os.listdir(split_dir) if f.endswith(f"_{split}.csv"))
    subjects = subjects or available
    unknown = set(subjects) - set(available)
    if unknown:
        raise SystemExit(f"error: no {split} file for subject(s) {sorted(unknown)} in {split_dir}")
    questions = []   # (subject, row, ppl prompt ids, gen prompt ids)
    for subject in subjects:
        rows = read_ceval_csv(os.path.join(split_dir, f"{subject}_{split}.csv"), need_answer=False)
        dev = read_ceval_csv(os.path.join(ceval_dir, "dev", f"{subject}_dev.csv"), True) if shots else []
        name = names.get(subject, subject.replace("_", " "))
        for row in rows:
            # with split=dev the scored question is one of the dev rows: never show it its own answer
            shot_rows = [s for s in dev if split != "dev" or s != row][:shots]
            ppl, gen = (build_prompt(name, row, shot_rows, prompt_style, m) for m in ("ppl", "gen"))
            ppl_ids = enc.encode(ppl)
            questions.append((subject, row, ppl_ids, ppl_ids if gen == ppl else enc.encode(gen)))
    preds = [{"id": row.get("id")} for _, row, _, _ in questions]
    if mode in ("ppl", "both"):
        conts = [[enc.encode(L if ppl_continuation == "letter" else f"{L}. {row[L]}") for L in LETTERS]
                 for _, row, _, _ in questions]
        reduce = "mean" if ppl_continuation == "text_mean" else "sum"
        scores = score_continuations(model, [(q[2], c) for q, c in zip(questions, conts)], device, autocast, reduce,
                                     batch_tokens)
        for pred, s in zip(preds, scores):
            pred["ppl"], pred["ppl_scores"] = LETTERS[int(np.argmax(s))], s
    if mode in ("gen", "both"):
        texts = generate_answers(model, enc, [q[3] for q in questions], device, max_new_tokens, prompt_style)
        for pred, text in zip(preds, texts):
            pred["gen_text"] = text
            pred["gen"] = first_capital(text) if prompt_style == "opencompass" else extract_choice(text)
    results = {}
    for subject in subjects:
        mine = [(row, p) for (s, row, _, _), p in zip(questions, preds) if s == subject]
        res = results[subject] = {"n": len(mine), "predictions": [p for _, p in mine]}
        if mine and "answer" in mine[0][0]:
            for m in ("ppl", "gen"):
                if mode in (m, "both"):
                    res[f"{m}_acc"] = sum(p[m] == row["answer"].strip() for row, p in mine) / len(mine)
    return results


# -------------------------------------------------------------------------------------------------- CLI
init_from = "out"          # training out_dir (newest checkpoint), a checkpoint dir, or a HF Qwen3 directory
data_dir = ""              # prepared data (python prepare.py ...): report val loss and bits-per-byte
seq_len = None             # default: the checkpoint's training seq_len, else 2048 capped at max_position_embeddings
batch_size = 4
val_tokens = None          # default: the checkpoint's training val_tokens (the sample train.py logged), else 2**19
doc_mask = None            # default: the checkpoint's training doc_mask (attention restarts at <|endoftext|>), else False
ceval_dir = ""             # local C-Eval files: report C-Eval
mode = "both"              # ppl | gen | both
split = "val"              # val | dev | test (test has no answers: predictions only)
shots = 0                  # 0..5 dev examples in the prompt
subjects = ""              # comma-separated subject ids; empty = all in the split
prompt_style = "ceval"     # ceval (standard C-Eval prompt) | opencompass (OpenCompass's templates, comparable numbers)
ppl_continuation = "letter"  # letter | text (summed log-prob) | text_mean (mean log-prob per token)
max_new_tokens = 8         # GEN: greedy tokens per question (opencompass style: per round, until a capital letter)
batch_tokens = 16384       # PPL: tokens per padded batch
results = "ceval_results.json"   # the C-Eval results file (JSON: per-subject accuracy and every prediction)
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = "bfloat16" if torch.cuda.is_available() else "float32"


def report_ceval(res, split):
    """The per-subject table and the average over subjects; returns the averages."""
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
    return avg


def main():
    global seq_len, val_tokens, doc_mask
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configurator.py")).read(), globals())
    if mode not in ("ppl", "gen", "both") or split not in ("val", "dev", "test") or not 0 <= shots <= 5 \
            or ppl_continuation not in CONTINUATIONS or prompt_style not in PROMPT_STYLES:
        sys.exit("error: --mode ppl|gen|both, --split val|dev|test, --shots 0..5, "
                 "--ppl_continuation letter|text|text_mean, --prompt_style ceval|opencompass")
    if not data_dir and not ceval_dir:
        sys.exit("error: give --data_dir (val loss / bpb) and/or --ceval_dir (C-Eval)")
    check_ranges(globals(), {k: 1 for k in ("batch_size", "batch_tokens", "max_new_tokens", "seq_len", "val_tokens")
                             if globals()[k] is not None})
    if ceval_dir:   # where the results go is checked before the work, not found unwritable after it
        folder = os.path.dirname(os.path.abspath(results))
        if not os.path.isdir(folder):
            sys.exit(f"error: --results={results}: the folder {folder} does not exist: create it or choose another path")
        make_writable_dir(folder)
    model, model_dir = load_model(init_from, device=device)
    model.eval()
    amp = torch.autocast("cuda", dtype=getattr(torch, dtype)) if device.startswith("cuda") and dtype != "float32" else nullcontext()
    print(f"[{model_dir}]")
    if data_dir:
        seq_len, val_tokens, doc_mask, src = val_settings(model_dir, seq_len, val_tokens,
                                                          model.config.max_position_embeddings, doc_mask)
        print(f"seq_len {seq_len} | val_tokens {val_tokens:,} | doc_mask {doc_mask} "
              f"(what was not given on the command line: {src})")
        try:
            loss, bpb = val_loss_bpb(model, data_dir, seq_len, val_tokens, batch_size, device, amp, doc_mask)
        except (OSError, ValueError) as e:   # data.py names the file and what to do
            sys.exit(f"error: {e}")
        print(f"val loss {loss:.4f} | val bpb {bpb:.4f}")
    if ceval_dir:
        res = ceval(model, get_tokenizer(), ceval_dir, mode, split, shots,
                    [s for s in subjects.split(",") if s] or None, device, amp, ppl_continuation, max_new_tokens,
                    prompt_style, batch_tokens)
        avg = report_ceval(res, split)
        out = {"model": model_dir, "split": split, "shots": shots, "mode": mode, "prompt_style": prompt_style,
               "ppl_continuation": ppl_continuation, "average": avg, "subjects": res}
        try:
            write_json(results, out, ensure_ascii=False, indent=1)
        except OSError as e:   # a full disk after all: the table above is on the screen
            sys.exit(no_space_message(results, len(json.dumps(out, ensure_ascii=False, indent=1).encode()), e,
                                      "the table above has the scores"))
        print(f"wrote {results}")


if __name__ == "__main__":
    main()
