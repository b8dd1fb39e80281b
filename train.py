"""
Pretrain Qwen3 from scratch (or continue a Hugging Face Qwen3) with Muon + AdamW.

    python train.py config/tiny.py                           # CPU demo: prepares data/demo if missing
    torchrun --nproc_per_node=8 train.py config/h800.py      # the reference recipe
    torchrun --nproc_per_node=4 train.py config/h800.py --init_from=resume   # any GPU count resumes exactly

Design: every default is a module global below; config files and --key=value override them (configurator.py).
The global batch (sequences per optimizer step) is fixed by the config; gradient accumulation is derived from the
number of processes, and the data order depends only on the step (data.py), so a run is the same run on 1 or 8
GPUs and a resume needs nothing but the step counter.
"""
import json, math, os, shutil, signal, sys, time
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from data import DEMO_DIR, DistributedBatches, TokenWindows, build_demo
from eval import val_loss_bpb
from mfu import flops_per_token_precise, flops_per_token_seed, peak_tflops
from model import Qwen3, Qwen3Config, list_checkpoints
from muon import build_optimizer

# ----------------------------------------------------------------------------------------------- defaults
out_dir = "out"
data_dir = DEMO_DIR
init_from = "scratch"         # scratch | resume | <path to a Hugging Face Qwen3 directory>
export_only = False           # with init_from=resume: write out_dir/hf from the newest checkpoint and exit
# model (Hugging Face Qwen3Config names; defaults = Qwen3-0.6B shape, rope_theta 1e4, 4k positions)
vocab_size, hidden_size, intermediate_size = 151936, 1024, 3072
num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim = 28, 16, 8, 128
rope_theta, max_position_embeddings, tie_word_embeddings = 10000.0, 4096, True
# batch
seq_len = 2048
micro_batch = 12              # sequences per GPU per micro-step
global_batch = 384            # sequences per optimizer step (12 x 8 accumulation x 4 GPUs = 0.79M tokens)
# optimizer and WSD schedule: linear warmup, constant, linear decay to min_lr_frac x lr over the last decay_steps
max_steps = 100_000
warmup_steps = 20_000
decay_steps = 60_000
min_lr_frac = 0.0
muon_lr = 0.02                # hidden 2-D matrices
muon_lr_rule = "original"     # original: sqrt(max(1, rows/cols)) | match_rms_adamw: 0.2*sqrt(max(rows, cols))
muon_momentum = 0.95
adamw_lr = 3e-4               # embedding / lm_head and norm gains
beta1, beta2 = 0.9, 0.95
weight_decay = 0.01
grad_clip = 1.0               # 0 = off
# evaluation, logging, checkpoints
eval_interval = 1000
eval_batches = 20
log_interval = 1
ckpt_interval = 1000
keep_ckpts = 3
export_at_end = True
wandb_log = False
wandb_project = "qwen3-pretrain"
wandb_run_name = "run"
# system
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = "bfloat16" if torch.cuda.is_available() else "float32"   # autocast dtype; master weights are fp32
compile = torch.cuda.is_available()
liger = True                  # fused linear+cross-entropy on CUDA when liger-kernel is importable
checkpointing = "none"        # activation checkpointing: none | block | selective
sdpa_backend = "auto"         # auto (PyTorch's choice) | cudnn | flash | efficient: attention kernel on CUDA
seed = 1337
peak_tflops_override = 0.0    # TFLOP/s for MFU on a card the table does not know
bench = False                 # set by `python mfu.py --bench`: random tokens, no eval/ckpt, timing summary
bench_steps = 10
bench_warmup = 3
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configurator.py")).read())
config = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))}


# ------------------------------------------------------------------------------------------------ helpers
def wsd_lr_factor(step):
    """Warmup-stable-decay: 0 -> 1 over warmup_steps, 1 until max_steps - decay_steps, then linear to min_lr_frac."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_start = max_steps - decay_steps
    if step < decay_start:
        return 1.0
    return 1.0 - (1.0 - min_lr_frac) * min(1.0, (step - decay_start + 1) / max(1, decay_steps))


def stop_non_finite(what, master):
    """NaN/inf anywhere: stop before anything is written, so the last good checkpoint stays the newest."""
    if master:
        print(f"error: {what}. The last good checkpoint in {out_dir} is intact; lower the lr or resume from it.")
    sys.exit(2)


def save_checkpoint(model, optimizer, step):
    """fp32 weights as safetensors (HF names + config.json, so the folder is itself a HF model directory) and
    optimizer/step/RNG in state.pt; written to a temp folder and renamed, then older ones beyond keep_ckpts go."""
    from safetensors.torch import save_file
    final = os.path.join(out_dir, f"ckpt-{step:07d}")
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()},
              os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(model.hf_config("float32"), f, indent=2)
    state = {"step": step, "optimizer": optimizer.state_dict(), "train_config": config,
             "rng_cpu": torch.get_rng_state(),
             "rng_cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else torch.zeros(0, dtype=torch.uint8)}
    torch.save(state, os.path.join(tmp, "state.pt"))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_checkpoints(out_dir)[:-keep_ckpts]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path, model, optimizer):
    """Restore weights, optimizer and RNG; returns the step to continue from. Any damage -> a clear exit."""
    from safetensors.torch import load_file
    try:
        sd = load_file(os.path.join(path, "model.safetensors"))
        state = torch.load(os.path.join(path, "state.pt"), weights_only=True, map_location="cpu")
        model.load_state_dict(sd, strict=True)
        optimizer.load_state_dict(state["optimizer"])
    except Exception as e:
        sys.exit(f"error: checkpoint {path} is corrupt or incompatible ({type(e).__name__}: {str(e)[:300]}). "
                 f"Delete it to resume from the previous one ({len(list_checkpoints(out_dir)) - 1} others in {out_dir}).")
    torch.set_rng_state(state["rng_cpu"])
    if torch.cuda.is_available() and state["rng_cuda"].numel():
        torch.cuda.set_rng_state(state["rng_cuda"])
    return state["step"]


def main():
    # -------------------------------------------------------------------------------------------- setup
    ddp = int(os.environ.get("RANK", -1)) != -1
    if ddp:
        rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
        dev = f"cuda:{local_rank}" if device.startswith("cuda") else "cpu"
        if dev.startswith("cuda"):  # device_id binds the NCCL communicator to this rank's GPU up front
            torch.cuda.set_device(dev)
            dist.init_process_group("nccl", device_id=torch.device(dev))
        else:
            dist.init_process_group("gloo")
    else:
        rank, world, dev = 0, 1, device
    master = rank == 0
    if global_batch % (micro_batch * world):  # e.g. config/h800.py (384) on 3 or 6 GPUs: say what would work
        fits = [m for m in range(1, global_batch // world + 1) if global_batch % (m * world) == 0]
        sys.exit(f"error: global_batch {global_batch} is not divisible by micro_batch {micro_batch} x {world} processes; "
                 + (f"micro_batch values that divide it on {world} process(es): {fits}" if fits else
                    f"no micro_batch does: make global_batch a multiple of {world}"))
    grad_accum = global_batch // (micro_batch * world)
    if dtype not in ("float32", "bfloat16", "float16"):
        sys.exit(f"error: dtype must be float32|bfloat16|float16, got {dtype!r}")
    torch.manual_seed(seed)
    cuda = dev.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if cuda and sdpa_backend != "auto":  # only the chosen kernel (and the math fallback) stays enabled
        if sdpa_backend not in ("cudnn", "flash", "efficient"):
            sys.exit(f"error: sdpa_backend must be auto|cudnn|flash|efficient, got {sdpa_backend!r}")
        torch.backends.cuda.enable_cudnn_sdp(sdpa_backend == "cudnn")
        torch.backends.cuda.enable_flash_sdp(sdpa_backend == "flash")
        torch.backends.cuda.enable_mem_efficient_sdp(sdpa_backend == "efficient")
    autocast = torch.autocast("cuda", dtype=getattr(torch, dtype)) if cuda and dtype != "float32" else nullcontext()

    # ---------------------------------------------------------------------------------------- model
    if init_from not in ("scratch", "resume"):
        model = Qwen3.from_pretrained(init_from, dtype=torch.float32)   # continue pretraining a HF checkpoint
    else:
        model = Qwen3(Qwen3Config(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                                  num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                                  num_key_value_heads=num_key_value_heads, head_dim=head_dim, rope_theta=rope_theta,
                                  max_position_embeddings=max_position_embeddings, tie_word_embeddings=tie_word_embeddings))
    if seq_len > model.config.max_position_embeddings:
        sys.exit(f"error: seq_len {seq_len} > max_position_embeddings {model.config.max_position_embeddings}")
    model.to(dev)
    optimizer = build_optimizer(model, muon_lr=muon_lr, adamw_lr=adamw_lr, betas=(beta1, beta2),
                                weight_decay=weight_decay, momentum=muon_momentum, lr_rule=muon_lr_rule)
    step = 0
    if export_only and init_from != "resume":
        sys.exit("error: --export_only=True exports the newest checkpoint: use it with --init_from=resume")
    if init_from == "resume" and not bench:
        ckpts = list_checkpoints(out_dir)
        if not ckpts:
            sys.exit(f"error: --init_from=resume but {out_dir} has no checkpoint")
        step = load_checkpoint(ckpts[-1], model, optimizer)
        if master:
            print(f"resumed from {ckpts[-1]} at step {step}")
        if export_only:
            if master:
                model.save_pretrained(os.path.join(out_dir, "hf"))
                print(f"exported {os.path.join(out_dir, 'hf')}")
            return
    use_liger = False
    if liger and cuda:
        try:
            import liger_kernel  # noqa: F401
            use_liger = True
        except ImportError:
            if master:
                print("liger-kernel not installed: using the chunked cross-entropy")
    model.fast_path(compile=compile, loss="liger" if use_liger else "chunked", checkpointing=checkpointing)
    train_model = DDP(model, device_ids=[local_rank] if cuda else None) if ddp else model

    # ------------------------------------------------------------------------------------------- data
    if bench:
        gen = torch.Generator().manual_seed(seed + rank)
        fixed = torch.randint(0, model.config.vocab_size, (micro_batch, seq_len + 1), generator=gen).to(dev)
        get_batch = lambda s, m: (fixed[:, :-1], fixed[:, 1:])
    else:
        if master and os.path.abspath(data_dir) == os.path.abspath(DEMO_DIR) and not os.path.exists(os.path.join(data_dir, "meta.json")):
            print("preparing the demo dataset (one time)...")
            build_demo(quiet=True)
        if ddp:
            dist.barrier()
        batches = DistributedBatches(TokenWindows(data_dir, "train", seq_len, seed), micro_batch, world, rank, grad_accum, dev)
        get_batch = batches.get

    # ------------------------------------------------------------------------------------------ logging
    fpt_seed = flops_per_token_seed(model.config, seq_len)
    fpt_precise = flops_per_token_precise(model.config, seq_len)
    peak, peak_src = peak_tflops(torch.cuda.get_device_name(dev) if cuda else "cpu", peak_tflops_override)
    tokens_per_step = global_batch * seq_len
    if master:
        os.makedirs(out_dir, exist_ok=True)
        n = sum(p.numel() for p in model.parameters())
        print(f"params {n:,} | world {world} x micro_batch {micro_batch} x accum {grad_accum} x seq {seq_len} = "
              f"{tokens_per_step:,} tokens/step | compile {compile} liger {use_liger} ckpt {checkpointing} | "
              f"peak {peak or 'unknown'} TFLOP/s ({peak_src})")
        log_file = None if bench else open(os.path.join(out_dir, "log.jsonl"), "a")
        if wandb_log and not bench:
            import wandb
            wandb.init(project=wandb_project, name=wandb_run_name, config=config)

    def evaluate(at_step):
        loss, bpb = val_loss_bpb(model, data_dir, seq_len, micro_batch, eval_batches, dev, autocast)
        if master:
            print(f"step {at_step}: val loss {loss:.4f}, val bpb {bpb:.4f}")
            log_file.write(json.dumps({"step": at_step, "val_loss": loss, "val_bpb": bpb}) + "\n")
            log_file.flush()
            if wandb_log:
                wandb.log({"val/loss": loss, "val/bpb": bpb}, step=at_step)

    # ------------------------------------------------------------------------------------------- train
    last_step = step + bench_warmup + bench_steps if bench else max_steps
    timings, opt_times = [], []
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    t_start = time.time()
    while step < last_step:
        if not bench and eval_interval and step % eval_interval == 0 and (step > 0 or init_from != "resume"):
            evaluate(step)
        if cuda:
            torch.cuda.synchronize(dev)
        t0 = time.time()
        for g in optimizer.param_groups:
            g["lr"] = g["initial_lr"] * wsd_lr_factor(step)
        loss_sum = torch.zeros((), device=dev)
        for micro in range(grad_accum):
            x, y = get_batch(step, micro)
            sync = not ddp or micro == grad_accum - 1   # all-reduce gradients only on the last micro-step
            with (nullcontext() if sync else train_model.no_sync()), autocast:
                _, loss = train_model(x, y)
            (loss / grad_accum).backward()
            loss_sum += loss.detach()
        if ddp:
            dist.all_reduce(loss_sum, op=dist.ReduceOp.SUM)
        loss_val = loss_sum.item() / (grad_accum * world)
        if not math.isfinite(loss_val):
            stop_non_finite(f"loss is {loss_val} at step {step}; stopping without an optimizer step", master)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
        if not math.isfinite(grad_norm.item()):
            stop_non_finite(f"gradient norm is {grad_norm.item()} at step {step}; stopping without an optimizer step", master)
        if cuda and bench:
            torch.cuda.synchronize(dev)
        t_opt = time.time()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize(dev)
        t1 = time.time()
        opt_times.append(t1 - t_opt)
        timings.append(t1 - t0)
        step += 1
        tok_s = tokens_per_step / (t1 - t0)
        mfu = tok_s / world * fpt_seed / (peak * 1e12) if peak else None   # None: peak unknown (e.g. CPU)
        if master and not bench and (step % log_interval == 0 or step == last_step):
            eta = (time.time() - t_start) / len(timings) * (last_step - step)
            lr = optimizer.param_groups[0]["lr"]
            print(f"step {step}/{last_step} | loss {loss_val:.4f} | lr {lr:.2e} | grad norm {grad_norm:.3f} | "
                  f"{tok_s:,.0f} tok/s | MFU {'n/a' if mfu is None else f'{100 * mfu:.1f}%'} | {1000 * (t1 - t0):.0f} ms | ETA {eta / 3600:.2f} h")
            rec = {"step": step, "loss": loss_val, "lr": lr, "muon_lr": optimizer.param_groups[0]["lr"],
                   "adamw_lr": optimizer.param_groups[1]["lr"], "grad_norm": float(grad_norm), "tok_per_s": tok_s,
                   "mfu": mfu, "step_ms": 1000 * (t1 - t0), "eta_s": eta}
            log_file.write(json.dumps(rec) + "\n")
            log_file.flush()
            if wandb_log:
                wandb.log({"train/" + k: v for k, v in rec.items() if k != "step"}, step=step)
        if master and not bench and ckpt_interval and (step % ckpt_interval == 0 or step == last_step):
            if not all(torch.isfinite(p).all() for p in model.parameters()):  # never save a poisoned checkpoint
                stop_non_finite(f"non-finite weights after step {step}; not saving", master)
            save_checkpoint(model, optimizer, step)
        if ddp and not bench and ckpt_interval and step % ckpt_interval == 0:
            dist.barrier()   # nobody runs ahead while rank 0 writes

    # --------------------------------------------------------------------------------------------- end
    if bench and master:
        t = sorted(timings[bench_warmup:])
        dt = t[len(t) // 2]
        tok_s = tokens_per_step / dt
        res = {"gpu": torch.cuda.get_device_name(dev) if cuda else "cpu", "world": world, "micro_batch": micro_batch,
               "grad_accum": grad_accum, "seq": seq_len, "compile": compile, "liger": use_liger,
               "checkpointing": checkpointing, "sdpa": sdpa_backend, "step_s": round(dt, 4), "tok_per_s": round(tok_s),
               "tok_per_s_per_gpu": round(tok_s / world),
               "mfu_seed": round(tok_s / world * fpt_seed / (peak * 1e12), 4) if peak else None,
               "mfu_precise": round(tok_s / world * fpt_precise / (peak * 1e12), 4) if peak else None,
               "peak_mem_gib": round(torch.cuda.max_memory_allocated(dev) / 2**30, 2) if cuda else None,
               "optimizer_share": round(sorted(opt_times[bench_warmup:])[len(t) // 2] / dt, 4), "loss": round(loss_val, 4)}
        print("BENCH " + json.dumps(res))
    if not bench:
        if eval_interval:
            evaluate(step)
        if master and export_at_end:
            model.save_pretrained(os.path.join(out_dir, "hf"))
            print(f"exported a Hugging Face directory to {os.path.join(out_dir, 'hf')}")
    if ddp:
        dist.barrier()  # let rank 0 finish writing before anyone tears the group down (gloo hangs otherwise)
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
