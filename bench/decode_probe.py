"""
Exploration (device call 2026-11-29 #5): where the 2.3 ms of one decode step go, and which candidates help.
Prints JSON lines. Variants: attention in the static-cache step as SDPA (today) or explicit math; cache of 288 or
4,096 positions; inductor coordinate-descent tuning; max-autotune. Plus a kernel profile of the replayed graph
and the per-question cost of C-Eval GEN (prefill of ~1,850 tokens + 8 steps).
"""
import json, os, sys, time
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch
import torch.nn.functional as F
import model as M
from generate import Decoder

T0 = time.time()
BUDGET = float(os.environ.get("BUDGET", 420))


def emit(**kw):
    print(json.dumps(kw), flush=True)


ORIG = M.Attention.forward


def math_forward(self, x, cos, sin, cache=None, start=0, mask=None):
    if not torch.is_tensor(start):
        return ORIG(self, x, cos, sin, cache, start, mask)
    B, T, _ = x.shape
    q = self.q_norm(self.q_proj(x).view(B, T, self.n_heads, self.head_dim)).transpose(1, 2)
    k = self.k_norm(self.k_proj(x).view(B, T, self.n_kv, self.head_dim)).transpose(1, 2)
    v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
    q, k = M.apply_rope(q, k, cos, sin)
    k, v = cache.update(start, k, v)
    rep = self.n_heads // self.n_kv
    qg = q.reshape(B, self.n_kv, rep * T, self.head_dim)
    scores = (qg @ k.transpose(-1, -2)).float() * self.head_dim ** -0.5
    visible = (torch.arange(k.shape[2], device=x.device) <= start[:, None]).repeat(rep, 1)
    p = scores.masked_fill(~visible, float("-inf")).softmax(-1).to(v.dtype)
    y = (p @ v).reshape(B, self.n_heads, T, self.head_dim)
    return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


def bench_decoder(model, max_len, label, reps=3, new=256, profile=False):
    prompt = torch.randint(0, 151936, (1, 32), device="cuda")
    dec = Decoder(model, 1, max_len=max_len)
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
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(200):
        graph.replay()
    torch.cuda.synchronize()
    replay_ms = (time.perf_counter() - t) / 200 * 1000
    emit(variant=label, max_len=max_len, tok_per_s=round(new / dt, 1), ms_per_token=round(dt / new * 1000, 3),
         replay_only_ms=round(replay_ms, 3), first_call_s=round(first, 1), elapsed=round(time.time() - T0))
    if profile:
        from torch.profiler import profile as prof_, ProfilerActivity
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


def gen_question_cost(model, max_len=4096, prompt_len=1850):
    """eval.py GEN per question: prefill a long prompt, then 8 steps, then .tolist()."""
    dec = Decoder(model, 1, max_len=max_len)
    x = torch.randint(0, 151936, (1, prompt_len), device="cuda")
    for _ in range(2):
        dec.reset(); dec.generate(x, 8, temperature=0, eos=151643).tolist()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(5):
        dec.reset(); dec.prefill(x)
    torch.cuda.synchronize()
    prefill = (time.perf_counter() - t) / 5
    t = time.perf_counter()
    for _ in range(5):
        dec.reset(); dec.generate(x, 8, temperature=0, eos=151643).tolist()
    torch.cuda.synchronize()
    whole = (time.perf_counter() - t) / 5
    emit(gen_question=True, max_len=max_len, prompt=prompt_len, prefill_ms=round(prefill * 1000, 2),
         prefill_plus_8_ms=round(whole * 1000, 2))


def main():
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = M.Qwen3(M.Qwen3Config()).to(torch.bfloat16).eval()
    emit(device=torch.cuda.get_device_name(), torch=torch.__version__)
    ref, _ = bench_decoder(model, 288, "sdpa (today)", profile=True)
    bench_decoder(model, 4096, "sdpa (today)")
    gen_question_cost(model)
    torch._dynamo.reset()
    M.Attention.forward = math_forward
    out, _ = bench_decoder(model, 288, "math attention", profile=True)
    emit(agree_with_sdpa_of_256=int((out == ref).sum()) - 32)
    bench_decoder(model, 4096, "math attention")
    gen_question_cost(model)
    import torch._inductor.config as ic
    for name, patch in (("math + coordinate_descent_tuning", dict(coordinate_descent_tuning=True)),
                        ("math + max_autotune", dict(max_autotune=True, coordinate_descent_tuning=True))):
        if time.time() - T0 > BUDGET:
            emit(skipped=name)
            continue
        torch._dynamo.reset()
        try:
            with ic.patch(**patch):
                bench_decoder(model, 288, name, profile=True)
                bench_decoder(model, 4096, name)
        except Exception as e:  # noqa: BLE001
            emit(variant=name, error=f"{type(e).__name__}: {str(e)[:300]}")
    emit(done=round(time.time() - T0))


if __name__ == "__main__":
    main()
