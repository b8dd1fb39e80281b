"""
Exploration (issue 15): what do the launch gaps of one training micro-step cost? One micro-step (micro x 2048,
fwd + bwd into fp32 .grad, bf16 autocast, compiled blocks, liger's loss) run as today, and the same with the body
(embedding, 28 blocks, final norm) captured by torch.cuda.make_graphed_callables: its forward and its backward
each replayed as one CUDA graph, the loss (liger: not capturable, it reads a value back) eager between them.
Prints JSON lines; median of 10 after warm-up.  python bench/graph_probe.py [micro]
"""
import json, os, sys, time
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch
from model import Qwen3, Qwen3Config, liger_cross_entropy


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
    amp = lambda: torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)

    def micro_step(body):
        """fwd + bwd of one micro-step; body(idx) -> hidden states (the model's own, or the graphed one)."""
        with amp():
            loss = liger_cross_entropy(body(inp), model.lm_head_weight, tgt)
        (loss / 8).backward()
        return loss.detach()

    def measure(body):
        """(median seconds, loss, a gradient) of micro_step(body) after warm-up."""
        for _ in range(3):
            micro_step(body)
        dt = timed(lambda: micro_step(body))
        model.zero_grad(set_to_none=True)
        loss = micro_step(body).item()
        return dt, loss, model.model.layers[3].mlp.down_proj.weight.grad.clone()

    dt, ref, ref_grad = measure(model.hidden_states)
    emit(variant="eager (today)", micro=micro, ms=round(dt * 1000, 2), tok_per_s=round(micro * seq / dt))

    class Body(torch.nn.Module):  # a Module, so that its parameters' gradients come out of the graph
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, idx):
            return self.m.hidden_states(idx)
    try:
        with amp():
            graphed = torch.cuda.make_graphed_callables(Body(model), (inp,), num_warmup_iters=3)
    except Exception as e:  # noqa: BLE001
        return emit(variant="graphed body", error=f"{type(e).__name__}: {str(e)[:400]}")
    dtg, got, grad = measure(graphed)
    emit(variant="graphed body + eager liger loss", micro=micro, ms=round(dtg * 1000, 2),
         tok_per_s=round(micro * seq / dtg), gain=round(dt / dtg, 4), loss_eager=ref, loss_graphed=got,
         grad_max_rel_diff=float(((grad - ref_grad).abs().max() / ref_grad.abs().max()).item()),
         mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 1))

if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 12)
