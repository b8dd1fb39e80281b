"""
Time to loss on real text: this recipe (Muon + AdamW, WSD, with and without --doc_mask) against torchtitan
(AdamW, WSD) on the chinese-poetry corpus, one GPU, the same tokens per optimizer step (16 x 2048), the same
tokenizer and the same held-out documents. Each system gets its best of several learning rates.

    python bench/time_to_loss.py prep  --corpus poetry.jsonl.xz           # data for both systems (~1 min)
    python bench/time_to_loss.py prep  --corpus stdlib --work /tmp/ttl_code --val_fraction 0.05   # Python's own .py files
    python bench/time_to_loss.py sweep --titan_lrs 5e-4,1e-3,2e-3 --muon_lrs 0.01,0.02,0.04 --steps 150
    python bench/time_to_loss.py final --budget_s 300 --system titan|ours|ours_doc_mask|titan_doc_mask [--lr X] \
        [--out_dir D] [--ckpt_every N]          # N: checkpoints kept for `score` (intermediate points)
    python bench/time_to_loss.py export_titan --dcp DUMP/checkpoint --out titan_hf   # every step-N -> titan_hf/step-N
    python bench/time_to_loss.py score --system titan --model titan_hf --protocol both --results results.jsonl
    python bench/time_to_loss.py score --system ours --model OUT_DIR --protocol both --results results.jsonl
    python bench/time_to_loss.py report --results results.jsonl --png time_to_loss.png

Every run prints one JSON line (and appends it to --results): its val loss / bits per byte against training
seconds and tokens, its step time, and its compile time (reported apart: the time axis counts steady-state
training steps only, validation excluded). `final` without --lr takes the sweep's best lr from --results; its
step count is the budget times the system's step rate measured in the sweep, so each system trains for the same
wall-clock time and its WSD schedule ends exactly there. `report` prints the speed-up: torchtitan's time to its
best final val loss divided by ours to the same loss, and draws val bpb against seconds (matplotlib).

Those val losses are each system's own (issue 34): torchtitan's over packed windows, ours per document with
--doc_mask -- two protocols. `export_titan` turns torchtitan's DCP checkpoints (a step-N folder, or its
checkpoint/ folder of them) into Hugging Face directories through torchtitan's own name map; `score` scores model
directories -- an export, our out_dir/hf, ckpt-NNNNNNN/, or a folder of them: every intermediate point -- with one
loader and one evaluator (bench/score_lm.py) under --protocol packed (torchtitan's windows), doc (each document
alone, [EOT] + doc -> doc + [EOT]) or both, on prep's val documents (--max_docs / --max_windows for a quick run),
and appends a line per model and protocol to --results. `report` then also gives, per protocol, each system's
speed-up to its peer's final scored loss (ours_doc_mask's peer: torchtitan_doc_mask if scored, else torchtitan);
a scored step is put on the clock of that system's final run (exact at its evaluation steps).

torchtitan runs through bench/peers/titan/run.sh (TITAN_WHEELS: its wheels, for an offline machine). Its c4_test
loader reads a directory's jsonl as split "train", so prep writes the training and the validation documents
(split by prepare.py's own hash rule) into two directories, shuffled once: torchtitan streams in file order.
"""
import argparse, json, math, os, re, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
BATCH, SEQ = 16, 2048                 # sequences x tokens per optimizer step (--batch, --seq for a CPU smoke run)
WARMUP_FRAC, DECAY_FRAC = 0.02, 0.2   # the same WSD shape for both systems


def paths(work):
    return {k: os.path.join(work, v) for k, v in dict(raw="raw", shards="shards", titan_train="titan_train",
                                                     titan_val="titan_val", runs="runs", info="prep.json").items()}


def code_documents(root, out_dir, parts=16, seed=0):
    """The second corpus, source code: every .py file under `root` one document ("stdlib": the standard library of
    the Python running this, PSF license, site-packages left out), shuffled once (torchtitan streams in file order)
    into `parts` jsonl files as poetry.py build writes its pretraining parts. Returns the document count."""
    import random, sysconfig
    root = sysconfig.get_paths()["stdlib"] if root == "stdlib" else root
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) if "site-packages" not in d
                   for f in fs if f.endswith(".py"))
    docs = [t for t in (open(f, encoding="utf-8", errors="replace").read() for f in files) if t.strip()]
    if not docs:
        sys.exit(f"error: --corpus py:{root}: no .py file with text in it")
    random.Random(seed).shuffle(docs)
    os.makedirs(out_dir, exist_ok=True)
    for i in range(parts):
        with open(os.path.join(out_dir, f"part-{i:02d}.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs[i::parts])
    return len(docs)


def prep(corpus, work, val_fraction):
    """The documents (chinese-poetry: poetry.py build, held-out titles removed; "stdlib" or a directory of .py
    files as py:DIR: code_documents), our shards, torchtitan's train/val directories, the val set's tokens-per-byte (to turn
    a loss into bits per byte the same way for both)."""
    import prepare
    p = paths(work)
    if corpus == "stdlib" or corpus.startswith("py:"):
        n = code_documents(corpus.removeprefix("py:"), os.path.join(p["raw"], "pretrain"))
        print(f"prep: {n:,} source files", file=sys.stderr)
    else:
        subprocess.run([sys.executable, os.path.join(ROOT, "bench", "poetry.py"), "build", "--corpus", corpus,
                        "--out", p["raw"]], check=True)
    subprocess.run([sys.executable, os.path.join(ROOT, "prepare.py"), "--input", os.path.join(p["raw"], "pretrain"),
                    "--out", p["shards"], "--val_fraction", str(val_fraction)], check=True)
    os.makedirs(p["titan_train"], exist_ok=True), os.makedirs(p["titan_val"], exist_ok=True)
    parts = sorted(os.listdir(os.path.join(p["raw"], "pretrain")))
    val_bytes = 0
    with open(os.path.join(p["titan_train"], "train.jsonl"), "w") as tr, \
            open(os.path.join(p["titan_val"], "train.jsonl"), "w") as va:
        for part in parts:  # prepare.py's order: one shard per file, documents in file order
            for line in open(os.path.join(p["raw"], "pretrain", part), encoding="utf-8"):
                text = json.loads(line)["text"]
                if prepare._is_val(text, val_fraction):
                    va.write(line)
                    val_bytes += len(text.encode("utf-8"))
                else:
                    tr.write(line)
    meta = json.load(open(os.path.join(p["shards"], "meta.json")))
    val_tokens = meta["tokens"]["val"]
    info = {"val_tokens": val_tokens, "val_bytes": val_bytes, "tokens_per_byte": val_tokens / val_bytes,
            "train_tokens": meta["tokens"]["train"], "val_windows": val_tokens // (SEQ + 1)}
    json.dump(info, open(p["info"], "w"))
    return info


def bpb(loss, info):
    return loss / math.log(2) * info["tokens_per_byte"]


def curve(name, lr, steps, step_dts, vals, info, extra):
    """One result: step times -> a steady-state clock (the first steps' excess over the median is compile time; a
    step time of None, one that holds a checkpoint save, counts as the median)."""
    known = [dt for dt in step_dts if dt is not None]
    med = statistics.median(known[len(known) // 4:]) if known else float("nan")
    warm = min(5, len(step_dts))
    compile_s = sum(med if dt is None else dt for dt in step_dts[:warm]) - warm * med
    clock = [0.0]
    for i, dt in enumerate(step_dts):
        clock.append(clock[-1] + (med if i < warm or dt is None else dt))
    points = [{"step": s, "tokens": s * BATCH * SEQ, "train_s": round(clock[min(s, len(clock) - 1)], 2),
               "val_loss": round(v, 5), "val_bpb": round(bpb(v, info), 5)} for s, v in sorted(vals.items())]
    return {"system": name, "lr": lr, "steps": steps, "step_s": round(med, 5),
            "tok_per_s": round(BATCH * SEQ / med), "compile_s": round(compile_s, 1),
            "train_s": round(clock[-1], 1), "final_val_loss": points[-1]["val_loss"] if points else None,
            "final_val_bpb": points[-1]["val_bpb"] if points else None, "curve": points, **extra}


def run_titan(work, lr, steps, evals, doc_mask=False, ckpt_every=0):
    """torchtitan at 16 x 2048 tokens a step; doc_mask: its block-causal document masking (flex attention, the
    flavor titan_flavor.py registers); ckpt_every > 0: a DCP checkpoint every that many steps, all kept, for
    export_titan + score (each holds the AdamW state too: ~7 GB at 0.6B)."""
    p, info = paths(work), paths_info(work)
    tag = f"titan{'_dm' if doc_mask else ''}_lr{lr}_s{steps}"
    log, ckpt_dir = os.path.join(p["runs"], tag + ".log"), os.path.join(p["runs"], tag + "_ckpt")
    warm, decay = max(1, round(WARMUP_FRAC * steps)), DECAY_FRAC
    extra = ["--model.flavor", "0.6B-bench-doc"] if doc_mask else []
    if ckpt_every:
        extra += ["--checkpoint.enable", "--checkpoint.folder", ckpt_dir,
                  "--checkpoint.interval", str(ckpt_every), "--checkpoint.keep_latest_k", "0"]
    args = ["bash", os.path.join(ROOT, "bench", "peers", "titan", "run.sh"), *extra,
            "--training.dataset_path", p["titan_train"], "--optimizer.lr", str(lr), "--training.steps", str(steps),
            "--training.seq_len", str(SEQ), "--lr_scheduler.warmup_steps", str(warm), "--lr_scheduler.decay_ratio", str(decay),
            "--validation.enable", "--validation.dataset", "c4_test", "--validation.dataset_path", p["titan_val"],
            "--validation.freq", str(max(1, steps // evals)), "--validation.local_batch_size", "8", "--validation.seq_len", str(SEQ),
            "--validation.steps", str(max(1, info["val_windows"] // 8))]
    t0 = time.time()
    r = subprocess.run(args, env={**os.environ, "BS": str(BATCH), "LOG": log}, capture_output=True, text=True)
    text = open(log, errors="replace").read() if os.path.exists(log) else r.stdout + r.stderr
    dts, vals = titan_log(text, ckpt_every)
    if r.returncode or not dts:
        print(text[-3000:], file=sys.stderr)
    return curve("torchtitan_doc_mask" if doc_mask else "torchtitan", lr, steps, dts, vals, info,
                 {"rc": r.returncode, "wall_s": round(time.time() - t0, 1), "optimizer": "AdamW",
                  **({"ckpt_dir": ckpt_dir} if ckpt_every else {})})


def titan_log(text, ckpt_every=0):
    """torchtitan's log -> (each training step's seconds, {step: val loss}). Its `validate step: N` lines are not
    training steps. A checkpoint save lands in the next training step's time unless a validation comes between (only
    validation resets its timer): that step's time is None, counted at the median, as train.py's saves are off ours."""
    steps = {int(s): BATCH * SEQ / float(t.replace(",", ""))
             for s, t in re.findall(r"(?<!validate )\bstep:\s*(\d+)\s+loss:.*?tps:\s*([\d,]+)", text)}
    vals = {int(s): float(v) for s, v in re.findall(r"validate step:\s*(\d+)\s+loss:\s*([\d.]+)", text)}
    saved = {s + 1 for s in steps if ckpt_every and s % ckpt_every == 0 and s not in vals}
    return [None if s in saved else steps[s] for s in sorted(steps)], vals


def run_ours(work, muon_lr, steps, evals, doc_mask, out_dir=None, extra_args=(), ckpt_every=0):
    """train.py with the reference config at 16 x 2048 tokens a step; out_dir given: keep the model as out_dir/hf;
    ckpt_every > 0: a checkpoint every that many steps, all kept, for score (off the clock: step times only)."""
    p = paths(work)
    info = paths_info(work)
    keep = out_dir is not None
    out_dir = out_dir or os.path.join(p["runs"], f"ours_lr{muon_lr}_dm{int(doc_mask)}_s{steps}")
    args = [sys.executable, os.path.join(ROOT, "train.py"), os.path.join(ROOT, "config", "reference.py"),
            f"--data_dir={p['shards']}", f"--out_dir={out_dir}", "--overwrite=True", f"--global_batch={BATCH}",
            f"--micro_batch={BATCH}", f"--seq_len={SEQ}", f"--max_steps={steps}", f"--warmup_steps={max(1, round(WARMUP_FRAC * steps))}",
            f"--decay_steps={round(DECAY_FRAC * steps)}", f"--muon_lr={muon_lr}", f"--doc_mask={doc_mask}",
            f"--eval_interval={max(1, steps // evals)}", f"--val_tokens={info['val_windows'] * SEQ}",
            f"--ckpt_interval={ckpt_every}", f"--keep_ckpts={max(1, -(-steps // max(1, ckpt_every)))}",
            f"--export_at_end={keep}", "--log_interval=1", *extra_args]
    t0 = time.time()
    r = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    recs = [json.loads(l) for l in open(os.path.join(out_dir, "log.jsonl"))] if os.path.exists(
        os.path.join(out_dir, "log.jsonl")) else []
    steps_logged = [rec for rec in recs if "tok_per_s" in rec]
    dts = [rec["step_ms"] / 1000 for rec in steps_logged]
    opt = statistics.median(rec["optimizer_ms"] / rec["step_ms"] for rec in steps_logged[len(steps_logged) // 4:]) \
        if steps_logged else None
    vals = {rec["step"]: rec["val_loss"] for rec in recs if "val_loss" in rec}
    if r.returncode or not dts:
        print((r.stdout + r.stderr)[-3000:], file=sys.stderr)
    name = "ours_doc_mask" if doc_mask else "ours"
    return curve(name, muon_lr, steps, dts, vals, info, {"rc": r.returncode, "wall_s": round(time.time() - t0, 1),
                                                         "optimizer": "Muon+AdamW", "optimizer_share": opt and round(opt, 4),
                                                         "out_dir": out_dir})


def paths_info(work):
    return json.load(open(paths(work)["info"]))


def emit(rec, results):
    line = json.dumps(rec)
    print("TTL " + line, flush=True)
    if results:
        with open(results, "a") as f:
            f.write(line + "\n")


def load(results):
    return [json.loads(l) for l in open(results)] if results and os.path.exists(results) else []


def best(recs, system):
    """The lowest final val loss among a system's runs in `recs`."""
    ok = [r for r in recs if r["system"] == system and r["final_val_loss"] is not None and r["rc"] == 0]
    return min(ok, key=lambda r: r["final_val_loss"]) if ok else None


def final_plan(sweeps, system, lr, budget_s):
    """(lr, steps) of a final run: lr given, or the system's best in the sweep (a doc_mask system takes the best of
    its system without it: the mask changes what is attended, not the optimizer); steps = the budget at the step rate of this very
    system's sweep (doc_mask steps are faster), so its WSD schedule ends at the budget. (lr, None): no sweep."""
    swept_lr = best(sweeps, system.removesuffix("_doc_mask"))
    swept_rate = best(sweeps, system) or swept_lr
    lr = lr if lr is not None else swept_lr and swept_lr["lr"]
    if lr is None or swept_rate is None:
        return lr, None
    return lr, int(budget_s / swept_rate["step_s"])


def time_to(curve_pts, loss):
    """Training seconds at which a curve first reaches `loss` (linear between evaluations), or None."""
    prev = None
    for pt in curve_pts:
        if pt["val_loss"] <= loss:
            if prev is None:
                return pt["train_s"]
            f = (prev["val_loss"] - loss) / (prev["val_loss"] - pt["val_loss"])
            return prev["train_s"] + f * (pt["train_s"] - prev["train_s"])
        prev = pt
    return None


def train_s_at(run, step):
    """Training seconds of a final run at `step` (None: its last step): its curve's clock, linear between its
    evaluations, a median step time a step past the last."""
    step = run["steps"] if step is None else step
    pts = [(0, 0.0)] + [(p["step"], p["train_s"]) for p in run["curve"]]
    for (s0, t0), (s1, t1) in zip(pts, pts[1:]):
        if s0 <= step <= s1:
            return t0 if s1 == s0 else t0 + (step - s0) / (s1 - s0) * (t1 - t0)
    return pts[-1][1] + (step - pts[-1][0]) * run["step_s"]


def peer_of(system, systems):
    """Whom a system races: plain torchtitan, or for a doc-masked run the doc-masked torchtitan when scored."""
    return "torchtitan_doc_mask" if system.endswith("doc_mask") and "torchtitan_doc_mask" in systems else "torchtitan"


def scored_report(recs, finals):
    """Per protocol, from `score` lines only: each system's scored curve on the clock of its best final run (a
    scored lr other than that run's is left out; a step scored twice: the later line), its final scored loss, and
    its speed-up to its peer's final scored loss. No ratio ever mixes two protocols."""
    scores = [r for r in recs if r.get("stage") == "score"]
    out = {}
    for protocol in dict.fromkeys(r["protocol"] for r in scores):
        curves = {}
        for system in dict.fromkeys(r["system"] for r in scores):
            run = best(finals, system)
            pts = {}
            for r in scores:
                if run and r["protocol"] == protocol and r["system"] == system and r.get("lr") in (None, run["lr"]):
                    step = run["steps"] if r["step"] is None else r["step"]
                    pts[step] = {"step": step, "train_s": round(train_s_at(run, step), 2), "val_loss": r["val_loss"],
                                 "val_bpb": r["val_bpb"]}
            if pts:
                curves[system] = [pts[s] for s in sorted(pts)]
        res = {f"final_val_loss_{s}": c[-1]["val_loss"] for s, c in curves.items()}
        unclocked = sorted({r["system"] for r in scores if r["protocol"] == protocol} - set(curves))
        if unclocked:   # a time needs the system's final run in the results
            res["no_final_run"] = unclocked
        for system, c in curves.items():
            peer = curves.get(peer_of(system, curves))
            if peer:
                target = peer[-1]["val_loss"]
                t, t_peer = time_to(c, target), time_to(peer, target)
                res[f"speedup_{system}"] = round(t_peer / t, 3) if t and t_peer is not None else None
                res[f"time_to_peer_final_{system}_s"] = round(t, 1) if t else None
        out[protocol] = {**res, "curves": curves}
    return out


def plot_scored(scored, png):
    """One panel per protocol: each system's scored val bits per byte against its training seconds, its peer's final
    as a dotted line. What the one evaluator measured, never two protocols in one panel. Returns what was drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(scored), figsize=(6 * len(scored), 4.5), squeeze=False)
    drawn = {}
    for ax, (protocol, res) in zip(axes[0], scored.items()):
        for system, c in res["curves"].items():
            titan, speedup = system.startswith("torchtitan"), res.get(f"speedup_{system}")
            color = {"torchtitan": "C0", "ours": "C1", "ours_doc_mask": "C2", "torchtitan_doc_mask": "C3"}.get(system)
            line, = ax.plot([p["train_s"] for p in c], [p["val_bpb"] for p in c], "o-", ms=3, color=color, label=system + (
                f": {speedup}x sooner to {peer_of(system, res['curves'])}'s final" if speedup and not titan else ""))
            if titan:   # the losses the others race to
                ax.axhline(c[-1]["val_bpb"], color=line.get_color(), ls=":", lw=1)
        ax.set_title({"packed": "packed 2048-token windows (torchtitan's protocol)",
                      "doc": "each document alone ([EOT] + doc)"}.get(protocol, protocol))
        ax.set_xlabel("training seconds (compile excluded)"), ax.set_ylabel("val bits per byte"), ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        drawn[protocol] = sorted(res["curves"])
    fig.suptitle("time to loss, one evaluator: Qwen3-0.6B shape, 16 x 2048 tokens a step")
    fig.tight_layout(), fig.savefig(png, dpi=120)
    return {"png": png, "panels": drawn}


def report(recs, png=None):
    """Speed-ups from each system's own logged val losses (torchtitan: packed windows; ours: its --doc_mask
    setting's windows -- not one protocol), and, once `score` lines exist, per protocol from the one evaluator
    ("scored")."""
    finals = [r for r in recs if r.get("stage") == "final" and r["rc"] == 0]
    titan = best(finals, "torchtitan")
    out = {"runs": [{k: r[k] for k in ("system", "stage", "lr", "steps", "train_s", "compile_s", "tok_per_s",
                                       "final_val_loss", "final_val_bpb")} for r in recs if r.get("stage") in ("sweep", "final")]}
    if any(r.get("stage") == "score" for r in recs):
        out["scored"] = scored_report(recs, finals)
    if titan:
        target = titan["final_val_loss"]
        t_titan = time_to(titan["curve"], target)
        for r in (best(finals, system) for system in dict.fromkeys(r["system"] for r in finals)):  # a system's best lr
            t = time_to(r["curve"], target)
            out[f"speedup_{r['system']}"] = round(t_titan / t, 3) if t else None
            out[f"time_to_titan_final_{r['system']}_s"] = round(t, 1) if t else None
        out["titan_final_val_loss"] = target
    if png and "scored" in out:
        out["plot"] = plot_scored(out["scored"], png)
    elif png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
        for ax, key, label in ((axes[0], "train_s", "training seconds (1x H200, compile excluded)"),
                               (axes[1], "tokens", "training tokens (millions)")):
            for r in finals:
                pts = [pt for pt in r["curve"] if pt["step"] > 0]
                scale = 1e-6 if key == "tokens" else 1
                xs, ys = [pt[key] * scale for pt in pts], [pt["val_bpb"] for pt in pts]
                line, = ax.plot(xs, ys, marker="o", ms=3, ls="none",
                                label=f"{r['system']} (lr {r['lr']}, {r['tok_per_s'] / 1e3:.1f}k tok/s)")
                gaps = [b["step"] - a["step"] for a, b in zip(pts, pts[1:])]
                usual = statistics.median(gaps) if gaps else 0
                for a, b, x0, x1, y0, y1 in zip(pts, pts[1:], xs, xs[1:], ys, ys[1:]):  # unrecorded stretches dotted
                    ax.plot([x0, x1], [y0, y1], color=line.get_color(), ls=":" if b["step"] - a["step"] > 1.5 * usual else "-")
            if titan:
                ax.axhline(titan["final_val_bpb"], color="gray", ls=":", lw=1, label="torchtitan's final val bpb")
            ax.set_xlabel(label), ax.grid(alpha=0.3), ax.set_ylim(top=3.2)   # the first evaluations run off the top
        axes[0].set_ylabel("val bits per byte (held-out poems)"), axes[0].legend(fontsize=8)
        fig.suptitle("chinese-poetry, Qwen3-0.6B shape, 16x2048 tokens/step")
        fig.tight_layout(), fig.savefig(png, dpi=120)
    return out


def main():
    global BATCH, SEQ
    ap = argparse.ArgumentParser(description="time to loss: ours vs torchtitan on chinese-poetry (see docstring)")
    ap.add_argument("stage", choices=("prep", "sweep", "final", "export_titan", "score", "report"))
    ap.add_argument("--work", default="/tmp/ttl", help="data and run directories")
    ap.add_argument("--results", default="", help="jsonl file the runs are appended to (and read by final/report)")
    ap.add_argument("--corpus", help="prep: chinese-poetry's dist/ directory or poetry.jsonl(.xz); stdlib or "
                    "py:DIR (a directory of .py files): source code, a file a document")
    ap.add_argument("--val_fraction", type=float, default=0.01, help="prep: documents held out (0.05 for stdlib: ~1,800 files)")
    ap.add_argument("--titan_lrs", default="5e-4,1e-3,2e-3")
    ap.add_argument("--muon_lrs", default="0.01,0.02,0.04")
    ap.add_argument("--doc_mask_lrs", default="", help="sweep: Muon lrs for ours with --doc_mask")
    ap.add_argument("--titan_doc_mask_lrs", default="", help="sweep: AdamW lrs for torchtitan with document masking")
    ap.add_argument("--ckpt_every", type=int, default=0, help="final: a checkpoint every N steps, kept for score")
    ap.add_argument("--steps", type=int, default=150, help="sweep: steps per run")
    ap.add_argument("--evals", type=int, default=10, help="validations per run")
    ap.add_argument("--system", choices=("titan", "ours", "ours_doc_mask", "titan_doc_mask"),
                    help="final, score: which system")
    ap.add_argument("--lr", type=float, default=None, help="final: the lr (default: the sweep's best); score: the run's")
    ap.add_argument("--budget_s", type=float, default=300.0, help="final: training seconds")
    ap.add_argument("--out_dir", default=None, help="final, ours: keep the run (checkpoint + hf export) here")
    ap.add_argument("--png", default="", help="report: the plot")
    ap.add_argument("--dcp", help="export_titan: a torchtitan step-N checkpoint folder, or its folder of them")
    ap.add_argument("--out", help="export_titan: the HF directory (a folder of step-N/ for a folder of them)")
    ap.add_argument("--rope_theta", type=float, default=None, help="export_titan: if not this project's 1e4")
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="export_titan: weights")
    ap.add_argument("--model", nargs="+", default=[], help="score: model directories, or folders of them")
    ap.add_argument("--protocol", choices=("packed", "doc", "both"), default="both", help="score: see docstring")
    ap.add_argument("--val", default="", help="score: val documents, jsonl (default: prep's titan_val/train.jsonl)")
    ap.add_argument("--max_docs", type=int, default=None, help="score: the first N val documents only")
    ap.add_argument("--max_windows", type=int, default=None, help="score: the first N packed windows only")
    ap.add_argument("--batch", type=int, default=BATCH, help="sequences per optimizer step")
    ap.add_argument("--seq", type=int, default=SEQ, help="tokens per sequence")
    ap.add_argument("--ours_args", default="", help="extra train.py flags, space-separated (e.g. a tiny model)")
    a = ap.parse_args()
    BATCH, SEQ = a.batch, a.seq
    ours_args = a.ours_args.split()
    system = a.system and a.system.replace("titan", "torchtitan")   # the name the records carry
    if a.stage == "prep":
        if not a.corpus:
            sys.exit("error: prep needs --corpus (chinese-poetry's dist/ or poetry.jsonl.xz; stdlib; py:DIR)")
        if not (a.corpus == "stdlib" or os.path.exists(a.corpus.removeprefix("py:"))):
            sys.exit(f"error: --corpus {a.corpus}: no such file or directory")
        print(json.dumps({"prep": prep(a.corpus, a.work, a.val_fraction)}))
    elif a.stage == "sweep":
        for lr in [float(x) for x in a.titan_lrs.split(",") if x]:
            emit({**run_titan(a.work, lr, a.steps, a.evals), "stage": "sweep"}, a.results)
        for lr in [float(x) for x in a.muon_lrs.split(",") if x]:
            emit({**run_ours(a.work, lr, a.steps, a.evals, False, extra_args=ours_args), "stage": "sweep"}, a.results)
        for lr in [float(x) for x in a.doc_mask_lrs.split(",") if x]:
            emit({**run_ours(a.work, lr, a.steps, a.evals, True, extra_args=ours_args), "stage": "sweep"}, a.results)
        for lr in [float(x) for x in a.titan_doc_mask_lrs.split(",") if x]:
            emit({**run_titan(a.work, lr, a.steps, a.evals, doc_mask=True), "stage": "sweep"}, a.results)
    elif a.stage == "final":
        lr, steps = final_plan([r for r in load(a.results) if r.get("stage") == "sweep"], system, a.lr, a.budget_s)
        if steps is None:
            sys.exit(f"error: no sweep of {system} in {a.results!r} to take the lr and step rate from")
        doc_mask = a.system.endswith("_doc_mask")
        if a.system.startswith("titan"):
            rec = run_titan(a.work, lr, steps, a.evals, doc_mask, a.ckpt_every)
        else:
            rec = run_ours(a.work, lr, steps, a.evals, doc_mask, a.out_dir, ours_args, a.ckpt_every)
        emit({**rec, "stage": "final"}, a.results)
    elif a.stage == "export_titan":
        import score_lm, torch
        if not a.dcp or not os.path.isdir(a.dcp) or not a.out:
            sys.exit(f"error: export_titan needs --dcp (an existing folder; got {a.dcp!r}) and --out")
        theta = {} if a.rope_theta is None else {"rope_theta": a.rope_theta}
        print(json.dumps({"exported": score_lm.export_titan(a.dcp, a.out, getattr(torch, a.dtype), **theta)}))
    elif a.stage == "score":
        import score_lm
        if not a.model or not a.system:
            sys.exit("error: score needs --system and --model DIR [DIR ...]")
        val = a.val or os.path.join(paths(a.work)["titan_val"], "train.jsonl")
        if not os.path.isfile(val):
            sys.exit(f"error: --val {val}: no such file (run prep, or pass a jsonl of {{\"text\": ...}} lines)")
        docs = score_lm.read_docs(val, a.max_docs)
        for path in a.model:
            for model_dir, step in score_lm.model_dirs(path):
                model = score_lm.load_for_scoring(model_dir)
                for protocol in score_lm.PROTOCOLS if a.protocol == "both" else (a.protocol,):
                    emit({"stage": "score", "system": system, "lr": a.lr, "model": model_dir, "step": step,
                          "seq_len": SEQ, "docs": len(docs),
                          **score_lm.score(model, docs, SEQ, protocol, max_windows=a.max_windows)}, a.results)
    else:
        print(json.dumps({"time_to_loss": report(load(a.results), a.png)}))


if __name__ == "__main__":
    main()
