"""What a multi-day run meets: resuming with new settings, a clean log, out_dir hygiene, durable checkpoints,
honest stop messages, and clear errors for bad settings."""
import json, os, shutil

import pytest

from conftest import configure_train, exit_message, losses, run_script, small_train_args, synthetic_dataset

# Most runs here are train.py's main() in this process, its settings applied by configurator.py as on the command
# line (configure_train): what is tested is what main() does with them; the command line itself is tested end to
# end by test_train.py's and test_faults.py's subprocess runs.


def _records(out_dir):
    return [json.loads(l) for l in open(os.path.join(out_dir, "log.jsonl"))]


def _train(train, *args, **settings):
    """train.py's main() in this process with small_train_args(*args, **settings); returns the per-step records."""
    configure_train(train, small_train_args(*args, **settings))
    return train.main()


def test_resume_uses_the_new_learning_rates_and_prints_the_changes(tmp_path, train_module, capsys):
    d = synthetic_dataset(str(tmp_path / "ds"))
    out = str(tmp_path / "o")
    _train(train_module, d, out, max_steps=10, warmup_steps=1, decay_steps=0)
    capsys.readouterr()
    _train(train_module, d, out, max_steps=14, warmup_steps=1, decay_steps=0, init_from="resume", muon_lr=1e-3,
           adamw_lr=1e-4)
    stdout = capsys.readouterr().out
    assert "resume: muon_lr 0.02 -> 0.001" in stdout and "resume: adamw_lr 0.003 -> 0.0001" in stdout
    assert "resume: max_steps 10 -> 14" in stdout
    rec = {x["step"]: x for x in _records(out) if "loss" in x}
    assert rec[10]["muon_lr"] == 0.02 and rec[11]["muon_lr"] == 1e-3 and rec[11]["adamw_lr"] == 1e-4
    assert rec[14]["tokens"] == 14 * 4 * 32   # cumulative step x global_batch x seq_len, for bench/plot_log.py


@pytest.mark.slow
def test_resume_refuses_a_change_of_data_order_or_model_unless_allowed(tmp_path, finished_run, train_module):
    d, out = finished_run[0], str(tmp_path / "o")
    shutil.copytree(finished_run[1], out)
    for key, value in (("seq_len", 16), ("global_batch", 8), ("seed", 7), ("num_hidden_layers", 3)):
        configure_train(train_module, small_train_args(d, out, max_steps=32, init_from="resume",
                                                       **{"seed": 1337, key: value}))   # one change at a time
        msg = exit_message(train_module.main)
        assert key in msg and "allow_config_change" in msg, (key, msg)
    assert [x["step"] for x in _train(train_module, d, out, max_steps=32, init_from="resume", seq_len=16,
                                      allow_config_change=True)] == [31, 32]
    # a shape cannot be allowed: the weights do not fit it. Said so, not "corrupt: delete it" (a good checkpoint)
    configure_train(train_module, small_train_args(d, out, max_steps=34, init_from="resume", seq_len=16,
                                                   num_hidden_layers=3, allow_config_change=True))
    msg = exit_message(train_module.main)
    assert "num_hidden_layers 2 -> 3" in msg and "keeps the shape" in msg and "Delete" not in msg, msg


@pytest.mark.slow
def test_log_after_a_resume_is_one_clean_curve(tmp_path, finished_run, train_module):
    """A run killed after its step-20 checkpoint logged steps 21..30; the resume rewrites them, never twice."""
    d, out = finished_run[0], str(tmp_path / "o")
    shutil.copytree(finished_run[1], out)
    os.remove(os.path.join(out, "ckpt-0000030", "state.pt"))  # as if killed between step 30's log and its save
    shutil.rmtree(os.path.join(out, "ckpt-0000030"))
    _train(train_module, d, out, max_steps=32, init_from="resume")
    assert sorted(losses(out)) == list(range(1, 33))   # losses() fails on a step logged twice


@pytest.mark.slow
def test_fresh_run_into_an_out_dir_with_checkpoints_is_refused_unless_overwrite(tmp_path, finished_run, train_module):
    d, out = finished_run[0], str(tmp_path / "o")
    shutil.copytree(finished_run[1], out)
    configure_train(train_module, small_train_args(d, out, max_steps=5, ckpt_interval=5))
    msg = exit_message(train_module.main)
    assert "already holds checkpoints" in msg and "--overwrite=True" in msg, msg
    assert os.path.isdir(os.path.join(out, "ckpt-0000030"))   # nothing lost
    _train(train_module, d, out, max_steps=5, ckpt_interval=5, overwrite=True)
    assert sorted(x for x in os.listdir(out) if x.startswith("ckpt-")) == ["ckpt-0000005"]
    assert sorted(losses(out)) == [1, 2, 3, 4, 5]


def test_checkpoint_files_and_directories_are_fsynced_around_the_rename(tmp_path, monkeypatch):
    """Every file of the new checkpoint and its folder reach the disk before the rename; the parent after it;
    only then are older checkpoints deleted."""
    import checkpoint
    from conftest import small_config
    from model import Qwen3
    from muon import build_optimizer
    model = Qwen3(small_config())
    opt = build_optimizer(model)
    checkpoint.save_checkpoint(model, opt, 1, str(tmp_path), {}, keep=1)
    events, real_fsync, real_replace, real_rmtree = [], os.fsync, os.replace, shutil.rmtree

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)   # checkpoint.py calls them through the os and shutil modules
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(b))), real_replace(a, b))[1])
    monkeypatch.setattr(shutil, "rmtree", lambda p, *a, **k: (events.append(("rmtree", str(p))), real_rmtree(p, *a, **k))[1])
    checkpoint.save_checkpoint(model, opt, 2, str(tmp_path), {}, keep=1)
    monkeypatch.undo()
    final, tmp = str(tmp_path / "ckpt-0000002"), str(tmp_path / "ckpt-0000002.tmp")
    i_replace = events.index(("replace", final))
    synced_before = {p for kind, p in events[:i_replace] if kind == "fsync"}
    for name in ("model.safetensors", "config.json", "state.pt"):
        assert os.path.join(tmp, name) in synced_before, name
    assert tmp in synced_before
    i_parent = events.index(("fsync", str(tmp_path)), i_replace)
    i_delete = events.index(("rmtree", str(tmp_path / "ckpt-0000001")))
    assert i_replace < i_parent < i_delete


def test_nan_stop_without_a_checkpoint_says_so_in_the_logs_numbering(tmp_path, train_module, capsys):
    d = synthetic_dataset(str(tmp_path / "ds"))
    out = str(tmp_path / "nan")
    configure_train(train_module, small_train_args(d, out, adamw_lr=1e9, muon_lr=1e9, warmup_steps=1, grad_clip=0.0,
                                                   ckpt_interval=0, max_steps=50))
    assert exit_message(train_module.main) == "2"   # the exit code
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "No checkpoint has been written yet" in last and "intact" not in last, last
    logged = max(losses(out))
    assert f"at step {logged + 1};" in last, (logged, last)


def _one_line_exit(fn):
    """fn's stop message, checked to be one line (a SystemExit: the command prints it alone, no traceback)."""
    msg = exit_message(fn)
    assert "\n" not in msg.strip(), msg
    return msg


def test_float16_is_refused_with_a_pointer_to_bfloat16(tmp_path, train_module):
    d = synthetic_dataset(str(tmp_path / "ds"))
    configure_train(train_module, small_train_args(d, str(tmp_path / "o"), dtype="float16"))
    assert "bfloat16" in _one_line_exit(train_module.main)


def test_init_from_a_missing_directory_is_one_clear_line(tmp_path, train_module):
    d = synthetic_dataset(str(tmp_path / "ds"))
    configure_train(train_module, small_train_args(d, str(tmp_path / "o"), init_from="resmue"))
    assert "resmue" in _one_line_exit(train_module.main)


def test_data_problems_stop_with_one_line_not_a_traceback(tmp_path, train_module, monkeypatch):
    d = synthetic_dataset(str(tmp_path / "ds"))
    configure_train(train_module, small_train_args(str(tmp_path / "nowhere"), str(tmp_path / "o")))
    assert "meta.json" in _one_line_exit(train_module.main)
    from conftest import small_config
    from checkpoint import save_pretrained
    from model import Qwen3
    save_pretrained(Qwen3(small_config()), str(tmp_path / "m"))
    open(os.path.join(d, "meta.json"), "w").write("{broken")
    msg = run_script(monkeypatch, "eval.py", f"--data_dir={d}", f"--init_from={tmp_path / 'm'}", "--seq_len=32")
    assert isinstance(msg, str) and "\n" not in msg.strip() and "is broken" in msg, msg   # a one-line stop


@pytest.mark.slow
def test_export_only_needs_no_seq_len_that_fits_the_model(tmp_path, finished_run, train_module, capsys):
    """Exporting writes weights; a seq_len longer than the model's context (e.g. the reference config's 2048 on the
    demo model) must not stop it, and the training settings that differ from the run's (the config file's
    max_steps, ...) are neither printed nor refused: they do not apply to an export. The log stays as it was."""
    d, out = finished_run[0], str(tmp_path / "o")
    shutil.copytree(finished_run[1], out)
    log = open(os.path.join(out, "log.jsonl")).read()
    capsys.readouterr()
    _train(train_module, d, out, init_from="resume", export_only=True, seq_len=4096, max_steps=200)
    stdout = capsys.readouterr().out
    assert os.path.isfile(os.path.join(out, "hf", "config.json"))
    assert "resume" not in stdout and open(os.path.join(out, "log.jsonl")).read() == log, stdout


def test_a_folder_named_ckpt_best_is_neither_resumed_from_nor_pruned(tmp_path):
    """Issue 36 point 5: a user's copy of step 2 named ckpt-best sorted after ckpt-0000004, so the run resumed
    from it at step 2, and pruning then deleted ckpt-0000002 and ckpt-0000004."""
    import checkpoint
    from conftest import small_config
    from model import Qwen3
    from muon import build_optimizer
    model = Qwen3(small_config())
    opt, out = build_optimizer(model), str(tmp_path)
    for step in (2, 4):
        checkpoint.save_checkpoint(model, opt, step, out, {}, keep=3)
    shutil.copytree(os.path.join(out, "ckpt-0000002"), os.path.join(out, "ckpt-best"))
    os.makedirs(os.path.join(out, "ckpt-0000006.tmp"))   # killed mid-write
    assert [os.path.basename(c) for c in checkpoint.list_checkpoints(out)] == ["ckpt-0000002", "ckpt-0000004"]
    assert checkpoint.find_model_dir(out).endswith("ckpt-0000004")
    checkpoint.save_checkpoint(model, opt, 6, out, {}, keep=2)
    assert sorted(os.listdir(out)) == ["ckpt-0000004", "ckpt-0000006", "ckpt-best"]
    assert checkpoint.load_checkpoint(os.path.join(out, "ckpt-best"), model, opt, lambda saved: None) == 2
