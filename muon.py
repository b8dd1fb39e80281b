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

Speed: same-shape matrices (q, o, k/v, gate/up, down of all layers) are stacked and orthogonalised with
batched matmuls -- a handful of launches per step instead of thousands. Around the matmuls the step is memory
traffic over fp32 state, so it makes no fp32 temporaries: the update goes straight into the bf16 stack, the bf16
result is added into the fp32 weights, and AdamW runs as torch's fused kernel (bench/optimizer_step.py times it).

Distributed: gradients are already all-reduced by DDP, so every rank updates every momentum buffer (cheap,
elementwise) and keeps a full, identical optimizer state -- a checkpoint from rank 0 is complete and can resume
on any number of GPUs. Only the Newton-Schulz work (the expensive part) is split: each rank orthogonalises a
1/world_size slice of every same-shape stack and the bf16 results are all-gathered, so every rank applies
bit-identical updates.

NorMuon (Li et al. 2025, nanochat's choice; `normuon` = its beta2, 0 = off): after Newton-Schulz each row (an output
neuron) of the update is divided by the root of an EMA of its mean square, then the whole update is scaled back to
its norm before: orthogonalisation evens out directions, this evens out neurons. Off by default until time-to-loss
says it wins (issue 34).

Schedule: wsd_lr_factor, the warmup-stable-decay multiplier train.py applies to every group's lr each step.
"""
import math

import torch
import torch.distributed as dist

NS_COEFFS = (3.4445, -4.7750, 2.0315)
# Polar Express (Amsel et al. 2025, arXiv 2505.16932; nanochat's): a quintic of its own for each of 5 steps, each the
# minimax-best for the singular values the step before leaves, computed for X / (1.02 ||X||_F) (a safety factor of
# 2e-2, a cushion of 2): singular values end nearer 1 than with the one fixed quintic above, in as many matmuls
POLAR_EXPRESS = ((8.156554524902461, -22.48329292557795, 15.878769915207462),
                 (4.042929935166739, -2.808917465908714, 0.5000178451051316),
                 (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
                 (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
                 (2.3465413258596377, -1.7097828382687081, 0.42323551169305323))
NS_METHODS = {"jordan": (NS_COEFFS, 1.0), "polar_express": (POLAR_EXPRESS, 1.02)}   # `ns`: (coefficients, safety)


def newton_schulz(G, steps=5, coeffs=NS_COEFFS, eps=1e-7, safety=1.0):
    """Approximately orthogonalise G (see the module docstring): one matrix [rows, cols] or a stack
    [n, rows, cols] of same-shape matrices (one batched matmul per step instead of n small ones). Returns bf16.
    coeffs: one (a, b, c) for every step, or a sequence of them, one a step (past its end, the last again)."""
    per_step = [coeffs] * steps if isinstance(coeffs[0], (int, float)) else [coeffs[min(i, len(coeffs) - 1)]
                                                                               for i in range(steps)]
    addmm = torch.baddbmm if G.ndim == 3 else torch.addmm
    X = G.bfloat16()
    transposed = G.size(-2) > G.size(-1)
    if transposed:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * safety).clamp(min=eps)
    for a, b, c in per_step:
        A = X @ X.mT
        B = addmm(A, A, A, beta=b, alpha=c)  # b*A + c*A@A
        X = addmm(X, B, X, beta=a)           # a*X + B@X
    return X.mT if transposed else X


def muon_lr_scale(shape, rule):
    rows, cols = shape[0], shape[1]
    if rule == "original":
        return math.sqrt(max(1.0, rows / cols))
    if rule == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    raise ValueError(f"unknown Muon lr rule {rule!r} (original | match_rms_adamw)")


class MuonAdamW(torch.optim.Optimizer):
    """param_groups each carry `use_muon` (bool). Muon groups: lr, momentum, nesterov, weight_decay, ns_steps,
    lr_rule, ns (a NS_METHODS name), normuon (NorMuon's beta2; 0 = plain Muon). AdamW groups: lr, betas, eps,
    weight_decay. `initial_lr` is kept for the schedule."""

    def __init__(self, param_groups):
        defaults = dict(lr=0.02, weight_decay=0.0, use_muon=False, momentum=0.95, nesterov=True, ns_steps=5,
                        lr_rule="original", ns="jordan", normuon=0.0, betas=(0.9, 0.95), eps=1e-8)
        super().__init__(param_groups, defaults)
        for g in self.param_groups:
            g.setdefault("initial_lr", g["lr"])
            if g["use_muon"]:
                muon_lr_scale((1, 1), g["lr_rule"])  # validate early
                if g["ns"] not in NS_METHODS:
                    raise ValueError(f"unknown Newton-Schulz method {g['ns']!r} ({' | '.join(NS_METHODS)})")
                for p in g["params"]:
                    if p.ndim != 2:
                        raise ValueError(f"Muon needs 2-D parameters, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            (self._muon_group if g["use_muon"] else self._adamw_group)(g)

    def _muon_group(self, g):
        params = [p for p in g["params"] if p.grad is not None]
        if not params:
            return
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        rank = dist.get_rank() if world > 1 else 0
        for p in params:
            if "momentum_buffer" not in self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(p)
        # momentum on every rank (keeps the state complete and identical everywhere); buf = m*buf + (1-m)*grad
        bufs, grads = [self.state[p]["momentum_buffer"] for p in params], [p.grad for p in params]
        torch._foreach_lerp_(bufs, grads, 1 - g["momentum"])
        by_shape = {}
        for i, p in enumerate(params):
            by_shape.setdefault(tuple(p.shape), []).append(i)
        for shape, idx in by_shape.items():
            # Newton-Schulz on this rank's contiguous slice of the same-shape stack, then all-gather. The update
            # (Nesterov: grad + m*(buf - grad)) is written straight into the bf16 stack Newton-Schulz reads: no fp32
            # copy of it is made, which is most of the step's memory traffic besides the matmuls.
            per = math.ceil(len(idx) / world)
            mine = idx[rank * per:(rank + 1) * per]
            local = torch.empty((per,) + shape, dtype=torch.bfloat16, device=params[0].device)
            local[len(mine):].zero_()  # padding rows of the all-gather
            for slot, i in zip(local.unbind(0), mine):
                if g["nesterov"]:
                    torch.lerp(grads[i], bufs[i], g["momentum"], out=slot)
                else:
                    slot.copy_(bufs[i])
            coeffs, safety = NS_METHODS[g["ns"]]
            orth = newton_schulz(local[:len(mine)], g["ns_steps"], coeffs, safety=safety) if mine else local[:0]
            if world > 1:
                local[:len(mine)] = orth
                gathered = [torch.empty_like(local) for _ in range(world)]
                dist.all_gather(gathered, local)
                orth = torch.cat(gathered)[:len(idx)]
            ps = [params[i] for i in idx]
            if g["normuon"]:
                orth = self._normuon(orth, ps, g["normuon"])
            torch._foreach_mul_(ps, 1 - g["lr"] * g["weight_decay"])
            # fp32 += bf16: the sum is taken in fp32, without an fp32 copy of the update
            torch._foreach_add_(ps, list(orth.unbind(0)), alpha=-g["lr"] * muon_lr_scale(shape, g["lr_rule"]))

    def _normuon(self, orth, ps, beta2):
        """NorMuon's row scaling of the orthogonalised stack [n, rows, cols] (bf16), its row moments in each matrix's
        state. The norms before and after come from the rows' mean squares: no fp32 copy of the stack is made."""
        row_sq = torch.linalg.vector_norm(orth, dim=-1, dtype=torch.float32).square_() / orth.shape[-1]   # [n, rows]
        moments = torch.stack([self.state[p].setdefault("row_moment", torch.zeros_like(r)) for p, r in zip(ps, row_sq)])
        moments.lerp_(row_sq, 1 - beta2)
        torch._foreach_copy_([self.state[p]["row_moment"] for p in ps], list(moments.unbind(0)))
        scale = 1 / (moments.sqrt() + 1e-10)
        after = (row_sq * scale.square()).sum(-1, keepdim=True).clamp_min(1e-30)   # |update|^2 / cols after
        scale *= (row_sq.sum(-1, keepdim=True) / after).sqrt()
        return orth * scale.unsqueeze(-1).to(orth.dtype)

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
        # the kernel reads each parameter's step count from a tensor on its device (a fill there: no host-device
        # copy), one per distinct count: a parameter that went without a gradient for a while has its own
        counts = [self.state[p]["step"] for p in params]
        steps = {n: torch.full((), float(n), device=params[0].device) for n in set(counts)}
        step = [steps[n] for n in counts]
        b1, b2 = g["betas"]
        torch._fused_adamw_(params, [p.grad for p in params], [self.state[p]["exp_avg"] for p in params],
                            [self.state[p]["exp_avg_sq"] for p in params], [], step, lr=g["lr"],
                            beta1=b1, beta2=b2, weight_decay=g["weight_decay"], eps=g["eps"], amsgrad=False,
                            maximize=False)


def build_optimizer(model, muon_lr=0.02, adamw_lr=3e-4, betas=(0.9, 0.95), weight_decay=0.01, momentum=0.95,
                    lr_rule="original", normuon=0.0, ns="jordan"):
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
        dict(params=muon, use_muon=True, lr=muon_lr, momentum=momentum, weight_decay=weight_decay, lr_rule=lr_rule,
             normuon=normuon, ns=ns),
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
