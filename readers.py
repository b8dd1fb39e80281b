"""
Raw input files -> rows of text (what prepare.py tokenizes): parquet, jsonl, json, and plain text -- .txt and
Python source .py, one file one document (a corpus of code: the standard library's .py files) -- the last three
also compressed (.gz, .xz, .zst), and the text of a row from one field or several.

Bad rows are counted by reason and skipped; a file that cannot be used at all raises StructuralError (one line,
naming the file), and a file with none of the text fields raises its subclass MissingFieldError, which prepare.py
treats as a side file (authors.json beside the poems) when other files of the same run have the field.
"""
import io, json, os

class StructuralError(Exception):
    """A whole input file is unusable (unreadable, wrong format, no such text or score field)."""


class MissingFieldError(StructuralError):
    """No row of the file has any of the text fields."""


COMPRESSED = ("gz", "xz", "zst")          # jsonl / json / txt inputs may be compressed with any of these
TEXT_FORMATS = ("txt", "py")               # one file = one document, no fields
FORMATS = ("parquet", "jsonl", "json") + TEXT_FORMATS


def input_format(path):
    """'a.jsonl.xz' -> ('jsonl', 'xz'); 'a.parquet' -> ('parquet', None); an unknown format -> (ext, None)."""
    parts = os.path.basename(path).lower().split(".")
    if len(parts) > 2 and parts[-1] in COMPRESSED and parts[-2] in FORMATS and parts[-2] != "parquet":
        return parts[-2], parts[-1]
    return parts[-1], None


def _open_input(path, compression):
    """(binary stream of the decompressed bytes, the raw file): progress is read off the raw file's position."""
    raw = open(path, "rb")
    if compression is None:
        return raw, raw
    if compression == "gz":
        import gzip
        return gzip.GzipFile(fileobj=raw), raw
    if compression == "xz":
        import lzma
        return lzma.LZMAFile(raw), raw
    try:
        import zstandard  # optional: only .zst inputs need it
    except ImportError:
        raw.close()
        raise StructuralError(f"{path}: reading .zst needs the zstandard package (pip install zstandard)")
    return io.BufferedReader(_ZstdFrames(raw, zstandard.ZstdDecompressor())), raw


class _ZstdFrames(io.RawIOBase):
    """The frames of a .zst file, decompressed one after the other by decompressobj, which (unlike stream_reader)
    says whether a frame ended: stream_reader ends a cut-off file as if it were whole, and prepare.py reported
    its first half as the file."""

    def __init__(self, raw, decompressor):
        self.raw, self.decompressor, self.dobj = raw, decompressor, decompressor.decompressobj()
        self.buf, self.at = b"", 0   # decompressed bytes and how many of them are read (no re-slicing of the rest)

    def readable(self):
        return True

    def readinto(self, b):
        while self.at == len(self.buf):
            chunk, self.buf, self.at = self.raw.read(1 << 16), b"", 0
            if not chunk:
                if not self.dobj.eof:
                    raise EOFError("the file ends in the middle of a zstd frame (cut off)")
                return 0
            while chunk:
                if self.dobj.eof:   # the next frame of a multi-frame file (pzstd, concatenated files)
                    self.dobj = self.decompressor.decompressobj()
                self.buf += self.dobj.decompress(chunk)
                chunk = self.dobj.unused_data if self.dobj.eof else b""
        n = min(len(b), len(self.buf) - self.at)
        b[:n] = self.buf[self.at:self.at + n]
        self.at += n
        return n


def files_under(folder):
    """Every file below `folder`, as a recursive glob finds them (dot-names skipped), but a symlinked folder is
    walked once however many links lead to it: a link loop made glob read one file 41 times. A broken link is
    listed (callers keep what os.path.isfile accepts)."""
    out, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [os.path.join(root, f) for f in files if not f.startswith(".")]
    return sorted(out)


def unique_files(paths):
    """paths without a second name for a file already listed (overlapping --input specs, the same file twice, a
    link to it): each file is read once, under its first name. Returns (kept, how many were dropped)."""
    kept, seen = [], set()
    for p in paths:
        real = os.path.realpath(p)
        if real not in seen:
            seen.add(real), kept.append(p)
    return kept, len(paths) - len(kept)


def fields_named(text_fields):
    """'the field 'text'' or 'any of the fields 'title', 'paragraphs'': several fields read as several, not as one
    field named 'title,paragraphs'."""
    if len(text_fields) == 1:
        return f"the field {text_fields[0]!r}"
    return "any of the fields " + ", ".join(map(repr, text_fields))


def row_text(row, text_fields):
    """The document of a row: the named fields that are present, in order, joined by newlines; a field holding a
    list of strings (chinese-poetry's `paragraphs`) is its lines joined by newlines. None when no field is present;
    a value that is neither a string nor a list of strings is returned as is (counted as not_string)."""
    parts = []
    for f in text_fields:
        v = row.get(f)
        if v is None:
            continue
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            v = "\n".join(v)
        if not isinstance(v, str):
            return v
        parts.append(v)
    return "\n".join(parts) if parts else None


def iter_rows(path, fields, skips, progress):
    """Yield (text, score, row_source) for the rows of one file; `fields` = (text fields, score, source) field
    names, the text fields a comma-separated list (joined by newlines, see row_text), the last two None when unused
    (a missing source is None; a .txt file is one document with neither). Bad rows are counted in `skips` by
    reason; structural problems raise. `progress(fraction)` reports how far through we are."""
    text_field, score_field, source_field = fields
    text_fields = [f.strip() for f in text_field.split(",") if f.strip()]
    ext, compression = input_format(path)
    try:
        if ext == "parquet":
            import pyarrow.parquet as pq  # only needed for parquet inputs
            pf = pq.ParquetFile(path)
            names = pf.schema_arrow.names
            # of several text fields the columns present are read, as a JSONL row's present fields are; none: an error
            present = [f for f in text_fields if f in names]
            if not present:
                raise StructuralError(f"{path}: no column {' or '.join(map(repr, text_fields))} (columns: {names}); "
                                      "use --text_field")
            if score_field and score_field not in names:
                raise StructuralError(f"{path}: no column {score_field!r} (columns: {names}); use --score_field")
            cols = [score_field, source_field if source_field in names else None]
            for g in range(pf.num_row_groups):
                table = pf.read_row_group(g, columns=present + [c for c in cols if c])
                texts = [row_text(dict(zip(present, r)), present)
                         for r in zip(*[table.column(f).to_pylist() for f in present])]
                yield from zip(texts, *[table.column(c).to_pylist() if c else [None] * table.num_rows for c in cols])
                progress((g + 1) / pf.num_row_groups)
        elif ext in ("jsonl", "json"):
            stream, raw = _open_input(path, compression)
            with stream, raw:
                if ext == "json":
                    rows = json.load(stream)
                    rows = [rows] if isinstance(rows, dict) else rows   # one object: one row
                    if not isinstance(rows, list) or not any(isinstance(r, dict) and any(f in r for f in text_fields)
                                                             for r in rows):
                        raise MissingFieldError(f"{path}: no object in it has {fields_named(text_fields)} "
                                                "(a JSON list of objects, or one object, is read)")
                    lines, size = [(r, 0) for r in rows], 1
                else:
                    lines, size = _jsonl_rows(stream, raw, skips), max(os.path.getsize(path), 1)
                seen_field = False
                for row, pos in lines:
                    text = row_text(row, text_fields) if isinstance(row, dict) else None
                    if text is None:
                        skips["missing_field"] += 1
                        continue
                    seen_field = True
                    yield text, row.get(score_field), row.get(source_field)  # .get(None): None
                    progress(pos / size)
            if not seen_field and skips["missing_field"]:
                raise MissingFieldError(f"{path}: no row has {fields_named(text_fields)} (--text_field)")
        elif ext in TEXT_FORMATS:  # one file = one document
            stream, raw = _open_input(path, compression)
            with stream, raw:
                try:   # utf-8-sig: a byte-order mark is not part of the document
                    yield stream.read().decode("utf-8-sig"), None, None
                except UnicodeDecodeError:
                    skips["invalid_utf8"] += 1
        else:
            raise StructuralError(f"{path}: unsupported extension .{ext} ({', '.join(FORMATS)}; "
                                  f"jsonl/json/txt/py may end in .{', .'.join(COMPRESSED)})")
    except StructuralError:
        raise
    except ImportError:
        raise StructuralError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)")
    except (OSError, ValueError, EOFError, RecursionError) + _corrupt_archive_errors(compression) as e:
        # unreadable, cut-off or corrupt archive (zlib.error, LZMAError, ZstdError are none of the others), bad JSON
        raise StructuralError(f"{path}: cannot read: {type(e).__name__}: {' '.join(str(e).split())}")


def _corrupt_archive_errors(compression):
    """What the decompressor of `compression` raises on damaged data, beyond OSError and EOFError."""
    if compression == "gz":
        import zlib
        return (zlib.error,)
    if compression == "xz":
        import lzma
        return (lzma.LZMAError,)
    if compression == "zst":
        try:
            import zstandard
            return (zstandard.ZstdError,)
        except ImportError:
            return ()
    return ()


def _jsonl_rows(stream, raw, skips):
    """(row, byte position in the raw file) per parseable line; broken lines are counted in `skips`."""
    for i, line in enumerate(stream):
        if i == 0 and line.startswith(b"\xef\xbb\xbf"):   # a byte-order mark (Windows editors) is not JSON
            line = line[3:]
        if line.strip():
            try:
                yield json.loads(line.decode("utf-8")), raw.tell()
            except UnicodeDecodeError:
                skips["invalid_utf8"] += 1
            except ValueError:   # bad JSON, or a number past Python's 4,300-digit limit: this row only
                skips["bad_json"] += 1
            except RecursionError:   # e.g. 100k '[': the parser's stack, not the run, gives up on this row
                skips["too_deeply_nested"] += 1
