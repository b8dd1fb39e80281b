"""
Raw input files -> rows of text (what prepare.py tokenizes): parquet, jsonl, json and txt, the last three also
compressed (.gz, .xz, .zst), and the text of a row from one field or several.

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
FORMATS = ("parquet", "jsonl", "json", "txt")


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
    return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw)), raw


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
                        raise MissingFieldError(f"{path}: expected a JSON list of objects with the field {text_field!r}")
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
                raise MissingFieldError(f"{path}: no row has the field {text_field!r}; use --text_field")
        elif ext == "txt":  # one file = one document
            stream, raw = _open_input(path, compression)
            with stream, raw:
                try:
                    yield stream.read().decode("utf-8"), None, None
                except UnicodeDecodeError:
                    skips["invalid_utf8"] += 1
        else:
            raise StructuralError(f"{path}: unsupported extension .{ext} ({', '.join(FORMATS)}; "
                                  f"jsonl/json/txt may end in .{', .'.join(COMPRESSED)})")
    except StructuralError:
        raise
    except ImportError:
        raise StructuralError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)")
    except (OSError, ValueError, EOFError, RecursionError) as e:  # unreadable, corrupt archive, bad JSON file, ...
        raise StructuralError(f"{path}: cannot read: {type(e).__name__}: {' '.join(str(e).split())}")


def _jsonl_rows(stream, raw, skips):
    """(row, byte position in the raw file) per parseable line; broken lines are counted in `skips`."""
    for line in stream:
        if line.strip():
            try:
                yield json.loads(line.decode("utf-8")), raw.tell()
            except UnicodeDecodeError:
                skips["invalid_utf8"] += 1
            except json.JSONDecodeError:
                skips["bad_json"] += 1
            except RecursionError:   # e.g. 100k '[': the parser's stack, not the run, gives up on this row
                skips["too_deeply_nested"] += 1
