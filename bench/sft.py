"""
SFT throughput against pretraining on one GPU, in one process: the full 0.6B model (Qwen3Config defaults),
micro-batch 12 x seq 2048, bf16 autocast, compiled blocks + liger's fused loss -- train.py's own main(), as
bench/train_speed.py runs it. Pretraining gets fixed random windows; SFT gets train.py's real SFT loader (data.py) over
random conversations written as a prepared SFT directory: lengths log-normal (median ~400 tokens, 64..2048),
40% of each conversation user/template (no loss), 60% assistant, packed greedily into rows, with document
masking (FlexAttention on CUDA). Then a check on the device: on the same weights and packed batch, the
FlexAttention path and the definition (SDPA with the boolean same-document causal mask) give the same loss and
gradients (eager blocks, so that only attention differs).

    python bench/sft.py [--micro_batch=12] [--steps=10]      # one CUDA GPU; < 4 min on an H200
    python bench/sft.py --micro_batch=6 --checkpointing=selective --steps=4   # config/24gb.py's setting: memory
    python bench/sft.py --smoke=True                         # the same code on a CPU with a tiny model (no numbers)

Prints one JSON line per mode (BENCH_SFT {...}: tok/s counting every position of a row, padding included; step
time; peak memory), the ratio SFT / pretraining (target >= 0.9), and CHECK_SFT {...}.
"""
import json
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

micro_batch = 12
steps = 10
checkpointing = "none"   # train.py's activation checkpointing: none | block | selective
smoke = False            # a tiny model on the CPU: the code path, no numbers


def write_random_sft_dir(d, seq_len, n_conv=3000, seed=0):
    """A prepared SFT directory (sft.py's layout) of random conversations."""
    from data import write_shard
    from tokenizer import IM_START, N_ORDINARY, RANKS_SHA256
    rng = np.random.default_rng(seed)
    lens = np.clip(rng.lognormal(np.log(400), 0.8, n_conv), 64, seq_len).astype(np.int64)
    toks, masks = [], []
    for n in lens:
        t = rng.integers(0, N_ORDINARY, n)
        t[0] = IM_START
        toks.append(t), masks.append(np.arange(n) >= int(0.4 * n))
    os.makedirs(os.path.join(d, "train"))
    for kind, arr in (("tokens", np.concatenate(toks)), ("mask", np.concatenate(masks)), ("lens", lens)):
        write_shard(os.path.join(d, "train", f"bench.{kind}.bin"), arr.astype(np.uint32))
    json.dump({"format": "sft-chatml", "tokenizer_sha256": RANKS_SHA256, "shards": [{"name": "bench"}]},
              open(os.path.join(d, "meta.json"), "w"))
    return d


def check_flex_equals_sdpa(sft_dir, rows, seq_len, cfg, dev):
    """Loss and gradients of the eager 0.6B model on `rows` packed rows: FlexAttention vs the boolean SDPA mask."""
    import torch
    import model as M
    from data import PackedConversations
    p = PackedConversations(sft_dir, "train", seq_len)
    x, y, doc = (torch.from_numpy(np.stack(a)).to(dev) for a in zip(*[p.row(r) for r in range(rows)]))
    torch.manual_seed(0)
    model = M.Qwen3(cfg, loss="liger").to(dev)
    definition, results = M.doc_mask, {}
    for name, flex in (("sdpa_bool", False), ("flex", True)):
        M.doc_mask = lambda d, flex, forced=flex: definition(d, forced)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev == "cuda"), torch.set_grad_enabled(dev == "cuda"):
            _, loss = model(x, y, doc)   # (FlexAttention has no backward on a CPU: forward only there)
        if dev != "cuda":
            results[name] = (loss.item(), [torch.zeros(1)])
            continue
        loss.backward()
        results[name] = (loss.item(), [p.grad.float().clone() for p in model.parameters()])
    M.doc_mask = definition
    (la, ga), (lb, gb) = results["sdpa_bool"], results["flex"]
    rel = max(((a - b).norm() / (a.norm() + 1e-12)).item() for a, b in zip(ga, gb))
    return {"rows": rows, "loss_sdpa_bool": round(la, 5), "loss_flex": round(lb, 5), "abs_loss_diff": abs(la - lb),
            "max_rel_grad_diff": rel, "ok": abs(la - lb) <= 1e-2 and rel <= 2e-2}


if __name__ == "__main__":
    exec(open(os.path.join(ROOT, "configurator.py")).read())
    import torch
    if not smoke and not torch.cuda.is_available():
        sys.exit("bench/sft.py needs a CUDA GPU (--smoke=True runs a tiny CPU check)")
    micro, warmup, seq = micro_batch, 3, 2048
    if smoke:
        micro, steps, seq = 2, 2, 256
        tiny = ["--device=cpu", "--compile=False", "--dtype=float32", "--hidden_size=32", "--intermediate_size=64",
                "--num_hidden_layers=2", "--num_attention_heads=4", "--num_key_value_heads=2", "--head_dim=16"]
    dev = "cpu" if smoke else "cuda"
    tmp = tempfile.mkdtemp(prefix="sft_bench_")
    sft_dir = write_random_sft_dir(os.path.join(tmp, "sft"), seq)
    sys.argv = ["train.py", f"--out_dir={tmp}/out", "--init_from=scratch", "--eval_interval=0", "--ckpt_interval=0",
                "--export_at_end=False", "--wandb_log=False", f"--max_steps={warmup + steps}", f"--seq_len={seq}",
                f"--micro_batch={micro}", f"--global_batch={micro}", "--log_interval=1",
                f"--checkpointing={checkpointing}"] + (tiny if smoke else [])
    os.chdir(ROOT)
    import train
    fixed = torch.randint(0, train.vocab_size, (micro, seq + 1), generator=torch.Generator().manual_seed(0)).to(dev)
    cuda = dev == "cuda"
    median = lambda xs: sorted(xs)[len(xs) // 2]
    res = {}
    for mode in ("pretrain", "sft"):
        train.sft_data = sft_dir if mode == "sft" else ""
        history = train.main(get_batch=(lambda s, m: (fixed[:, :-1], fixed[:, 1:])) if mode == "pretrain" else None)
        dt = median([r["step_ms"] for r in history[warmup:]]) / 1000
        res[mode] = {"mode": mode, "gpu": torch.cuda.get_device_name() if cuda else "cpu", "micro_batch": micro,
                     "seq": seq, "step_s": round(dt, 4), "tok_per_s": round(micro * seq / dt),
                     "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
                     "loss": round(history[-1]["loss"], 4)}
        if mode == "sft":
            from data import PackedConversations
            p = PackedConversations(sft_dir, "train", seq)
            rows = [p.row(r) for r in range(64)]
            res[mode]["fill"] = round(p.fill, 4)
            res[mode]["loss_token_share"] = round(float(np.mean([(r[1] != -100).mean() for r in rows])), 4)
            res[mode]["conversations_per_row"] = round(len(p.conv) / p.n_rows, 2)
        print("BENCH_SFT " + json.dumps(res[mode]), flush=True)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    ratio = res["sft"]["tok_per_s"] / res["pretrain"]["tok_per_s"]
    print("BENCH_SFT " + json.dumps({"sft_over_pretrain_tok_s": round(ratio, 4), "target": 0.9, "ok": ratio >= 0.9}))
    cfg = train.model_config()
    print("CHECK_SFT " + json.dumps(check_flex_equals_sdpa(sft_dir, 4, seq, cfg, dev)), flush=True)
