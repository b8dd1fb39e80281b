"""
Exploration (device calls 2026-11-29 #5-#7, #9-#12, and later): where the time of one decode step goes, and which
candidates help. Prints JSON lines:
- "sweep": decode_kernel.fused_linear's block configs for every projection of the 0.6B step (norm + q/k/v, o_proj +
  residual, norm + gate/up + SiLU-mul, down + residual, final norm + lm_head) at batch 1, 8, 32 and for a 2,000-token
  prefill: 28 calls on 28 different weight copies captured in one CUDA graph (so no weight stays in L2), us per call
  and GB/s; then the best per shape ("best"): the table decode_kernel.LINEAR_CONFIGS hard-codes;
- "attention": decode_attention alone (28 layers in a graph) at a 160-key and a 4,000-key position, per chunk;
- the Decoder's tok/s (batch 1, greedy, 32 + 256 tokens), its bare graph replay, the prefill, a kernel profile: the
  Triton step with programmatic dependent launch (PDL) and without; the prefill alone, Triton against the model.
(Calls 5 and 7 ran earlier variants -- SDPA, unfolded attention -- monkeypatched in: BENCHMARKS.md logs 12-13;
call 12 compared the Triton step with the compiled PyTorch step: log 15.)
"""
import itertools, json, os, sys, time
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch
import decode_kernel as K
import model as M
from generate import Decoder, KVCache

T0 = time.time()
BUDGET = float(os.environ.get("BUDGET", 420))


def emit(**kw):
    print(json.dumps(kw), flush=True)


def graph_time(fn, reps=30):
    """ms of one replay of a CUDA graph of fn()."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay(); torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        g.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps * 1000


def sweep(cfg):
    H, I, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    qkv = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim
    norm = M.RMSNorm(H, cfg.rms_norm_eps).cuda().to(torch.bfloat16)
    shapes = {"qkv": (qkv, H, dict(norm=norm)), "o": (H, cfg.num_attention_heads * cfg.head_dim, dict(res=True)),
              "gate_up": (I, H, dict(norm=norm, glu=True)), "down": (H, I, dict(res=True)),
              "lm_head": (V, H, dict(norm=norm))}
    best = {}
    for batch in (1, 8, 32, 2000):  # 2,000: the rows of a 2,000-token prefill
        rows = 1 if batch == 1 else min(max(16, batch), 64)
        grid = (itertools.product((2, 4, 8, 16, 32), (512, 1024, 2048, 4096), (4, 8, 16), (1,)) if rows == 1 else
                itertools.product((32, 64, 128), (64, 128), (4, 8), (3, 4)))
        grid = [c for c in grid if c[0] * c[1] <= 32768]
        for name, (N, Kdim, opt) in shapes.items():
            copies = 1 if name == "lm_head" or rows == 64 else 28   # the lm_head alone is 311 MB: no L2 reuse
            ws = [torch.randn(2 * N if opt.get("glu") else N, Kdim, device="cuda", dtype=torch.bfloat16) * 0.02
                  for _ in range(copies)]
            x = torch.randn(batch, Kdim, device="cuda", dtype=torch.bfloat16)
            res = torch.randn(batch, N, device="cuda", dtype=torch.bfloat16) if opt.get("res") else None
            nbytes = sum(w.numel() * 2 for w in ws)
            ref = x @ ws[0][:N].T
            results = []
            for conf in grid:
                if time.time() - T0 > BUDGET:
                    break
                if conf[1] > 1 << (Kdim - 1).bit_length() or (rows == 64 and name == "lm_head"):  # prefill: B rows
                    continue
                K.LINEAR_CONFIGS[(N, Kdim, rows)] = conf
                try:
                    fn = lambda: [K.fused_linear(x, w, norm=opt.get("norm"), residual=res, glu=opt.get("glu", False))
                                  for w in ws]
                    ms = graph_time(fn)
                    if not opt:
                        assert (K.fused_linear(x, ws[0]).float() - ref.float()).abs().max() < 0.05
                except Exception as e:  # noqa: BLE001
                    emit(sweep=name, batch=batch, config=conf, error=f"{type(e).__name__}: {str(e)[:200]}")
                    continue
                results.append((ms * 1000 / copies, conf))
            results.sort()
            for us, conf in results[:3]:
                emit(sweep=name, batch=batch, N=N, K=Kdim, config=conf, us=round(us, 2),
                     gb_per_s=round(nbytes / copies / us / 1e3, 1))
            if results:
                best[(N, Kdim, rows)] = results[0][1]
                emit(best=name, batch=batch, key=[N, Kdim, rows], config=results[0][1], us=round(results[0][0], 2),
                     worst_us=round(results[-1][0], 2))
            K.LINEAR_CONFIGS.pop((N, Kdim, rows), None)
    return best


def attention(cfg):
    for pos, max_len in ((160, 288), (4000, 4096)):
        caches = [KVCache(1, cfg.num_key_value_heads, max_len, cfg.head_dim, "cuda", torch.bfloat16) for _ in range(28)]
        inv = M.rope_inv_freq(cfg.head_dim, cfg.rope_theta, "cuda")
        for c in caches:
            c.inv_freq = inv
        qkv = torch.randn(1, (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim, device="cuda",
                          dtype=torch.bfloat16)
        qd, kd = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
        norm = M.RMSNorm(cfg.head_dim, cfg.rms_norm_eps).cuda().to(torch.bfloat16)
        positions = torch.full((1, 1), pos, device="cuda")
        for chunk in (None, 32, 64, 128, 256, 512):
            if chunk and chunk >= max_len:
                continue
            fn = lambda: [K.decode_attention(qkv[:, :qd], qkv[:, qd:qd + kd], qkv[:, qd + kd:], norm, norm, c,
                                             positions, chunk=chunk) for c in caches]
            emit(attention=pos, max_len=max_len, chunk=chunk, us=round(graph_time(fn) * 1000 / 28, 2))


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
    for _ in range(3):  # the prompt's share of the time above (eager: ~28 x 75 ops launched from Python)
        dec.reset(); torch.cuda.synchronize(); t = time.perf_counter()
        dec.prefill(prompt); torch.cuda.synchronize()
        prefill.append(time.perf_counter() - t)
    graph, _ = next(iter(dec.graphs.values()))   # the bare graph: replay only (no host work per token)
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
        rows = []
        for e in p.key_averages():
            dt_us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
            if dt_us:
                rows.append((dt_us / 10, e.count / 10, e.key[:110]))
        rows.sort(reverse=True)
        emit(profile=label, kernels_per_step=round(sum(r[1] for r in rows), 1),
             kernel_us_per_step=round(sum(r[0] for r in rows), 1))
        for us, n, name in rows[:15]:
            emit(us_per_step=round(us, 1), n_per_step=n, kernel=name)
    return out, dec


def main():
    torch.manual_seed(0)
    cfg = M.Qwen3Config()
    emit(device=torch.cuda.get_device_name(), torch=torch.__version__)
    best = sweep(cfg)
    emit(best_table={str(k): v for k, v in best.items()}, elapsed=round(time.time() - T0))
    attention(cfg)
    with torch.device("cuda"):
        model = M.Qwen3(cfg).to(torch.bfloat16).eval()
    K.LINEAR_CONFIGS.update(best)
    bench_decoder(model, 288, "Triton step + prefill, PDL, best configs of the sweep", profile=True)
    bench_decoder(model, 4096, "Triton step + prefill, PDL, best configs of the sweep")
    pdl = K.pdl
    K.pdl = lambda t: {"PDL": False}
    bench_decoder(model, 288, "Triton step + prefill, no PDL", profile=True)
    K.pdl = pdl
    # the prefill alone: Triton (Decoder.prefill) against the model's eager forward, 32 and 2,000 tokens
    from generate import last_logits
    for T in (32, 2000):
        dec = Decoder(model, 1, max_len=2048)
        prompt = torch.randint(0, cfg.vocab_size, (1, T), device="cuda")
        for label, fn in (("triton", lambda: dec.prefill(prompt)),
                          ("eager model", lambda: last_logits(model, prompt, dec.caches, 0))):
            times = []
            for _ in range(5):
                dec.reset(); torch.cuda.synchronize(); t = time.perf_counter()
                fn(); torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            emit(prefill=label, tokens=T, ms=round(sorted(times)[2] * 1000, 2))
        dec.reset(); a = dec.prefill(prompt); b = last_logits(model, prompt, dec.caches, 0)
        emit(prefill_agree=T, argmax_equal=bool(a.argmax() == b.argmax()),
             max_rel_err=round(((a - b).abs().max() / b.abs().max()).item(), 4))
    emit(done=round(time.time() - T0))


if __name__ == "__main__":
    main()
