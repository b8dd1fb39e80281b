"""
Instruction tuning data: chat conversations -> templated token ids + a loss mask -> packed rows for train.py.

1. formats: one conversation per .jsonl line, in any of the common layouts
       {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": "..."}, ...], "tools": [...]}  (OpenAI)
       {"conversations": [{"from": "system"|"human"|"gpt", "value": "..."}, ...]}            (ShareGPT)
       {"instruction": "...", "input": "...", "output": "...", "system": "..."(optional)}     (Alpaca)
   OpenAI rows may carry tools (JSON schemas), assistant `tool_calls` (arguments as an object or a JSON string),
   `tool` messages answering them and `reasoning_content` (or <think>...</think> in the content);
2. the template: Qwen3's chat template by default, ChatML with --chat_template=chatml (tokenizer.render_chat; the
   export carries the same template in Jinja). The loss mask is 1 on what the model must produce -- each assistant
   turn as the template renders it in the whole conversation (think block, content, tool calls, its <|im_end|>)
   -- and 0 on everything else (system, user and tool text, `<|im_start|>assistant\\n`, the newline after <|im_end|>);
3. preparation: `python sft.py --input FILES --out DIR` tokenizes once into shards like prepare.py (per input
   file and split: tokens, loss mask and conversation lengths, three data.write_shard files) plus meta.json,
   counting bad rows by reason;
4. the loader (train.py --sft_data=DIR) is data.py's: conversations packed into seq_len rows.

`python sft_demo.py` is the offline end-to-end demo.
"""
import argparse, json, os, sys

import numpy as np

from data import DISK_FULL, HEADER_BYTES, make_writable_dir, no_space_message, write_json, write_shard
from prepare import DiskFull, _is_val, _shard_name, disk_full_is_one_line, input_identity
from readers import files_under, unique_files
from tokenizer import CHAT_TEMPLATES, EOT, QWEN_VOCAB, RANKS_SHA256, SPECIALS, render_chat

# ------------------------------------------------------------------------------------------------ rows
ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}
# ChatML's own tokens in a text would end or open turns; the tags (<think>, <tool_call>, ...) are the template's words
FRAME_TOKENS = [tok for tok, _ in SPECIALS if tok.startswith("<|")]


class BadRow(Exception):
    """A row that cannot be used; str(e) is the reason it is counted under."""


def _tool_calls(calls):
    """An assistant's tool_calls, checked: a list of {"function": {"name", "arguments"}} (or name/arguments at the
    top), arguments an object or a JSON string of one."""
    if not isinstance(calls, list) or not calls or not all(isinstance(c, dict) for c in calls):
        raise BadRow("bad_tool_call")
    for c in calls:
        fn = c.get("function") or c
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise BadRow("bad_tool_call")
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:   # (a number past 4,300 digits too)
                raise BadRow("bad_tool_arguments") from None
        if not isinstance(args, dict):
            raise BadRow("bad_tool_arguments")
    return calls


def _openai_message(t):
    """One OpenAI message -> the dict the template reads (role, content, and reasoning_content / tool_calls)."""
    role, m = t.get("role"), {"role": t.get("role"), "content": t.get("content")}
    if role not in ROLES:
        raise BadRow("unknown_role")
    if role == "assistant" and t.get("tool_calls") not in (None, []):   # [] is written for "no call"
        m["tool_calls"] = _tool_calls(t["tool_calls"])
        m["content"] = m["content"] if m["content"] is not None else ""   # a call alone has content null
    if role == "assistant" and t.get("reasoning_content") is not None:
        if not isinstance(t["reasoning_content"], str):
            raise BadRow("wrong_type")
        m["reasoning_content"] = t["reasoning_content"]
    return m


def to_chat(row, template="qwen3"):
    """A parsed JSON row in any supported format -> (messages, tools): OpenAI-style message dicts and the tool
    schemas (or None); or BadRow(reason)."""
    if not isinstance(row, dict):
        raise BadRow("unknown_format")
    tools = None
    if "messages" in row or "conversations" in row:
        sharegpt = "messages" not in row
        turns = row["conversations"] if sharegpt else row["messages"]
        if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
            raise BadRow("wrong_type")
        if sharegpt:
            roles = [SHAREGPT_ROLES.get(t.get("from")) if isinstance(t.get("from"), str) else None for t in turns]
            if None in roles:
                raise BadRow("unknown_role")
            msgs = [{"role": r, "content": t.get("value")} for r, t in zip(roles, turns)]
        else:
            msgs = [_openai_message(t) for t in turns]
            tools = row.get("tools")
            if isinstance(tools, str):  # some datasets store the schemas as a JSON string
                try:
                    tools = json.loads(tools)
                except ValueError:   # (a number past 4,300 digits too)
                    raise BadRow("bad_tools") from None
            if tools is not None and (not isinstance(tools, list) or not all(isinstance(x, dict) for x in tools)):
                raise BadRow("bad_tools")
    elif "instruction" in row and "output" in row:  # Alpaca: the input, if any, follows the instruction
        inp = row.get("input") or ""
        if not isinstance(inp, str) or not isinstance(row["instruction"], str):
            raise BadRow("wrong_type")
        msgs = ([{"role": "system", "content": row["system"]}] if row.get("system") else []) + [
            {"role": "user", "content": row["instruction"] + ("\n\n" + inp if inp else "")},
            {"role": "assistant", "content": row["output"]}]
    else:
        raise BadRow("unknown_format")
    if not all(isinstance(m["content"], str) for m in msgs):
        raise BadRow("wrong_type")
    if any(m["role"] == "system" for m in msgs[1:]):
        raise BadRow("system_not_first")
    if not any(m["role"] == "assistant" for m in msgs):
        raise BadRow("no_assistant_turn")
    if any(m["role"] == "assistant" and not m["content"].strip() and not m.get("tool_calls") for m in msgs):
        raise BadRow("empty_assistant_turn")
    open_calls = 0   # calls of the last assistant turn not yet answered by a tool message
    for m in msgs:
        if m["role"] == "tool":
            if not open_calls:
                raise BadRow("tool_without_call")
            open_calls -= 1
        else:
            open_calls = len(m.get("tool_calls") or [])
    if template == "chatml" and (tools or any(m["role"] == "tool" or "tool_calls" in m or "reasoning_content" in m
                                              for m in msgs)):
        raise BadRow("needs_qwen3_template")   # ChatML has no way to write tools, calls or reasoning
    text = json.dumps([msgs, tools], ensure_ascii=False)
    if any(tok in text for tok in FRAME_TOKENS):  # would end or open a turn in the middle of a message
        raise BadRow("special_token_in_text")
    return msgs, tools


# ------------------------------------------------------------------------------------------------ preparation
def prepare_file(path, out_dir, max_len, overlong, val_fraction, chat_template="qwen3"):
    """One .jsonl file -> <out>/{train,val}/<name>.{tokens,mask,lens}.bin and a done/<name>.json sidecar (written
    last: its presence means 'this input is done with these settings', which it records)."""
    name, skips, truncated, identity = _shard_name(path), {}, 0, input_identity(path)  # before reading: a change redoes it
    parts = {s: ([], [], []) for s in ("train", "val")}  # token arrays, mask arrays, lengths
    bad = lambda why: skips.__setitem__(why, skips.get(why, 0) + 1)
    with open(path, "rb") as f:
        for i, line in enumerate(f):
            if i == 0 and line.startswith(b"\xef\xbb\xbf"):   # a byte-order mark (Windows editors) is not JSON
                line = line[3:]
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
                msgs, tools = to_chat(json.loads(text), chat_template)
                ids, mask = render_chat(msgs, tools, template=chat_template)
            except UnicodeDecodeError:
                bad("invalid_utf8")
                continue
            except UnicodeEncodeError:   # a lone surrogate escape ("\ud800") in a string: not text
                bad("invalid_unicode")
                continue
            except ValueError:   # bad JSON, or a number past Python's 4,300-digit limit
                bad("bad_json")
                continue
            except BadRow as e:
                bad(str(e))
                continue
            except RecursionError:   # e.g. 100k '[': too deep for the parser or the template, one bad row
                bad("too_deeply_nested")
                continue
            if len(ids) > max_len:
                if overlong == "drop" or not any(mask[:max_len]):  # nothing of the answer would be left
                    bad("overlong")
                    continue
                ids, mask, truncated = ids[:max_len], mask[:max_len], truncated + 1
            # prepare.py's split, keyed on the conversation's JSON text: the same conversation, the same split
            toks, masks, lens = parts["val" if _is_val(text, val_fraction) else "train"]
            toks.append(np.array(ids, dtype=np.uint32)), masks.append(np.array(mask, dtype=np.uint32)), lens.append(len(ids))
    settings = {"max_len": max_len, "overlong": overlong, "val_fraction": val_fraction, "chat_template": chat_template}
    side = {"input": os.path.abspath(path), "stat": identity, "settings": settings, "skipped": skips,
            "truncated": truncated, "conversations": {}, "tokens": {}, "loss_tokens": {}}
    for split, (toks, masks, lens) in parts.items():
        os.makedirs(os.path.join(out_dir, split), exist_ok=True)
        cat = lambda a: np.concatenate(a) if a else np.zeros(0, dtype=np.uint32)
        for kind, arr in (("tokens", cat(toks)), ("mask", cat(masks)), ("lens", np.array(lens, dtype=np.uint32))):
            shard = os.path.join(out_dir, split, f"{name}.{kind}.bin")
            with disk_full_is_one_line(shard, HEADER_BYTES + 4 * len(arr), path):
                write_shard(shard, arr)
        side["conversations"][split], side["tokens"][split] = len(lens), int(sum(lens))
        side["loss_tokens"][split] = int(sum(int(m.sum()) for m in masks))
    os.makedirs(os.path.join(out_dir, "done"), exist_ok=True)
    side_path = os.path.join(out_dir, "done", name + ".json")
    with disk_full_is_one_line(side_path, len(json.dumps(side)), path):
        write_json(side_path, side)
    return side


def done_side(out_dir, path, settings):
    """The sidecar of an input already done with these settings, unchanged since and with intact shards, else
    None. Without the settings check a run killed under --max_len 64 and rerun with 2048 kept the first run's
    drops under a meta.json that says 2048."""
    name = _shard_name(path)
    try:
        side = json.load(open(os.path.join(out_dir, "done", name + ".json"), encoding="utf-8"))
        sizes = {"tokens": side["tokens"], "mask": side["tokens"], "lens": side["conversations"]}
        intact = all(os.path.getsize(os.path.join(out_dir, sp, f"{name}.{kind}.bin")) == HEADER_BYTES + 4 * n[sp]
                     for kind, n in sizes.items() for sp in ("train", "val"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return side if intact and side.get("stat") == input_identity(path) and side.get("settings") == settings else None


def input_files(inputs):
    """The .jsonl files --input names (folders walked, symlinked folders once), each file once; a name that is
    neither a file nor a folder stops the run (a typo must not silently leave a file out)."""
    files = []
    for spec in inputs:
        if os.path.isfile(spec):
            files.append(spec)
        elif os.path.isdir(spec):
            files += [p for p in files_under(spec) if os.path.isfile(p)]   # a broken link is not a file
        else:
            raise SystemExit(f"error: --input {spec}: no such file or directory")
    return unique_files(sorted(p for p in files if p.endswith(".jsonl")))[0]


def prepare(inputs, out_dir, max_len=2048, overlong="drop", val_fraction=0.01, quiet=False, chat_template="qwen3"):
    """Tokenize every .jsonl input (skipping those already done, unless the file changed since), write meta.json."""
    if overlong not in ("drop", "truncate"):
        raise SystemExit(f"error: --overlong must be drop|truncate, got {overlong!r}")
    if chat_template not in CHAT_TEMPLATES:
        raise SystemExit(f"error: --chat_template must be {'|'.join(CHAT_TEMPLATES)}, got {chat_template!r}")
    if not (isinstance(max_len, int) and max_len > 0):
        raise SystemExit(f"error: --max_len must be a whole number > 0, got {max_len!r}")
    if not 0 <= val_fraction < 1:
        raise SystemExit(f"error: --val_fraction must be in [0, 1), got {val_fraction!r}")
    files = input_files(inputs)
    if not files:
        raise SystemExit(f"error: --input {inputs} names no .jsonl file")
    settings = {"max_len": max_len, "overlong": overlong, "val_fraction": val_fraction, "chat_template": chat_template}
    old = os.path.join(out_dir, "meta.json")
    if os.path.exists(old):
        try:
            before = json.load(open(old, encoding="utf-8"))
            before = {k: before.get(k) for k in settings}
        except (ValueError, AttributeError):
            raise SystemExit(f"error: {old} is unreadable: delete it to prepare into {out_dir}, or use another --out") from None
        if before != settings:
            raise SystemExit(f"error: {out_dir} was prepared with other settings ({old}): use another --out")
    make_writable_dir(out_dir)
    sides = []
    try:
        for path in files:
            sides.append(done_side(out_dir, path, settings) or
                         prepare_file(path, out_dir, max_len, overlong, val_fraction, chat_template))
    except DiskFull as e:
        raise SystemExit(str(e)) from None
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
    try:
        write_json(old, meta, indent=1)
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        raise SystemExit(no_space_message(old, len(json.dumps(meta, indent=1)), e, "free space and run the same "
                                          "command again (the shards made are kept)")) from None
    if not quiet:
        print(f"{len(files)} files -> {meta['conversations']['train']:,} train / {meta['conversations']['val']:,} val "
              f"conversations, {meta['tokens']['train']:,} train tokens ({meta['loss_tokens']['train']:,} trained on); "
              f"truncated {meta['truncated']}; skipped rows: {skipped or 'none'}")
    return meta


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Tokenize chat conversations (.jsonl) for train.py --sft_data (see README).")
    ap.add_argument("--input", nargs="+", help=".jsonl files or directories (OpenAI messages with tools, ShareGPT or "
                    "Alpaca rows)")
    ap.add_argument("--out", help="output directory (shards + meta.json)")
    ap.add_argument("--seq_len", type=int, default=2048, help="the training seq_len; default for --max_len")
    ap.add_argument("--max_len", type=int, default=None, help="longest conversation in tokens (default: --seq_len)")
    ap.add_argument("--overlong", default="drop", choices=("drop", "truncate"), help="what to do with longer ones")
    ap.add_argument("--val_fraction", type=float, default=0.01)
    ap.add_argument("--chat_template", default="qwen3", choices=tuple(CHAT_TEMPLATES),
                    help="Qwen3's chat template (thinking, tools) or plain ChatML")
    a = ap.parse_args()
    if not a.input or not a.out:
        ap.error("--input and --out are required")
    else:
        if a.seq_len <= 0:
            ap.error(f"--seq_len must be > 0, got {a.seq_len}")
        meta = prepare(a.input, a.out, a.seq_len if a.max_len is None else a.max_len, a.overlong, a.val_fraction,
                       chat_template=a.chat_template)
        sys.exit(0 if meta["conversations"]["train"] else 1)
