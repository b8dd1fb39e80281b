"""
The curves of train.py runs (and of any log.jsonl of records with a "step"): one panel per numeric field the
records hold -- loss with val_loss, the learning rates together, grad_norm, tok_per_s, mfu, eta_s, ... and any
other (rl.py's reward, kl, entropy, completion_len) -- one colour per run, in one PNG.

    python bench/plot_log.py out/log.jsonl out_sft/log.jsonl --png curves.png [--labels base sft]

The x-axis is tokens seen, from each record's cumulative "tokens" (step x global_batch x seq_len in a train.py
log), else the step; an older log without tokens takes --tokens_per_step (one value, or one per log).
"""
import argparse
import json
import math
import os
import sys

PANELS = {"loss": ("loss", "val_loss"), "lr": ("muon_lr", "adamw_lr", "lr")}   # fields drawn together
X_KEYS = ("step", "tokens")


def read_log(path):
    """The records of a log.jsonl that have a step, in order; one line naming the file and line otherwise."""
    records = []
    for n, line in enumerate(open(path, encoding="utf-8"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            sys.exit(f"error: {path}:{n}: not a JSON line")
        if isinstance(rec, dict) and isinstance(rec.get("step"), (int, float)):
            records.append(rec)
    if not records:
        sys.exit(f"error: {path}: no record with a step in it (a train.py log.jsonl?)")
    return records


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def panels(runs):
    """[(panel title, [field, ...])] for the numeric fields any run's records hold, in the order they appear; the
    fields of PANELS share a panel."""
    fields = []
    for records in runs:
        for rec in records:
            fields += [k for k, v in rec.items() if k not in X_KEYS and is_number(v) and k not in fields]
    out, placed = [], set()
    for f in fields:
        if f in placed:
            continue
        group = next(((title, [g for g in members if g in fields]) for title, members in PANELS.items() if f in members),
                     (f, [f]))
        out.append(group)
        placed.update(group[1])
    return out


def x_of(records, tokens_per_step):
    """(x values, axis name): the records' tokens in millions when every record has them, else steps (times
    tokens_per_step when given)."""
    if all(is_number(r.get("tokens")) for r in records):
        return [r["tokens"] / 1e6 for r in records], "tokens (millions)"
    if tokens_per_step:
        return [r["step"] * tokens_per_step / 1e6 for r in records], "tokens (millions)"
    return [r["step"] for r in records], "step"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1].strip())
    ap.add_argument("logs", nargs="+", help="log.jsonl files (train.py, rl.py)")
    ap.add_argument("--png", required=True, help="the picture to write")
    ap.add_argument("--tokens_per_step", type=int, nargs="+", help="for logs without a 'tokens' field: one per log, "
                    "or one for all (train.py: global_batch x seq_len)")
    ap.add_argument("--labels", nargs="+", help="one per log (default: the log's directory name)")
    a = ap.parse_args(argv)
    for path in a.logs:
        if not os.path.isfile(path):
            sys.exit(f"error: {path}: no such file")
    per_step = a.tokens_per_step or [None]
    per_step = per_step * len(a.logs) if len(per_step) == 1 else per_step
    labels = a.labels or [os.path.basename(os.path.dirname(os.path.abspath(p))) for p in a.logs]
    if len(per_step) != len(a.logs) or len(labels) != len(a.logs):
        sys.exit("error: --tokens_per_step and --labels take one value per log")
    runs = [read_log(p) for p in a.logs]
    layout = panels(runs)
    if not layout:
        sys.exit(f"error: {', '.join(a.logs)}: no numeric field besides step and tokens to draw")
    fig = draw(runs, layout, per_step, labels)
    fig.savefig(a.png, dpi=110)
    print(f"wrote {a.png}: {len(layout)} panels ({', '.join(t for t, _ in layout)})")


def draw(runs, layout, per_step, labels):
    """The figure: a panel per entry of `layout` (panels()), a colour per run."""
    try:
        import matplotlib
    except ImportError:
        sys.exit("error: bench/plot_log.py draws with matplotlib: pip install matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = min(3, len(layout))
    rows = math.ceil(len(layout) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    xlabels = set()
    for i, (records, tps, label) in enumerate(zip(runs, per_step, labels)):
        xs, xlabel = x_of(records, tps)
        xlabels.add(xlabel)
        for ax, (title, fields) in zip(axes.flat, layout):
            for j, f in enumerate(fields):
                pts = [(x, r[f]) for x, r in zip(xs, records) if is_number(r.get(f))]
                if pts:   # an evaluation's val_loss is a few points: drawn as dots on a line
                    style = dict(marker="o", lw=2) if f.startswith("val_") else dict(lw=1, alpha=0.8)
                    ax.plot(*zip(*pts), color=f"C{i}", ls=("-", "--", ":")[j % 3], label=f"{label}: {f}", **style)
    for ax, (title, _) in zip(axes.flat, layout):   # no y limit: step 0's loss (~12 nats) is part of the curve
        ax.set_title(title), ax.grid(alpha=0.3), ax.legend(fontsize=7)
        ax.set_xlabel(" / ".join(sorted(xlabels)))
    for ax in list(axes.flat)[len(layout):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
