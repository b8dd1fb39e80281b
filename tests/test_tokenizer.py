"""The Qwen tokenizer: known ids, specials, round trips, the exported HF files, streaming, byte lengths."""
import numpy as np
import pytest
from conftest import small_config  # noqa: F401  (puts the repo root on sys.path)

import tokenizer
from tokenizer import EOT, N_ORDINARY, QWEN_VOCAB, StreamDecoder, get_tokenizer, token_byte_lengths

BILINGUAL = ("中文维基百科是一个自由的百科全书。The quick brown fox jumps over the lazy dog's back, doesn't it?\n"
             "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # 递归\r\n\tx = [1, 22, 333, 4444];\n"
             "价格：¥1,234.56，电话 138-0013-8000。emoji 🤖🚀✨ 😀😃😄 mixed 中English混合 ... !!! ???\n\n\n   end   "
             "Ünïcödé — “quotes” ‘single’ 『括号』【方括号】 ｆｕｌｌｗｉｄｔｈ １２３ 1e-5 0x1F <html><b>x</b></html>")


def test_known_ids_and_vocabulary_size():
    enc = get_tokenizer()
    assert enc.encode("Hello world") == [9707, 1879]
    assert enc.encode("测试") == [81705]
    assert enc.n_vocab == QWEN_VOCAB == 151669


def test_special_tokens_have_qwen3_ids():
    enc = get_tokenizer()
    for i, (tok, _) in enumerate(tokenizer.SPECIALS):
        assert enc.encode(tok, allowed_special="all") == [N_ORDINARY + i]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [EOT] == [151643]
    assert enc.encode("</think>", allowed_special="all") == [151668]


@pytest.mark.parametrize("text", ["emoji 😀👩‍👩‍👧 🇨🇳", "混合 scripts: русский, العربية, हिन्दी, 日本語のテキスト",
                                  "  whitespace   runs\t\t\n\n\n  ", "CRLF\r\nline\r\n\r\n", "", " ", "ﬁ ligature Å", BILINGUAL])
def test_decode_encode_round_trip(text):
    enc = get_tokenizer()
    assert enc.decode(enc.encode(text)) == text


def test_nfc_normalisation_before_encoding():
    enc = get_tokenizer()
    assert enc.encode("e\u0301") == enc.encode("\u00e9")


def test_exported_tokenizer_matches_id_for_id(tokenizer_files):
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(tokenizer_files)   # save_tokenizer's files, written once per session
    enc = get_tokenizer()
    for text in [BILINGUAL] + BILINGUAL.split("\n") + ["<|im_start|>user\n你好<|im_end|>"]:
        ours = enc.encode(text, allowed_special="all")
        assert hf.encode(text) == ours, text
        assert hf.decode(ours) == text
    assert hf.eos_token == "<|endoftext|>" and hf.eos_token_id == EOT and hf.pad_token_id == EOT


def _valid_utf8(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_stream_decoder_holds_back_partial_utf8():
    enc = get_tokenizer()
    text = "流式输出 🤖🚀 中文 ✨ done"
    ids = enc.encode(text)
    assert any(not _valid_utf8(enc.decode_single_token_bytes(i)) for i in ids)  # the test exercises splits
    dec = StreamDecoder(enc)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)


def test_stream_decoder_says_what_decoding_the_whole_text_says_on_invalid_bytes_too():
    """An untrained model's tokens: single bytes that are no UTF-8, beside the start of a character still arriving.
    Streamed, the start of the character was replaced too (the text then differed from the answer's whole text)."""
    import random
    enc, rng = get_tokenizer(), random.Random(0)
    byte_ids = [i for i in range(N_ORDINARY) if len(enc.decode_single_token_bytes(i)) == 1]
    for _ in range(3000):
        ids = [rng.choice(byte_ids) if rng.random() < 0.7 else rng.randrange(N_ORDINARY) for _ in range(rng.randint(1, 12))]
        dec = StreamDecoder(enc)
        assert "".join([dec.push(i) for i in ids] + [dec.flush()]) == enc.decode(ids), ids
        assert dec.push(ids[0]) + dec.flush() == enc.decode(ids[:1])   # flushed, it starts afresh


@pytest.mark.parametrize("vocab_size", [320, 151643, 151936])
def test_token_byte_lengths_for_any_vocab_size(vocab_size):
    """Every ordinary id the model has gets its UTF-8 length, specials and padding ids 0 -- also for a vocab
    below 151,669, where the last ids of the table are ordinary tokens, not specials."""
    enc = get_tokenizer()
    table = token_byte_lengths(vocab_size)
    assert len(table) == vocab_size
    ordinary = min(vocab_size, N_ORDINARY)
    for i in [0, 1, 255, ordinary // 2, ordinary - 2, ordinary - 1]:
        assert table[i] == len(enc.decode_single_token_bytes(i)) > 0, i
    assert np.all(table[N_ORDINARY:] == 0)
