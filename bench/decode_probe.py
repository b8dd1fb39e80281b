"""
Exploration (device calls 2026-11-29 #5, #6): where the time of one decode step goes, and which candidates help.
Prints JSON lines: tok/s of generate.Decoder (batch 1, greedy, 32 + 256 tokens) with a cache of 288 or 4,096
positions, the bare graph replay, a kernel profile of the replayed graph, and the step under max-autotune.
(Call 5 ran this with the attention variants monkeypatched in; their numbers are in BENCHMARKS.md log 12.)
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
    # the bare graph: replay only (no host work per token)
    graph, _ = next(iter(dec.graphs.values()))
    dec.reset(0)  # the graph moves the position on by itself: 200 replays stay within the cache
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(200):
        graph.replay()
    torch.cuda.synchronize()
    replay_ms = (time.perf_counter() - t) / 200 * 1000
    emit(variant=label, max_len=max_len, tok_per_s=round(new / dt, 1), ms_per_token=round(dt / new * 1000, 3),
         replay_only_ms=round(replay_ms, 3), first_call_s=round(first, 1), elapsed=round(time.time() - T0))
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


def unfolded_attention(self, q, k, v, positions):
    """Candidate: no GQA fold, so each head's query is ONE row and inductor (with coordinate-descent tuning)
    decomposes both attention matmuls into reductions it can fuse, instead of two cuBLAS calls."""
    B, H, T, D = q.shape
    rep, L = H // self.n_kv, k.shape[2]
    k = k[:, :, None].expand(B, self.n_kv, rep, L, D).reshape(B, H, L, D)
    v = v[:, :, None].expand(B, self.n_kv, rep, L, D).reshape(B, H, L, D)
    visible = torch.arange(L, device=q.device) <= positions[:, None, :, None]
    scores = (q @ k.transpose(-1, -2)).float() * D ** -0.5
    return scores.masked_fill(~visible, float("-inf")).softmax(-1).to(v.dtype) @ v


def main():
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = M.Qwen3(M.Qwen3Config()).to(torch.bfloat16).eval()
    emit(device=torch.cuda.get_device_name(), torch=torch.__version__)
    bench_decoder(model, 288, "Decoder (explicit attention, tuned, token fed back)", profile=True)
    bench_decoder(model, 4096, "Decoder")
    folded = M.Attention._static_cache_attention
    M.Attention._static_cache_attention = unfolded_attention
    torch._dynamo.reset()
    try:
        bench_decoder(model, 288, "Decoder, attention not folded (M=1 matmuls)", profile=True)
        bench_decoder(model, 4096, "Decoder, attention not folded (M=1 matmuls)")
    except Exception as e:  # noqa: BLE001
        emit(variant="unfolded", error=f"{type(e).__name__}: {str(e)[:300]}")
    M.Attention._static_cache_attention = folded
    import torch._inductor.config as ic
    for name, patch in (("Decoder + max_autotune", dict(max_autotune=True)),):
        if time.time() - T0 > BUDGET:
            emit(skipped=name)
            continue
        torch._dynamo.reset()
        try:
            with ic.patch(**patch):
                bench_decoder(model, 288, name, profile=True)
        except Exception as e:  # noqa: BLE001
            emit(variant=name, error=f"{type(e).__name__}: {str(e)[:300]}")
    if time.time() - T0 < BUDGET:
        torch._dynamo.reset()
        bench_decoder(model, 288, "Decoder, weights not frozen", freeze=False)
    emit(done=round(time.time() - T0))


if __name__ == "__main__":
    main()
