"""
Poor man's configurator (nanoGPT's), exec'd by every entry point that runs a model (train.py, sample.py, eval.py,
chat.py and the bench/ scripts) over its own globals:

    python train.py config/reference.py --micro_batch=8 --compile False

The rule: an entry point's settings are its module globals, and config files and `--key=value` override them.
Only the data tools (prepare.py, sft.py) take argparse flags instead, because they take lists of input files.

Positional arguments are Python files executed over the caller's globals (so a config file may compute values
from others). `--key=value` and `--key value` override a global that already exists; the value is parsed with
ast.literal_eval (falling back to a plain string) and must have the type of the default (an int is accepted
where a float is expected; a default of None accepts anything). An unknown key or a wrong type stops with a
message naming the key -- a typo must never silently train with the default. A `dtype` setting is checked here,
once for every entry point. `--help` (or `-h`) prints the entry point's docstring and its settings with their defaults.
"""
import ast
import io
import builtins
import sys
import tokenize
import traceback

_DTYPES = ("float32", "bfloat16", "float16")


def _is_setting(key, value):
    """Settings are lower-case names with a plain value; upper-case names are constants (EOT, LETTERS), and
    modules, functions and classes are what the script imported or defined."""
    return key != key.upper() and (value is None or isinstance(value, (bool, int, float, str)))


def _parse_value(key, raw, current):
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # a bare word such as --device=cuda is a string
    if isinstance(current, str):
        return raw  # strings keep their raw text ('1e-3' stays '1e-3' for a string-typed key)
    return _typed(f"--{key}", value, current, repr(raw))


def _typed(where, value, current, shown):
    """value if it has the type of the setting's current value (an int where a float is expected is converted; a
    current None accepts anything; a None for any other setting does not), else one line naming `where` (the key,
    or the config file and key)."""
    if current is None:
        return value
    if isinstance(current, bool) or isinstance(value, bool):  # bool is an int subclass: check it first
        if isinstance(current, bool) and isinstance(value, bool):
            return value
    elif isinstance(current, float) and isinstance(value, int):
        return float(value)
    elif type(value) is type(current):
        return value
    sys.exit(f"config error: {where} expects {type(current).__name__} (default {current!r}), got {shown}")


def _exec_config_file(path, g):
    """Run a config file over the settings g, every failure one line naming the file: unreadable, not UTF-8, a
    syntax error, an exception while it runs (x = 1/0), a value of the wrong type (max_steps = "3"), a new key."""
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except OSError as e:
        sys.exit(f"config error: cannot read config file {path!r}: {e.strerror}")
    except UnicodeDecodeError as e:
        sys.exit(f"config error: config file {path} is not UTF-8 text (byte {e.start}: {e.reason})")
    print(f"Overriding config with {path}", file=sys.stderr)
    before = dict(g)
    try:
        exec(builtins.compile(source, path, "exec"), g)   # builtins': train.py has a setting named compile
    except SyntaxError as e:
        sys.exit(f"config error: {path} line {e.lineno}: {e.msg}")
    except Exception as e:   # the line of the config file itself, not of what it called
        lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == path]
        sys.exit(f"config error: {path} line {lines[-1] if lines else '?'}: {type(e).__name__}: {e}")
    new = {k for k in set(g) - set(before) if not k.startswith("_") and type(g[k]).__name__ != "module"}
    if new:  # a config file may only set known keys, like the command line
        sys.exit(f"config error: {path} sets unknown key(s): {', '.join(sorted(new))}")
    for key, old in before.items():
        if key in g and g[key] is not old and not key.startswith("_") and _is_setting(key, old):
            g[key] = _typed(f"{path}: {key}", g[key], old, repr(g[key]))


def _shortened(text, keep=60):
    """A long value (a whole prompt) echoed in full would bury the lines around it."""
    return text if len(text) <= keep + 20 else f"{text[:keep]}... ({len(text):,} characters)"


def _setting_comments(source):
    """{key: the comment on the line of its top-level `key = ...`} (what the setting is for, as the file says)."""
    out, line = {}, []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT and len(line) >= 2 and line[0].start[1] == 0 and line[1].string == "=":
                out.setdefault(line[0].string, tok.string.lstrip("# "))
            line = [] if tok.type in (tokenize.NEWLINE, tokenize.NL) else line + [tok]
    except (tokenize.TokenError, SyntaxError):
        pass
    return out


def _print_help(g):
    """The entry point's docstring, then every setting it has, as it would be given on the command line, with the
    comment its line has. Both are read from the entry point's file: exec'ing this one has set __doc__ to its own."""
    try:
        with open(g["__file__"]) as f:
            source = f.read()
        doc = ast.get_docstring(ast.parse(source)) or ""
    except (KeyError, OSError, SyntaxError):
        source, doc = "", ""
    comments = _setting_comments(source)
    print(doc.strip() + "\n\nsettings (config files and --key=value override them; defaults shown):")
    for key, value in g.items():
        if not key.startswith("_") and _is_setting(key, value):
            setting = f"  --{key}={_shortened(repr(value))}"
            print(f"{setting:<28}  # {comments[key]}" if key in comments else setting)


def _apply_args(argv, g):
    """Apply config files and --key=value overrides in argv to the settings dict g (an entry point's globals)."""
    if "--help" in argv or "-h" in argv:
        _print_help(g)
        sys.exit(0)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            _exec_config_file(arg, g)
            i += 1
            continue
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv):
                sys.exit(f"config error: --{arg[2:]} needs a value")
            key, raw = arg[2:], argv[i + 1]
            i += 2
        if key not in g or key.startswith("_"):
            sys.exit(f"config error: unknown config key --{key}")
        if not _is_setting(key, g[key]):   # e.g. --EOT=7: an imported constant would end up in the checkpoint
            sys.exit(f"config error: unknown config key --{key} (a constant or an imported name, not a setting)")
        g[key] = _parse_value(key, raw, g[key])
        print(f"Overriding: {key} = {_shortened(repr(g[key]))}", file=sys.stderr)
    if "dtype" in g and g["dtype"] not in _DTYPES:
        sys.exit(f"config error: --dtype must be {'|'.join(_DTYPES)}, got {g['dtype']!r}")


def check_ranges(g, at_least, unit=()):
    """Numeric settings out of range are one line each, before any work (--log_interval=0 was a ZeroDivisionError
    mid-run): g[key] >= at_least[key], and the keys of `unit` in [0, 1]; nan is never in range."""
    for key, low in at_least.items():
        if not g[key] >= low:   # False for nan as well
            sys.exit(f"error: --{key} must be >= {low}, got {g[key]!r}")
    for key in unit:
        if not 0 <= g[key] <= 1:
            sys.exit(f"error: --{key} must be in [0, 1], got {g[key]!r}")


def check_choices(g, choices):
    """A setting that must be one of a few words: one line naming the key and the words."""
    for key, allowed in choices.items():
        if g[key] not in allowed:
            sys.exit(f"error: {key} must be {'|'.join(allowed)}, got {g[key]!r}")


def check_sampling_settings(max_new_tokens, temperature, top_k, top_p, num_samples=1):
    """sample.py's and chat.py's sampling settings: a bad one stops with one line naming it (a negative top_k was a
    traceback, a negative temperature inverted the distribution)."""
    for key, value, ok, want in (("max_new_tokens", max_new_tokens, lambda v: v > 0, "an integer > 0"),
                                 ("num_samples", num_samples, lambda v: v > 0, "an integer > 0"),
                                 ("top_k", top_k, lambda v: v >= 0, "an integer >= 0 (0 = off)"),
                                 ("temperature", temperature, lambda v: v >= 0, "a number >= 0 (0 = greedy)"),
                                 ("top_p", top_p, lambda v: 0 <= v <= 1, "a number in [0, 1] (1 = off)")):
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (is_number and (isinstance(value, int) or want.startswith("a number")) and ok(value)):
            raise SystemExit(f"error: --{key} must be {want}, got {value!r}")


if __name__ != "configurator":   # exec'd by an entry point (imported as a module, e.g. by tests: only the functions)
    _apply_args(sys.argv[1:], globals())
