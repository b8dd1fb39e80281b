"""
The token batches the model sees, in the order a reader meets them (prepare.py makes the shards from raw text):

1. the shard format: one uint32 token file per input file and split, with a 32-byte checked header;
2. the loader (what train.py reads): a split's shards, each cut to its `use_tokens`, are ONE token stream (a window
   may span files; no short file is lost), cut into (T+1)-token windows visited in a seeded bijective order. Sample
   g = step * global_batch + j depends only on g -- not on the world size, the rank or any loader state -- so ranks
   never overlap and a resume (on any number of GPUs) needs only the step. Memory is O(shards), no file stays open.
   Validation is a fixed, seeded sample spread over the whole val stream, the same in train.py and eval.py
   (val_loss_bpb: loss and bits per byte);
3. instruction tuning (train.py --sft_data=DIR): sft.py's conversations packed greedily into seq_len rows, with
   doc_ids so that attention never crosses conversations and positions restart at 0 (model.py); the row at global
   position g depends only on g, as for pretraining.
Documents end with <|endoftext|> (no BOS, as Qwen); the tokenizer lives in tokenizer.py, preparation (the
`python prepare.py` CLI and the demo corpus) in prepare.py. Every data error is one
line naming the file and what to do.
"""
import errno, json, math, os, shutil, sys
from contextlib import nullcontext

import numpy as np
import torch

from tokenizer import EOT, QWEN_VOCAB, RANKS_SHA256, token_byte_lengths

# ------------------------------------------------------------------------------------------------ shards
MAGIC, VERSION, HEADER_BYTES = b"QWTOKSHD", 1, 32  # magic, u32 version, u32 bytes per token, u64 count, pad
REDO = "re-run `python prepare.py` with the same --input and --out to rebuild it"


def write_shard(path, tokens):
    """Write-then-rename: a crash never leaves a file that looks like a valid shard."""
    tokens = np.asarray(tokens, dtype=np.uint32)
    header = MAGIC + np.array([VERSION, 4], dtype="<u4").tobytes() + np.array([len(tokens)], dtype="<u8").tobytes()
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(header.ljust(HEADER_BYTES, b"\0"))
            f.write(tokens.astype("<u4").tobytes())
            f.flush(), os.fsync(f.fileno())
    except OSError:   # e.g. a full disk: leave no partial file behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, path)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)   # no space, over quota, over the file-size limit


def write_json(path, obj, **dump_kw):
    """JSON written as a shard is: a .tmp file flushed, fsynced and closed (each can report a full disk), then renamed.
    json.dump into an open() never closed let a full disk pass unseen: the rename put a file cut at 4 KiB (or empty)
    where a reader trusts it. A failure removes the .tmp and raises the OSError."""
    text, tmp = json.dumps(obj, **dump_kw), path + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush(), os.fsync(f.fileno())
    except OSError:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, path)
    return len(text.encode("utf-8"))


def no_space_message(path, need_bytes, e, then="free space and run again"):
    """One line for a write that failed: the path, the reason, the space it needed and what is free."""
    try:
        free = f"{shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    return (f"error: writing {path} failed ({e.strerror or e}): it needs about {need_bytes / 2**20:.2f} MiB, "
            f"{free}; nothing half-written is kept: {then}")


def check_shard_name(name, meta_path):
    """A shard name from meta.json is a file name in the split folder, never a path: '../../secret/s' would read
    outside the data folder."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"{meta_path}: shard name {name!r} is not a plain file name (it would leave the data "
                         "folder); rebuild the data with prepare.py / sft.py")


def make_writable_dir(path):
    """Create `path` if need be and prove a file can be written there, so that a read-only or full output directory
    is one line before any work instead of a traceback (Errno 30) in the middle of it."""
    probe = os.path.join(path, f".write-test-{os.getpid()}")
    try:
        os.makedirs(path, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise SystemExit(f"error: cannot write to the output directory {path} ({e.strerror or e}): "
                         "choose another one, or make it writable") from None


def shard_length(path, redo=REDO):
    """A shard's token count, after checking its header and size; refuses missing, truncated or foreign files
    (`redo`: how to rebuild it, which depends on the tool that wrote it)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: {redo}")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if len(head) < HEADER_BYTES or head[:8] != MAGIC:
        raise ValueError(f"{path} is not a token shard (bad magic); {redo}")
    version, itemsize = np.frombuffer(head[8:16], dtype="<u4")
    count = int(np.frombuffer(head[16:24], dtype="<u8")[0])
    if version != VERSION or itemsize != 4:
        raise ValueError(f"{path}: shard version {version} / {itemsize}-byte tokens; this code reads v{VERSION}, 4-byte")
    if size != HEADER_BYTES + 4 * count:
        raise ValueError(f"{path} is truncated or corrupt: header says {count} tokens "
                         f"({HEADER_BYTES + 4 * count} bytes) but the file has {size} bytes; {redo}")
    return count


def open_shard(path, redo=REDO):
    """All tokens of a shard as a read-only memmap (for inspection, tests and SFT data; the pretraining loader reads
    with read_tokens)."""
    count = shard_length(path, redo)
    return np.memmap(path, dtype="<u4", mode="r", offset=HEADER_BYTES, shape=(count,)) if count else np.zeros(0, "<u4")


def read_tokens(path, start, count):
    """Tokens [start, start + count) of a shard. The file is opened and closed per read, so a split of 5,000
    shards never holds 5,000 descriptors (one np.memmap each did: 'Too many open files')."""
    tokens = np.fromfile(path, dtype="<u4", count=count, offset=HEADER_BYTES + 4 * start)
    if len(tokens) != count:
        raise ValueError(f"{path} is shorter than when the loader opened it (changed under a run?); {REDO}")
    return tokens


# ---------------------------------------------------------------------------------------------- loader
def load_meta(data_dir):
    path, prep = os.path.join(data_dir, "meta.json"), f"prepare the data (python prepare.py --input ... --out {data_dir})"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {prep}")
    try:
        meta = json.load(open(path, encoding="utf-8"))
        shards = meta.get("shards") if isinstance(meta, dict) else None
        named = isinstance(shards, list) and all(isinstance(s, dict) and isinstance(s.get("name"), str) for s in shards)
        problem = "" if named else "no list of named shards"
    except ValueError as e:  # bad JSON or bad UTF-8
        problem = " ".join(str(e).split())
    if problem:
        raise ValueError(f"{path} is broken ({problem}): delete it and {prep}")
    for s in shards:
        check_shard_name(s["name"], path)
    return meta


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
    """All non-overlapping (T+1)-token windows of a split's token stream -- its shards, each cut to its
    `use_tokens`, end to end in meta.json order. Window w is stream tokens [w*T, w*T + T + 1): consecutive windows
    share one token, so every token but the final partial window's is a target once. Visited in a seeded random
    order that changes every epoch. Lookup is O(log shards); memory is O(shards); no file stays open."""

    def __init__(self, data_dir, split, seq_len, seed=1337, vocab_size=None):
        meta = load_meta(data_dir)
        if meta.get("tokenizer_sha256") != RANKS_SHA256:
            raise ValueError(f"{data_dir} was tokenized with a different tokenizer: prepare it again with this code")
        self.T, self.seed, self.vocab_size, self.paths, offsets = seq_len, seed, vocab_size, [], [0]
        for s in meta["shards"]:
            path = os.path.join(data_dir, split, s["name"] + ".bin")
            count = shard_length(path)
            if s.get("tokens", {}).get(split, count) != count:
                raise ValueError(f"{path} has {count} tokens but {data_dir}/meta.json says {s['tokens'][split]}: "
                                 f"the two are from different preparations; {REDO}")
            if vocab_size is not None and s.get("max_token", -1) >= vocab_size:
                raise ValueError(f"{data_dir}: shard {s['name']} (from {s.get('input', '?')}) holds token id "
                                 f"{s['max_token']} >= the model's vocab_size {vocab_size}: prepare the data with this "
                                 f"model's tokenizer, or use a model with a larger vocab_size")
            n = min(s.get("use_tokens", {}).get(split, count), count)
            if n > 0:  # mixing may cut a shard to nothing
                self.paths.append(path)
                offsets.append(offsets[-1] + n)
        self.offsets = np.array(offsets, dtype=np.int64)  # shard i is stream tokens [offsets[i], offsets[i+1])
        self.n_windows = max(0, (offsets[-1] - 1) // seq_len)
        if self.n_windows == 0:
            raise ValueError(f"{data_dir}/{split} has {offsets[-1]} tokens, not one window of {seq_len + 1}: "
                             "prepare more data (or a larger --val_fraction) or use a shorter seq_len")
        bits = math.ceil(math.log2(self.n_windows))
        self.n_bits = max(2, bits + bits % 2)

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
        """The T+1 tokens of window w, read piecewise from every shard it spans."""
        start, stop = int(w) * self.T, int(w) * self.T + self.T + 1
        s, parts = int(np.searchsorted(self.offsets, start, side="right")) - 1, []
        while start < stop:
            n = min(stop, int(self.offsets[s + 1])) - start
            part = read_tokens(self.paths[s], start - int(self.offsets[s]), n)
            if self.vocab_size is not None and part.max() >= self.vocab_size:  # meta.json without max_token
                raise ValueError(f"{self.paths[s]} holds token id {part.max()} >= the model's vocab_size "
                                 f"{self.vocab_size}: prepare the data with this model's tokenizer")
            parts.append(part)
            start, s = start + n, s + 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


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


def data_or_exit(fn, *args):
    """fn(*args), a data problem (this file names the file and what to do) as one line; every rank stops."""
    try:
        return fn(*args)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")


def pretrain_batches(data_dir, seq_len, seed, vocab_size, micro_batch, world, rank, grad_accum, device, doc_mask):
    """train.py's get_batch(step, micro_step) for pretraining: the split's windows as (x, y), plus doc_ids cut at
    <|endoftext|> with doc_mask."""
    windows = TokenWindows(data_dir, "train", seq_len, seed, vocab_size=vocab_size)
    windows_at = DistributedBatches(windows, micro_batch, world, rank, grad_accum, device).get

    def get(step, micro_step):
        x, y = windows_at(step, micro_step)
        return (x, y, doc_ids_at_endoftext(x)) if doc_mask else (x, y)
    return get


VAL_SEED = 2024


def val_window_ids(n_windows, seq_len, n_tokens, seed=VAL_SEED):
    """The fixed validation sample: n = n_tokens // seq_len window ids, one drawn (seeded) from each of n equal
    strata of the val stream. Shards lie in the stream in source order, so every source -- and every shard of at
    least n_windows / n windows -- is sampled in proportion to its tokens; the random draw within a stratum avoids
    the aliasing a fixed stride would have on equal-sized files (always the same document of each file)."""
    n = min(max(1, n_tokens // seq_len), n_windows)
    lo, hi = np.arange(n, dtype=np.int64) * n_windows // n, np.arange(1, n + 1, dtype=np.int64) * n_windows // n
    return lo + (np.random.default_rng(seed).random(n) * (hi - lo)).astype(np.int64)


def doc_ids_at_endoftext(x):
    """--doc_mask: the document index of each position of the windows x [B, T], counted from 0 in each window; a
    document ends with (and includes) its <|endoftext|>."""
    eot = (x == EOT).long()
    return eot.cumsum(1) - eot


def val_batches(data_dir, seq_len, n_tokens, batch_size, device="cpu", doc_mask=False, vocab_size=None):
    """The held-out set of about n_tokens target tokens (val_window_ids): the same windows for every evaluation
    of every run, whatever the batch size, in train.py and eval.py alike. Batches are (x, y), plus doc_ids with
    doc_mask (a run trained with document masking is evaluated the way it was trained). With vocab_size, an id the
    model has no embedding for is refused naming its shard."""
    w = TokenWindows(data_dir, "val", seq_len, vocab_size=vocab_size)
    ids = val_window_ids(w.n_windows, seq_len, n_tokens)
    for i in range(0, len(ids), batch_size):
        rows = np.stack([w.window(j) for j in ids[i:i + batch_size]]).astype(np.int64)
        xy = torch.from_numpy(rows).to(device)
        yield (xy[:, :-1], xy[:, 1:]) + ((doc_ids_at_endoftext(xy[:, :-1]),) if doc_mask else ())


@torch.no_grad()
def val_loss_bpb(model, data_dir, seq_len, n_tokens, batch_size, device, autocast=nullcontext(), doc_mask=False):
    """Mean next-token loss (nats) over the fixed held-out set, and bits per byte: the same total loss in bits
    divided by the UTF-8 bytes of the scored target tokens (special tokens such as <|endoftext|> count 0 bytes),
    i.e. bpb = loss / ln 2 * tokens / bytes. Unlike loss, bpb does not depend on the tokenizer. doc_mask: attention
    and positions restart after each <|endoftext|>, as in a run trained with --doc_mask=True."""
    was_training = model.training
    model.eval()
    nbytes = torch.from_numpy(token_byte_lengths(model.config.vocab_size)).to(device)
    total_nats, total_tokens, total_bytes = 0.0, 0, 0
    for x, y, *doc_ids in val_batches(data_dir, seq_len, n_tokens, batch_size, device, doc_mask,
                                      model.config.vocab_size):
        with autocast:
            _, loss = model(x, y, *doc_ids)
        total_nats += loss.item() * y.numel()
        total_tokens += y.numel()
        total_bytes += int(nbytes[y].sum())
    model.train(was_training)
    return total_nats / total_tokens, total_nats / math.log(2) / max(total_bytes, 1)


# ------------------------------------------------------------------------- packed SFT conversations (sft.py's shards)
class PackedConversations:
    """The conversations of a split, packed once: shuffled with `seed`, then greedily into rows of at most
    seq_len tokens (a conversation that does not fit closes the row; conversations are never split). Each epoch
    visits the rows in a new seeded order. row(r) -> (x, y, doc_ids), each [seq_len]: y is the next token where
    the loss mask says so and -100 elsewhere; padding (EOT) is a document of its own with no targets."""

    def __init__(self, data_dir, split, seq_len, seed=1337, quiet=True, vocab_size=None):
        meta, redo = load_sft_meta(data_dir), f"re-run `python sft.py` with the same --input and --out {data_dir}"
        self.T, self.seed, self.tokens, self.masks, conv = seq_len, seed, [], [], []
        for s in meta["shards"]:
            base = os.path.join(data_dir, split, s["name"])
            lens = np.asarray(open_shard(base + ".lens.bin", redo), dtype=np.int64)
            self.tokens.append(open_shard(base + ".tokens.bin", redo)), self.masks.append(open_shard(base + ".mask.bin", redo))
            check_sft_shard(base, lens, self.tokens[-1], self.masks[-1], vocab_size, redo)
            starts = (np.cumsum(lens) - lens).astype(np.int64)   # also right for a file with no conversation here
            conv.append(np.stack([np.full_like(lens, len(self.tokens) - 1), starts, lens], 1))
        conv = np.concatenate(conv) if conv else np.zeros((0, 3), dtype=np.int64)
        too_long = conv[:, 2] > seq_len
        if too_long.any() and not quiet:
            print(f"note: {int(too_long.sum())} {split} conversations are longer than seq_len {seq_len} and are not "
                  f"used (prepare with --max_len={seq_len} --overlong=truncate to keep them, truncated)")
        self.conv = conv[~too_long][np.random.default_rng(seed).permutation(int((~too_long).sum()))]
        bounds, used = [0], 0
        for i, n in enumerate(self.conv[:, 2].tolist()):  # greedy packing in the shuffled order
            if used + n > seq_len:
                bounds.append(i)
                used = 0
            used += n
        self.bounds = np.array(bounds + [len(self.conv)], dtype=np.int64)
        self.n_rows = len(self.bounds) - 1 if len(self.conv) else 0
        self.fill = float(self.conv[:, 2].sum()) / max(1, self.n_rows * seq_len)  # packing efficiency
        self._order = (None, None)

    def row_index(self, g):
        """Global position g -> row: epoch g // n_rows, rows in a seeded order per epoch."""
        epoch, i = divmod(int(g), self.n_rows)
        if self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n_rows))
        return int(self._order[1][i])

    def row(self, r):
        T, x = self.T, np.full(self.T, EOT, dtype=np.int64)
        m, doc = np.zeros(T, dtype=bool), np.zeros(T, dtype=np.int64)
        at = 0
        for d, (s, start, n) in enumerate(self.conv[self.bounds[r]:self.bounds[r + 1]].tolist()):
            x[at:at + n], m[at:at + n], doc[at:at + n] = self.tokens[s][start:start + n], self.masks[s][start:start + n], d
            at += n
        doc[at:] = doc[at - 1] + 1 if at else 0
        y = np.full(T, -100, dtype=np.int64)
        ok = m[1:] & (doc[1:] == doc[:-1])  # the first token of a conversation is <|im_start|>: never a target
        y[:-1][ok] = x[1:][ok]
        return x, y, doc


class SFTBatches(DistributedBatches):
    """data.DistributedBatches over packed rows: get(step, micro) -> (x, y, doc_ids) on the device, the rows at
    the same global positions as pretraining's windows (world-size independent, resumable from the step)."""

    def get(self, step, micro_step):
        rows = [self.w.row(self.w.row_index(g)) for g in self.positions(step, micro_step)]
        out = [torch.from_numpy(np.stack(a)) for a in zip(*rows)]
        if str(self.device).startswith("cuda"):
            out = [t.pin_memory().to(self.device, non_blocking=True) for t in out]
        return tuple(out)


def load_sft_meta(data_dir):
    """An SFT directory's meta.json, checked: a missing, broken or foreign one is one line naming it."""
    path = os.path.join(data_dir, "meta.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: prepare the data first (python sft.py --input ... --out {data_dir})")
    try:
        meta = json.load(open(path, encoding="utf-8"))
    except ValueError as e:   # bad JSON or bad UTF-8
        raise ValueError(f"{path} is broken ({' '.join(str(e).split())[:200]}): delete it and re-run `python sft.py` "
                         f"with the same --input and --out {data_dir}") from None
    if not isinstance(meta, dict) or meta.get("format") != "sft-chatml" or meta.get("tokenizer_sha256") != RANKS_SHA256 \
            or not isinstance(meta.get("shards"), list):
        raise ValueError(f"{path}: {data_dir} is not SFT data made by sft.py with this tokenizer")
    for s in meta["shards"]:
        check_shard_name(s.get("name") if isinstance(s, dict) else s, path)
    return meta


def check_sft_shard(base, lens, tokens, mask, vocab_size, redo):
    """The three files of one SFT shard agree (conversation lengths sum to the token count, one mask value per
    token) and every id has an embedding row: checked when the data is opened, not deep in training."""
    if int(lens.sum()) != len(tokens) or len(mask) != len(tokens):
        raise ValueError(f"{base}.{{tokens,mask,lens}}.bin disagree ({len(tokens)} tokens, {len(mask)} mask values, "
                         f"lengths summing to {int(lens.sum())}): {redo}")
    if vocab_size is not None and len(tokens) and int(tokens.max()) >= vocab_size:
        raise ValueError(f"{base}.tokens.bin holds token id {int(tokens.max())} >= the model's vocab_size {vocab_size}: "
                         f"{redo}, or use a model with a larger vocab_size")


def sft_chat_template(data_dir):
    """The chat template an SFT directory's conversations were rendered with (data made before the choice: ChatML)."""
    return load_sft_meta(data_dir).get("chat_template", "chatml")


def sft_batches(data_dir, seq_len, seed, vocab_size, micro_batch, world, rank, grad_accum, device, master):
    """train.py's SFT data: the packed training conversations of data_dir as SFTBatches, or a clear exit."""
    if vocab_size < QWEN_VOCAB:
        sys.exit(f"error: SFT needs the chat tokens (ids up to {QWEN_VOCAB - 1}); vocab_size is {vocab_size}")
    rows = PackedConversations(data_dir, "train", seq_len, seed, quiet=not master, vocab_size=vocab_size)
    if not rows.n_rows:
        sys.exit(f"error: {data_dir} has no training conversation of at most seq_len {seq_len} tokens")
    if master:
        print(f"SFT: {len(rows.conv):,} conversations in {rows.n_rows:,} rows of {seq_len} ({100 * rows.fill:.0f}% filled)")
    return SFTBatches(rows, micro_batch, world, rank, grad_accum, device)


@torch.no_grad()
def sft_val_loss(model, data_dir, seq_len, batch_size, device, autocast):
    """Mean loss per assistant token over the val split (None if it is empty), packed as in training."""
    try:
        p = PackedConversations(data_dir, "val", seq_len, vocab_size=model.config.vocab_size)
    except FileNotFoundError:
        return None
    was_training, total, count = model.training, 0.0, 0
    model.eval()
    for i in range(0, p.n_rows, batch_size):
        x, y, doc = (torch.from_numpy(np.stack(a)).to(device) for a in zip(*[p.row(r) for r in range(i, min(i + batch_size, p.n_rows))]))
        with autocast:
            _, loss = model(x, y, doc)
        n = int((y != -100).sum())
        total, count = total + loss.item() * n, count + n
    model.train(was_training)
    return total / count if count else None
