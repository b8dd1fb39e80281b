"""The real run, rehearsed end to end on a CPU: ~1,500 mixed inputs prepared 3:1 (the session's prep, which
test_rehearsal.py checks), two processes trained and SIGKILLed, resumed on one process with a lower lr, then a clean
log, export, eval.py and sample.py."""
import json, os, signal, subprocess, time

import pytest
from conftest import PY, ROOT, TIMEOUT, free_port, losses, run

import data
import prepare
from tokenizer import get_tokenizer


pytestmark = pytest.mark.slow   # end-to-end runs in subprocesses


def _args(data_dir, out_dir, **over):
    args = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                head_dim=16, max_position_embeddings=256, seq_len=64, micro_batch=2, global_batch=4, warmup_steps=2,
                decay_steps=4, max_steps=8, eval_interval=4, val_tokens=64 * 16, ckpt_interval=4, keep_ckpts=5,
                compile=False, dtype="float32", device="cpu", export_at_end=True, log_interval=1,
                data_dir=data_dir, out_dir=out_dir, muon_lr=0.02, adamw_lr=3e-3)
    args.update(over)
    return [f"--{k}={v}" for k, v in args.items()]


def test_real_run_rehearsal_prepare_kill_resume_elsewhere_export_eval_sample(tmp_path, mixed_prepared):
    r, prepared, _ = mixed_prepared
    out = str(tmp_path / "out")
    assert r.returncode == 0, r.stderr[-2000:]
    # the val sample train.py and eval.py score holds both languages
    enc, langs = get_tokenizer(), set()
    for _, y in data.val_batches(prepared, 64, 64 * 16, 4):
        for row in y.tolist():
            text = enc.decode(row)
            langs.add("zh" if len(prepare.ZH_CHAR.findall(text)) > len(prepare.EN_CHAR.findall(text)) / 4 else "en")
    assert langs == {"zh", "en"}

    # two processes (started by hand, as torchrun would: a torchrun agent runs its workers in sessions of their own,
    # out of reach of a kill aimed at the agent), both SIGKILLed -- a dead machine -- once the step-4 checkpoint exists
    port = free_port()
    procs = [subprocess.Popen([PY, "train.py"] + _args(prepared, out), cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
                                                                  MASTER_PORT=str(port), RANK=str(r), LOCAL_RANK=str(r),
                                                                  WORLD_SIZE="2"))
             for r in range(2)]
    deadline = time.time() + TIMEOUT
    while not os.path.exists(os.path.join(out, "ckpt-0000004", "state.pt")) and time.time() < deadline \
            and all(p.poll() is None for p in procs):
        time.sleep(0.01)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    assert [p.wait(timeout=60) for p in procs] == [-signal.SIGKILL] * 2, "a rank ended before it could be killed"
    assert os.path.isdir(os.path.join(out, "ckpt-0000004")) and not os.path.isdir(os.path.join(out, "ckpt-0000008"))

    # resume on one process with half the learning rates: a clean exit and one clean curve
    r = run(["train.py"] + _args(prepared, out, init_from="resume", muon_lr=0.01, adamw_lr=1.5e-3))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resume: muon_lr 0.02 -> 0.01" in r.stdout and "resumed from" in r.stdout
    assert sorted(losses(out)) == list(range(1, 9))        # losses() fails on a step logged twice
    records = [json.loads(l) for l in open(os.path.join(out, "log.jsonl"))]
    lrs = {x["step"]: x["muon_lr"] for x in records if "loss" in x}
    assert lrs[5] <= 0.01 + 1e-12 and lrs[5] > 0
    assert sorted(x["step"] for x in records if "val_loss" in x) == [0, 4, 8]
    assert os.path.isfile(os.path.join(out, "hf", "tokenizer.json"))

    # eval.py on the run: the checkpoint's own seq_len and val size, the same val loss train.py logged at the end
    r = run(["eval.py", f"--init_from={out}", f"--data_dir={prepared}"])
    assert r.returncode == 0, r.stderr[-2000:]
    logged = [x["val_loss"] for x in records if x.get("step") == 8 and "val_loss" in x][0]
    assert f"val loss {logged:.4f}" in r.stdout, (logged, r.stdout)
    r = run(["sample.py", f"--init_from={os.path.join(out, 'hf')}", "--prompt", "这本书", "--max_new_tokens=8",
             "--device=cpu", "--dtype=float32"])
    assert r.returncode == 0 and r.stdout.startswith("这本书"), r.stderr[-2000:]
