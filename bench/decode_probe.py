"""
Exploration (device calls 2026-11-29 #5-#7 and #9-#11): where the time of one decode step goes, and which
candidates help.
Prints JSON lines: tok/s of generate.Decoder (batch 1, greedy, 32 + 256 tokens) with a cache of 288 or 4,096
positions, the bare graph replay, the prefill alone, a kernel profile of the replayed graph; the Triton attention
kernel (decode_kernel.py) against the compiled PyTorch attention, and the step under max-autotune.
(Calls 5 and 7 ran earlier variants -- SDPA, unfolded attention -- monkeypatched in: BENCHMARKS.md logs 12-13.)
"""
import json, os, sys, time
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch
import model as M
from generate import Decoder

T0 = time.time()
BUDGET = float(os.environ.get("BUDGET", 420))


def emit(**kw):
    print(json.dumps(kw), flush=True)


def bench_decoder(model, max_len, label, reps=3, new=256, profile=False, **decoder_kw):
    prompt = torch.randint(0, 151936, (1, 32), device="cuda")
    dec = Decoder(model, 1, max_len=max_len, **decoder_kw)
    t = time.time()
    dec.reset(); dec.generate(prompt, new, temperature=0); torch.cuda.synchronize()
    first = time.time() - t
    times = []
    for _ in range(reps):
        torch.cuda.synchronize(); t = time.perf_counter()
        dec.reset(); out = dec.generate(prompt, new, temperature=0); torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    dt = sorted(times)[len(times) // 2]
    prefill = []
    for _ in range(3):  # the prompt's share of the time above (eager: ~28 x 20 kernels launched from Python)
        dec.reset(); torch.cuda.synchronize(); t = time.perf_counter()
        dec.prefill(prompt); torch.cuda.synchronize()
        prefill.append(time.perf_counter() - t)
    # the bare graph: replay only (no host work per token)
    graph, _ = next(iter(dec.graphs.values()))
    dec.reset(0)  # the graph moves the position on by itself: 200 replays stay within the cache
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(200):
        graph.replay()
    torch.cuda.synchronize()
    replay_ms = (time.perf_counter() - t) / 200 * 1000
    emit(variant=label, max_len=max_len, tok_per_s=round(new / dt, 1), ms_per_token=round(dt / new * 1000, 3),
         replay_only_ms=round(replay_ms, 3), prefill_ms=round(sorted(prefill)[1] * 1000, 2),
         first_call_s=round(first, 1), elapsed=round(time.time() - T0))
    if profile:
        from torch.profiler import profile as prof_, ProfilerActivity
        dec.reset(0)
        with prof_(activities=[ProfilerActivity.CUDA]) as p:
            for _ in range(10):
                graph.replay()
            torch.cuda.synchronize()
        if len(p.key_averages()) < 5:  # graph nodes not traced one by one: profile the compiled step itself
            dec.cuda_graph, tok = False, torch.zeros(1, 1, dtype=torch.long, device="cuda")
            dec.reset(100)
            with prof_(activities=[ProfilerActivity.CUDA]) as p:
                for _ in range(10):
                    dec.step(tok)
                torch.cuda.synchronize()
            dec.cuda_graph = True
        rows = []
        for e in p.key_averages():
            dt_us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
            if dt_us:
                rows.append((dt_us / 10, e.count / 10, e.key[:110]))
        rows.sort(reverse=True)
        emit(profile=label, kernels_per_step=round(sum(r[1] for r in rows), 1),
             kernel_us_per_step=round(sum(r[0] for r in rows), 1))
        for us, n, name in rows[:40]:
            emit(us_per_step=round(us, 1), n_per_step=n, kernel=name)
    return out, dec


def main():
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = M.Qwen3(M.Qwen3Config()).to(torch.bfloat16).eval()
    emit(device=torch.cuda.get_device_name(), torch=torch.__version__)
    bench_decoder(model, 288, "Decoder, Triton attention kernel", profile=True)
    bench_decoder(model, 4096, "Decoder, Triton attention kernel")
    torch._dynamo.reset()
    bench_decoder(model, 288, "Decoder, PyTorch attention (compiled)", profile=True, triton=False)
    import torch._inductor.config as ic
    for name, patch in (("Decoder, Triton + max_autotune", dict(max_autotune=True)),):
        if time.time() - T0 > BUDGET:
            emit(skipped=name)
            continue
        torch._dynamo.reset()
        try:
            with ic.patch(**patch):
                bench_decoder(model, 288, name, profile=True)
        except Exception as e:  # noqa: BLE001
            emit(variant=name, error=f"{type(e).__name__}: {str(e)[:300]}")
    emit(done=round(time.time() - T0))


if __name__ == "__main__":
    main()
