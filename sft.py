"""
Instruction tuning data: chat conversations -> ChatML token ids + a loss mask -> token shards for train.py.

1. formats: one conversation per .jsonl line, in any of the common layouts
       {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}          (OpenAI)
       {"conversations": [{"from": "system"|"human"|"gpt", "value": "..."}, ...]}            (ShareGPT)
       {"instruction": "...", "input": "...", "output": "...", "system": "..."(optional)}     (Alpaca)
2. the template: Qwen's ChatML, `<|im_start|>{role}\\n{content}<|im_end|>\\n` per message; the loss mask is 1 on
   what the assistant says (its content tokens and its <|im_end|>) and 0 on everything else (system and user
   text, `<|im_start|>assistant\\n`, the newline after <|im_end|>). CHAT_TEMPLATE is the same template in Jinja
   for the exported Hugging Face tokenizer (apply_chat_template gives exactly render()'s ids; tests prove it);
3. preparation: `python sft.py --input FILES --out DIR` tokenizes once into shards like prepare.py (per input
   file and split: tokens, loss mask and conversation lengths, three data.write_shard files) plus meta.json,
   counting bad rows by reason;
4. the loader (train.py --sft_data=DIR) is data.py's: conversations packed into seq_len rows.

`python sft_demo.py` is the offline end-to-end demo.
"""
import argparse, json, os, sys

import numpy as np

from data import write_shard
from prepare import _is_val, _shard_name
from tokenizer import IM_END, IM_START, RANKS_SHA256, SPECIALS, get_tokenizer

# ------------------------------------------------------------------------------------------------ template
# ChatML exactly as render() writes it; no default system prompt is added (the one given, if any, is used).
CHAT_TEMPLATE = ("{%- for message in messages -%}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] "
                 "+ '<|im_end|>\\n' -}}{%- endfor -%}{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
                 "{%- endif -%}")
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}


class BadRow(Exception):
    """A row that cannot be used; str(e) is the reason it is counted under."""


def to_messages(row):
    """A parsed JSON row in any supported format -> [(role, content), ...], or BadRow(reason)."""
    if not isinstance(row, dict):
        raise BadRow("unknown_format")
    if "messages" in row or "conversations" in row:
        sharegpt = "messages" not in row
        turns = row["conversations"] if sharegpt else row["messages"]
        if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
            raise BadRow("wrong_type")
        role_key, text_key = ("from", "value") if sharegpt else ("role", "content")
        msgs = []
        for t in turns:
            role = t.get(role_key)
            role = SHAREGPT_ROLES.get(role) if sharegpt and isinstance(role, str) else role
            if role not in ROLES:
                raise BadRow("unknown_role")
            msgs.append((role, t.get(text_key)))
    elif "instruction" in row and "output" in row:  # Alpaca: the input, if any, follows the instruction
        inp = row.get("input") or ""
        if not isinstance(inp, str) or not isinstance(row["instruction"], str):
            raise BadRow("wrong_type")
        msgs = ([("system", row["system"])] if row.get("system") else []) + [
            ("user", row["instruction"] + ("\n\n" + inp if inp else "")), ("assistant", row["output"])]
    else:
        raise BadRow("unknown_format")
    if not all(isinstance(c, str) for _, c in msgs):
        raise BadRow("wrong_type")
    if any(r == "system" for r, _ in msgs[1:]):
        raise BadRow("system_not_first")
    if not any(r == "assistant" for r, _ in msgs):
        raise BadRow("no_assistant_turn")
    if any(r == "assistant" and not c.strip() for r, c in msgs):
        raise BadRow("empty_assistant_turn")
    if any(tok in c for _, c in msgs for tok, _ in SPECIALS):  # would be read as a template token by HF
        raise BadRow("special_token_in_text")
    return msgs


def render(messages, add_generation_prompt=False):
    """[(role, content), ...] -> (ids, loss mask), both lists. Text goes through encode_ordinary (never parsed
    for special tokens), the template's special ids are inserted directly. 'role\\ncontent' is encoded as one
    piece, exactly as a HF tokenizer splits the rendered string at its special tokens; an assistant token is
    trained on when any of its bytes belong to the content."""
    enc, ids, mask = get_tokenizer(), [], []
    nl = enc.encode_ordinary("\n")
    for role, content in messages:
        head = role + "\n"
        piece = enc.encode_ordinary(head + content)
        ids += [IM_START] + piece + [IM_END] + nl
        if role == "assistant":
            ends = np.cumsum([len(enc.decode_single_token_bytes(t)) for t in piece])
            mask += [0] + (ends > len(head.encode())).astype(int).tolist() + [1] + [0] * len(nl)
        else:
            mask += [0] * (len(piece) + 2 + len(nl))
    if add_generation_prompt:
        ids += [IM_START] + enc.encode_ordinary("assistant\n")
        mask += [0] * (len(ids) - len(mask))
    return ids, mask


# ------------------------------------------------------------------------------------------------ preparation
def prepare_file(path, out_dir, max_len, overlong, val_fraction):
    """One .jsonl file -> <out>/{train,val}/<name>.{tokens,mask,lens}.bin and a done/<name>.json sidecar (written
    last: its presence means 'this input is done')."""
    name, skips, truncated = _shard_name(path), {}, 0
    parts = {s: ([], [], []) for s in ("train", "val")}  # token arrays, mask arrays, lengths
    bad = lambda why: skips.__setitem__(why, skips.get(why, 0) + 1)
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
                ids, mask = render(to_messages(json.loads(text)))
            except UnicodeDecodeError:
                bad("invalid_utf8")
                continue
            except json.JSONDecodeError:
                bad("bad_json")
                continue
            except BadRow as e:
                bad(str(e))
                continue
            if len(ids) > max_len:
                if overlong == "drop" or not any(mask[:max_len]):  # nothing of the answer would be left
                    bad("overlong")
                    continue
                ids, mask, truncated = ids[:max_len], mask[:max_len], truncated + 1
            # prepare.py's split, keyed on the conversation's JSON text: the same conversation, the same split
            toks, masks, lens = parts["val" if _is_val(text, val_fraction) else "train"]
            toks.append(np.array(ids, dtype=np.uint32)), masks.append(np.array(mask, dtype=np.uint32)), lens.append(len(ids))
    side = {"input": os.path.abspath(path), "stat": _stat(path), "skipped": skips, "truncated": truncated,
            "conversations": {}, "tokens": {}, "loss_tokens": {}}
    for split, (toks, masks, lens) in parts.items():
        os.makedirs(os.path.join(out_dir, split), exist_ok=True)
        cat = lambda a: np.concatenate(a) if a else np.zeros(0, dtype=np.uint32)
        for kind, arr in (("tokens", cat(toks)), ("mask", cat(masks)), ("lens", np.array(lens, dtype=np.uint32))):
            write_shard(os.path.join(out_dir, split, f"{name}.{kind}.bin"), arr)
        side["conversations"][split], side["tokens"][split] = len(lens), int(sum(lens))
        side["loss_tokens"][split] = int(sum(int(m.sum()) for m in masks))
    os.makedirs(os.path.join(out_dir, "done"), exist_ok=True)
    tmp = os.path.join(out_dir, "done", name + ".json.tmp")
    json.dump(side, open(tmp, "w"))
    os.replace(tmp, tmp[:-4])
    return side


def _stat(path):
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def prepare(inputs, out_dir, max_len=2048, overlong="drop", val_fraction=0.01, quiet=False):
    """Tokenize every .jsonl input (skipping those already done, unless the file changed since), write meta.json."""
    if overlong not in ("drop", "truncate"):
        raise SystemExit(f"error: --overlong must be drop|truncate, got {overlong!r}")
    files = sorted({p for spec in inputs for p in ([spec] if os.path.isfile(spec) else
                    [os.path.join(r, f) for r, _, fs in os.walk(spec) for f in fs] if os.path.isdir(spec) else [])
                    if p.endswith(".jsonl")})
    if not files:
        raise SystemExit(f"error: --input {inputs} names no .jsonl file")
    settings = {"max_len": max_len, "overlong": overlong, "val_fraction": val_fraction}
    old = os.path.join(out_dir, "meta.json")
    if os.path.exists(old) and {k: json.load(open(old)).get(k) for k in settings} != settings:
        raise SystemExit(f"error: {out_dir} was prepared with other settings ({old}): use another --out")
    sides = []
    for path in files:
        side_path = os.path.join(out_dir, "done", _shard_name(path) + ".json")
        side = json.load(open(side_path)) if os.path.exists(side_path) else {}
        sides.append(side if side.get("stat") == _stat(path) else prepare_file(path, out_dir, max_len, overlong, val_fraction))
    total = lambda key: {s: sum(x[key][s] for x in sides) for s in ("train", "val")}
    skipped = {}
    for x in sides:
        for k, v in x["skipped"].items():
            skipped[k] = skipped.get(k, 0) + v
    meta = {"format": "sft-chatml", "tokenizer_sha256": RANKS_SHA256, **settings,
            "shards": [{"name": _shard_name(p), "input": x["input"], "conversations": x["conversations"]}
                       for p, x in zip(files, sides)],
            "conversations": total("conversations"), "tokens": total("tokens"), "loss_tokens": total("loss_tokens"),
            "truncated": sum(x["truncated"] for x in sides), "skipped_rows": skipped}
    json.dump(meta, open(old + ".tmp", "w"), indent=1)
    os.replace(old + ".tmp", old)
    if not quiet:
        print(f"{len(files)} files -> {meta['conversations']['train']:,} train / {meta['conversations']['val']:,} val "
              f"conversations, {meta['tokens']['train']:,} train tokens ({meta['loss_tokens']['train']:,} trained on); "
              f"truncated {meta['truncated']}; skipped rows: {skipped or 'none'}")
    return meta


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Tokenize chat conversations (.jsonl) for train.py --sft_data (see README).")
    ap.add_argument("--input", nargs="+", help=".jsonl files or directories (OpenAI messages, ShareGPT or Alpaca rows)")
    ap.add_argument("--out", help="output directory (shards + meta.json)")
    ap.add_argument("--seq_len", type=int, default=2048, help="the training seq_len; default for --max_len")
    ap.add_argument("--max_len", type=int, default=None, help="longest conversation in tokens (default: --seq_len)")
    ap.add_argument("--overlong", default="drop", choices=("drop", "truncate"), help="what to do with longer ones")
    ap.add_argument("--val_fraction", type=float, default=0.01)
    a = ap.parse_args()
    if not a.input or not a.out:
        ap.error("--input and --out are required")
    else:
        meta = prepare(a.input, a.out, a.max_len or a.seq_len, a.overlong, a.val_fraction)
        sys.exit(0 if meta["conversations"]["train"] else 1)
