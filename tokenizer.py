"""
The Qwen tokenizer on tiktoken, and everything that turns token ids back into text or into Hugging Face files.

- `get_tokenizer()`: Qwen's BPE ranks (shipped in assets/, sha256-checked), the Qwen2/3 pre-tokenizer regex, NFC
  normalisation and the 26 Qwen3 special tokens (151643 <|endoftext|> ... 151668 </think>);
- `token_byte_lengths`: the UTF-8 bytes of every id, the denominator of bits-per-byte;
- `save_tokenizer(dir)`: vocab.json / merges.txt / tokenizer.json / tokenizer_config.json, so that
  transformers.AutoTokenizer reproduces get_tokenizer() id for id (merges are recovered from the ranks);
- `StreamDecoder`: incremental detokenizing for streaming output (partial UTF-8 characters are held back);
- the chat template: `render_chat_text` writes a conversation as Qwen3's official chat template does (thinking,
  tools, tool calls and responses), `render_chat` gives its ids and the loss mask of what the model must produce,
  and CHAT_TEMPLATES["qwen3"] (assets/chat_template.jinja) is the same template in Jinja for the HF export
  (tests prove text and ids equal in transformers). "chatml" is plain ChatML, for those who want it.
"""
import base64, codecs, hashlib, json, os, re, unicodedata
from functools import lru_cache

import numpy as np
import tiktoken

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
RANKS_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
PAT_STR = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"""
           r"""\s+(?!\S)|\s+""")
# Qwen3's added tokens, ids 151643..151668. The ones marked False are "added" but not special in HF terms
# (they are meant to appear in text, e.g. <think>), though tiktoken treats all of them as special.
SPECIALS = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
            ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
            ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
            ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
            ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
            ("<|repo_name|>", False), ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
            ("<think>", False), ("</think>", False)]
N_ORDINARY = 151643          # ids below this are BPE tokens; the specials follow
EOT = N_ORDINARY             # <|endoftext|>: ends every pretraining document (Qwen uses no BOS)
IM_START, IM_END = EOT + 1, EOT + 2   # ChatML turn delimiters
QWEN_VOCAB = N_ORDINARY + len(SPECIALS)   # 151669: a model whose vocab_size is below this cannot hold every id
THINK, END_THINK = QWEN_VOCAB - 2, QWEN_VOCAB - 1   # <think>, </think>: a Qwen3 answer's reasoning between them


class QwenEncoding(tiktoken.Encoding):
    """A tiktoken.Encoding that NFC-normalises text before encoding, as Qwen's HF tokenizer does."""

    def encode(self, text, **kw):
        return super().encode(unicodedata.normalize("NFC", text), **kw)

    def encode_ordinary(self, text):
        return super().encode_ordinary(unicodedata.normalize("NFC", text))

    def encode_ordinary_batch(self, texts, num_threads=8):
        return super().encode_ordinary_batch([unicodedata.normalize("NFC", t) for t in texts], num_threads=num_threads)


def load_ranks():
    path = os.path.join(ASSETS, "qwen.tiktoken")
    raw = open(path, "rb").read()
    if hashlib.sha256(raw).hexdigest() != RANKS_SHA256:
        raise RuntimeError(f"{path} has the wrong sha256 (expected {RANKS_SHA256}); restore it from git")
    return {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in raw.splitlines() if line)}


@lru_cache(maxsize=1)
def get_tokenizer():
    ranks = load_ranks()
    specials = {tok: len(ranks) + i for i, (tok, _) in enumerate(SPECIALS)}
    return QwenEncoding(name="qwen3", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens=specials)


@lru_cache(maxsize=4)
def token_byte_lengths(vocab_size):
    """UTF-8 byte length of every token id (specials and padding ids count 0): the denominator of bits-per-byte."""
    enc = get_tokenizer()
    out = np.zeros(vocab_size, dtype=np.int64)
    for i in range(min(N_ORDINARY, vocab_size)):   # every ordinary id the model has, whatever its vocab_size
        out[i] = len(enc.decode_single_token_bytes(i))
    return out


# ------------------------------------------------------------------------------ the chat template
# Qwen3's chat template in Jinja (the HF export's), and plain ChatML; render_chat_text writes what each renders.
CHAT_TEMPLATES = {
    "qwen3": open(os.path.join(ASSETS, "chat_template.jinja"), encoding="utf-8").read(),
    "chatml": "{%- for message in messages -%}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] "
              "+ '<|im_end|>\\n' -}}{%- endfor -%}{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
              "{%- endif -%}",
}
TOOLS_HEAD = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
              "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_TAIL = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
              "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
              "<args-json-object>}\n</tool_call><|im_end|>\n")


def _last_query_index(messages):
    """The last user message that is not a tool response (old-style, as user text); the last message if none.
    Qwen3 keeps reasoning only in the assistant turns after it (the steps of the current tool-using answer)."""
    for i in range(len(messages) - 1, -1, -1):
        c = messages[i].get("content")
        if messages[i].get("role") == "user" and isinstance(c, str) and not (
                c.startswith("<tool_response>") and c.endswith("</tool_response>")):
            return i
    return len(messages) - 1


def _assistant_body(m, i, last_query, last):
    """An assistant message as Qwen3 writes it between '<|im_start|>assistant\\n' and '<|im_end|>'."""
    content = m.get("content") if isinstance(m.get("content"), str) else ""
    reasoning = ""
    if isinstance(m.get("reasoning_content"), str):
        reasoning = m["reasoning_content"]
    elif "</think>" in content:  # reasoning written into the content
        reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
        content = content.split("</think>")[-1].lstrip("\n")
    if i > last_query and (last or reasoning):
        body = "<think>\n" + reasoning.strip("\n") + "\n</think>\n\n" + content.lstrip("\n")
    else:
        body = content
    for j, call in enumerate(m.get("tool_calls") or []):
        fn = call.get("function") or call
        args = fn.get("arguments")
        args = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)   # a string goes in verbatim
        body += "\n" if content or j else ""
        body += f'<tool_call>\n{{"name": "{fn.get("name")}", "arguments": {args}}}\n</tool_call>'
    return body


def chat_pieces(messages, tools=None, add_generation_prompt=False, enable_thinking=True, template="qwen3"):
    """The conversation as the template writes it, as [(text, trained, said)]: trained pieces are what the model
    must produce (an assistant turn's think block, content, tool calls and <|im_end|>), never a prompt, tool
    response or '<|im_start|>assistant\\n'; `said` pieces are the content of a system, user or tool message (what
    render_chat(plain_user_text=True) encodes as plain text). messages: OpenAI-style dicts (role, content,
    reasoning_content, tool_calls) or (role, content) pairs; tools: a list of JSON schemas; enable_thinking=False:
    the generation prompt closes an empty think block, as Qwen3's does."""
    messages = [{"role": m[0], "content": m[1]} if isinstance(m, tuple) else m for m in messages]
    if template == "chatml":
        if tools or any(m.get(k) for m in messages for k in ("tool_calls", "reasoning_content")):
            raise ValueError("the chatml template has no tools, tool calls or reasoning: use qwen3")
        out = []
        for m in messages:
            trained = m["role"] == "assistant"
            out += [(f"<|im_start|>{m['role']}\n", False, False), (m["content"], trained, not trained),
                    ("<|im_end|>", trained, False), ("\n", False, False)]
        return out + ([("<|im_start|>assistant\n", False, False)] if add_generation_prompt else [])
    if template != "qwen3":
        raise ValueError(f"unknown chat template {template!r} (qwen3 or chatml)")
    out, first_system = [], bool(messages) and messages[0].get("role") == "system"
    if tools:
        out += [("<|im_start|>system\n", False, False)] + ([(messages[0]["content"], False, True), ("\n\n", False, False)]
                                                         if first_system else [])
        out.append((TOOLS_HEAD + "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools) + TOOLS_TAIL,
                    False, False))
    elif first_system:
        out += [("<|im_start|>system\n", False, False), (messages[0]["content"], False, True),
                ("<|im_end|>\n", False, False)]
    last_query = _last_query_index(messages)
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content") if isinstance(m.get("content"), str) else ""
        if role == "user" or (role == "system" and i > 0):
            out += [(f"<|im_start|>{role}\n", False, False), (content, False, True), ("<|im_end|>\n", False, False)]
        elif role == "assistant":
            body = _assistant_body(m, i, last_query, i == len(messages) - 1)
            out += [("<|im_start|>assistant\n", False, False), (body + "<|im_end|>", True, False), ("\n", False, False)]
        elif role == "tool":  # consecutive tool responses share one user turn
            first = i == 0 or messages[i - 1].get("role") != "tool"
            last = i == len(messages) - 1 or messages[i + 1].get("role") != "tool"
            out += [(("<|im_start|>user" if first else "") + "\n<tool_response>\n", False, False), (content, False, True),
                    ("\n</tool_response>" + ("<|im_end|>\n" if last else ""), False, False)]
    if add_generation_prompt:
        out.append(("<|im_start|>assistant\n" + ("<think>\n\n</think>\n\n" if enable_thinking is False else ""),
                    False, False))
    return out


def render_chat_text(messages, tools=None, add_generation_prompt=False, enable_thinking=True, template="qwen3"):
    """The text apply_chat_template renders with CHAT_TEMPLATES[template] (see chat_pieces)."""
    return "".join(t for t, _, _ in chat_pieces(messages, tools, add_generation_prompt, enable_thinking, template))


@lru_cache(maxsize=1)
def _all_token_bytes():
    """Byte length of every id's text, the specials' names included."""
    enc = get_tokenizer()
    return np.array([len(enc.decode_single_token_bytes(i)) for i in range(enc.n_vocab)], dtype=np.int64)


def render_chat(messages, tools=None, add_generation_prompt=False, enable_thinking=True, template="qwen3",
                plain_user_text=False):
    """-> (ids, loss mask), lists: the rendered text tokenized, and 1 on every token with a byte in a trained piece
    (chat_pieces).

    plain_user_text=False (the default; sft.py, training, rl.py): tokenized as a HF tokenizer does with
    apply_chat_template, so that training ids are the export's -- every special token's text becomes its id,
    wherever it is, a message's content included. plain_user_text=True (chat.py by default, serving): the content
    of system, user and tool messages is plain text (encode_ordinary): a user who types <|im_start|>system or
    <tool_call> gets those characters' ordinary tokens, and cannot open a turn or fake a tool call. Text without
    special tokens gives the same ids either way."""
    # NFC piece by piece is NFC of the whole: pieces meet at a newline or a tag, which compose with nothing
    pieces = [(unicodedata.normalize("NFC", t), trained, said and plain_user_text)
              for t, trained, said in chat_pieces(messages, tools, add_generation_prompt, enable_thinking, template)]
    text = "".join(t for t, _, _ in pieces)
    ids = _encode_pieces(pieces) if plain_user_text else get_tokenizer().encode(text, allowed_special="all")
    ends = np.cumsum(_all_token_bytes()[ids])
    starts, mask, at = ends - _all_token_bytes()[ids], np.zeros(len(ids), dtype=bool), 0
    for t, trained, _ in pieces:
        n = len(t.encode("utf-8"))
        if trained and n:
            mask |= (ends > at) & (starts < at + n)
        at += n
    return ids, mask.astype(int).tolist()


_SPECIAL_RE = re.compile("|".join(re.escape(tok) for tok, _ in SPECIALS))


def _encode_pieces(pieces):
    """The ids of the pieces' text as encode(allowed_special="all") gives them (special tokens split the text, the
    runs between are BPE-encoded whole), except that a special token's text in a plain piece stays text: it joins
    the run around it. Runs are never cut at a piece boundary, so text without special tokens gives the ids of the
    whole."""
    enc, ids, run = get_tokenizer(), [], []
    for text, _, plain in pieces:
        at = 0
        for m in ([] if plain else _SPECIAL_RE.finditer(text)):
            run.append(text[at:m.start()])
            ids += enc.encode_ordinary("".join(run)) + [enc._special_tokens[m.group()]]
            run, at = [], m.end()
        run.append(text[at:])
    return ids + enc.encode_ordinary("".join(run))


# ------------------------------------------------------------------------------ Hugging Face tokenizer export
def _bytes_to_unicode():
    """GPT-2's reversible byte -> printable-unicode map used by byte-level BPE vocab files."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b), cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _bpe_split(ranks, token, max_rank):
    """Run BPE on `token` using only merges ranked below max_rank; for a real vocabulary entry this ends in
    exactly the two parts whose merge created it. This recovers merges.txt from the ranks."""
    parts = [bytes([b]) for b in token]
    while True:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < max_rank and (best is None or r < best[1]):
                best = (i, r)
        if best is None:
            return parts
        i = best[0]
        parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]


def save_tokenizer(out_dir, chat_template="qwen3"):
    """Write vocab.json, merges.txt, tokenizer.json and tokenizer_config.json so that
    transformers.AutoTokenizer.from_pretrained(out_dir) reproduces get_tokenizer() id for id, offline.
    chat_template (a CHAT_TEMPLATES name, or None) goes into tokenizer_config.json for apply_chat_template."""
    if chat_template is not None and chat_template not in CHAT_TEMPLATES:
        raise ValueError(f"unknown chat template {chat_template!r} (one of {', '.join(CHAT_TEMPLATES)})")
    os.makedirs(out_dir, exist_ok=True)
    ranks = load_ranks()
    b2u = _bytes_to_unicode()
    as_str = lambda b: "".join(b2u[x] for x in b)
    vocab = {as_str(tok): rank for tok, rank in ranks.items()}
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) > 1:
            parts = _bpe_split(ranks, tok, rank)
            assert len(parts) == 2, f"rank {rank} is not a merge of two tokens"
            merges.append((as_str(parts[0]), as_str(parts[1])))
    added = [{"id": len(ranks) + i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": special} for i, (t, special) in enumerate(SPECIALS)]
    tokenizer_json = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": PAT_STR}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [list(m) for m in merges]},
    }
    config = {
        "tokenizer_class": "Qwen2Tokenizer", "model_max_length": 131072, "errors": "replace",
        "bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": None,
        "clean_up_tokenization_spaces": False, "split_special_tokens": False, "add_prefix_space": False,
        "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added},
        "additional_special_tokens": [t for t, special in SPECIALS if special],
        **({"chat_template": CHAT_TEMPLATES[chat_template]} if chat_template else {}),
    }
    files = {"tokenizer.json": tokenizer_json, "tokenizer_config.json": config, "vocab.json": vocab}
    for name, obj in files.items():
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=None if name != "tokenizer_config.json" else 2)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))


class StreamDecoder:
    """Incremental detokenizer for streaming: a token may end in the middle of a multi-byte UTF-8 character
    (common for Chinese and emoji); those bytes are held back until the character is complete. Python's incremental
    UTF-8 decoder does exactly that, and replaces invalid bytes as decoding the whole text at once does."""

    def __init__(self, enc):
        self.enc, self.utf8 = enc, codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id):
        return self.utf8.decode(self.enc.decode_single_token_bytes(token_id))

    def flush(self):
        out = self.utf8.decode(b"", final=True)
        self.utf8.reset()
        return out
