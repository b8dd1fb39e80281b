"""Data: preparation (counts, skips, errors, resumability, settings, score filter, mixing), the shard format, the
loader (one stream per split, open-file limit, clear errors) and the validation sample."""
import glob, json, os

import numpy as np
import pytest
import torch
from conftest import run_script, synthetic_dataset

import data
import prepare
import readers
from tokenizer import EOT, get_tokenizer


def _write_inputs(d):
    import pyarrow as pa, pyarrow.parquet as pq
    os.makedirs(d, exist_ok=True)
    good_pq = ["第一篇文档。", "Second document, English.", "第三篇 mixed 文本 123"]
    pq.write_table(pa.table({"text": good_pq + [None, ""], "id": list(range(5))}), os.path.join(d, "a.parquet"))
    lines = [json.dumps({"text": "jsonl 文档一"}, ensure_ascii=False).encode(), b'{"text": "broken json',
             b'{"text": "bad utf8 \xff\xfe"}', json.dumps({"other": "no text field"}).encode(),
             json.dumps({"text": 42}).encode(), json.dumps({"text": "jsonl doc two 🤖"}, ensure_ascii=False).encode()]
    open(os.path.join(d, "b.jsonl"), "wb").write(b"\n".join(lines) + b"\n")
    open(os.path.join(d, "c.txt"), "w", encoding="utf-8").write("A whole text file is one document.\n第二行。")
    open(os.path.join(d, "bad.parquet"), "wb").write(b"this is not parquet at all")
    return good_pq + ["jsonl 文档一", "jsonl doc two 🤖", "A whole text file is one document.\n第二行。"]


def _prepared(tmp_path):
    docs = _write_inputs(tmp_path / "in")
    out = str(tmp_path / "out")
    return docs, out, prepare.prepare([str(tmp_path / "in")], out, val_fraction=0.0, workers=2, quiet=True)


def test_prepare_tokenizes_every_good_document_exactly(tmp_path):
    docs, out, meta = _prepared(tmp_path)
    enc = get_tokenizer()
    assert meta["tokens"]["train"] == sum(len(enc.encode_ordinary(t)) + 1 for t in docs)
    all_tokens = np.concatenate([data.open_shard(f) for f in sorted(glob.glob(out + "/train/*.bin"))])
    direct = np.concatenate([enc.encode_ordinary(t) + [EOT] for t in docs])
    assert sorted(all_tokens.tolist()) == sorted(direct.tolist())


def test_prepare_counts_bad_rows_by_reason_and_names_broken_files(tmp_path):
    _, _, meta = _prepared(tmp_path)
    assert meta["skipped_rows"] == {"not_string": 2, "empty": 1, "bad_json": 1, "invalid_utf8": 1, "missing_field": 1}
    assert len(meta["errors"]) == 1 and "bad.parquet" in meta["errors"][0]


def test_prepare_resumes_after_a_kill_to_byte_identical_shards(tmp_path):
    """One input finished, one killed mid-write (a .tmp and a shard without sidecar), the rest never started."""
    _, out, meta = _prepared(tmp_path)
    snapshot = {os.path.basename(f): open(f, "rb").read() for f in glob.glob(out + "/*/*.bin")}
    out2 = str(tmp_path / "out2")
    prepare.prepare([str(tmp_path / "in" / "a.parquet")], out2, val_fraction=0.0, quiet=True)
    name_b = prepare._shard_name(str(tmp_path / "in" / "b.jsonl"))
    open(os.path.join(out2, "train", name_b + ".bin.tmp"), "wb").write(b"partial")
    open(os.path.join(out2, "train", name_b + ".bin"), "wb").write(b"QWTOKSHD garbage")
    meta2 = prepare.prepare([str(tmp_path / "in")], out2, val_fraction=0.0, workers=2, quiet=True)
    assert {os.path.basename(f): open(f, "rb").read() for f in glob.glob(out2 + "/*/*.bin")} == snapshot
    assert meta2["tokens"] == meta["tokens"]


def test_prepare_cli_exits_1_naming_a_broken_file_or_a_missing_field(tmp_path, monkeypatch, capsys):
    _write_inputs(tmp_path / "in")
    assert run_script(monkeypatch, "prepare.py", "--input", str(tmp_path / "in" / "bad.parquet"),
                      "--out", str(tmp_path / "o3")) == 1
    assert "bad.parquet" in capsys.readouterr().err
    assert run_script(monkeypatch, "prepare.py", "--input", str(tmp_path / "in" / "b.jsonl"), "--out", str(tmp_path / "o4"),
                      "--text_field", "body") == 1
    assert "body" in capsys.readouterr().err


def test_prepare_mixing_weights(tmp_path):
    d = tmp_path / "in"
    os.makedirs(d / "zh"), os.makedirs(d / "en")
    for i in range(40):
        open(d / "zh" / f"{i}.txt", "w").write("中文句子。" * 20)
        open(d / "en" / f"{i}.txt", "w").write("An English sentence. " * 20)
    meta = prepare.prepare([f"{d}/zh@3", f"{d}/en/*.txt@1"], str(tmp_path / "out"), val_fraction=0.0, quiet=True)
    per = {0: 0, 1: 0}
    for s in meta["shards"]:
        per[s["source"]] += s["use_tokens"]["train"]
    assert abs(per[0] / per[1] - 3.0) < 0.05, per


def test_prepare_cuts_a_shard_after_a_whole_document_and_refuses_an_empty_weighted_source(tmp_path):
    """--max_tokens (or a weight) cuts shards: the kept part of a shard of many documents ends with <|endoftext|>,
    so no document runs into the next shard's (doc_mask would take the two for one). A weighted source with no train
    tokens (all in val here) cut every source to nothing; it is an error that names it."""
    d = tmp_path / "in"
    os.makedirs(d)
    with open(d / "docs.jsonl", "w") as f:
        f.writelines(json.dumps({"text": f"document number {i}. " + "alpha " * (i % 7)}) + "\n" for i in range(60))
    meta = prepare.prepare([str(d / "docs.jsonl")], str(tmp_path / "out"), val_fraction=0.0, max_tokens=123, quiet=True)
    kept = meta["shards"][0]["use_tokens"]["train"]
    tokens = data.open_shard(str(tmp_path / "out" / "train" / (meta["shards"][0]["name"] + ".bin")))
    assert 0 < kept <= 123 and tokens[kept - 1] == EOT and kept > 123 - 20
    (d / "one.jsonl").write_text(json.dumps({"text": "in val 3"}) + "\n")   # its hash puts it in a 5% val split
    with pytest.raises(SystemExit, match=r"no train tokens \([^,]*one.jsonl\)"):
        prepare.prepare([f"{d}/docs.jsonl@1", f"{d}/one.jsonl@1"], str(tmp_path / "out2"), val_fraction=0.05, quiet=True)


def test_loader_visits_every_window_once_per_epoch_in_a_new_order(tmp_path):
    w = data.TokenWindows(synthetic_dataset(str(tmp_path / "ds")), "train", 64, seed=5)
    ids = [w.window_index(g) for g in range(w.n_windows)]
    assert sorted(ids) == list(range(w.n_windows)) and ids != list(range(w.n_windows))
    ids2 = [w.window_index(g) for g in range(w.n_windows, 2 * w.n_windows)]
    assert sorted(ids2) == list(range(w.n_windows)) and ids2 != ids


def test_global_batch_is_the_same_on_1_2_4_8_ranks_and_ranks_are_disjoint(tmp_path):
    w = data.TokenWindows(synthetic_dataset(str(tmp_path / "ds")), "train", 64, seed=5)

    def global_batch(world, step):   # 16 sequences: micro-batch 2, accumulation 16 / (2 x world)
        accum = 16 // (2 * world)
        batches = [data.DistributedBatches(w, 2, world, r, accum) for r in range(world)]
        pos = [set(b.positions(step, m)) for b in batches for m in range(accum)]
        assert all(a.isdisjoint(b) for i, a in enumerate(pos) for b in pos[i + 1:])
        return torch.cat([b.get(step, m)[0] for b in batches for m in range(accum)])
    for step in (0, 3, 50):
        ref = sorted(map(tuple, global_batch(1, step).tolist()))
        for world in (2, 4, 8):
            assert sorted(map(tuple, global_batch(world, step).tolist())) == ref


def test_a_fresh_loader_at_step_s_yields_what_the_uninterrupted_one_yields(tmp_path):
    d = synthetic_dataset(str(tmp_path / "ds"))
    a = data.DistributedBatches(data.TokenWindows(d, "train", 64, seed=5), 2, 1, 0, 4)
    seq = [a.get(s, m)[0] for s in range(6) for m in range(4)]
    b = data.DistributedBatches(data.TokenWindows(d, "train", 64, seed=5), 2, 1, 0, 4)
    assert all(torch.equal(seq[4 * 3 + m], b.get(3, m)[0]) for m in range(4))
    x, y = a.get(0, 0)
    assert torch.equal(x[:, 1:], y[:, :-1])   # targets are the next tokens


def test_bad_shards_refused(tmp_path):
    p = str(tmp_path / "s.bin")
    data.write_shard(p, np.arange(100))
    assert data.open_shard(p)[99] == 99
    raw = open(p, "rb").read()
    open(p, "wb").write(raw[:-10])
    with pytest.raises(ValueError, match="truncated"):
        data.open_shard(p)
    open(p, "wb").write(b"PK\x03\x04" + raw[4:])
    with pytest.raises(ValueError, match="not a token shard"):
        data.open_shard(p)


def test_demo_corpus_is_bilingual_and_big_enough(demo_dir):
    meta = json.load(open(os.path.join(demo_dir, "meta.json")))
    raw = glob.glob(os.path.join(demo_dir, "raw", "*"))
    assert sum(os.path.getsize(f) for f in raw) >= 1_000_000
    assert meta["zh_chars"] > 100_000 and meta["en_chars"] > 100_000
    assert meta["tokens"]["val"] > 10_000 and not meta["errors"]


def _write_stream_dataset(d, lengths, use=None, split="train", sources=None, low=0, high=300):
    """Shards written directly with meta.json as tests/conftest.py writes it; returns the shards' tokens."""
    os.makedirs(os.path.join(d, split), exist_ok=True)
    rng, shards, arrays = np.random.default_rng(len(lengths)), [], []
    for i, n in enumerate(lengths):
        src = sources[i] if sources else 0
        a = rng.integers(low + 100 * src, high if not sources else low + 100 * src + 100, size=n).astype(np.uint32)
        data.write_shard(os.path.join(d, split, f"s{i}.bin"), a)
        u = n if use is None else use[i]
        shards.append({"name": f"s{i}", "input": f"s{i}", "source": src, "weight": None, "max_token": int(a.max(initial=0)),
                       "tokens": {split: n}, "use_tokens": {split: u}})
        arrays.append(a[:u])
    json.dump({"tokenizer_sha256": data.RANKS_SHA256, "shards": shards}, open(os.path.join(d, "meta.json"), "w"))
    return arrays


def test_short_files_form_one_stream_and_no_token_is_lost(tmp_path):
    # 200 files of 301 tokens at seq 128: each file alone holds 2 windows (51,200 tokens); as one stream, 470
    arrays = _write_stream_dataset(str(tmp_path / "a"), [301] * 200)
    stream = np.concatenate(arrays)
    w = data.TokenWindows(str(tmp_path / "a"), "train", 128)
    assert w.n_windows == (len(stream) - 1) // 128 == 470
    got = np.concatenate([w.window(0)] + [w.window(i)[1:] for i in range(1, w.n_windows)])
    assert np.array_equal(got, stream[:470 * 128 + 1])  # windows span shard boundaries, in order, nothing skipped
    assert data.TokenWindows(str(tmp_path / "a"), "train", 2048).n_windows == 29   # was: no window at all
    # mixing truncates shards: the stream is every shard cut to its use_tokens (0 drops it), end to end
    lengths, use = [50, 3, 400, 7, 120], [50, 0, 150, 7, 1]
    arrays = _write_stream_dataset(str(tmp_path / "b"), lengths, use)
    stream = np.concatenate(arrays)
    w = data.TokenWindows(str(tmp_path / "b"), "train", 16)
    assert w.n_windows == (sum(use) - 1) // 16
    for i in range(w.n_windows):
        assert np.array_equal(w.window(i), stream[16 * i:16 * i + 17])


def test_loader_works_with_more_shards_than_open_file_limit(tmp_path):
    import resource
    d = str(tmp_path / "many")
    stream = np.concatenate(_write_stream_dataset(d, [40] * 1500))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        w = data.TokenWindows(d, "train", 32)
        batches = data.DistributedBatches(w, 8, 1, 0, 1)
        kept = [batches.get(step, 0) for step in range(w.n_windows // 8)]  # training holds batches: no fd may leak
        seen = [w.window_index(g) for step in range(len(kept)) for g in batches.positions(step, 0)]
        assert len(set(seen)) == len(seen) == len(kept) * 8 and len(kept) > 200
        x, y = kept[3]
        assert np.array_equal(y[0].numpy(), stream[32 * w.window_index(24) + 1:][:32])
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_val_sample_covers_all_sources_in_proportion_whatever_the_batch_size(tmp_path):
    # val split of two sources, as mixing zh@3 en@1 lays it out: source 0 (ids 0..99) first, then source 1 (100..199)
    d = str(tmp_path / "ds")
    lengths, sources = [3000] * 6 + [1000] * 6, [0] * 6 + [1] * 6
    _write_stream_dataset(d, lengths, split="val", sources=sources)
    scored = {}
    for bs in (1, 4, 7, 64):
        ys = torch.cat([y for _, y in data.val_batches(d, 32, 40 * 32, bs)])
        scored[bs] = ys
    assert all(torch.equal(scored[1], v) for v in scored.values())   # same tokens for any batch size
    assert len(scored[1]) == 40                                       # n_tokens // seq_len windows
    per_window_source = (scored[1].float().mean(1) >= 100).tolist()
    assert 9 <= sum(per_window_source) <= 11, per_window_source       # 1/4 of the tokens -> ~1/4 of the windows
    again = torch.cat([y for _, y in data.val_batches(d, 32, 40 * 32, 5)])
    assert torch.equal(again, scored[1])                              # fixed: the same in train.py and eval.py
    # asking for more than there is gives every window once
    w = data.TokenWindows(d, "val", 32)
    assert sorted(data.val_window_ids(w.n_windows, 32, 10**9).tolist()) == list(range(w.n_windows))


def _docs_jsonl(path, n, seed=0):
    rng = np.random.default_rng(seed)
    words = ["数据", "模型", "训练", "apple", "river", "token", "中文", "English", "测试", "42"]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            text = " ".join(rng.choice(words, size=int(rng.integers(3, 12))))
            body = "正文 " + text[::-1]
            f.write(json.dumps({"text": f"{i} {text}", "body": body, "score": float(rng.random())}, ensure_ascii=False) + "\n")


def _shard_contents(out):
    meta = json.load(open(os.path.join(out, "meta.json")))
    return {os.path.basename(s["input"]): (s["tokens"], s.get("max_token"), open(f"{out}/train/{s['name']}.bin", "rb").read(),
                                            open(f"{out}/val/{s['name']}.bin", "rb").read()) for s in meta["shards"]}


def test_split_does_not_depend_on_where_the_inputs_live(tmp_path):
    import shutil
    a = tmp_path / "here" / "raw"
    os.makedirs(a)
    for k in range(3):
        _docs_jsonl(a / f"part{k}.jsonl", 150, seed=k)
    b = tmp_path / "elsewhere" / "deeper" / "copy"
    shutil.copytree(a, b)
    prepare.prepare([str(a)], str(tmp_path / "o1"), val_fraction=0.3, workers=1, quiet=True)
    prepare.prepare([str(b)], str(tmp_path / "o2"), val_fraction=0.3, workers=1, quiet=True)
    one, two = _shard_contents(str(tmp_path / "o1")), _shard_contents(str(tmp_path / "o2"))
    assert one == two and all(v[0]["val"] > 0 and v[0]["train"] > 0 for v in one.values())


def test_rerun_with_other_settings_redoes_the_shards(tmp_path):
    _docs_jsonl(tmp_path / "in.jsonl", 200)
    inp, out = [str(tmp_path / "in.jsonl")], str(tmp_path / "out")
    assert prepare.prepare(inp, out, val_fraction=0.0, quiet=True)["tokens"]["val"] == 0
    for kw in (dict(val_fraction=0.5), dict(val_fraction=0.5, text_field="body"),
               dict(val_fraction=0.5, text_field="body", min_score=0.6), dict(val_fraction=0.1)):
        meta = prepare.prepare(inp, out, quiet=True, **kw)
        fresh = prepare.prepare(inp, str(tmp_path / f"fresh{len(os.listdir(tmp_path))}"), quiet=True, **kw)
        assert meta["tokens"] == fresh["tokens"] and meta["docs"] == fresh["docs"], kw
        assert (meta["text_field"], meta["val_fraction"], meta["min_score"]) == (
            kw.get("text_field", "text"), kw["val_fraction"], kw.get("min_score"))
        sidecar = json.load(open(glob.glob(out + "/done/*.json")[0]))
        assert sidecar["settings"]["val_fraction"] == kw["val_fraction"]
    assert 0 < meta["tokens"]["val"] < meta["tokens"]["train"]


def test_data_errors_are_one_clear_line(tmp_path):
    d = synthetic_dataset(str(tmp_path / "ds"))        # token ids < 300
    def err(exc, *args, **kw):
        with pytest.raises(exc) as e:
            data.TokenWindows(*args, **kw)
        assert "\n" not in str(e.value)
        return str(e.value)
    assert data.TokenWindows(d, "train", 32, vocab_size=320).n_windows > 0
    msg = err(ValueError, d, "train", 32, vocab_size=200)
    assert d in msg and "vocab_size" in msg and "s0" in msg and "tokenizer" in msg
    meta = json.load(open(f"{d}/meta.json"))
    for s in meta["shards"]:
        del s["max_token"]                               # an older meta.json: caught when the window is read
    json.dump(meta, open(f"{d}/meta.json", "w"))
    w = data.TokenWindows(d, "train", 32, vocab_size=200)
    with pytest.raises(ValueError, match="vocab_size"):
        [w.window(i) for i in range(w.n_windows)]
    os.remove(f"{d}/val/s1.bin")
    assert "s1.bin" in err(FileNotFoundError, d, "val", 32) and "prepare.py" in err(FileNotFoundError, d, "val", 32)
    open(f"{d}/meta.json", "w").write('{"shards": [')
    assert "meta.json" in err(ValueError, d, "train", 32) and "prepare.py" in err(ValueError, d, "train", 32)
    assert "meta.json" in err(FileNotFoundError, str(tmp_path / "nothing"), "train", 32)
    # prep records each shard's largest id
    _docs_jsonl(tmp_path / "in.jsonl", 50)
    meta = prepare.prepare([str(tmp_path / "in.jsonl")], str(tmp_path / "p"), val_fraction=0.2, quiet=True)
    s = meta["shards"][0]
    both = np.concatenate([data.open_shard(f"{tmp_path}/p/{sp}/{s['name']}.bin") for sp in ("train", "val")])
    assert s["max_token"] == int(both.max())


def test_empty_input_warns_by_name_and_bar_reaches_100(tmp_path, monkeypatch, capsys):
    os.makedirs(tmp_path / "in")
    open(tmp_path / "in" / "empty.jsonl", "w").close()
    _docs_jsonl(tmp_path / "in" / "good.jsonl", 30)
    code = run_script(monkeypatch, "prepare.py", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--workers=1")
    err = capsys.readouterr().err
    assert code == 0, err
    assert "empty.jsonl: yielded no tokens" in err and "100.0%" in err
    assert "good.jsonl" not in err
    assert run_script(monkeypatch, "prepare.py", "--input", str(tmp_path / "in" / "empty.jsonl"), "--out", str(tmp_path / "o2")) == 1
    assert "empty.jsonl" in capsys.readouterr().err


def test_min_score_filter_with_kept_dropped_and_per_source_counts(tmp_path, monkeypatch, capsys):
    import pyarrow as pa, pyarrow.parquet as pq
    enc = get_tokenizer()
    os.makedirs(tmp_path / "in")
    rows = [(f"文档 {i} 内容。" if i % 2 else f"document {i} text.", (i % 10) / 10, ["CCI3", "Industry", "wiki"][i % 3])
            for i in range(60)]
    pq.write_table(pa.table({"text": [r[0] for r in rows[:40]], "score": [r[1] for r in rows[:40]],
                             "source": [r[2] for r in rows[:40]], "__index__": list(range(40))}), tmp_path / "in" / "a.parquet")
    with open(tmp_path / "in" / "b.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t, "score": s, "source": src}, ensure_ascii=False) + "\n" for t, s, src in rows[40:])
        f.write(json.dumps({"text": "no score here"}) + "\n")
    meta = prepare.prepare([str(tmp_path / "in")], str(tmp_path / "o"), val_fraction=0.0, quiet=True,
                        min_score=0.75, score_field="score", source_field="source")
    kept = [r for r in rows if r[1] >= 0.75]
    assert meta["docs"] == len(kept) and meta["dropped_by_score"] == len(rows) - len(kept)
    assert meta["skipped_rows"] == {"no_score": 1}
    per_source = {}
    for t, _, src in kept:
        per_source[src] = per_source.get(src, 0) + len(enc.encode_ordinary(t)) + 1
    assert meta["tokens_per_row_source"] == per_source and meta["tokens"]["train"] == sum(per_source.values())
    tokens = np.concatenate([data.open_shard(f) for f in glob.glob(str(tmp_path / "o" / "train" / "*.bin"))])
    assert sorted(tokens.tolist()) == sorted(sum((enc.encode_ordinary(t) + [EOT] for t, _, _ in kept), []))
    # a parquet file without the score column is refused by name; the CLI prints the counts
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "noscore.parquet")
    code = run_script(monkeypatch, "prepare.py", "--input", str(tmp_path / "in"), str(tmp_path / "noscore.parquet"),
                      "--out", str(tmp_path / "o2"), "--min_score=0.75", "--score_field=score", "--source_field=source")
    out, err = capsys.readouterr()
    assert code == 1 and "noscore.parquet" in err and "'score'" in err
    assert f"kept {len(kept)} docs, dropped {len(rows) - len(kept)}" in out and "tokens per source: " in out


def _decoded_train(out):
    enc = get_tokenizer()
    toks = np.concatenate([data.open_shard(f) for f in sorted(glob.glob(out + "/train/*.bin"))])
    return [enc.decode(list(map(int, d[:-1]))) for d in np.split(toks, np.where(toks == EOT)[0] + 1) if len(d)]


def test_compressed_jsonl_inputs_give_the_same_shards_as_plain(tmp_path):
    import gzip, lzma
    _docs_jsonl(tmp_path / "plain.jsonl", 40)
    raw = open(tmp_path / "plain.jsonl", "rb").read()
    os.makedirs(tmp_path / "z")
    gzip.open(tmp_path / "z" / "a.jsonl.gz", "wb").write(raw)
    lzma.open(tmp_path / "z" / "b.jsonl.xz", "wb").write(raw)
    plain = prepare.prepare([str(tmp_path / "plain.jsonl")], str(tmp_path / "p"), val_fraction=0, quiet=True)
    both = prepare.prepare([str(tmp_path / "z")], str(tmp_path / "c"), val_fraction=0, quiet=True)
    assert both["docs"] == 2 * plain["docs"] == 80 and not both["errors"]
    assert _decoded_train(str(tmp_path / "c")) == 2 * _decoded_train(str(tmp_path / "p"))


def test_zst_input_without_zstandard_is_one_clear_error(tmp_path, monkeypatch):
    import builtins
    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "zstandard" else real_import(name, *a, **k))
    open(tmp_path / "a.jsonl.zst", "wb").write(b"\x28\xb5\x2f\xfd")
    with pytest.raises(readers.StructuralError, match=r"a\.jsonl\.zst: reading \.zst needs the zstandard package"):
        list(readers.iter_rows(str(tmp_path / "a.jsonl.zst"), ("text", None, None), {}, lambda f: None))


def _poetry_layout(root):
    """A small copy of the chinese-poetry package layout: JSON lists with `paragraphs` as lists of lines, Tang
    poems with title + author, Song ci with `rhythmic` instead of a title."""
    os.makedirs(root / "quantangshi"), os.makedirs(root / "songci")
    tang = [{"title": "靜夜思", "author": "李白", "paragraphs": ["床前明月光，疑是地上霜。", "舉頭望明月，低頭思故鄉。"]},
            {"title": "春曉", "author": "孟浩然", "paragraphs": ["春眠不覺曉，處處聞啼鳥。", "夜來風雨聲，花落知多少。"]}]
    ci = [{"rhythmic": "浣溪沙", "author": "晏殊", "paragraphs": ["一曲新詞酒一杯，去年天氣舊亭臺。"]}]
    json.dump(tang, open(root / "quantangshi" / "poet.tang.0.json", "w", encoding="utf-8"), ensure_ascii=False)
    json.dump(ci, open(root / "songci" / "ci.song.0.json", "w", encoding="utf-8"), ensure_ascii=False)
    json.dump([{"name": "李白", "desc": "..."}], open(root / "quantangshi" / "authors.tang.json", "w"))  # a side file
    json.dump({"title": "論語", "paragraphs": ["學而時習之"]}, open(root / "lunyu.json", "w"))  # one object: one row


def test_poetry_layout_list_valued_and_several_text_fields(tmp_path):
    _poetry_layout(tmp_path / "cp")
    meta = prepare.prepare([str(tmp_path / "cp")], str(tmp_path / "o"), text_field="title,rhythmic,author,paragraphs",
                           val_fraction=0, quiet=True)
    assert meta["docs"] == 4 and not meta["skipped_rows"] and not meta["errors"]
    assert len(meta["warnings"]) == 1 and "authors.tang.json" in meta["warnings"][0]   # skipped, said so
    assert sorted(_decoded_train(str(tmp_path / "o"))) == sorted(
        ["論語\n學而時習之", "靜夜思\n李白\n床前明月光，疑是地上霜。\n舉頭望明月，低頭思故鄉。",
         "春曉\n孟浩然\n春眠不覺曉，處處聞啼鳥。\n夜來風雨聲，花落知多少。",
         "浣溪沙\n晏殊\n一曲新詞酒一杯，去年天氣舊亭臺。"])
    # a parquet file with some of the fields as columns reads those, as a JSON row with some of them does
    import pyarrow as pa, pyarrow.parquet as pq
    pq.write_table(pa.table({"title": ["登鸛雀樓"], "paragraphs": [["白日依山盡，黃河入海流。"]]}), tmp_path / "cp" / "x.parquet")
    meta = prepare.prepare([str(tmp_path / "cp")], str(tmp_path / "o2"), text_field="title,rhythmic,author,paragraphs",
                           val_fraction=0, quiet=True)
    assert meta["docs"] == 5 and not meta["errors"] and "登鸛雀樓\n白日依山盡，黃河入海流。" in _decoded_train(str(tmp_path / "o2"))
    # a field no file has is still an error, naming the files
    wrong = prepare.prepare([str(tmp_path / "cp")], str(tmp_path / "w"), text_field="body", val_fraction=0, quiet=True)
    assert wrong["docs"] == 0 and len(wrong["errors"]) == 5 and all("'body'" in e for e in wrong["errors"])
    # one list-valued field alone; a list holding a non-string is counted, not joined
    assert readers.row_text({"paragraphs": ["a", "b"]}, ["paragraphs"]) == "a\nb"
    assert readers.row_text({"paragraphs": ["a", 3]}, ["paragraphs"]) == ["a", 3]
    assert readers.row_text({"other": 1}, ["title", "paragraphs"]) is None


def test_progress_in_a_log_file_is_a_few_plain_lines(tmp_path):
    import io
    stream = io.StringIO()
    bar = prepare.ProgressBar(interval=3600, stream=stream)
    for i in range(1, 500):
        bar.update(i / 500, i * 1000)
    bar.update(1.0, 500_000, final=True)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == 2 and "100.0%" in lines[-1]
    stream = io.StringIO()
    prepare.ProgressBar(stream=stream).update(0.0, 0)   # the first line, before any progress: no estimate yet
    assert stream.getvalue().rstrip().endswith("ETA      ?") and "nan" not in stream.getvalue()
