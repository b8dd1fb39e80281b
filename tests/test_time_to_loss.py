"""bench/time_to_loss.py: the steady-state clock, the time at which a curve reaches a loss, and the speed-up."""
import json, os, re, sys, warnings

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


def test_torchtitans_clock_has_no_validation_lines_and_no_checkpoint_saves():
    """torchtitan 0.2.2's log: every step 1 s (the first 20: compiling), a validation at steps 1, 4, 8, 12 (its own
    line, its own tps), a 5 s checkpoint save after steps 6 and 12. Only validation resets its timer, so the save
    after step 6 shows in step 7's tps, and the one after step 12 in the validation line. The clock: 12 s."""
    tps = lambda s: f"{round(ttl.BATCH * ttl.SEQ / s):,}"
    lines = []
    for step in range(1, 13):
        dt = 20.0 if step == 1 else 6.0 if step == 7 else 1.0
        lines.append(f"[titan] - root - INFO - step: {step:2}  loss: {9 - step / 4:8.5f}  grad_norm:  1.0000  "
                     f"memory: 10.00GiB(12.00%)  tps: {tps(dt)}  tflops: 100.00  mfu: 10.00%")
        if step in (1, 4, 8, 12):
            lines.append(f"[titan] - root - INFO - validate step: {step:2}  loss: {9 - step / 4:7.4f}  "
                         f"memory: 10.00GiB(12.00%)  tps: {tps(3.0 + 5.0 * (step == 12))}")
    dts, vals = ttl.titan_log("\n".join(lines), ckpt_every=6)
    assert len(dts) == 12 and dts[6] is None and sorted(vals) == [1, 4, 8, 12]
    r = ttl.curve("torchtitan", 1e-3, 12, dts, vals, INFO, {"rc": 0})
    assert r["step_s"] == 1.0 and r["train_s"] == 12.0 and r["compile_s"] == 19.0
    assert [p["train_s"] for p in r["curve"]] == [1.0, 4.0, 8.0, 12.0]


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
    sweeps.append(rec("torchtitan_doc_mask", 1e-3, 6.0, 0.40))   # its lr: plain torchtitan's best; its steps: its own
    assert ttl.final_plan(sweeps, "torchtitan_doc_mask", None, 320) == (5e-4, 800)


def test_the_runners_ask_for_document_masking_and_kept_checkpoints(tmp_path, monkeypatch):
    """Issue 34: the peer of --doc_mask is torchtitan with block-causal document masking, and intermediate points
    are checkpoints kept for the one evaluator (score), from both systems."""
    work = tmp_path / "w"
    os.makedirs(work / "runs")
    (work / "prep.json").write_text(json.dumps({"val_windows": 8, "tokens_per_byte": 0.5}))
    calls = []
    monkeypatch.setattr(ttl.subprocess, "run", lambda args, **kw: calls.append(args) or
                        type("R", (), {"returncode": 1, "stdout": "", "stderr": ""})())
    monkeypatch.setattr(ttl, "curve", lambda name, *a, **k: {"system": name, **a[-1]})
    rec = ttl.run_titan(str(work), 1e-3, 100, 5, doc_mask=True, ckpt_every=20)
    flags = calls[-1][calls[-1].index("--model.flavor"):]
    assert rec["system"] == "torchtitan_doc_mask" and flags[1] == "0.6B-bench-doc"
    assert flags[flags.index("--checkpoint.interval") + 1] == "20" and "--checkpoint.enable" in flags
    assert flags[flags.index("--checkpoint.keep_latest_k") + 1] == "0" and rec["ckpt_dir"].endswith("_ckpt")
    ttl.run_titan(str(work), 1e-3, 100, 5)
    assert "--model.flavor" not in calls[-1] and "--checkpoint.enable" not in calls[-1]
    ttl.run_ours(str(work), 0.02, 100, 5, True, ckpt_every=25)
    assert "--ckpt_interval=25" in calls[-1] and "--keep_ckpts=4" in calls[-1] and "--doc_mask=True" in calls[-1]
    ttl.run_ours(str(work), 0.02, 110, 5, True, ckpt_every=25)   # 25, 50, 75, 100 and the last step's: all kept
    assert "--keep_ckpts=5" in calls[-1]
    # the flavors titan_flavor.py registers, on a stand-in for torchtitan's qwen3 module (torchtitan is not installed)
    import dataclasses, types, importlib.util
    Args = dataclasses.make_dataclass("Args", [("dim", int), ("rope_theta", float), ("attn_type", str),
                                               ("attn_mask_type", str)])
    qwen3 = types.SimpleNamespace(qwen3_args={"0.6B": Args(1024, 1e6, "sdpa", "causal")})
    monkeypatch.setitem(sys.modules, "torchtitan", types.ModuleType("torchtitan"))
    monkeypatch.setitem(sys.modules, "torchtitan.models", types.SimpleNamespace(qwen3=qwen3))
    flavor = os.path.join(os.path.dirname(ttl.__file__), "peers", "titan", "titan_flavor.py")
    spec = importlib.util.spec_from_file_location("titan_flavor", flavor)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert qwen3.qwen3_args["0.6B-bench"] == Args(1024, 10000, "sdpa", "causal")
    assert qwen3.qwen3_args["0.6B-bench-doc"] == Args(1024, 10000, "flex", "block_causal")


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


# ------------------------------------------------------------------ one evaluator (bench/score_lm.py), issue 34
import score_lm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8)
DOCS = [[5, 9, 17, 3, 40, 41], [22, 8], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]   # ids < 63; 63 plays <|endoftext|>
EOS = 63


def tiny_model(seed=0):
    from model import Qwen3, Qwen3Config
    torch.manual_seed(seed)
    model = Qwen3(Qwen3Config(**TINY))
    with torch.no_grad():   # norm gains off 1, so a swapped norm name changes the loss too
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model.eval()


# HF name -> torchtitan's, written out here apart from score_lm's map (from torchtitan 0.2.2's
# Qwen3StateDictAdapter.from_hf_map), so that a wrong entry there fails these tests
HF_TO_TITAN = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
               **{f"model.layers.{{}}.{hf}.weight": f"layers.{{}}.{titan}.weight" for hf, titan in (
                   ("self_attn.q_proj", "attention.wq"), ("self_attn.k_proj", "attention.wk"),
                   ("self_attn.v_proj", "attention.wv"), ("self_attn.o_proj", "attention.wo"),
                   ("self_attn.q_norm", "attention.q_norm"), ("self_attn.k_norm", "attention.k_norm"),
                   ("mlp.gate_proj", "feed_forward.w1"), ("mlp.up_proj", "feed_forward.w3"),
                   ("mlp.down_proj", "feed_forward.w2"), ("input_layernorm", "attention_norm"),
                   ("post_attention_layernorm", "ffn_norm"))}}


def save_as_titan(model, path, rename=None):
    """The model as torchtitan saves it: its names, flat, DCP on the CPU, plus a non-model state."""
    import torch.distributed.checkpoint as dcp
    sd = {HF_TO_TITAN[re.sub(r"\.\d+\.", ".{}.", k, count=1)].format(*re.findall(r"\.(\d+)\.", k)[:1]): v.clone()
          for k, v in model.state_dict().items()}
    sd["output.weight"] = sd["tok_embeddings.weight"]   # tied: torchtitan keeps both names for one tensor
    sd["optimizer.state.norm.weight.exp_avg"] = torch.zeros(3)
    for old, new in (rename or {}).items():
        sd[new] = sd.pop(old)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(sd, checkpoint_id=str(path), no_dist=True)


def hand_loss(model, seqs):
    """Mean next-token loss over the sequences, each alone, by the definition."""
    nats, n = 0.0, 0
    with torch.no_grad():
        for seq in seqs:
            x, y = torch.tensor([seq[:-1]]), torch.tensor([seq[1:]])
            logits, _ = model(x)
            nats += F.cross_entropy(logits[0].float(), y[0], reduction="sum").item()
            n += y.numel()
    return nats / n


def test_titan_export_scores_equal_our_export_and_both_protocols_are_their_definitions(tmp_path):
    from checkpoint import export_hf
    model = tiny_model()
    save_as_titan(model, tmp_path / "titan" / "step-40")
    save_as_titan(model, tmp_path / "titan" / "step-8")
    dirs = score_lm.export_titan(str(tmp_path / "titan"), str(tmp_path / "titan_hf"), dtype=torch.float32)
    assert dirs == [str(tmp_path / "titan_hf" / "step-8"), str(tmp_path / "titan_hf" / "step-40")]
    assert [s for _, s in score_lm.model_dirs(str(tmp_path / "titan_hf"))] == [8, 40]
    export_hf(model, str(tmp_path / "ours" / "hf"), dtype=torch.float32)
    ours = score_lm.load_for_scoring(str(tmp_path / "ours" / "hf"))
    titan = score_lm.load_for_scoring(dirs[1])
    assert titan.config.tie_word_embeddings and titan.config == ours.config
    seq_len = 5
    stream = [t for d in DOCS for t in d + [EOS]]   # 22 tokens: 3 windows of 6, the last 4 tokens dropped
    windows = [stream[i:i + seq_len + 1] for i in range(0, 3 * (seq_len + 1), seq_len + 1)]
    alone = []
    for d in DOCS:   # [EOT] + doc + [EOT], cut into seq_len + 1 windows sharing one token when longer
        seq = [EOS] + d + [EOS]
        alone += [seq[i:i + seq_len + 1] for i in range(0, len(seq) - 1, seq_len)]
    for protocol, rows in (("packed", windows), ("doc", alone)):
        a = score_lm.score(titan, DOCS, seq_len, protocol, eot=EOS, batch_tokens=12)
        b = score_lm.score(ours, DOCS, seq_len, protocol, eot=EOS)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5) and a["targets"] == b["targets"]
        assert a["val_loss"] == pytest.approx(hand_loss(model, rows), abs=1e-5), protocol
        assert a["targets"] == sum(len(r) - 1 for r in rows)
    assert score_lm.score(ours, DOCS, seq_len, "packed", eot=EOS, max_windows=1)["targets"] == seq_len


@pytest.mark.parametrize("swap", [("layers.0.attention.wq.weight", "layers.0.attention.wk.weight"),
                                  ("layers.1.feed_forward.w1.weight", "layers.1.feed_forward.w3.weight"),
                                  ("layers.0.attention_norm.weight", "layers.0.ffn_norm.weight")])
def test_a_wrong_name_map_fails_the_test_above(tmp_path, monkeypatch, swap):
    """Two torchtitan names swapped in score_lm's map: the export is refused (shapes) or scores another model, so
    the equality the test above asserts breaks."""
    generic = [re.sub(r"\.\d+\.", ".{}.", k, count=1) for k in swap]
    wrong = dict(score_lm.TITAN_TO_HF)
    wrong[generic[0]], wrong[generic[1]] = wrong[generic[1]], wrong[generic[0]]
    monkeypatch.setattr(score_lm, "TITAN_TO_HF", wrong)
    with pytest.raises((AssertionError, SystemExit)):
        test_titan_export_scores_equal_our_export_and_both_protocols_are_their_definitions(tmp_path)


def test_a_missing_or_unknown_name_in_the_checkpoint_is_one_line(tmp_path):
    model = tiny_model()
    save_as_titan(model, tmp_path / "unknown", rename={"layers.1.attention.wv.weight": "layers.1.attention.wv2.weight"})
    with pytest.raises(SystemExit, match=r"^error: .*unknown: layers\.1\.attention\.wv2\.weight is not a weight"):
        score_lm.titan_model(str(tmp_path / "unknown"))
    save_as_titan(model, tmp_path / "missing", rename={"layers.1.ffn_norm.weight": "optimizer.gone"})
    with pytest.raises(SystemExit, match=r"^error: .*missing: no layers\.1\.ffn_norm\.weight \(torchtitan's name of "
                                         r"model\.layers\.1\.post_attention_layernorm\.weight\)$"):
        score_lm.titan_model(str(tmp_path / "missing"))
    with pytest.raises(SystemExit, match=r"^error: .* is not a DCP checkpoint \(no \.metadata\)"):
        score_lm.titan_model(str(tmp_path))
    save_as_titan(model, tmp_path / "no_output", rename={"output.weight": "optimizer.output"})   # tied, one name
    assert score_lm.titan_model(str(tmp_path / "no_output")).config.tie_word_embeddings


def test_report_takes_ratios_within_one_protocol_on_the_final_runs_clock():
    mk = lambda system, scale: {**ttl.curve(system, 1.0, 20, [1.0 * scale] * 20, {0: 10.0, 10: 6.0, 20: 4.0}, INFO,
                                            {"rc": 0}), "stage": "final"}
    sc = lambda system, step, protocol, loss: {"stage": "score", "system": system, "lr": None, "step": step,
                                               "protocol": protocol, "val_loss": loss, "val_bpb": loss}
    recs = [mk("torchtitan", 2.0), mk("ours", 1.0),
            sc("torchtitan", 10, "packed", 5.0), sc("torchtitan", None, "packed", 4.0),
            sc("ours", 10, "packed", 4.0), sc("ours", None, "packed", 3.5),
            sc("torchtitan", None, "doc", 4.4), sc("ours", 10, "doc", 5.0), sc("ours", 20, "doc", 4.6)]
    out = ttl.report(recs)["scored"]
    assert out["packed"]["speedup_ours"] == 4.0    # titan reaches 4.0 at 40 s (step 20 x 2 s); ours at step 10, 10 s
    assert out["packed"]["final_val_loss_torchtitan"] == 4.0 and out["packed"]["curves"]["ours"][1]["train_s"] == 20.0
    assert out["doc"]["speedup_ours"] is None and out["doc"]["final_val_loss_ours"] == 4.6   # never reached 4.4
    assert ttl.train_s_at(recs[0], 15) == 30.0 and ttl.train_s_at(recs[0], 25) == 50.0
    assert ttl.peer_of("ours_doc_mask", {"torchtitan", "torchtitan_doc_mask"}) == "torchtitan_doc_mask"


def test_the_report_plot_has_one_panel_per_protocol_once_scored(tmp_path):
    """Issue 34: per-protocol plots replace the one that put each system's own protocol side by side."""
    pytest.importorskip("matplotlib")
    mk = lambda system: {**ttl.curve(system, 1.0, 20, [1.0] * 20, {0: 10.0, 20: 4.0}, INFO, {"rc": 0}), "stage": "final"}
    sc = lambda system, protocol, loss: {"stage": "score", "system": system, "lr": None, "step": None,
                                         "protocol": protocol, "val_loss": loss, "val_bpb": loss}
    recs = [mk("torchtitan"), mk("ours"), mk("ours_doc_mask"), sc("torchtitan", "packed", 4.0), sc("ours", "packed", 3.7),
            sc("ours_doc_mask", "packed", 4.6), sc("torchtitan", "doc", 4.2), sc("ours_doc_mask", "doc", 3.6)]
    out = ttl.report(recs, str(tmp_path / "ttl.png"))
    assert out["plot"]["panels"] == {"packed": ["ours", "ours_doc_mask", "torchtitan"],
                                     "doc": ["ours_doc_mask", "torchtitan"]}
    assert (tmp_path / "ttl.png").stat().st_size > 10_000
    unscored = ttl.report(recs[:3], str(tmp_path / "own.png"))   # no score lines: the systems' own logs, as before
    assert "plot" not in unscored and (tmp_path / "own.png").exists()


def test_export_titan_and_score_stages_write_one_line_per_model_and_protocol(tmp_path, monkeypatch):
    """The command line: a torchtitan checkpoint folder of step-N -> HF directories -> scored lines in --results
    (a Qwen-sized vocabulary, so the real tokenizer's ids and <|endoftext|> fit)."""
    from model import Qwen3, Qwen3Config
    monkeypatch.setattr(ttl, "SEQ", ttl.SEQ), monkeypatch.setattr(ttl, "BATCH", ttl.BATCH)   # main() sets them
    torch.manual_seed(0)
    save_as_titan(Qwen3(Qwen3Config(**{**TINY, "vocab_size": 151669})), tmp_path / "checkpoint" / "step-10")
    val, results = tmp_path / "val.jsonl", tmp_path / "results.jsonl"
    val.write_text("".join(json.dumps({"text": f"床前明月光，疑是地上霜。第{i}首 poem {i}."}) + "\n" for i in range(12)))
    run = lambda *args: (monkeypatch.setattr(sys, "argv", ["time_to_loss.py", *args]), ttl.main())
    run("export_titan", "--dcp", str(tmp_path / "checkpoint"), "--out", str(tmp_path / "titan_hf"))
    assert (tmp_path / "titan_hf" / "step-10" / "tokenizer.json").exists()
    run("score", "--system", "titan", "--model", str(tmp_path / "titan_hf"), "--val", str(val), "--seq", "32",
        "--max_docs", "10", "--results", str(results))
    recs = ttl.load(str(results))
    assert [(r["system"], r["step"], r["protocol"], r["docs"]) for r in recs] == \
        [("torchtitan", 10, "packed", 10), ("torchtitan", 10, "doc", 10)]
    assert all(10 < r["val_loss"] < 13 and r["val_bpb"] > 0 for r in recs)   # ~ln(151669) = 11.9: an untrained model
    assert ttl.report(recs)["scored"]["doc"]["no_final_run"] == ["torchtitan"]
    with pytest.raises(SystemExit, match=r"^error: --val .*nope\.jsonl: no such file"):
        run("score", "--system", "ours", "--model", str(tmp_path), "--val", str(tmp_path / "nope.jsonl"))


def test_prep_reads_source_code_as_the_second_corpus_a_file_a_document(tmp_path, monkeypatch):
    """Issue 34's second corpus: .py files (the standard library, or a directory of them), one file one document,
    through the same shards, torchtitan split and tokens-per-byte as the poetry corpus."""
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    files = {f"m{i}.py": f"def f{i}(x):\n    \"\"\"Return x plus {i}.\"\"\"\n    return x + {i}\n" * (i + 1) for i in range(12)}
    for name, text in files.items():
        (src / "pkg" / name).write_text(text)
    (src / "pkg" / "empty.py").write_text("\n")
    (src / "pkg" / "notes.txt").write_text("not code")
    info = ttl.prep(f"py:{src}", str(tmp_path / "w"), val_fraction=0.25)
    p = ttl.paths(str(tmp_path / "w"))
    docs = [json.loads(l)["text"] for f in sorted(os.listdir(os.path.join(p["raw"], "pretrain")))
            for l in open(os.path.join(p["raw"], "pretrain", f), encoding="utf-8")]
    assert sorted(docs) == sorted(files.values())   # every file once, whole; the empty one and the .txt left out
    split = [json.loads(l)["text"] for d in ("titan_train", "titan_val") for l in open(os.path.join(p[d], "train.jsonl"))]
    assert sorted(split) == sorted(docs) and info["val_tokens"] > 0 and info["train_tokens"] > info["val_tokens"]
    with pytest.raises(SystemExit, match="no .py file with text in it"):
        ttl.code_documents(str(tmp_path / "w" / "titan_val"), str(tmp_path / "x"))
    assert ttl.code_documents("stdlib", str(tmp_path / "std"), parts=2) > 500   # this Python's own library
    monkeypatch.setattr(sys, "argv", ["time_to_loss.py", "prep", "--work", str(tmp_path / "w2")])
    with pytest.raises(SystemExit, match=r"^error: prep needs --corpus"):   # not "--corpus None: no such file"
        ttl.main()
