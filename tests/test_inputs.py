"""Input files as users have them (issue 36): damaged or cut-off archives, a file named twice or reached by a link
loop, a byte-order mark, a missing or broken input, records made under other settings, and meta.json shard names
that would leave the data folder. Each is one line naming the file, or the file read once and right."""
import gzip, json, lzma, os
from collections import Counter

import numpy as np
import pytest

from conftest import run_script, synthetic_dataset

import data
import prepare
import readers
import sft


def rows(n, key="text"):
    return "".join(json.dumps({key: f"document number {i} " * 5}) + "\n" for i in range(n))


def chats(n, content="answer"):
    return "".join(json.dumps({"messages": [{"role": "user", "content": f"question {i}"},
                                            {"role": "assistant", "content": f"{content} {i} " * (i % 5 + 1)}]}) + "\n"
                   for i in range(n))


def read_all(path):
    skips = Counter()
    return list(readers.iter_rows(str(path), ("text", None, None), skips, lambda f: None)), skips


# ------------------------------------------------------------------------- 2, 7: damaged compressed inputs
def test_corrupt_gz_xz_and_cut_off_or_garbage_zst_are_one_line_each_and_the_rest_is_prepared(tmp_path, monkeypatch,
                                                                                                capsys):
    """A .gz with flipped bytes raised zlib.error, a corrupt .xz LZMAError, a garbage .zst ZstdError (tracebacks,
    no meta.json); a cut-off .zst was read as its first half with exit 0."""
    zstandard = pytest.importorskip("zstandard", reason="the .zst cases need the zstandard package")
    text = rows(3000).encode()
    gz = bytearray(gzip.compress(text))
    gz[len(gz) // 2: len(gz) // 2 + 64] = bytes(64)   # flipped bytes in the middle of the deflate stream
    xz = bytearray(lzma.compress(text))
    xz[len(xz) // 2: len(xz) // 2 + 64] = bytes(64)
    zst = zstandard.ZstdCompressor().compress(text)
    for name, blob in (("bad.jsonl.gz", gz), ("bad.jsonl.xz", xz), ("cut.jsonl.zst", zst[:len(zst) // 2]),
                       ("garbage.jsonl.zst", b"\x28\xb5\x2f\xfd" + b"garbage" * 100)):
        (tmp_path / name).write_bytes(bytes(blob))
        with pytest.raises(readers.StructuralError, match=rf"{name}: cannot read"):
            read_all(tmp_path / name)
    (tmp_path / "two_frames.jsonl.zst").write_bytes(zst + zstandard.ZstdCompressor().compress(rows(2).encode()))
    got, skips = read_all(tmp_path / "two_frames.jsonl.zst")   # a multi-frame file is read whole
    assert len(got) == 3002 and not skips
    (tmp_path / "ok.jsonl").write_text(rows(5))
    assert run_script(monkeypatch, "prepare.py", "--input", str(tmp_path), "--out", str(tmp_path / "o")) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and sum(l.startswith("ERROR ") for l in err.splitlines()) == 4, err
    meta = json.load(open(tmp_path / "o" / "meta.json"))
    assert [os.path.basename(f) for f in meta["files"]] == ["ok.jsonl", "two_frames.jsonl.zst"]


# --------------------------------------------------------------------------------- 3: each file read once
def test_overlapping_inputs_a_file_twice_and_a_link_loop_read_each_file_once(tmp_path, capsys):
    many = tmp_path / "many"
    (many / "sub").mkdir(parents=True)
    for i in range(3):
        (many / f"f{i}.jsonl").write_text(rows(4 + i))
    os.symlink(many, many / "sub" / "loop")   # many/sub/loop/sub/loop/... -> one folder
    os.symlink(many / "f0.jsonl", tmp_path / "link.jsonl")
    once = prepare.prepare([str(many)], str(tmp_path / "once"), quiet=True)
    assert len(once["shards"]) == 3
    for inputs in ([str(many), str(many / "f0.jsonl")], [str(many / "f1.jsonl")] * 2 + [str(many)],
                   [str(many), str(tmp_path / "link.jsonl")]):
        meta = prepare.prepare(inputs, str(tmp_path / "again"), quiet=True)
        assert len(meta["shards"]) == 3 and meta["tokens"] == once["tokens"], inputs
    assert "read once" in capsys.readouterr().err
    assert len(sft.input_files([str(many), str(many / "f0.jsonl")])) == 3


# ------------------------------------------------------------------------------------------- 14: the BOM
def test_a_byte_order_mark_is_not_a_bad_row(tmp_path):
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + rows(3).encode())
    got, skips = read_all(tmp_path / "bom.jsonl")
    assert len(got) == 3 and not skips
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfhello")
    assert read_all(tmp_path / "bom.txt")[0][0][0] == "hello"
    (tmp_path / "chat.jsonl").write_bytes(b"\xef\xbb\xbf" + chats(3).encode())
    side = sft.prepare_file(str(tmp_path / "chat.jsonl"), str(tmp_path / "o"), 512, "drop", 0.0)
    assert side["conversations"]["train"] == 3 and not side["skipped"]


def test_a_number_past_pythons_digit_limit_is_one_bad_row_and_a_bracketed_name_is_a_file(tmp_path):
    """json.loads raises a plain ValueError (not JSONDecodeError) on an integer of over 4,300 digits: the whole file
    was dropped as unreadable (prepare.py) or the run stopped with a traceback (sft.py). And a file named
    part[1].jsonl was read as a glob pattern that matched nothing."""
    big = '{"text": "x", "n": ' + "9" * 5000 + "}\n"
    (tmp_path / "part[1].jsonl").write_text(rows(3) + big)
    meta = prepare.prepare([str(tmp_path / "part[1].jsonl")], str(tmp_path / "o"), val_fraction=0.0, quiet=True)
    assert meta["skipped_rows"] == {"bad_json": 1} and meta["docs"] == 3 and not meta["errors"]
    (tmp_path / "chat.jsonl").write_text(chats(2) + big.replace('"text": "x"', '"messages": []'))
    side = sft.prepare_file(str(tmp_path / "chat.jsonl"), str(tmp_path / "o2"), 512, "drop", 0.0)
    assert side["skipped"] == {"bad_json": 1} and side["conversations"]["train"] == 2


# ---------------------------------------------------------------------------------------- 11: sft inputs
def test_sft_counts_a_lone_surrogate_as_a_bad_row_and_refuses_a_missing_input(tmp_path, monkeypatch, capsys):
    (tmp_path / "a.jsonl").write_text(chats(2) + json.dumps({"messages": [
        {"role": "user", "content": "a\ud800b"}, {"role": "assistant", "content": "ok"}]}) + "\n")
    side = sft.prepare_file(str(tmp_path / "a.jsonl"), str(tmp_path / "o"), 512, "drop", 0.0)
    assert side["skipped"] == {"invalid_unicode": 1} and side["conversations"]["train"] == 2
    msg = run_script(monkeypatch, "sft.py", "--input", str(tmp_path / "a.jsonl"), str(tmp_path / "TYPO.jsonl"),
                     "--out", str(tmp_path / "o2"))
    assert msg == f"error: --input {tmp_path / 'TYPO.jsonl'}: no such file or directory"


def test_sft_walks_a_folder_with_a_broken_link_and_a_link_loop(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jsonl").write_text(chats(3))
    os.symlink(tmp_path / "gone.jsonl", d / "broken.jsonl")
    os.symlink(d, d / "loop")
    meta = sft.prepare([str(d)], str(tmp_path / "o"), max_len=512, quiet=True)
    assert len(meta["shards"]) == 1 and meta["conversations"]["train"] + meta["conversations"]["val"] == 3


@pytest.mark.parametrize("flags, says", [(["--max_len", "-5", "--overlong", "truncate"], "--max_len must be"),
                                         (["--max_len", "0"], "--max_len must be"),
                                         (["--val_fraction", "1.5"], "--val_fraction must be in [0, 1)"),
                                         (["--val_fraction", "-1"], "--val_fraction must be in [0, 1)")])
def test_sft_numeric_flags_are_checked(tmp_path, monkeypatch, flags, says):
    """Point 10: --max_len -5 cut 5 tokens off every conversation, 0 was replaced by --seq_len, 1.5 accepted."""
    (tmp_path / "a.jsonl").write_text(chats(2))
    msg = run_script(monkeypatch, "sft.py", "--input", str(tmp_path / "a.jsonl"), "--out", str(tmp_path / "o"), *flags)
    assert says in str(msg), msg
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ 4: records of other settings
def test_sft_redoes_an_input_recorded_under_other_settings(tmp_path):
    """Killed under --max_len 64 (its records written, meta.json not), rerun with 2048: the records were reused,
    so meta.json said 2048 over conversations dropped as longer than 64."""
    (tmp_path / "a.jsonl").write_text(chats(40, "a long answer " * 8))
    short = sft.prepare([str(tmp_path / "a.jsonl")], str(tmp_path / "o"), max_len=64, quiet=True)
    assert short["skipped_rows"].get("overlong")
    os.remove(tmp_path / "o" / "meta.json")   # as if killed before it
    meta = sft.prepare([str(tmp_path / "a.jsonl")], str(tmp_path / "o"), max_len=2048, quiet=True)
    fresh = sft.prepare([str(tmp_path / "a.jsonl")], str(tmp_path / "fresh"), max_len=2048, quiet=True)
    assert meta["conversations"] == fresh["conversations"] and not meta["skipped_rows"]


# ---------------------------------------------------------------------------------------- 15: shard names
def test_a_shard_name_that_leaves_the_data_folder_is_refused(tmp_path):
    d = synthetic_dataset(str(tmp_path / "ds"))
    secret = tmp_path / "secret"
    secret.mkdir()
    data.write_shard(str(secret / "s.bin"), np.arange(100, dtype=np.uint32))
    meta = json.load(open(os.path.join(d, "meta.json")))
    for bad in ("../../secret/s", "/abs/s", "..", ""):
        meta["shards"][0]["name"] = bad
        json.dump(meta, open(os.path.join(d, "meta.json"), "w"))
        with pytest.raises(ValueError, match="is not a plain file name"):
            data.TokenWindows(d, "train", 8)
    sft_dir = tmp_path / "sft"
    (tmp_path / "a.jsonl").write_text(chats(3))
    sft.prepare([str(tmp_path / "a.jsonl")], str(sft_dir), max_len=512, quiet=True)
    meta = json.load(open(sft_dir / "meta.json"))
    meta["shards"][0]["name"] = "../../secret/s"
    json.dump(meta, open(sft_dir / "meta.json", "w"))
    with pytest.raises(ValueError, match="is not a plain file name"):
        data.PackedConversations(str(sft_dir), "train", 64)


# ------------------------------------------------------------------------------ 19: the chinese-poetry layout
def test_side_files_are_one_warning_line_per_kind_and_the_fields_read_as_several(tmp_path, monkeypatch, capsys):
    """Issue 36 point 19: prepare.py on chinese-poetry printed 20 warnings and 'and 25 more' (authors.*.json, files
    holding only []), 'the field 'title,rhythmic,...'' read as one field's name, and zh:en chars = 26040.778."""
    poems = [{"title": "静夜思", "paragraphs": ["床前明月光，疑是地上霜。", "举头望明月，低头思故乡。"]}]
    for i in range(3):
        (tmp_path / f"poet.tang.{i}.json").write_text(json.dumps(poems * (i + 1), ensure_ascii=False))
    for i in range(5):
        (tmp_path / f"authors.{i}.json").write_text(json.dumps([{"name": "李白", "desc": "诗人"}], ensure_ascii=False))
    for i in range(4):
        (tmp_path / f"empty{i}.json").write_text("[]")
    assert run_script(monkeypatch, "prepare.py", "--input", str(tmp_path), "--out", str(tmp_path / "o"),
                      "--text_field", "title,rhythmic,paragraphs", "--val_fraction", "0") == 0
    out, err = capsys.readouterr()
    warnings = [l for l in err.splitlines() if l.startswith("WARNING")]
    assert warnings == [f"WARNING 9 files: skipped, no object in it has any of the fields 'title', 'rhythmic', "
                        f"'paragraphs': {tmp_path}/authors.0.json, {tmp_path}/authors.1.json, "
                        f"{tmp_path}/authors.2.json, ... (each in meta.json 'warnings')"], err
    assert "zh:en chars = 108 : 0" not in out and "(no English)" in out
    assert prepare.zh_en(26040778, 1000) == "26,040,778 : 1,000 (almost only Chinese)"


@pytest.mark.parametrize("flag", ["--workers=0", "--max_tokens=-5", "--min_score=nan"])
def test_prepare_numeric_flags_are_checked(tmp_path, monkeypatch, capsys, flag):
    """Issue 36 point 10: --max_tokens -5 made every shard's use_tokens negative."""
    (tmp_path / "a.jsonl").write_text(rows(2))
    code = run_script(monkeypatch, "prepare.py", "--input", str(tmp_path / "a.jsonl"), "--out", str(tmp_path / "o"),
                      flag)
    assert code == 2 and f"{flag.split('=')[0]} must be" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_python_source_files_are_a_corpus_of_one_document_each(tmp_path):
    """The second real corpus (issue 34): source code, e.g. the standard library's .py files (PSF), one file one
    document, read back exactly: its text, then <|endoftext|>."""
    import json as json_module, shutil
    import numpy as np
    import prepare
    from data import open_shard
    from tokenizer import EOT, get_tokenizer
    src = tmp_path / "src" / "json"
    shutil.copytree(os.path.dirname(json_module.__file__), src, ignore=shutil.ignore_patterns("__pycache__"))
    files = sorted(p for p in os.listdir(src) if p.endswith(".py"))
    assert len(files) >= 4
    meta = prepare.prepare([str(tmp_path / "src")], str(tmp_path / "out"), val_fraction=0.0, quiet=True)
    assert len(meta["shards"]) == len(files) and meta["docs"] == len(files)
    enc = get_tokenizer()
    for s in meta["shards"]:
        toks = np.asarray(open_shard(str(tmp_path / "out" / "train" / (s["name"] + ".bin")))).tolist()
        assert toks[-1] == EOT and EOT not in toks[:-1]
        assert enc.decode(toks[:-1]) == open(os.path.join(src, os.path.basename(s["input"])), encoding="utf-8").read()
