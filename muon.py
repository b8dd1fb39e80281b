"""
Muon for the hidden matrices, AdamW for everything else, in one optimizer object.

Muon (Keller Jordan, 2024) = SGD with Nesterov momentum, where each 2-D update is replaced by the nearest
semi-orthogonal matrix before it is applied. For an update G = U S V^T (SVD), the "orthogonalised" update is
U V^T: every direction the gradient proposes moves at the same rate, so the rare-but-important directions
(small singular values) are not drowned out by the dominant ones. An SVD per step would be far too slow; the
Newton-Schulz iteration gets there with matmuls only:

    X_0 = G / ||G||_F                    (all singular values now <= 1)
    X_{k+1} = a X + b (X X^T) X + c (X X^T)^2 X      applied 5 times

Each step maps every singular value s to p(s) = a s + b s^3 + c s^5 and leaves U, V untouched. With the quintic
coefficients (a, b, c) = (3.4445, -4.7750, 2.0315) p has a steep slope at 0, so 5 steps push all singular values
from (0, 1] into roughly [0.7, 1.2] -- not exactly 1, which empirically does not hurt. It is run in bf16 because
it is matmul-bound and insensitive to precision. The matrix is transposed so X X^T is the smaller Gram matrix.

Learning-rate scaling by shape: "original" multiplies lr by sqrt(max(1, rows/cols)) (Keller's rule: tall matrices
get larger steps so the per-element RMS of the update is shape-independent); "match_rms_adamw" uses
0.2 * sqrt(max(rows, cols)) (Moonlight), making the update RMS match AdamW's so AdamW's lr and weight decay carry
over. Weight decay is decoupled: p <- p * (1 - lr * wd), with the unscaled lr (as torch.optim.Muon).

Speed: same-shape matrices (q/o, k/v, gate/up, down of all layers) are stacked and orthogonalised with
batched matmuls -- a handful of launches per step instead of thousands. Around the matmuls the step is memory
traffic over fp32 state, so it makes no fp32 temporaries: the update goes straight into the bf16 stack, the bf16
result is added into the fp32 weights, and AdamW runs as torch's fused kernel (bench/optimizer_step.py times it).

Distributed: gradients are already all-reduced by DDP, so every rank updates every momentum buffer (cheap,
elementwise) and keeps a full, identical optimizer state -- a checkpoint from rank 0 is complete and can resume
on any number of GPUs. Only the Newton-Schulz work (the expensive part) is split: each rank orthogonalises a
1/world_size slice of every same-shape stack and the bf16 results are all-gathered, so every rank applies
bit-identical updates.

Schedule: wsd_lr_factor, the warmup-stable-decay multiplier train.py applies to every group's lr each step.
"""
import math

import torch
import torch.distributed as dist

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only install: Newton-Schulz uses torch's matmuls throughout
    triton = None

NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(G, steps=5, coeffs=NS_COEFFS, eps=1e-7, dtype=torch.bfloat16, kernel=None):
    """Approximately orthogonalise G (see the module docstring): one matrix [rows, cols] or a stack
    [n, rows, cols] of same-shape matrices (one batched matmul per step instead of n small ones). Returns `dtype`.
    The two symmetric products (X X^T, and A A with A symmetric) go to `gram` -- the Triton kernel by default on
    CUDA, which computes only one triangle -- and the third, B X, to torch's matmul."""
    a, b, c = coeffs
    if kernel is None:
        kernel = triton is not None and G.is_cuda
    addmm = torch.baddbmm if G.ndim == 3 else torch.addmm
    X = G.to(dtype)
    transposed = G.size(-2) > G.size(-1)
    if transposed:
        X = X.mT
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        A = gram(X, kernel=kernel)
        B = gram(A, alpha=c, C=A, beta=b, kernel=kernel)  # b*A + c*A@A (A = A^T)
        X = addmm(X, B, X, beta=a)                        # a*X + B@X
    return X.mT if transposed else X


def gram(X, alpha=1.0, C=None, beta=0.0, kernel=False):
    """alpha * X @ X^T + beta * C for X [..., m, k] and a symmetric C [..., m, m]. The result is symmetric, so the
    kernel computes the blocks on and above the diagonal and writes each one twice (as itself and mirrored): half
    the FLOPs of a matmul. Newton-Schulz spends two of its three matmuls here."""
    if not kernel:
        return X @ X.mT if C is None else torch.baddbmm(C, X, X.mT, beta=beta, alpha=alpha) if X.ndim == 3 \
            else torch.addmm(C, X, X.mT, beta=beta, alpha=alpha)
    X3 = X if X.ndim == 3 else X[None]
    n, m, k = X3.shape
    out = torch.empty((n, m, m), device=X.device, dtype=X.dtype)
    C3 = out if C is None else (C if C.ndim == 3 else C[None])
    block_m, block_k, warps, stages = GRAM_CONFIG
    grid = (triton.cdiv(m, block_m), triton.cdiv(m, block_m), n)
    _gram_kernel[grid](X3, C3, out, m, k, *X3.stride(), *C3.stride(), *out.stride(), alpha, beta,
                       HAS_C=C is not None, EVEN=m % block_m == 0 and k % block_k == 0, BLOCK_M=block_m,
                       BLOCK_K=block_k, num_warps=warps, num_stages=stages)
    return out if X.ndim == 3 else out[0]


GRAM_CONFIG = (128, 64, 8, 4)  # block rows (= columns), block K, warps, pipeline stages

if triton is not None:
    @triton.jit
    def _gram_kernel(X, C, Out, M, K, sxb, sxm, sxk, scb, scm, scn, sob, som, son, alpha, beta,
                     HAS_C: tl.constexpr, EVEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
        i, j, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        if j < i:  # below the diagonal: the mirror of block (j, i)
            return
        rows = i * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = j * BLOCK_M + tl.arange(0, BLOCK_M)
        ks = tl.arange(0, BLOCK_K)
        x_rows = X + b * sxb + rows[:, None] * sxm + ks[None, :] * sxk
        x_cols = X + b * sxb + cols[:, None] * sxm + ks[None, :] * sxk
        acc = tl.zeros((BLOCK_M, BLOCK_M), dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            if EVEN:
                xr, xc = tl.load(x_rows), tl.load(x_cols)
            else:
                in_k = ks[None, :] + k < K
                xr = tl.load(x_rows, mask=(rows[:, None] < M) & in_k, other=0.0)
                xc = tl.load(x_cols, mask=(cols[:, None] < M) & in_k, other=0.0)
            acc = tl.dot(xr, tl.trans(xc), acc)
            x_rows += BLOCK_K * sxk
            x_cols += BLOCK_K * sxk
        acc = acc * alpha
        inside = (rows[:, None] < M) & (cols[None, :] < M)
        if HAS_C:
            acc += beta * tl.load(C + b * scb + rows[:, None] * scm + cols[None, :] * scn, mask=inside,
                                  other=0.0).to(tl.float32)
        out = acc.to(Out.dtype.element_ty)
        # on and above the diagonal as computed, strictly below as the mirror: every element written once, and the
        # result exactly symmetric
        tl.store(Out + b * sob + rows[:, None] * som + cols[None, :] * son, out,
                 mask=inside & (rows[:, None] <= cols[None, :]))
        tl.store(Out + b * sob + cols[None, :] * som + rows[:, None] * son, out,
                 mask=inside & (rows[:, None] < cols[None, :]))


def muon_lr_scale(shape, rule):
    rows, cols = shape[0], shape[1]
    if rule == "original":
        return math.sqrt(max(1.0, rows / cols))
    if rule == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    raise ValueError(f"unknown Muon lr rule {rule!r} (original | match_rms_adamw)")


class MuonAdamW(torch.optim.Optimizer):
    """param_groups each carry `use_muon` (bool). Muon groups: lr, momentum, nesterov, weight_decay, ns_steps,
    lr_rule. AdamW groups: lr, betas, eps, weight_decay. `initial_lr` is kept for the schedule."""

    def __init__(self, param_groups, overlap=True):
        defaults = dict(lr=0.02, weight_decay=0.0, use_muon=False, momentum=0.95, nesterov=True, ns_steps=5,
                        lr_rule="original", betas=(0.9, 0.95), eps=1e-8)
        super().__init__(param_groups, defaults)
        self.overlap = overlap  # on CUDA: the memory traffic on a second stream, beside the matmuls (step's docstring)
        for g in self.param_groups:
            g.setdefault("initial_lr", g["lr"])
            if g["use_muon"]:
                muon_lr_scale((1, 1), g["lr_rule"])  # validate early
                for p in g["params"]:
                    if p.ndim != 2:
                        raise ValueError(f"Muon needs 2-D parameters, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self):
        """On CUDA two streams: Newton-Schulz's matmuls on the current one and, beside them on a second stream,
        everything else, which is memory traffic (the momentum, the stacks' inputs, AdamW, the parameter updates),
        ordered against the matmuls by events. The current stream waits for the second at the end, so to whatever
        comes next the step is one unit."""
        first = next((p for g in self.param_groups for p in g["params"]), None)
        side = torch.cuda.Stream(first.device) if self.overlap and first is not None and first.is_cuda else None
        muon = [self._muon_inputs(g, side) for g in self.param_groups if g["use_muon"]]
        with torch.cuda.stream(side):  # None (CPU): no-op
            for g in self.param_groups:
                if not g["use_muon"]:
                    self._adamw_group(g)
        for work in muon:
            self._muon_updates(side, *work)
        if side is not None:
            torch.cuda.current_stream(first.device).wait_stream(side)

    def _muon_inputs(self, g, side):
        """Momentum, and this rank's slice of each same-shape stack filled with the update Newton-Schulz reads
        (Nesterov: grad + m*(buf - grad)), written straight into the bf16 stack: no fp32 copy of it is made."""
        params = [p for p in g["params"] if p.grad is not None]
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        rank = dist.get_rank() if world > 1 else 0
        for p in params:
            if "momentum_buffer" not in self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(p)
        bufs, grads = [self.state[p]["momentum_buffer"] for p in params], [p.grad for p in params]
        by_shape = {}
        for i, p in enumerate(params):
            by_shape.setdefault(tuple(p.shape), []).append(i)
        stacks = {}
        for shape, idx in by_shape.items():
            per = math.ceil(len(idx) / world)
            stacks[shape] = (torch.empty((per,) + shape, dtype=torch.bfloat16, device=params[0].device),
                             idx[rank * per:(rank + 1) * per], None)
        if side is not None:
            side.wait_stream(torch.cuda.current_stream(side.device))  # the gradients, a first step's state, the stacks
        with torch.cuda.stream(side):
            # momentum on every rank (keeps the state complete and identical everywhere); buf = m*buf + (1-m)*grad
            torch._foreach_lerp_(bufs, grads, 1 - g["momentum"])
            for shape, (local, mine, _) in stacks.items():
                local[len(mine):].zero_()  # padding rows of the all-gather
                for slot, i in zip(local.unbind(0), mine):
                    if g["nesterov"]:
                        torch.lerp(grads[i], bufs[i], g["momentum"], out=slot)
                    else:
                        slot.copy_(bufs[i])
                stacks[shape] = (local, mine, side.record_event() if side is not None else None)
        return g, params, by_shape, stacks, world

    def _muon_updates(self, side, g, params, by_shape, stacks, world):
        """Newton-Schulz on each stack (this stream), the all-gather, and the parameter updates (the second)."""
        for shape, idx in by_shape.items():
            local, mine, filled = stacks[shape]
            main = torch.cuda.current_stream(local.device) if side is not None else None
            if side is not None:
                main.wait_event(filled)
            orth = newton_schulz(local[:len(mine)], g["ns_steps"]) if mine else local[:0]
            if world > 1:
                local[:len(mine)] = orth
                gathered = [torch.empty_like(local) for _ in range(world)]
                dist.all_gather(gathered, local)
                orth = torch.cat(gathered)[:len(idx)]
            if side is not None:
                orth.record_stream(side)  # read there after this loop has moved on: not to be reused before
                side.wait_stream(main)
            with torch.cuda.stream(side):
                ps = [params[i] for i in idx]
                torch._foreach_mul_(ps, 1 - g["lr"] * g["weight_decay"])
                # fp32 += bf16: the sum is taken in fp32, without an fp32 copy of the update
                torch._foreach_add_(ps, list(orth.unbind(0)), alpha=-g["lr"] * muon_lr_scale(shape, g["lr_rule"]))

    def _adamw_group(self, g):
        """torch.optim.AdamW's arithmetic (decoupled decay, bias-corrected moments) in its fused kernel: one pass
        over parameter, gradient and both moments, where the foreach ops made eight (and a full-size temporary)."""
        params = [p for p in g["params"] if p.grad is not None]
        if not params:
            return
        for p in params:
            st = self.state[p]
            if "step" not in st:
                st["step"] = 0  # a Python int: no device sync to read it
                st["exp_avg"] = torch.zeros_like(p)
                st["exp_avg_sq"] = torch.zeros_like(p)
            st["step"] += 1
        # the kernel reads the step count from a tensor on the parameters' device (a fill there: no host-device copy)
        step = torch.full((), float(self.state[params[0]]["step"]), device=params[0].device)
        b1, b2 = g["betas"]
        torch._fused_adamw_(params, [p.grad for p in params], [self.state[p]["exp_avg"] for p in params],
                            [self.state[p]["exp_avg_sq"] for p in params], [], [step] * len(params), lr=g["lr"],
                            beta1=b1, beta2=b2, weight_decay=g["weight_decay"], eps=g["eps"], amsgrad=False,
                            maximize=False)


def build_optimizer(model, muon_lr=0.02, adamw_lr=3e-4, betas=(0.9, 0.95), weight_decay=0.01, momentum=0.95,
                    lr_rule="original"):
    """Muon for the 2-D matrices inside the transformer blocks; AdamW for the embedding / lm_head (a lookup
    table and a classifier: orthogonalising them is wrong) and for the norm gains (1-D). No weight decay on
    norm gains."""
    muon, embed, gains = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim == 2 and ".layers." in f".{name}":
            muon.append(p)
        elif p.ndim == 2:
            embed.append(p)
        else:
            gains.append(p)
    return MuonAdamW([
        dict(params=muon, use_muon=True, lr=muon_lr, momentum=momentum, weight_decay=weight_decay, lr_rule=lr_rule),
        dict(params=embed, use_muon=False, lr=adamw_lr, betas=betas, weight_decay=weight_decay),
        dict(params=gains, use_muon=False, lr=adamw_lr, betas=betas, weight_decay=0.0),
    ])


def wsd_lr_factor(step, max_steps, warmup_steps, decay_steps, min_lr_frac=0.0):
    """Warmup-stable-decay: 0 -> 1 over warmup_steps, 1 until max_steps - decay_steps, then linear to min_lr_frac."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_start = max_steps - decay_steps
    if step < decay_start:
        return 1.0
    return 1.0 - (1.0 - min_lr_frac) * min(1.0, (step - decay_start + 1) / max(1, decay_steps))
