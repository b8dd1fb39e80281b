"""Data: preparation (counts, skips, errors, resumability, mixing), the shard format, the loader."""
import glob, json, os

import numpy as np
import pytest
import torch
from conftest import run, synthetic_dataset

import data
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


def test_prepare_counts_skips_errors_and_is_resumable(tmp_path):
    docs = _write_inputs(tmp_path / "in")
    enc = get_tokenizer()
    out = str(tmp_path / "out")
    meta = data.prepare([str(tmp_path / "in")], out, val_fraction=0.0, workers=2, quiet=True)
    assert meta["tokens"]["train"] == sum(len(enc.encode_ordinary(t)) + 1 for t in docs)
    assert meta["skipped_rows"] == {"not_string": 2, "empty": 1, "bad_json": 1, "invalid_utf8": 1, "missing_field": 1}
    assert len(meta["errors"]) == 1 and "bad.parquet" in meta["errors"][0]
    all_tokens = np.concatenate([data.open_shard(f) for f in sorted(glob.glob(out + "/train/*.bin"))])
    direct = np.concatenate([enc.encode_ordinary(t) + [EOT] for t in docs])
    assert sorted(all_tokens.tolist()) == sorted(direct.tolist())
    snapshot = {os.path.basename(f): open(f, "rb").read() for f in glob.glob(out + "/*/*.bin")}
    # simulated interruption: one input finished, one killed mid-write (a .tmp and a shard without sidecar),
    # the rest never started; re-running must produce byte-identical shards
    out2 = str(tmp_path / "out2")
    data.prepare([str(tmp_path / "in" / "a.parquet")], out2, val_fraction=0.0, quiet=True)
    name_b = data._shard_name(str(tmp_path / "in" / "b.jsonl"))
    open(os.path.join(out2, "train", name_b + ".bin.tmp"), "wb").write(b"partial")
    open(os.path.join(out2, "train", name_b + ".bin"), "wb").write(b"QWTOKSHD garbage")
    meta2 = data.prepare([str(tmp_path / "in")], out2, val_fraction=0.0, workers=2, quiet=True)
    assert {os.path.basename(f): open(f, "rb").read() for f in glob.glob(out2 + "/*/*.bin")} == snapshot
    assert meta2["tokens"] == meta["tokens"]
    # CLI: structural errors give exit code 1 and a message naming the file
    r = run(["data.py", "--input", str(tmp_path / "in" / "bad.parquet"), "--out", str(tmp_path / "o3")])
    assert r.returncode == 1 and "bad.parquet" in r.stderr
    r = run(["data.py", "--input", str(tmp_path / "in" / "b.jsonl"), "--out", str(tmp_path / "o4"), "--text_field", "body"])
    assert r.returncode == 1 and "body" in r.stderr


def test_prepare_mixing_weights(tmp_path):
    d = tmp_path / "in"
    os.makedirs(d / "zh"), os.makedirs(d / "en")
    for i in range(40):
        open(d / "zh" / f"{i}.txt", "w").write("中文句子。" * 20)
        open(d / "en" / f"{i}.txt", "w").write("An English sentence. " * 20)
    meta = data.prepare([f"{d}/zh@3", f"{d}/en/*.txt@1"], str(tmp_path / "out"), val_fraction=0.0, quiet=True)
    per = {0: 0, 1: 0}
    for s in meta["shards"]:
        per[s["source"]] += s["use_tokens"]["train"]
    assert abs(per[0] / per[1] - 3.0) < 0.05, per


def test_loader_epoch_coverage_disjoint_ranks_world_size_independence(tmp_path):
    d = synthetic_dataset(str(tmp_path / "ds"))
    w = data.TokenWindows(d, "train", 64, seed=5)
    ids = [w.window_index(g) for g in range(w.n_windows)]
    assert sorted(ids) == list(range(w.n_windows))                      # each window exactly once per epoch
    ids2 = [w.window_index(g) for g in range(w.n_windows, 2 * w.n_windows)]
    assert sorted(ids2) == list(range(w.n_windows)) and ids2 != ids       # next epoch: new order
    assert ids != list(range(w.n_windows))
    # global batch of 16 for world sizes 1, 2, 4, 8 with accumulation adjusted
    def global_batch(world, step):
        accum = 16 // (2 * world)
        rows = []
        for r in range(world):
            b = data.DistributedBatches(w, 2, world, r, accum)
            per_rank = [b.get(step, m)[0] for m in range(accum)]
            rows.append(torch.cat(per_rank))
            assert len({p for m in range(accum) for p in b.positions(step, m)}) == 2 * accum
        return rows
    for step in (0, 3, 50):
        ref = torch.cat(global_batch(1, step))
        for world in (2, 4, 8):
            rows = global_batch(world, step)
            pos = [set(data.DistributedBatches(w, 2, world, r, 16 // (2 * world)).positions(step, m))
                   for r in range(world) for m in range(16 // (2 * world))]
            assert all(a.isdisjoint(b) for i, a in enumerate(pos) for b in pos[i + 1:])  # ranks disjoint
            assert sorted(map(tuple, torch.cat(rows).tolist())) == sorted(map(tuple, ref.tolist()))
    # resume: a fresh loader at step s yields what the uninterrupted one yields
    a = data.DistributedBatches(w, 2, 1, 0, 4)
    seq = [a.get(s, m)[0] for s in range(6) for m in range(4)]
    b = data.DistributedBatches(data.TokenWindows(d, "train", 64, seed=5), 2, 1, 0, 4)
    assert all(torch.equal(seq[4 * 3 + m], b.get(3, m)[0]) for m in range(4))
    x, y = a.get(0, 0)
    assert torch.equal(x[:, 1:], y[:, :-1])


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
