"""
Exploration (device call 2026-11-29 #5, issue 15): what do the launch gaps of one training micro-step cost? One
micro-step (12 x 2048, fwd + bwd into fp32 .grad, bf16 autocast, compiled blocks) run as today, and the same
micro-step captured once in a CUDA graph and replayed. Prints JSON lines; median of 10 after warm-up.
"""
import json, os, sys, time
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch
from model import Qwen3, Qwen3Config


def emit(**kw):
    print(json.dumps(kw), flush=True)


def timed(fn, n=10):
    ts = []
    for _ in range(n):
        torch.cuda.synchronize(); t = time.perf_counter(); fn(); torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[n // 2]


def main(micro=12, seq=2048):
    torch.manual_seed(0)
    model = Qwen3(Qwen3Config(), compile=True, loss="liger").cuda()
    x = torch.randint(0, 151936, (micro, seq + 1), device="cuda")
    inp, tgt = x[:, :-1].contiguous(), x[:, 1:].contiguous()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)

    def micro_step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = model(inp, tgt)
        (loss / 8).backward()
        return loss.detach()

    for loss_kind in ("liger", "chunked"):
        model.loss = loss_kind
        for _ in range(3):
            micro_step()
        dt = timed(micro_step)
        emit(variant=f"eager loop, {loss_kind}", ms=round(dt * 1000, 2), tok_per_s=round(micro * seq / dt))
        try:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):
                    micro_step()
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                out = micro_step()
            dtg = timed(g.replay)
            ref = micro_step().item()
            g.replay()
            emit(variant=f"CUDA graph, {loss_kind}", ms=round(dtg * 1000, 2), tok_per_s=round(micro * seq / dtg),
                 gain=round(dt / dtg, 4), loss_eager=ref, loss_graph=out.item(),
                 mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 1))
            del g
        except Exception as e:  # noqa: BLE001
            emit(variant=f"CUDA graph, {loss_kind}", error=f"{type(e).__name__}: {str(e)[:400]}")
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
