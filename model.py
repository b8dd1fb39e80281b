"""
Qwen3 written from scratch in plain PyTorch, readable top to bottom.

The parameter names are exactly those of Hugging Face `Qwen3ForCausalLM` (model.embed_tokens.weight,
model.layers.{i}.self_attn.q_proj.weight, ...), so exporting and importing is a plain safetensors write/read
and the exported directory loads in transformers with no custom code.

One function, two speeds. The plain path (CPU or GPU, any PyTorch) is the definition. The CUDA fast path
changes *how* it is computed, never *what*: blocks compiled by torch.compile (train.py applies it, with activation
checkpointing; inductor fuses RMSNorm, RoPE and SwiGLU into a few kernels), attention through SDPA's fastest backend
with native GQA, and the lm_head + cross-entropy through liger-kernel's fused kernel (`Qwen3(config, loss="liger")`)
so the [tokens x 151936] logits never exist. tests/test_cuda.py proves the two agree. Generation (KV cache,
sampling) is generate.py's; reading and writing Hugging Face directories is checkpoint.py's.
Packed rows (SFT, pretraining with --doc_mask) pass doc_ids: attention stays within each document (a boolean
SDPA mask by definition, FlexAttention's block mask on CUDA) and positions restart at 0 for each document.
"""
import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import flex_attention as flexattn
from torch.utils.checkpoint import checkpoint


@dataclass
class Qwen3Config:
    # Hugging Face field names. Defaults are the project's model: Qwen3-0.6B with rope_theta 1e4 and 4k context.
    vocab_size: int = 151936
    hidden_size: int = 1024
    intermediate_size: int = 3072
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 128  # decoupled from hidden_size: 16 heads x 128 = 2048 != 1024
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02

    def __post_init__(self):
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                             f"num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")


class RMSNorm(nn.Module):
    """HF numerics: normalise in float32, cast back to the input dtype, then multiply by the weight."""

    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_inv_freq(head_dim, theta, device=None):
    """RoPE's frequencies theta^(-2i/head_dim), i < head_dim / 2, in float32."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))


def rope_cos_sin(positions, head_dim, theta):
    """cos/sin tables for `positions` ([T], or [B, T] for packed rows), always computed in float32 (a bf16 table
    loses the low bits of large angles). Half-split layout: frequencies repeated twice, matching rotate_half."""
    freqs = positions.float()[..., None] * rope_inv_freq(head_dim, theta, positions.device)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(q, k, cos, sin):
    """q, k: [B, heads, T, head_dim]; cos, sin: [T, head_dim] (or [B, 1, T, head_dim]). Rotates pairs (i, i + head_dim/2) -- the
    'rotate_half' convention of HF (same signature as HF's apply_rotary_pos_emb: q and k together)."""
    def rotate(x):
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos.to(x.dtype) + torch.cat((-x2, x1), dim=-1) * sin.to(x.dtype)
    return rotate(q), rotate(k)


# ------------------------------------------------------------------------- document masking (packed rows)
# A packed row holds several documents (SFT conversations, or pretraining documents with --doc_mask). doc_ids
# [B, T] gives each position's document; a query then sees only earlier keys of its own document, and RoPE
# positions restart at 0 for each document, so a packed document is computed exactly as if it were alone.
# branch_ids (rl.py) split a document into a prefix (0: a prompt) and branches written after it (1, 2, ...: answers);
# a branch sees the prefix and itself and goes on from the prefix's positions: one prompt computed for all answers.
def doc_positions(doc_ids, branch_ids=None):
    """Position of each token within its document (with branch_ids: prefix length + place within its branch)."""
    t = torch.arange(doc_ids.shape[1], device=doc_ids.device).expand_as(doc_ids)
    changed = lambda ids: torch.cat([torch.ones_like(ids[:, :1], dtype=torch.bool), ids[:, 1:] != ids[:, :-1]], 1)  # run starts
    since = lambda starts: t - torch.cummax(torch.where(starts, t, 0), dim=1).values   # tokens since the run's start
    in_doc = since(changed(doc_ids))
    if branch_ids is None:
        return in_doc
    before = (branch_ids == 0).long().cumsum(1) - (branch_ids == 0).long()   # prefix tokens before each position
    n_prefix = before - before.gather(1, t - in_doc)   # for a branch's token: all of its document's prefix
    return torch.where(branch_ids == 0, in_doc, n_prefix + since(changed(doc_ids) | changed(branch_ids)))


def doc_mask(doc_ids, flex, branch_ids=None):
    """The attention mask 'same document and causal' (branch_ids: and the key in the prefix or the query's branch).
    flex=False: a boolean [B, 1, T, T] tensor for SDPA (the definition; memory O(B T^2)). flex=True: a FlexAttention
    BlockMask (CUDA), which also skips the blocks entirely masked out: attention costs grow with the documents."""
    if not flex:
        same = doc_ids[:, :, None] == doc_ids[:, None, :]
        if branch_ids is not None:
            same &= (branch_ids[:, None, :] == 0) | (branch_ids[:, :, None] == branch_ids[:, None, :])
        return (same & torch.ones(same.shape[-2:], dtype=torch.bool, device=doc_ids.device).tril())[:, None]

    def same_doc_causal(b, h, q, kv):
        ok = (doc_ids[b, q] == doc_ids[b, kv]) & (q >= kv)
        return ok if branch_ids is None else ok & ((branch_ids[b, kv] == 0) | (branch_ids[b, q] == branch_ids[b, kv]))
    B, T = doc_ids.shape
    if doc_ids.is_cuda and not _compiled:  # here, not in Attention: outside any region torch.compile traces
        _compiled.update(attention=torch.compile(flexattn.flex_attention, dynamic=False),
                         block_mask=torch.compile(flexattn.create_block_mask))
    make = _compiled["block_mask"] if doc_ids.is_cuda else flexattn.create_block_mask
    return make(same_doc_causal, B, None, T, T, device=doc_ids.device)


# FlexAttention and create_block_mask compiled, made on the first CUDA doc_mask. Uncompiled, FlexAttention is a slow
# reference that builds the full scores (CPU, forward only), and create_block_mask materialises the [B, T, T] mask.
_compiled = {}


def flex_attention(q, k, v, block_mask):
    """FlexAttention with GQA. Unlike SDPA it is not autocast-aware: q and k (float32 after the fp32 QK-norm
    gain) take v's dtype, which is what SDPA's autocast cast does."""
    fn = _compiled["attention"] if q.is_cuda else flexattn.flex_attention
    return fn(q.to(v.dtype), k.to(v.dtype), v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)
        # Qwen3's QK-norm: one RMSNorm over head_dim shared by all heads, applied BEFORE RoPE.
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mode, mask=None, cache=None, start=0):
        """`mode` (chosen once per forward by Qwen3.hidden_states) says how queries see keys: "causal" (training,
        a prefill from position 0), "mask" (the boolean `mask`: packed documents, or decoding after a prefix),
        "flex" (`mask` is FlexAttention's BlockMask: packed documents on CUDA), "static" (the static-cache decode
        step: `start` holds every query's position)."""
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, self.n_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(B, T, self.n_kv, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, k, cos, sin)
        if cache is not None:
            k, v = cache.update(start, k, v)
        gqa = self.n_kv != self.n_heads
        if mode == "causal":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        elif mode == "mask":
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        elif mode == "flex":
            y = flex_attention(q, k, v, mask)
        else:
            y = self._static_cache_attention(q, k, v, start)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))

    def _static_cache_attention(self, q, k, v, positions):
        """Decoding against a static cache (generate.Decoder): positions [B, T] holds each query's position (rows
        may stand at different positions), k and v are the whole preallocated buffer [B, n_kv, max_len, head_dim],
        and the query at position p sees keys 0..p, so no shape depends on the position and one compiled step,
        captured once in a CUDA graph, serves them all. The attention is written out (QK^T, masked softmax in fp32,
        PV: HF's "eager" attention), with the query heads that share a kv head folded into the query rows: for one
        query over a few thousand keys this is three small kernels that inductor fuses with their neighbours, far
        cheaper than SDPA's fused kernels, which are built for long queries."""
        B, H, T, D = q.shape
        rep = H // self.n_kv
        visible = torch.arange(k.shape[2], device=q.device) <= positions[:, None, :, None]   # [B, 1, T, keys]
        scores = (q.reshape(B, self.n_kv, rep * T, D) @ k.transpose(-1, -2)).float() * D ** -0.5
        scores = scores.masked_fill(~visible.repeat(1, 1, rep, 1), float("-inf"))   # folded row r*T + t: query t
        return (scores.softmax(-1).to(v.dtype) @ v).reshape(B, H, T, D)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)
        self.checkpointing = "none"   # activation checkpointing (none | block | selective): train.py sets it

    def forward(self, x, cos, sin, mode, mask=None, cache=None, start=0):
        # The checkpoint sits inside forward so that a compiled block compiles it too (torch.compile traces
        # non-reentrant checkpoints and selective-checkpoint policies into its graph).
        if self.checkpointing == "block" and torch.is_grad_enabled():
            return checkpoint(self._forward, x, cos, sin, mode, mask, use_reentrant=False)
        if self.checkpointing == "selective" and torch.is_grad_enabled():
            return checkpoint(self._forward, x, cos, sin, mode, mask, use_reentrant=False,
                              context_fn=_save_matmuls_context())
        return self._forward(x, cos, sin, mode, mask, cache, start)

    def _forward(self, x, cos, sin, mode, mask=None, cache=None, start=0):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mode, mask, cache, start)
        return x + self.mlp(self.post_attention_layernorm(x))


def _save_matmuls_context():
    """Selective activation checkpointing: keep the outputs of matmuls and attention (expensive to redo),
    recompute everything elementwise (norms, RoPE, SiLU*up, residual adds -- cheap, but most of the saved bytes).
    A functools.partial of create_selective_checkpoint_contexts is the form torch.compile can trace."""
    from torch.utils.checkpoint import create_selective_checkpoint_contexts
    aten = torch.ops.aten
    keep = [aten.mm.default, aten.addmm.default, aten._scaled_dot_product_flash_attention.default,
            aten._scaled_dot_product_cudnn_attention.default, aten._scaled_dot_product_efficient_attention.default]
    return partial(create_selective_checkpoint_contexts, keep)


def chunked_cross_entropy(h, weight, targets, chunk_rows=None):
    """Mean cross-entropy of (h @ weight.T) against targets (ignore_index -100) without ever holding the full
    [N, vocab] logits: rows are processed in chunks, each under activation checkpointing, so backward recomputes
    one chunk of logits at a time. Peak extra memory is one [chunk_rows, vocab] float32 block (~512 MB default)."""
    h, targets = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
    chunk_rows = chunk_rows or max(64, (1 << 27) // weight.shape[0])

    def chunk_loss_sum(h_c, t_c):
        logits = F.linear(h_c, weight).float()
        return F.cross_entropy(logits, t_c, ignore_index=-100, reduction="sum")

    total = h.new_zeros((), dtype=torch.float32)
    for i in range(0, h.shape[0], chunk_rows):
        h_c, t_c = h[i:i + chunk_rows], targets[i:i + chunk_rows]
        total = total + (checkpoint(chunk_loss_sum, h_c, t_c, use_reentrant=False) if h.requires_grad
                         else chunk_loss_sum(h_c, t_c))
    return total / (targets != -100).sum()  # all-ignored -> nan, as F.cross_entropy


@torch.compiler.disable
def liger_cross_entropy(h, weight, targets, chunk_mem_const=8):
    """liger-kernel's fused linear + cross-entropy (CUDA): logits are produced chunk by chunk and the gradients
    of h and weight are computed in the same pass, so [tokens x vocab] never exists. Kept outside any compiled
    graph on purpose: traced by inductor, its Triton kernels lose the speed they are used for. chunk_mem_const=8
    makes the chunks 8x larger than liger's default, so the chunk matmuls run near the card's peak; the weight
    gradient is accumulated in fp32 (accum_dtype) although the matmuls run in bf16."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    h, targets = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
    if h.dtype != weight.dtype:  # under autocast the hidden state is bf16 and the master weight fp32
        weight = weight.to(h.dtype)
    return liger_fused_linear_cross_entropy(h, weight, targets, ignore_index=-100, reduction="mean",
                                            accum_dtype=torch.float32, chunk_mem_const=chunk_mem_const)


class Qwen3(nn.Module):
    """The network and its loss. `loss="liger"` uses liger's fused lm_head + cross-entropy on CUDA: it changes how,
    never what, the loss is computed. (torch.compile and activation checkpointing are applied per block by
    train.py.)"""

    def __init__(self, config: Qwen3Config, loss="chunked"):
        super().__init__()
        if loss not in ("chunked", "liger"):
            raise ValueError(f"loss must be chunked|liger, got {loss!r}")
        self.config = cfg = config
        self.loss = loss
        # a ModuleDict named `model` gives the state-dict prefix 'model.' of HF's Qwen3ForCausalLM
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(cfg.vocab_size, cfg.hidden_size),
            layers=nn.ModuleList([Block(cfg) for _ in range(cfg.num_hidden_layers)]),
            norm=RMSNorm(cfg.hidden_size, cfg.rms_norm_eps),
        ))
        # tied: the lm_head *is* the embedding matrix, so there is no separate parameter (and no state-dict key)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self):
        """Init for pretraining from scratch: N(0, 0.02) for every matrix and the embedding (GPT-2 / HF
        initializer_range), norm gains 1. The two projections that write into the residual stream (o_proj,
        down_proj) get std / sqrt(2 * layers), so the residual's variance does not grow with depth (GPT-2).
        With tied embeddings the same 0.02 matrix serves as lm_head, giving near-uniform initial logits
        (initial loss ~ ln(vocab))."""
        std = self.config.initializer_range
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.num_hidden_layers))
            else:
                nn.init.normal_(p, 0.0, std)

    @property
    def lm_head_weight(self):
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def hidden_states(self, idx, caches=None, start=0, doc_ids=None, branch_ids=None):
        """Token ids [B, T] -> final-normed hidden states [B, T, hidden]. `start` is the position of idx[:, 0], or
        (with caches: generate.Decoder's decode step) a [B, T] long tensor of every token's position, so that one
        compiled, CUDA-graph-captured step serves every position, and rows may stand at different positions. With
        doc_ids ([B, T] document index of each position, for packed rows; not with caches) attention stays within
        each document and positions restart at 0 for each (branch_ids: see doc_positions): the mask is a FlexAttention
        BlockMask on CUDA, a boolean SDPA mask elsewhere."""
        x, T, mask = self.model.embed_tokens(idx), idx.shape[1], None
        if doc_ids is not None:   # packed documents: 'same document and causal'
            positions, mask = doc_positions(doc_ids, branch_ids), doc_mask(doc_ids, flex=idx.is_cuda, branch_ids=branch_ids)
            mode = "mask" if torch.is_tensor(mask) else "flex"
        elif torch.is_tensor(start):   # the static-cache decode step
            positions, mode = start, "static"
        else:
            positions = torch.arange(start, start + T, device=idx.device)
            mode = "causal" if start == 0 else "mask"
            if start:   # after a cached prefix: query i sits at position start+i and sees keys 0..start+i
                mask = torch.ones(T, start + T, dtype=torch.bool, device=idx.device).tril(diagonal=start)
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta)
        if positions.dim() == 2:  # per-row positions (packed documents, static cache)
            cos, sin = cos[:, None], sin[:, None]  # [B, 1, T, head_dim]: broadcast over heads
        for i, block in enumerate(self.model.layers):
            x = block(x, cos, sin, mode, mask, None if caches is None else caches[i], start)
        return self.model.norm(x)

    def forward(self, idx, targets=None, doc_ids=None, hidden_only=False, branch_ids=None):
        """nanoGPT convention: returns (logits, loss). Without targets: full logits [B, T, vocab], loss None.
        With targets ([B, T] next-token ids, -100 = ignore): logits None -- the loss is computed without
        materialising them -- and the mean cross-entropy over the targets that are not ignored. doc_ids: packed
        rows (see hidden_states); their ignored targets (SFT: everything but the assistant's tokens) skip the
        lm_head altogether, which changes nothing but the cost. hidden_only (rl.py, with branch_ids for its shared
        prompts): the kept targets' hidden states [N, hidden] in the loss's place (through forward: DDP sees it)."""
        h = self.hidden_states(idx, doc_ids=doc_ids, branch_ids=branch_ids)
        if targets is None:
            return F.linear(h, self.lm_head_weight), None
        if hidden_only:
            return None, h[targets != -100]
        if doc_ids is not None:
            keep = targets != -100
            h, targets = h[keep], targets[keep]
        if self.loss == "liger" and h.is_cuda:
            return None, liger_cross_entropy(h, self.lm_head_weight, targets)
        return None, chunked_cross_entropy(h, self.lm_head_weight, targets)
