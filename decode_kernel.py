"""
The decode step's attention as one hand-written Triton kernel (generate.Decoder uses it on CUDA).

Why: at batch 1 a decode step is latency-bound, not bandwidth-bound. Compiled by inductor, the part of a layer
between the q/k/v projections and the o_proj -- QK-norm, RoPE, writing the new key and value into the cache,
QK^T, the masked softmax, PV -- is about six small kernels at ~4 us each, whatever their (tiny) data
(BENCHMARKS.md logs 12-13). Here it is one kernel: each program takes one kv head of one row, normalises and rotates
its new key and the query heads that share it, writes the key and value into the cache at the row's position, and
runs flash-decoding over the cached keys (online softmax in float32). A long cache is split over several programs
per head ("split-KV", so that one query over 4k keys still spreads over the GPU), whose partial results a second,
small kernel combines. Measured on an H200 (log 14): the replayed 0.6B step 1.43 -> 1.24 ms with a 288-key cache,
1.64 -> 1.32 ms with 4,096 keys (it reads only the keys before each row's position, not the whole buffer).

What it computes is model.Attention's static-cache path (QK-norm, apply_rope, KVCache.update,
_static_cache_attention) for one new token per row: tests/test_generate.py runs both, the kernel under Triton's CPU
interpreter, and compares them. Needs triton (installed with liger-kernel); `available()` says whether it can run.
"""
import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only install: generate.Decoder keeps the compiled PyTorch path
    triton = None


def available(config):
    """Whether the kernel serves this model: triton importable, and a power-of-two head_dim (Triton's blocks)."""
    d = config.head_dim
    return triton is not None and d >= 16 and d & (d - 1) == 0


if triton is not None:
    @triton.jit
    def _norm_rope(ptr, rows, row_mask, w_ptr, cos, sin, EPS: tl.constexpr, D: tl.constexpr):
        """Rows [R, D] of a projection's output -> RMSNorm (float32, rounded to the input dtype, times the gain,
        rounded again: model.RMSNorm) -> RoPE with the half-split pairs (i, i + D/2) (model.apply_rope), in float32."""
        d = tl.arange(0, D)
        rot = (d + D // 2) % D      # the partner of each element: x[i + D/2] for the first half, x[i - D/2] after
        sign = tl.where(d < D // 2, -1.0, 1.0)
        x = tl.load(ptr + rows[:, None] * D + d[None, :], mask=row_mask[:, None], other=0.0)
        x_rot = tl.load(ptr + rows[:, None] * D + rot[None, :], mask=row_mask[:, None], other=0.0)
        r = tl.rsqrt(tl.sum(x.to(tl.float32) * x.to(tl.float32), axis=1) / D + EPS)[:, None]
        x = (x.to(tl.float32) * r).to(x.dtype) * tl.load(w_ptr + d)[None, :]
        x_rot = (x_rot.to(tl.float32) * r).to(x_rot.dtype) * tl.load(w_ptr + rot)[None, :]
        cos, sin = cos.to(x.dtype).to(tl.float32), sin.to(x.dtype).to(tl.float32)  # apply_rope: tables in x's dtype
        return (x.to(tl.float32) * cos[None, :] + sign[None, :] * x_rot.to(tl.float32) * sin[None, :]).to(x.dtype)

    @triton.jit
    def _decode_attention(q_ptr, k_ptr, v_ptr, q_row_stride, k_row_stride, v_row_stride, qn_w, kn_w, inv_freq_ptr,
                          k_cache, v_cache, pos_ptr, out_ptr, part_m, part_l, part_acc, max_len,
                          EPS: tl.constexpr, SCALE: tl.constexpr, N_KV: tl.constexpr, REP: tl.constexpr,
                          D: tl.constexpr, QROWS: tl.constexpr,
                          CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, SPLITS: tl.constexpr):
        b, g, split = tl.program_id(0) // N_KV, tl.program_id(0) % N_KV, tl.program_id(1)
        d = tl.arange(0, D)
        p = tl.load(pos_ptr + b)    # this row's new token's position
        angle = p.to(tl.float32) * tl.load(inv_freq_ptr + d % (D // 2))  # model.rope_cos_sin's table row, in float32
        cos, sin = tl.cos(angle), tl.sin(angle)

        # the new key and value of kv head g; the program whose key range holds p writes them into the cache
        k_new = _norm_rope(k_ptr + b * k_row_stride, g + tl.arange(0, 1), tl.arange(0, 1) < 1, kn_w, cos, sin, EPS, D)
        v_new = tl.load(v_ptr + b * v_row_stride + g * D + d)
        lo = split * CHUNK
        owner = (p >= lo) & (p < lo + CHUNK)
        cache_row = (b * N_KV + g) * max_len
        write = tl.where(owner, d < D, False)  # per element: Triton's CPU interpreter rejects a scalar mask
        tl.store(k_cache + (cache_row + p) * D + d[None, :], k_new, mask=write[None, :])
        tl.store(v_cache + (cache_row + p) * D + d, v_new, mask=write)

        # the REP query heads that share kv head g (rows padded to QROWS for tl.dot), normalised and rotated
        r = tl.arange(0, QROWS)
        q = _norm_rope(q_ptr + b * q_row_stride, g * REP + r, r < REP, qn_w, cos, sin, EPS, D)

        # online softmax, started from the new token (in this split's range only) ...
        s_new = tl.sum(q.to(tl.float32) * k_new.to(tl.float32), axis=1).to(q.dtype).to(tl.float32) * SCALE
        m = tl.where(owner, s_new, float("-inf"))
        l = tl.where(owner, 1.0, 0.0) + tl.zeros([QROWS], dtype=tl.float32)
        acc = tl.where(owner, 1.0, 0.0) * v_new.to(tl.float32)[None, :] + tl.zeros([QROWS, D], dtype=tl.float32)
        # ... then over the cached keys before p in this split's range
        hi = tl.minimum(lo + CHUNK, p)
        for start in range(lo, hi, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            keys = tl.load(k_cache + (cache_row + n[:, None]) * D + d[None, :], mask=n[:, None] < hi, other=0.0)
            vals = tl.load(v_cache + (cache_row + n[:, None]) * D + d[None, :], mask=n[:, None] < hi, other=0.0)
            s = tl.dot(q, tl.trans(keys)).to(keys.dtype).to(tl.float32) * SCALE  # QK^T rounded as the matmul's
            s = tl.where(n[None, :] < hi, s, float("-inf"))
            m_next = tl.maximum(m, tl.max(s, axis=1))
            alpha = tl.exp(m - m_next)
            w = tl.exp(s - m_next[:, None])
            l = l * alpha + tl.sum(w, axis=1)
            acc = acc * alpha[:, None] + tl.dot(w.to(vals.dtype), vals).to(tl.float32)
            m = m_next

        out_rows = b * N_KV * REP + g * REP + r   # (row b, query head g*REP + r)
        if SPLITS == 1:
            tl.store(out_ptr + out_rows[:, None] * D + d[None, :], (acc / l[:, None]).to(out_ptr.dtype.element_ty),
                     mask=(r < REP)[:, None])
        else:
            tl.store(part_m + out_rows * SPLITS + split, m, mask=r < REP)
            tl.store(part_l + out_rows * SPLITS + split, l, mask=r < REP)
            tl.store(part_acc + (out_rows[:, None] * SPLITS + split) * D + d[None, :], acc, mask=(r < REP)[:, None])

    @triton.jit
    def _combine_splits(part_m, part_l, part_acc, out_ptr, D: tl.constexpr, SPLITS: tl.constexpr,
                        SPLITS_P2: tl.constexpr):
        """One (row, query head): the splits' partial softmaxes rescaled to their common maximum and summed."""
        row = tl.program_id(0)
        s, d = tl.arange(0, SPLITS_P2), tl.arange(0, D)
        m = tl.load(part_m + row * SPLITS + s, mask=s < SPLITS, other=float("-inf"))
        l = tl.load(part_l + row * SPLITS + s, mask=s < SPLITS, other=0.0)
        acc = tl.load(part_acc + (row * SPLITS + s[:, None]) * D + d[None, :], mask=(s < SPLITS)[:, None], other=0.0)
        w = tl.exp(m - tl.max(m, axis=0))   # a split with no keys has m = -inf: weight 0
        out = tl.sum(acc * w[:, None], axis=0) / tl.sum(l * w, axis=0)
        tl.store(out_ptr + row * D + d, out.to(out_ptr.dtype.element_ty))


    @triton.jit
    def _dot(x, w, ROWS: tl.constexpr):
        """x [ROWS, BLOCK_K] . w [BLOCK_N, BLOCK_K]^T in float32. One row: a multiply and a sum (no tensor-core
        tile to pad to); more rows: tl.dot (ROWS >= 16)."""
        if ROWS == 1:
            return tl.sum(x.to(tl.float32) * w.to(tl.float32), axis=1)[None, :]
        else:
            return tl.dot(x, tl.trans(w))

    @triton.jit
    def _matvec(x_ptr, w_ptr, out_ptr, res_ptr, norm_ptr, B, N, K, EPS: tl.constexpr, NORM: tl.constexpr,
                GLU: tl.constexpr, RESIDUAL: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr):
        """out[b, n] = x[b] . w[n] for this program's BLOCK_N outputs and ROWS batch rows, x [B, K] and w [N (2N with
        GLU), K] row-major. NORM: x is first RMSNorm-ed (model.RMSNorm, gain at norm_ptr); each program computes the
        row's statistics itself (the row is a few KB, read from L2), so no kernel has to wait for the whole row.
        GLU: w holds gate rows then up rows, and out = silu(gate) * up (model.MLP). RESIDUAL: out += res[b, n]."""
        n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rows = tl.program_id(1) * ROWS + tl.arange(0, ROWS)
        dtype = out_ptr.dtype.element_ty
        if NORM:
            sq = tl.zeros([ROWS], dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                k = k0 + tl.arange(0, BLOCK_K)
                xk = tl.load(x_ptr + rows[:, None] * K + k[None, :], mask=(rows < B)[:, None] & (k < K)[None, :],
                             other=0.0).to(tl.float32)
                sq += tl.sum(xk * xk, axis=1)
            rstd = tl.rsqrt(sq / K + EPS)
        acc = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
        acc_up = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            xk = tl.load(x_ptr + rows[:, None] * K + k[None, :], mask=(rows < B)[:, None] & (k < K)[None, :], other=0.0)
            if NORM:  # normalise in float32, round to the input dtype, times the gain, round again
                gain = tl.load(norm_ptr + k, mask=k < K, other=0.0).to(tl.float32)
                xk = ((xk.to(tl.float32) * rstd[:, None]).to(dtype).to(tl.float32) * gain[None, :]).to(dtype)
            w_mask = (n < N)[:, None] & (k < K)[None, :]
            acc += _dot(xk, tl.load(w_ptr + n[:, None] * K + k[None, :], mask=w_mask, other=0.0), ROWS)
            if GLU:
                acc_up += _dot(xk, tl.load(w_ptr + (N + n[:, None]) * K + k[None, :], mask=w_mask, other=0.0), ROWS)
        y = acc.to(dtype)   # a matmul's output, rounded as cuBLAS rounds it
        if GLU:  # F.silu(gate) * up, each op rounded to the dtype as PyTorch's are
            g = y.to(tl.float32)
            y = ((g * tl.sigmoid(g)).to(dtype).to(tl.float32) * acc_up.to(dtype).to(tl.float32)).to(dtype)
        out_mask = (rows < B)[:, None] & (n < N)[None, :]
        if RESIDUAL:
            res = tl.load(res_ptr + rows[:, None] * N + n[None, :], mask=out_mask, other=0.0)
            y = (res.to(tl.float32) + y.to(tl.float32)).to(dtype)
        tl.store(out_ptr + rows[:, None] * N + n[None, :], y, mask=out_mask)

def decode_attention(q, k, v, q_norm, k_norm, cache, positions, chunk=None, block_n=32):
    """q [B, 1, n_heads * head_dim], k and v [B, 1, n_kv * head_dim]: the new token's projections (not yet
    normalised or rotated); q_norm / k_norm: the model's QK-norm modules; cache: a generate.KVCache, which also holds
    the RoPE frequencies (`inv_freq`, model.rope_inv_freq: the kernel makes its cos/sin row from them, so inductor
    does not materialise the tables for every layer); positions [B, 1]. Writes the new keys and values into the
    cache and returns the attention output [B, 1, n_heads * head_dim] (the o_proj's input).

    `chunk`: keys per program. By default one program per (row, kv head) while a cache of up to 512 keys keeps
    every program short, else as many splits of >= 256 keys as fill ~128 programs."""
    B, n_kv, max_len, D = cache.k.shape
    rep = q.shape[-1] // (n_kv * D)
    if chunk is None:
        splits = 1 if max_len <= 512 else min(triton.cdiv(128, B * n_kv), triton.cdiv(max_len, 256))
        chunk = triton.cdiv(triton.cdiv(max_len, splits), block_n) * block_n
    splits = triton.cdiv(max_len, chunk)
    out = torch.empty(*q.shape[:-1], n_kv * rep * D, device=q.device, dtype=cache.v.dtype)
    part_m = torch.empty(B * n_kv * rep * splits if splits > 1 else 1, device=q.device, dtype=torch.float32)
    part_l = torch.empty_like(part_m)
    part_acc = torch.empty(part_m.numel() * D if splits > 1 else 1, device=q.device, dtype=torch.float32)
    _decode_attention[(B * n_kv, splits)](
        q, k, v, q.stride(0), k.stride(0), v.stride(0), q_norm.weight, k_norm.weight, cache.inv_freq, cache.k, cache.v,
        positions,
        out, part_m, part_l, part_acc, max_len, EPS=q_norm.eps, SCALE=D ** -0.5, N_KV=n_kv, REP=rep, D=D,
        QROWS=max(16, triton.next_power_of_2(rep)), CHUNK=chunk, BLOCK_N=block_n, SPLITS=splits)
    if splits > 1:
        _combine_splits[(B * n_kv * rep,)](part_m, part_l, part_acc, out, D=D, SPLITS=splits,
                                          SPLITS_P2=triton.next_power_of_2(splits))
    return out


# (BLOCK_N, BLOCK_K, num_warps, num_stages) per (N, K, rows): chosen on an H200 (BENCHMARKS.md log 15);
# bench/decode_probe.py sweeps them. Other shapes take the defaults below.
MATVEC_CONFIGS = {}


def matvec_config(N, K, rows):
    if (N, K, rows) in MATVEC_CONFIGS:
        return MATVEC_CONFIGS[(N, K, rows)]
    return (8, 512, 4, 1) if rows == 1 else (64, 64, 4, 3)


def matvec(x, w, norm=None, residual=None, glu=False):
    """x [B, K] (contiguous) -> x @ w.T [B, N] in x's dtype, with the options of _matvec: `norm` an RMSNorm module
    applied to x first, `glu` (w = gate rows then up rows: silu(gate) * up, N = w's rows / 2), `residual` [B, N]
    added last. The decode step's projections: one batch row reads each weight once, so they are bound by memory,
    and a single kernel per projection (norm and epilogue fused) is what the step is made of."""
    B, K = x.shape
    N = w.shape[0] // 2 if glu else w.shape[0]
    rows = 1 if B == 1 else min(max(16, triton.next_power_of_2(B)), 64)
    block_n, block_k, warps, stages = matvec_config(N, K, rows)
    out = torch.empty(B, N, device=x.device, dtype=x.dtype)
    _matvec[(triton.cdiv(N, block_n), triton.cdiv(B, rows))](
        x, w, out, x if residual is None else residual, x if norm is None else norm.weight, B, N, K,
        EPS=norm.eps if norm is not None else 0.0, NORM=norm is not None, GLU=glu, RESIDUAL=residual is not None,
        ROWS=rows, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages)
    return out


def fused_weights(model):
    """Per layer, the q/k/v weights as one matrix and gate/up as another (a copy, made once: 4 projections a layer,
    read in 4 kernels). A Decoder keeps them, so it sees later changes to the model's weights only if rebuilt."""
    return [(torch.cat([b.self_attn.q_proj.weight, b.self_attn.k_proj.weight, b.self_attn.v_proj.weight]),
             torch.cat([b.mlp.gate_proj.weight, b.mlp.up_proj.weight])) for b in model.model.layers]


def decode_logits(model, caches, tok, input_pos, weights):
    """generate.decode_logits (the token tok [B, 1] at positions input_pos [B, 1] -> float logits [B, vocab], its
    keys and values written into the caches) in 5 kernels a layer -- norm + q/k/v, the attention above, o_proj +
    residual, norm + gate/up + SiLU-mul, down + residual -- and one for the final norm + lm_head. `weights` is
    fused_weights(model). Launched from Python, then captured in a CUDA graph by the Decoder: nothing to compile."""
    cfg = model.config
    q_dim, kv_dim = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    x = model.model.embed_tokens(tok[:, 0])
    for block, cache, (w_qkv, w_gate_up) in zip(model.model.layers, caches, weights):
        att = block.self_attn
        qkv = matvec(x, w_qkv, norm=block.input_layernorm)
        y = decode_attention(qkv[:, :q_dim], qkv[:, q_dim:q_dim + kv_dim], qkv[:, q_dim + kv_dim:], att.q_norm,
                             att.k_norm, cache, input_pos)
        h = matvec(y, att.o_proj.weight, residual=x)
        x = matvec(matvec(h, w_gate_up, norm=block.post_attention_layernorm, glu=True), block.mlp.down_proj.weight,
                   residual=h)
    return matvec(x, model.lm_head_weight, norm=model.model.norm).float()
