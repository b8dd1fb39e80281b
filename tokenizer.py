"""
The Qwen tokenizer on tiktoken, and everything that turns token ids back into text or into Hugging Face files.

- `get_tokenizer()`: Qwen's BPE ranks (shipped in assets/, sha256-checked), the Qwen2/3 pre-tokenizer regex, NFC
  normalisation and the 26 Qwen3 special tokens (151643 <|endoftext|> ... 151668 </think>);
- `token_byte_lengths`: the UTF-8 bytes of every id, the denominator of bits-per-byte;
- `save_tokenizer(dir)`: vocab.json / merges.txt / tokenizer.json / tokenizer_config.json, so that
  transformers.AutoTokenizer reproduces get_tokenizer() id for id (merges are recovered from the ranks);
- `StreamDecoder`: incremental detokenizing for streaming output (partial UTF-8 characters are held back).
"""
import base64, hashlib, json, os, unicodedata
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


def save_tokenizer(out_dir, chat_template=None):
    """Write vocab.json, merges.txt, tokenizer.json and tokenizer_config.json so that
    transformers.AutoTokenizer.from_pretrained(out_dir) reproduces get_tokenizer() id for id, offline.
    chat_template (Jinja, sft.CHAT_TEMPLATE) goes into tokenizer_config.json for apply_chat_template."""
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
        **({"chat_template": chat_template} if chat_template else {}),
    }
    files = {"tokenizer.json": tokenizer_json, "tokenizer_config.json": config, "vocab.json": vocab}
    for name, obj in files.items():
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=None if name != "tokenizer_config.json" else 2)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))


class StreamDecoder:
    """Incremental detokenizer for streaming: a token may end in the middle of a multi-byte UTF-8 character
    (common for Chinese and emoji); hold those bytes back until the character is complete."""

    def __init__(self, enc):
        self.enc, self.pending = enc, b""

    def push(self, token_id):
        self.pending += self.enc.decode_single_token_bytes(token_id)
        for cut in range(len(self.pending), max(len(self.pending) - 4, -1), -1):  # hold back <= 3 bytes
            try:
                text = self.pending[:cut].decode("utf-8")
            except UnicodeDecodeError:
                continue
            self.pending = self.pending[cut:]
            return text
        text, self.pending = self.pending.decode("utf-8", errors="replace"), b""  # truly invalid bytes
        return text

    def flush(self):
        out, self.pending = self.pending.decode("utf-8", errors="replace"), b""
        return out
