"""bench/time_to_loss.py: the steady-state clock, the time at which a curve reaches a loss, and the speed-up."""
import json, os, sys

import pytest

sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))  # after the root: bench/serve.py, bench/sft.py must not shadow serve.py, sft.py
import time_to_loss as ttl  # noqa: E402
import plot_log  # noqa: E402

INFO = {"tokens_per_byte": 0.5}


def test_compile_time_is_kept_off_the_clock():
    dts = [20.0, 3.0, 1.0, 1.0, 1.0] + [1.0] * 15   # the first steps pay compilation
    r = ttl.curve("ours", 0.02, 20, dts, {0: 12.0, 10: 6.0, 20: 4.0}, INFO, {"rc": 0})
    assert r["step_s"] == 1.0 and r["compile_s"] == 21.0 and r["train_s"] == 20.0
    assert [p["train_s"] for p in r["curve"]] == [0.0, 10.0, 20.0]
    assert abs(r["final_val_bpb"] - 4.0 / 0.6931471805599453 * 0.5) < 1e-4


def test_time_to_interpolates_between_evaluations_and_speedup():
    pts = [{"train_s": 0.0, "val_loss": 10.0}, {"train_s": 100.0, "val_loss": 6.0}, {"train_s": 200.0, "val_loss": 4.0}]
    assert ttl.time_to(pts, 5.0) == 150.0 and ttl.time_to(pts, 3.0) is None and ttl.time_to(pts, 10.5) == 0.0
    mk = lambda system, scale: {**ttl.curve(system, 1.0, 20, [1.0 * scale] * 20, {0: 10.0, 10: 6.0, 20: 4.0}, INFO,
                                            {"rc": 0}), "stage": "final"}
    out = ttl.report([mk("torchtitan", 2.0), mk("ours", 1.0)])
    assert out["speedup_ours"] == 2.0 and out["titan_final_val_loss"] == 4.0
    worse = {**mk("torchtitan", 2.0), "final_val_loss": 4.5, "curve": [{"train_s": 40.0, "val_loss": 4.5}]}
    out = ttl.report([mk("torchtitan", 2.0), mk("ours", 1.0), worse])   # a second torchtitan lr, worse, run last
    assert out["speedup_torchtitan"] == 1.0 and out["speedup_ours"] == 2.0 and len(out["runs"]) == 3


def test_final_takes_the_lr_of_the_best_sweep_and_the_step_rate_of_its_own_system():
    rec = lambda system, lr, loss, step_s: {"system": system, "lr": lr, "final_val_loss": loss, "step_s": step_s, "rc": 0}
    sweeps = [rec("ours", 0.01, 5.1, 0.36), rec("ours", 0.02, 5.0, 0.36), rec("ours", 0.04, 5.05, 0.36),
              rec("ours_doc_mask", 0.02, 4.8, 0.30), rec("torchtitan", 5e-4, 6.1, 0.32), rec("torchtitan", 1e-3, 6.2, 0.32)]
    assert ttl.final_plan(sweeps, "ours", None, 360) == (0.02, 1000)
    assert ttl.final_plan(sweeps, "ours_doc_mask", None, 360) == (0.02, 1200)   # doc_mask's own (faster) steps
    assert ttl.final_plan(sweeps, "torchtitan", None, 320) == (5e-4, 1000)
    assert ttl.final_plan(sweeps, "torchtitan", 2e-3, 320) == (2e-3, 1000)
    assert ttl.final_plan(sweeps[4:], "ours", None, 300) == (None, None)


def test_plot_log_draws_train_and_val_curves_and_names_a_bad_line(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    log = tmp_path / "run" / "log.jsonl"
    log.parent.mkdir()
    log.write_text("".join(json.dumps(r) + "\n" for r in [{"step": 0, "val_loss": 9.0}, {"step": 1, "loss": 8.5},
                                                          {"step": 2, "loss": 7.0}, {"step": 2, "val_loss": 7.2}]))
    assert [r["step"] for r in plot_log.read_log(str(log))] == [0, 1, 2, 2]
    png = tmp_path / "c.png"
    plot_log.main([str(log), "--png", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log.write_text('{"step": 1, "loss": 8.5}\n{"step": 2, "lo\n')
    with pytest.raises(SystemExit, match=r"log.jsonl:2: not a JSON line"):
        plot_log.main([str(log), "--png", str(png)])


def test_plot_log_takes_tokens_from_the_log_draws_every_field_and_cuts_no_step(tmp_path):
    """Issue 36 point 17: the demo's 200 steps x 512 tokens were drawn on an axis running to 6.5M (16 x 2048 tokens
    a step assumed), step 0's loss of 11.94 was cut by a y-limit of 8, and only the loss was drawn."""
    pytest.importorskip("matplotlib")
    recs = [{"step": 0, "tokens": 0, "val_loss": 11.94, "val_bpb": 3.96}]
    recs += [{"step": s, "tokens": s * 512, "loss": 12 - s / 40, "muon_lr": 0.02, "adamw_lr": 3e-3, "grad_norm": 1.0,
              "tok_per_s": 900.0, "mfu": None, "eta_s": 200.0 - s, "reward": s / 200} for s in range(1, 201)]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))
    runs = [plot_log.read_log(str(log))]
    layout = plot_log.panels(runs)
    assert layout == [("loss", ["loss", "val_loss"]), ("val_bpb", ["val_bpb"]), ("lr", ["muon_lr", "adamw_lr"]),
                      ("grad_norm", ["grad_norm"]), ("tok_per_s", ["tok_per_s"]), ("eta_s", ["eta_s"]),
                      ("reward", ["reward"])]   # mfu is None on a CPU: nothing to draw
    fig = plot_log.draw(runs, layout, [None], ["demo"])
    loss_ax = fig.axes[0]
    assert loss_ax.get_ylim()[1] >= 11.94 and loss_ax.get_xlabel() == "tokens (millions)"
    assert max(max(line.get_xdata()) for line in loss_ax.get_lines()) == pytest.approx(200 * 512 / 1e6)
    old = [{k: v for k, v in r.items() if k != "tokens"} for r in recs]   # a log from before train.py wrote tokens
    assert plot_log.x_of(old, None) == (list(range(201)), "step")
    assert plot_log.x_of(old, 512)[0][-1] == pytest.approx(200 * 512 / 1e6)
    png = tmp_path / "c.png"
    plot_log.main([str(log), "--png", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_log_without_matplotlib_is_one_line(tmp_path, monkeypatch):
    """matplotlib comes with the test extras, not the quickstart's install: a newcomer got a ModuleNotFoundError."""
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"step": 1, "loss": 8.5}) + "\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib -> ImportError
    with pytest.raises(SystemExit, match=r"^error: bench/plot_log.py draws with matplotlib: pip install matplotlib$"):
        plot_log.main([str(log), "--png", str(tmp_path / "c.png")])
