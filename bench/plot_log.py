"""
Loss curves of train.py runs: each out_dir's log.jsonl (training loss every log_interval steps, val loss at each
evaluation) drawn against tokens seen, one colour per run, in one PNG.

    python bench/plot_log.py out/log.jsonl out_sft/log.jsonl --png curves.png [--tokens_per_step 32768 ...]

A run's tokens per step is global_batch x seq_len; give one value per log (default: the reference 16 x 2048 of
the poetry runs), since log.jsonl records steps, not the batch.
"""
import argparse
import json
import os
import sys


def read_log(path):
    """(train [(step, loss)], val [(step, val_loss)]) from a train.py log.jsonl."""
    train, val = [], []
    for n, line in enumerate(open(path, encoding="utf-8"), 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            sys.exit(f"error: {path}:{n}: not a JSON line")
        if "val_loss" in rec:
            val.append((rec["step"], rec["val_loss"]))
        elif "loss" in rec:
            train.append((rec["step"], rec["loss"]))
    if not train and not val:
        sys.exit(f"error: {path}: no training or validation loss in it (a train.py log.jsonl?)")
    return train, val


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1].strip())
    ap.add_argument("logs", nargs="+", help="train.py log.jsonl files")
    ap.add_argument("--png", required=True, help="the picture to write")
    ap.add_argument("--tokens_per_step", type=int, nargs="+", default=[16 * 2048], help="one per log, or one for all")
    ap.add_argument("--labels", nargs="+", help="one per log (default: the log's directory name)")
    a = ap.parse_args(argv)
    for path in a.logs:
        if not os.path.isfile(path):
            sys.exit(f"error: {path}: no such file")
    per_step = a.tokens_per_step * len(a.logs) if len(a.tokens_per_step) == 1 else a.tokens_per_step
    labels = a.labels or [os.path.basename(os.path.dirname(os.path.abspath(p))) for p in a.logs]
    if len(per_step) != len(a.logs) or len(labels) != len(a.logs):
        sys.exit("error: --tokens_per_step and --labels take one value per log")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (path, tps, label) in enumerate(zip(a.logs, per_step, labels)):
        train, val = read_log(path)
        colour = f"C{i}"
        if train:
            ax.plot([s * tps / 1e6 for s, _ in train], [l for _, l in train], color=colour, alpha=0.45, lw=1,
                    label=f"{label}: train")
        if val:
            ax.plot([s * tps / 1e6 for s, _ in val], [l for _, l in val], "o-", color=colour, lw=2, label=f"{label}: val")
    ax.set_xlabel("tokens (millions)"), ax.set_ylabel("loss (nats/token)"), ax.grid(alpha=0.3), ax.legend()
    ax.set_ylim(top=min(ax.get_ylim()[1], 8))   # the first steps (~12 nats) would flatten the rest
    fig.tight_layout()
    fig.savefig(a.png, dpi=110)
    print(f"wrote {a.png}")


if __name__ == "__main__":
    main()
