"""
Generation: a KV cache, sampling (temperature, top-k, top-p) and the token loop, as module functions over a Qwen3.

The model (model.py) only knows how to run a chunk of tokens starting at position `start` against per-layer
caches (anything with `update(start, k, v) -> (keys, values)`); everything about decoding lives here.
"""
import torch
import torch.nn.functional as F


class KVCache:
    """Preallocated keys/values for one layer: [B, n_kv_heads, max_len, head_dim]."""

    def __init__(self, batch, n_kv_heads, max_len, head_dim, device, dtype):
        self.k = torch.zeros(batch, n_kv_heads, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)

    def update(self, start, k, v):
        end = start + k.shape[2]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


def new_caches(model, batch, max_len, device, dtype):
    c = model.config
    return [KVCache(batch, c.num_key_value_heads, max_len, c.head_dim, device, dtype) for _ in range(c.num_hidden_layers)]


def sample_next(logits, temperature=1.0, top_k=None, top_p=None):
    """logits [B, V] float -> next ids [B, 1]. temperature 0 = greedy; top_k / top_p filter before sampling."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix whose mass reaches top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1)


@torch.no_grad()
def stream(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, eos=None):
    """Yields the next token column [B, 1] at each step. temperature 0 means greedy. Stops early once every
    row has produced `eos` (an id or a list of ids)."""
    eos = torch.tensor([eos] if isinstance(eos, int) else (eos or []), device=idx.device)
    done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    total = idx.shape[1] + max_new_tokens
    if total > model.config.max_position_embeddings:
        raise ValueError(f"prompt + max_new_tokens = {total} exceeds max_position_embeddings "
                         f"{model.config.max_position_embeddings}")
    caches = new_caches(model, idx.shape[0], total, idx.device, model.model.embed_tokens.weight.dtype)
    inp, pos = idx, 0
    for _ in range(max_new_tokens):
        h = model.hidden_states(inp, caches, pos)
        logits = F.linear(h[:, -1], model.lm_head_weight).float()
        pos += inp.shape[1]
        nxt = sample_next(logits, temperature, top_k, top_p)
        if eos.numel():
            nxt = torch.where(done[:, None], eos[0], nxt)  # finished rows keep emitting eos
            done |= torch.isin(nxt[:, 0], eos)
        inp = nxt
        yield nxt
        if eos.numel() and done.all():
            return


def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, eos=None):
    """Autoregressive sampling with a KV cache; returns idx with the new tokens appended."""
    new = list(stream(model, idx, max_new_tokens, temperature, top_k, top_p, eos))
    return torch.cat([idx] + new, dim=1)
