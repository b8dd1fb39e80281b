"""
The decode step as hand-written Triton kernels (generate.Decoder uses them on CUDA), and a prefill made of them.

Why: at batch 1 a decode step of a 0.6B model is latency-bound. Each layer reads a few tens of MB of weights,
which the card streams in a few microseconds, but compiled by inductor a layer is ~8 kernels, each costing about
as long as that whole read. Here a layer is five kernels:
- `fused_linear` x4: RMSNorm + q/k/v, o_proj + residual, RMSNorm + gate/up + SiLU * up, down + residual. One
  matrix-vector kernel with the norm as a prologue that every program recomputes from the input row (2 KB, in L2),
  so no kernel waits for a whole-row reduction, and the epilogue fused. Each program loads its whole slice of the
  weights at once (one round trip to memory), and on Hopper the kernel is launched with programmatic dependent launch
  (PDL): it starts while the previous kernel finishes, fetches its weights, and waits (`gdc_wait`) only before it
  reads what an earlier kernel wrote.
- `_decode_attention`: QK-norm, RoPE (cos/sin from the position), the cache write and flash-decoding over the cached
  keys (online softmax in float32); the cache is split into chunks over programs ("split-KV"), whose partial results
  `_combine_splits` merges.
One more `fused_linear` does the final norm + lm_head. The speed against Hugging Face's compiled static cache is
bench/decode.py's to measure (the table is in the README).

`prefill_logits` runs a prompt through the same projections (B * T rows, tensor-core tiles), `_prefill_qk` and SDPA:
~7 launches a layer instead of the model's ~75 PyTorch ops, which is what an eager prefill of a short prompt costs.

What they compute is model.py's forward (RMSNorm, the projections, QK-norm, apply_rope, KVCache.update, the
attention, SwiGLU), rounded where PyTorch rounds: tests/test_generate.py runs them under Triton's CPU interpreter
against the PyTorch step, and on CUDA in bf16. Needs triton (installed with liger-kernel); `available()` says whether
they can run.
"""
import functools

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # a CPU-only install: generate.Decoder keeps the compiled PyTorch path
    triton = None


def available(config, dtype):
    """Whether the kernels serve this model by default: triton importable, a power-of-two head_dim (Triton's blocks),
    16-bit weights (on the GPU tl.dot would round float32 inputs to TF32, where the PyTorch step stays float32)."""
    d = config.head_dim
    return triton is not None and d >= 16 and d & (d - 1) == 0 and dtype in (torch.bfloat16, torch.float16)


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
                          CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, SPLITS: tl.constexpr, PDL: tl.constexpr):
        if PDL:  # see _linear
            gdc_launch_dependents()
            gdc_wait()
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
                        SPLITS_P2: tl.constexpr, PDL: tl.constexpr):
        """One (row, query head): the splits' partial softmaxes rescaled to their common maximum and summed."""
        if PDL:
            gdc_launch_dependents()
            gdc_wait()
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
    def _input_tile(x_ptr, norm_ptr, rstd, rows, k, B, K, NORM: tl.constexpr, dtype: tl.constexpr):
        """Columns k of the input rows, RMSNorm-ed if NORM: normalised in float32, rounded to the dtype, times the
        gain, rounded again (model.RMSNorm)."""
        xk = tl.load(x_ptr + rows[:, None] * K + k[None, :], mask=(rows < B)[:, None] & (k < K)[None, :], other=0.0)
        if NORM:
            gain = tl.load(norm_ptr + k, mask=k < K, other=0.0).to(tl.float32)
            xk = ((xk.to(tl.float32) * rstd[:, None]).to(dtype).to(tl.float32) * gain[None, :]).to(dtype)
        return xk

    @triton.jit
    def _linear(x_ptr, w_ptr, out_ptr, res_ptr, norm_ptr, B, N, K, EPS: tl.constexpr, NORM: tl.constexpr,
                GLU: tl.constexpr, RESIDUAL: tl.constexpr, PDL: tl.constexpr, ROWS: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """out[b, n] = x[b] . w[n] for this program's BLOCK_N outputs and ROWS rows, x [B, K] and w [N (2N with GLU),
        K] row-major. NORM: x is RMSNorm-ed first (gain at norm_ptr); every program computes the row statistics
        itself (a row is a few KB, read from L2), so no kernel has to wait for a whole row. GLU: w holds the gate
        rows, then the up rows, and out = silu(gate) * up (model.MLP). RESIDUAL: out += res[b, n].
        PDL (programmatic dependent launch, Hopper+): the kernel may start while the previous one still runs; it
        loads its first block of weights (which no kernel writes), then waits for the previous kernel
        (gdc_wait) before it reads anything a kernel produced."""
        n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rows = tl.program_id(1) * ROWS + tl.arange(0, ROWS)
        dtype: tl.constexpr = out_ptr.dtype.element_ty
        k = tl.arange(0, BLOCK_K)
        w_mask = (n < N)[:, None] & (k < K)[None, :]
        w = tl.load(w_ptr + n[:, None] * K + k[None, :], mask=w_mask, other=0.0)
        if GLU:
            w_up = tl.load(w_ptr + (N + n[:, None]) * K + k[None, :], mask=w_mask, other=0.0)
        if PDL:
            gdc_launch_dependents()
            gdc_wait()
        rstd = tl.zeros([ROWS], dtype=tl.float32)
        if NORM:
            for k0 in range(0, K, BLOCK_K):
                kk = k0 + k
                xk = tl.load(x_ptr + rows[:, None] * K + kk[None, :], mask=(rows < B)[:, None] & (kk < K)[None, :],
                             other=0.0).to(tl.float32)
                rstd += tl.sum(xk * xk, axis=1)
            rstd = tl.rsqrt(rstd / K + EPS)
        xk = _input_tile(x_ptr, norm_ptr, rstd, rows, k, B, K, NORM, dtype)
        acc = _dot(xk, w, ROWS)
        if GLU:
            acc_up = _dot(xk, w_up, ROWS)
        for k0 in range(BLOCK_K, K, BLOCK_K):   # the rest of the row, when K > BLOCK_K
            kk = k0 + k
            xk = _input_tile(x_ptr, norm_ptr, rstd, rows, kk, B, K, NORM, dtype)
            w_mask = (n < N)[:, None] & (kk < K)[None, :]
            acc += _dot(xk, tl.load(w_ptr + n[:, None] * K + kk[None, :], mask=w_mask, other=0.0), ROWS)
            if GLU:
                acc_up += _dot(xk, tl.load(w_ptr + (N + n[:, None]) * K + kk[None, :], mask=w_mask, other=0.0), ROWS)
        y = acc.to(dtype)   # a matmul's output, rounded as cuBLAS rounds it
        if GLU:  # F.silu(gate) * up, each op rounded to the dtype as PyTorch's are
            g = y.to(tl.float32)
            y = ((g * tl.sigmoid(g)).to(dtype).to(tl.float32) * acc_up.to(dtype).to(tl.float32)).to(dtype)
        out_mask = (rows < B)[:, None] & (n < N)[None, :]
        if RESIDUAL:
            res = tl.load(res_ptr + rows[:, None] * N + n[None, :], mask=out_mask, other=0.0)
            y = (res.to(tl.float32) + y.to(tl.float32)).to(dtype)
        tl.store(out_ptr + rows[:, None] * N + n[None, :], y, mask=out_mask)

    @triton.jit
    def _prefill_qk(qkv_ptr, row_stride, qn_w, kn_w, inv_freq_ptr, q_out, k_cache, v_cache, start, T, max_len,
                    EPS: tl.constexpr, N_KV: tl.constexpr, REP: tl.constexpr, D: tl.constexpr, QROWS: tl.constexpr):
        """The prefill's QK-norm, RoPE and cache write: one program per (prompt token, kv head). Row r = b * T + t
        of the q/k/v projection sits at position start + t; its key and value go into the cache there, its REP
        query heads into q_out [B, n_heads, T, D] (SDPA's layout)."""
        r, g = tl.program_id(0), tl.program_id(1)
        b, t = r // T, r % T
        p = start + t
        d = tl.arange(0, D)
        angle = p.to(tl.float32) * tl.load(inv_freq_ptr + d % (D // 2))
        cos, sin = tl.cos(angle), tl.sin(angle)
        row = qkv_ptr + r * row_stride
        k = _norm_rope(row + N_KV * REP * D, g + tl.arange(0, 1), tl.arange(0, 1) < 1, kn_w, cos, sin, EPS, D)
        cache_at = ((b * N_KV + g) * max_len + p) * D
        tl.store(k_cache + cache_at + d[None, :], k)
        tl.store(v_cache + cache_at + d, tl.load(row + (N_KV * REP + N_KV + g) * D + d))
        h = tl.arange(0, QROWS)
        q = _norm_rope(row, g * REP + h, h < REP, qn_w, cos, sin, EPS, D)
        tl.store(q_out + (((b * N_KV * REP + g * REP + h[:, None]) * T + t) * D + d[None, :]), q,
                 mask=(h < REP)[:, None])


def pdl(t):
    """The PDL flag of a kernel over tensor t, with the launch option that goes with it: programmatic dependent launch
    on a Hopper (or newer) GPU, nothing elsewhere."""
    return {"PDL": True, "launch_pdl": True} if _hopper(t.device) else {"PDL": False}


@functools.lru_cache
def _hopper(device):   # once per device: the prefill launches ~200 kernels from Python
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


def decode_attention(q, k, v, q_norm, k_norm, cache, positions, chunk=None, block_n=32):
    """q [B, n_heads * head_dim], k and v [B, n_kv * head_dim] (or [B, 1, ...]): the new token's projections (not
    yet normalised or rotated); q_norm / k_norm: the model's QK-norm modules; cache: a generate.KVCache, which also
    holds the RoPE frequencies (`inv_freq`, model.rope_inv_freq: the kernel makes its cos/sin row from them);
    positions [B, 1]. Writes the new keys and values into the cache and returns the attention output, shaped like q
    (the o_proj's input).

    `chunk`: keys per program. By default the cache is split into chunks of >= 32 keys, as many as make ~256
    programs (one query over a few hundred keys is too little work to keep one program per head busy); only the
    chunks before a row's position do any work."""
    B, n_kv, max_len, D = cache.k.shape
    rep = q.shape[-1] // (n_kv * D)
    if chunk is None:
        splits = min(triton.cdiv(256, B * n_kv), triton.cdiv(max_len, 32))
        chunk = triton.cdiv(triton.cdiv(max_len, splits), block_n) * block_n
    splits = triton.cdiv(max_len, chunk)
    out = torch.empty(*q.shape[:-1], n_kv * rep * D, device=q.device, dtype=cache.v.dtype)
    part_m = torch.empty(B * n_kv * rep * splits if splits > 1 else 1, device=q.device, dtype=torch.float32)
    part_l = torch.empty_like(part_m)
    part_acc = torch.empty(part_m.numel() * D if splits > 1 else 1, device=q.device, dtype=torch.float32)
    _decode_attention[(B * n_kv, splits)](
        q, k, v, q.stride(0), k.stride(0), v.stride(0), q_norm.weight, k_norm.weight, cache.inv_freq, cache.k, cache.v,
        positions, out, part_m, part_l, part_acc, max_len, EPS=q_norm.eps, SCALE=D ** -0.5, N_KV=n_kv, REP=rep, D=D,
        QROWS=max(16, triton.next_power_of_2(rep)), CHUNK=chunk, BLOCK_N=block_n, SPLITS=splits, **pdl(q))
    if splits > 1:
        _combine_splits[(B * n_kv * rep,)](part_m, part_l, part_acc, out, D=D, SPLITS=splits,
                                          SPLITS_P2=triton.next_power_of_2(splits), **pdl(q))
    return out


# (BLOCK_N, BLOCK_K, num_warps, num_stages) for Qwen3-0.6B's projections (N, K) at rows = the rows one program
# takes (1 at batch 1, else 16 / 32 / 64): the best of a sweep on an H200 (in the lab notebook),
# in order q/k/v, o_proj, gate/up, down, lm_head. Other shapes follow the rule in linear_config.
LINEAR_CONFIGS = {
    **dict(zip([(4096, 1024, 1), (1024, 2048, 1), (3072, 1024, 1), (1024, 3072, 1), (151936, 1024, 1)],
               [(4, 1024, 4, 1), (16, 2048, 8, 1), (4, 1024, 4, 1), (4, 4096, 16, 1), (8, 1024, 4, 1)])),
    **dict(zip([(4096, 1024, 16), (1024, 2048, 16), (3072, 1024, 16), (1024, 3072, 16), (151936, 1024, 16)],
               [(128, 128, 8, 3), (32, 128, 4, 4), (32, 128, 8, 3), (32, 128, 4, 4), (128, 128, 8, 4)])),
    **dict(zip([(4096, 1024, 32), (1024, 2048, 32), (3072, 1024, 32), (1024, 3072, 32), (151936, 1024, 32)],
               [(64, 128, 8, 4), (32, 128, 4, 4), (64, 128, 8, 3), (32, 128, 4, 4), (128, 64, 8, 4)])),
}


def linear_config(N, K, rows):
    """One row: the whole row of weights in one block (one round of loads, issued before the PDL wait), 4 outputs a
    program, a warp per 256 columns. More rows: tensor-core tiles, larger for a prefill's 64-row blocks."""
    if (N, K, rows) in LINEAR_CONFIGS:
        return LINEAR_CONFIGS[(N, K, rows)]
    if rows == 1:
        block_k = triton.next_power_of_2(K)
        return 4, block_k, max(4, min(16, block_k // 256)), 1
    return (32, 128, 4, 4) if rows < 64 else (128, 64, 4, 3)


def fused_linear(x, w, norm=None, residual=None, glu=False):
    """x [M, K] (contiguous) -> x @ w.T [M, N] in x's dtype, with _linear's options: `norm` an RMSNorm module applied
    to x first, `glu` (w = gate rows then up rows: silu(gate) * up, N = w's rows / 2), `residual` [M, N] added last.
    At decode time (M = the batch) each weight is read once and the kernel is bound by memory, so one kernel per
    projection, the norm and the epilogue fused into it, is what the step is made of."""
    M, K = x.shape
    N = w.shape[0] // 2 if glu else w.shape[0]
    rows = 1 if M == 1 else min(max(16, triton.next_power_of_2(M)), 64)
    block_n, block_k, warps, stages = linear_config(N, K, rows)
    out = torch.empty(M, N, device=x.device, dtype=x.dtype)
    _linear[(triton.cdiv(N, block_n), triton.cdiv(M, rows))](
        x, w, out, x if residual is None else residual, x if norm is None else norm.weight, M, N, K,
        EPS=norm.eps if norm is not None else 0.0, NORM=norm is not None, GLU=glu, RESIDUAL=residual is not None,
        ROWS=rows, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages, **pdl(x))
    return out


def fused_weights(model, out=None):
    """Per layer, the q/k/v weights as one matrix and gate/up as another (a copy: 4 projections a layer, read in 4
    kernels). With `out` (an earlier result) the copy is rewritten in place, at the same addresses, after the
    model's weights changed (generate.Decoder.refresh_weights)."""
    out = out or [(None, None)] * len(model.model.layers)
    return [(torch.cat([b.self_attn.q_proj.weight, b.self_attn.k_proj.weight, b.self_attn.v_proj.weight], out=qkv),
             torch.cat([b.mlp.gate_proj.weight, b.mlp.up_proj.weight], out=gate_up))
            for b, (qkv, gate_up) in zip(model.model.layers, out)]


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
        qkv = fused_linear(x, w_qkv, norm=block.input_layernorm)
        y = decode_attention(qkv[:, :q_dim], qkv[:, q_dim:q_dim + kv_dim], qkv[:, q_dim + kv_dim:], att.q_norm,
                             att.k_norm, cache, input_pos)
        x = _mlp(block, w_gate_up, fused_linear(y, att.o_proj.weight, residual=x))
    return fused_linear(x, model.lm_head_weight, norm=model.model.norm).float()


def _mlp(block, w_gate_up, h):
    """h + MLP(RMSNorm(h)) in two kernels."""
    m = fused_linear(h, w_gate_up, norm=block.post_attention_layernorm, glu=True)
    return fused_linear(m, block.mlp.down_proj.weight, residual=h)


# a prefill of more rows (batch x prompt tokens) goes through the model's own forward: bound by FLOPs, where cuBLAS's
# GEMMs beat fused_linear's tiles (which also recompute each row's RMSNorm statistics per program)
PREFILL_MAX_ROWS = 4096


def prefill_logits(model, caches, idx, start, weights, lengths=None):
    """generate.last_logits (a prompt idx [B, T] at positions start.. -> float logits of each row's last token
    [B, vocab], with `lengths` of right-padded rows) with the step's kernels: the projections as fused_linear over
    the B * T rows, QK-norm + RoPE + cache write as _prefill_qk, and the causal attention over the cache by SDPA.
    ~7 launches a layer instead of the ~75 PyTorch ops of model.hidden_states: an eager prefill of a short prompt
    costs its launches, not its FLOPs."""
    cfg, (B, T) = model.config, idx.shape
    H, n_kv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    x = model.model.embed_tokens(idx).view(B * T, -1)
    q = torch.empty(B, H, T, D, device=idx.device, dtype=x.dtype)
    end = start + T
    mask = None if start == 0 else torch.ones(T, end, dtype=torch.bool, device=idx.device).tril(diagonal=start)
    for block, cache, (w_qkv, w_gate_up) in zip(model.model.layers, caches, weights):
        att = block.self_attn
        qkv = fused_linear(x, w_qkv, norm=block.input_layernorm)
        _prefill_qk[(B * T, n_kv)](qkv, qkv.stride(0), att.q_norm.weight, att.k_norm.weight, cache.inv_freq, q,
                                   cache.k, cache.v, start, T, cache.k.shape[2], EPS=att.q_norm.eps, N_KV=n_kv,
                                   REP=H // n_kv, D=D, QROWS=triton.next_power_of_2(H // n_kv))
        y = F.scaled_dot_product_attention(q, cache.k[:, :, :end], cache.v[:, :, :end], attn_mask=mask,
                                           is_causal=mask is None, enable_gqa=n_kv != H)
        x = _mlp(block, w_gate_up, fused_linear(y.transpose(1, 2).reshape(B * T, H * D), att.o_proj.weight, residual=x))
    x = x.view(B, T, -1)
    x = x[:, -1] if lengths is None else x[torch.arange(B, device=x.device), lengths - 1]
    return fused_linear(x.contiguous(), model.lm_head_weight, norm=model.model.norm).float()
