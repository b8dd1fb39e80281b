"""
Generation: a KV cache, sampling (temperature, top-k, top-p) and the token loop over a Qwen3.

Two paths (tests/test_generate.py proves they emit the same tokens):
- the plain path, the module functions `stream` / `generate`: a Python loop that runs the model on one token at a
  time against caches that grow by slicing. It works anywhere (CPU, tests) and is the definition, but on a GPU it
  is launch-bound: 28 layers x ~15 small kernels per token, each launched from Python.
- the fast path, a `Decoder`'s methods `stream` / `generate` (and `prefill` / `step` for a chat): a static KV cache
  preallocated to `max_len`, the prompt prefilled in one call, and a one-token `decode_step` whose shapes never
  change (the positions arrive as a tensor), captured once in a CUDA graph and replayed for every token (the
  gpt-fast recipe). The step feeds its token back as the next input; the lm_head and sampling are captured with
  it; randomness comes from a noise buffer filled before each replay. Nothing waits for the GPU except what the
  caller reads (the streamed token). The step is decode_kernel.py's hand-written Triton kernels (`step="triton"`,
  five a layer, the default on CUDA), the PyTorch step below compiled by torch.compile (`"compiled"`) or run as
  it is (`"eager"`, the default on the CPU).

    out = generate(model, idx, 256, temperature=0)                 # the plain path
    dec = Decoder(model, batch_size=1, max_len=prompt_len + 256)   # once; on CUDA: Triton + CUDA graphs
    out = dec.generate(idx, 256, temperature=0)                    # continues the cache: dec.reset() to start over

The model (model.py) only knows how to run a chunk of tokens starting at `start` (an int, or a [B, T] tensor of
positions) against per-layer caches (anything with `update(start, k, v) -> (keys, values)`).
"""
from functools import partial

import torch
import torch.nn.functional as F

import decode_kernel
from model import rope_inv_freq


class KVCache:
    """Preallocated keys/values for one layer: [B, n_kv_heads, max_len, head_dim].

    update(start, k, v) with an int `start` (the plain path, prefill) writes positions start.. and returns the
    filled prefix; with a [B, T] tensor of positions (the decode step; each row its own) it writes there and returns
    the whole buffer, so the shapes do not depend on the position (the attention masks what lies beyond it)."""

    def __init__(self, batch, n_kv_heads, max_len, head_dim, device, dtype):
        self.k = torch.zeros(batch, n_kv_heads, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.inv_freq = None  # RoPE's frequencies, for decode_kernel.py's step (the Decoder sets them)

    def update(self, start, k, v):
        if torch.is_tensor(start):  # index_put (row b, every head, position start[b, t]): an in-place scatter
            rows = torch.arange(k.shape[0], device=k.device)[:, None]
            self.k[rows, :, start] = k.transpose(1, 2).to(self.k.dtype)
            self.v[rows, :, start] = v.transpose(1, 2).to(self.v.dtype)
            return self.k, self.v
        end = start + k.shape[2]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]

    def rows(self, first, n=1):
        """Rows first..first+n-1 as a KVCache of their own: views, so what is written there lands in this cache (a
        Decoder's slot is prefilled alone through one; a step over the first n rows runs on them)."""
        view = KVCache.__new__(KVCache)
        view.k, view.v, view.inv_freq = self.k[first:first + n], self.v[first:first + n], self.inv_freq
        return view


def new_caches(model, batch, max_len, device, dtype):
    c = model.config
    return [KVCache(batch, c.num_key_value_heads, max_len, c.head_dim, device, dtype)
            for _ in range(c.num_hidden_layers)]


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, noise=None, generator=None):
    """logits [B, V] float -> next ids [B, 1]. temperature 0 = greedy; top_k / top_p filter before sampling.

    temperature and top_p may be numbers or device tensors (the Decoder's: one captured graph then serves every
    value). Per row ([B, 1] tensors: a Decoder's slots, rows of different requests in one graph): temperature (a row
    at 0 is greedy), top_k (long, 0 = off), top_p (1 = off). Sampling is the exponential race: argmax(probs / E)
    with E ~ Exponential(1) i.i.d. picks index i with probability probs[i], like torch.multinomial, but without a
    host sync, so it can live inside a CUDA graph. `noise` is E ([B, V] float32); by default it is drawn here from
    `generator` (None = torch's default)."""
    if not torch.is_tensor(temperature) and temperature == 0:
        return logits.argmax(-1, keepdim=True)
    sampled = None
    if torch.is_tensor(temperature) and temperature.dim() == 2:   # per row: the rows at 0 take the argmax below
        sampled = temperature > 0
        greedy, temperature = logits.argmax(-1, keepdim=True), torch.where(sampled, temperature, 1.0)
    logits = logits / temperature
    sorted_logits = None
    if torch.is_tensor(top_k):   # per row: the k-th largest value read from the sorted row (top_p sorts anyway)
        sorted_logits, order = logits.sort(-1, descending=True)
        k = torch.where(top_k > 0, top_k, logits.shape[-1]).clamp_max(logits.shape[-1])
        kth = sorted_logits.gather(-1, k - 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
        sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, float("-inf"))
    elif top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and (torch.is_tensor(top_p) or top_p < 1.0):
        if sorted_logits is None:
            sorted_logits, order = logits.sort(-1, descending=True)
        sorted_probs = sorted_logits.softmax(-1)
        drop = sorted_probs.cumsum(-1) - sorted_probs > top_p  # keep the smallest prefix whose mass reaches top_p
        if sampled is not None:   # a row at 1 keeps every token (the cumulative sum's rounding may pass 1)
            drop &= top_p < 1
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    if noise is None:
        noise = torch.empty_like(probs).exponential_(generator=generator)
    # E can be exactly 0; clamping keeps a filtered token (prob 0) at 0 instead of 0/0 = nan, which argmax would pick
    nxt = (probs / noise.clamp_min(torch.finfo(noise.dtype).tiny)).argmax(-1, keepdim=True)
    return nxt if sampled is None else torch.where(sampled, nxt, greedy)


def check_sampling_settings(max_new_tokens, temperature, top_k, top_p, num_samples=1):
    """sample.py's and chat.py's sampling settings: a bad one stops with one line naming it (a negative top_k or
    max_new_tokens was a traceback, a negative temperature silently inverted the distribution)."""
    for key, value, ok, want in (("max_new_tokens", max_new_tokens, lambda v: v > 0, "an integer > 0"),
                                 ("num_samples", num_samples, lambda v: v > 0, "an integer > 0"),
                                 ("top_k", top_k, lambda v: v >= 0, "an integer >= 0 (0 = off)"),
                                 ("temperature", temperature, lambda v: v >= 0, "a number >= 0 (0 = greedy)"),
                                 ("top_p", top_p, lambda v: 0 <= v <= 1, "a number in [0, 1] (1 = off)")):
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (is_number and (isinstance(value, int) or want.startswith("a number")) and ok(value)):
            raise SystemExit(f"error: --{key} must be {want}, got {value!r}")


def _eos_ids(eos, device):
    """eos as given (an id, a list of ids, or None) -> a 1-D tensor of ids (empty: no eos)."""
    return torch.tensor([eos] if isinstance(eos, int) else (eos or []), device=device)


def last_logits(model, idx, caches, start, lengths=None):
    """Runs idx [B, T] from position `start` against the caches; float logits of the last position [B, vocab]
    (with `lengths` [B], right-padded rows: of position lengths[b] - 1 of each row)."""
    h = model.hidden_states(idx, caches, start)
    h = h[:, -1] if lengths is None else h[torch.arange(len(h), device=h.device), lengths - 1]
    return F.linear(h, model.lm_head_weight).float()


def _eos_update(nxt, eos, done):
    """Rows that already produced eos keep emitting it (eos[0]); marks the rows that just produced one."""
    nxt = torch.where(done[:, None], eos[0], nxt)
    done |= torch.isin(nxt[:, 0], eos)
    return nxt


@torch.no_grad()
def stream(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, eos=None, generator=None):
    """Yields the next token column [B, 1] at each step. temperature 0 means greedy. Stops early once every
    row has produced `eos` (an id or a list of ids); `generator` seeds the sampling noise."""
    eos = _eos_ids(eos, idx.device)
    done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    total = idx.shape[1] + max_new_tokens
    if total > model.config.max_position_embeddings:
        raise ValueError(f"prompt + max_new_tokens = {total} exceeds max_position_embeddings "
                         f"{model.config.max_position_embeddings}")
    caches = new_caches(model, idx.shape[0], total, idx.device, model.model.embed_tokens.weight.dtype)
    inp, pos = idx, 0
    for _ in range(max_new_tokens):
        logits = last_logits(model, inp, caches, pos)
        pos += inp.shape[1]
        nxt = sample_next(logits, temperature, top_k, top_p, generator=generator)
        if eos.numel():
            nxt = _eos_update(nxt, eos, done)
        inp = nxt
        yield nxt
        if eos.numel() and done.all():
            return


def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, eos=None, generator=None):
    """Autoregressive sampling with a KV cache; returns idx with the new tokens appended."""
    new = list(stream(model, idx, max_new_tokens, temperature, top_k, top_p, eos, generator))
    return torch.cat([idx] + new, dim=1)


# ------------------------------------------------------------------------------------------------ fast path
def decode_hidden(model, caches, tok, input_pos):
    """The token tok [B, 1] at the positions input_pos ([B, 1] long) -> the final hidden state [B, hidden]; tok's
    keys and values are written into the caches on the way. No shape depends on the position, so this is compiled
    once and captured once in a CUDA graph."""
    return model.hidden_states(tok, caches, input_pos)[:, -1]


def decode_logits(model, caches, tok, input_pos, hidden=decode_hidden):
    """decode_hidden, then the lm_head -> float logits [B, vocab]. `hidden` is decode_hidden itself or its compiled
    form: the lm_head stays outside the compiled part, because cuBLAS reads the large embedding matrix faster than
    inductor's tuned matrix-vector reduction."""
    return F.linear(hidden(model, caches, tok, input_pos), model.lm_head_weight).float()


def decode_step(model, caches, tok, input_pos, temperature=0, top_k=None, top_p=None, noise=None, logits=decode_logits):
    """`logits` (decode_logits, a compiled form of it, or decode_kernel.decode_logits), then sampling -> the next
    token [B, 1]. temperature 0 (a number) = greedy; otherwise temperature / top_p are tensors."""
    return sample_next(logits(model, caches, tok, input_pos), temperature, top_k, top_p, noise)


def frozen_decode_hidden(*args):
    """decode_hidden under its own code object, so that its compiled (frozen) code never mixes with decode_hidden's."""
    return decode_hidden(*args)


_compiled = {}


def compiled_decode_hidden():
    """decode_hidden under torch.compile with inductor's freezing, shared by every Decoder (made on first use, so
    importing this file stays cheap): dynamo guards on shapes, so decoders of the same batch size and max_len share
    the compiled code, and a second batch size recompiles once with a dynamic batch dimension. Freezing makes the
    weights constants of the compiled code and so lets it concatenate the q/k/v projections into one matmul and
    gate/up into another (4 matmuls per layer instead of 7: what a launch-bound step is made of); dynamo then guards
    on the parameters' identity, so another model (or a copy) compiles anew."""
    if "frozen" not in _compiled:
        _compiled["frozen"] = torch.compile(frozen_decode_hidden, fullgraph=True)
    return _compiled["frozen"]


STEPS = ("triton", "compiled", "eager")


def default_step(model, compiled=True):
    """The Decoder's step when none is named: on CUDA the Triton kernels where they serve the model
    (decode_kernel.available: 16-bit weights, a power-of-two head_dim), else the compiled PyTorch step (or, with
    compiled=False, the eager one); on the CPU the eager PyTorch step."""
    w = model.model.embed_tokens.weight
    if w.device.type != "cuda":
        return "eager"
    if decode_kernel.available(model.config, w.dtype):
        return "triton"
    return "compiled" if compiled else "eager"


class Decoder:
    """The fast path for one model and batch size: a static KV cache of `max_len` positions and the decode step,
    replayed as CUDA graphs (`cuda_graph`, the default on CUDA). `step` is one of STEPS: decode_kernel.py's
    hand-written Triton kernels ("triton": 5 a layer, nothing to compile), the PyTorch step (decode_logits) under
    torch.compile ("compiled") or as it is ("eager"); default_step picks it when it is not given. Build it once and
    reuse it across calls: the compiled code and the captured graphs (one per sampling mode and row count) are kept.

    max_len defaults to max_position_embeddings; a cache sized to prompt + new tokens is smaller and faster (the
    PyTorch step's attention reads the whole buffer, masked; the Triton step only the keys before each position).
    The compiled step compiles the weights in as constants (inductor's freezing, see compiled_decode_hidden), so it
    does not see later changes to the model's weights: build Decoders for a model whose weights are final
    (inference), not for one still training. It uses inductor's coordinate-descent tuning, which turns each one-row
    matmul into a tuned reduction fused with its neighbours. The Triton step keeps a copy of the q/k/v and gate/up
    weights concatenated (decode_kernel.fused_weights: 0.6 GB for the 0.6B model in bf16): after the model's weights
    change in place, refresh_weights() rewrites that copy (rl.py does, between rollouts).

    The cache is continued, not restarted: `prefill(tokens)` appends at the current position `pos`, so a chat can
    keep its history across turns (`reset(pos)` rewinds). After `stream`/`generate` the cache holds the prompt and
    every generated token except the last one (`last`), which the next prefill must start with to continue.
    Prompts of different lengths share a batch as right-padded rows with `lengths` (eval.py's C-Eval GEN does
    this): each row then decodes from its own position, and only a reset() makes the rows even again.

    Slots (continuous batching, serve.py): each row is a slot that a request holds from `prefill_slot` (its prompt
    prefilled into that row alone, from position 0, the other rows untouched) to `release` (the row is parked at
    position 0, where the step's writes harm nobody, by a device-side mask: no host sync). step() advances the live
    rows with per-row sampling settings (lists of B numbers written into [B, 1] device tensors, so one captured graph
    serves rows of different requests) and runs only the first n rows, n the smallest power of two that holds every
    live row: a graph per n, so one request alone decodes at batch 1's speed."""

    def __init__(self, model, batch_size=1, max_len=None, step=None, cuda_graph=None):
        cfg, w = model.config, model.model.embed_tokens.weight
        self.model, self.batch_size = model, batch_size
        max_len = max_len or cfg.max_position_embeddings
        if max_len > cfg.max_position_embeddings:
            raise ValueError(f"max_len {max_len} exceeds max_position_embeddings {cfg.max_position_embeddings}")
        # rounded up to a multiple of 16 (within the model's context): the attention mask's rows stay aligned for
        # the fused attention kernels, whatever prompt length the caller sized the cache for
        self.max_len = min(-(-max_len // 16) * 16, cfg.max_position_embeddings)
        on_cuda = w.device.type == "cuda"
        self.step_kind = default_step(model) if step is None else step
        if self.step_kind not in STEPS:
            raise ValueError(f"step must be one of {'|'.join(STEPS)}, got {step!r}")
        self.cuda_graph = on_cuda if cuda_graph is None else cuda_graph
        if self.cuda_graph and not on_cuda:
            raise ValueError("cuda_graph needs the model on a CUDA device")
        self.caches = new_caches(model, batch_size, self.max_len, w.device, w.dtype)
        self.weights = None
        if self.step_kind == "triton":  # the concatenated weights, and one RoPE frequency table shared by every layer's cache
            self.weights = decode_kernel.fused_weights(model)
            inv_freq = rope_inv_freq(cfg.head_dim, cfg.rope_theta, w.device)
            for cache in self.caches:
                cache.inv_freq = inv_freq
        # the step's inputs live at fixed addresses, because a captured graph reads them from there
        self.tok = torch.zeros(batch_size, 1, dtype=torch.long, device=w.device)
        self.input_pos = torch.zeros(batch_size, 1, dtype=torch.long, device=w.device)  # each row's next position
        self.active = torch.ones(batch_size, 1, dtype=torch.bool, device=w.device)      # rows that advance
        self.temperature = torch.ones(1, device=w.device)
        self.top_p = torch.ones(1, device=w.device)
        # per-row settings ([B, 1]) and what they hold, on the host: rewritten only when a row's settings change
        self.row_settings = (torch.ones(batch_size, 1, device=w.device),
                             torch.zeros(batch_size, 1, dtype=torch.long, device=w.device),
                             torch.ones(batch_size, 1, device=w.device))
        self.row_values = None
        self.noise = None  # [B, vocab] float32, allocated on the first sampled step
        self.graphs, self.views = {}, {}
        self.pos = 0       # positions filled (the longest row's), known on the host: nothing needs reading back
        self.even = True   # every row at position pos (False after a right-padded prefill)
        self.last = None
        self.row_pos, self.live = [0] * batch_size, [True] * batch_size   # host copies of input_pos and active

    @torch.no_grad()
    def refresh_weights(self):
        """The model's weights changed in place (rl.py updates the policy between rollouts): rewrite the Triton
        step's concatenated copy in place, so the captured graphs, which read it at fixed addresses, stay valid.
        The compiled step has the old weights compiled in as constants: it cannot follow."""
        if self.step_kind == "compiled":
            raise ValueError("the compiled step froze the weights in: use step='triton' or 'eager' for weights that change")
        if self.weights is not None:
            decode_kernel.fused_weights(self.model, out=self.weights)

    def reset(self, pos=0):
        """Forget everything from position `pos` on (what lies beyond is masked, then overwritten); every row live."""
        self.pos, self.even, self.last = pos, True, None
        self.input_pos.fill_(pos)
        self.active.fill_(True)
        self.row_pos, self.live = [pos] * self.batch_size, [True] * self.batch_size

    def _prefill_logits(self, caches, idx, start, lengths=None):
        if self.step_kind == "triton" and idx.numel() <= decode_kernel.PREFILL_MAX_ROWS:
            return decode_kernel.prefill_logits(self.model, caches, idx, start, self.weights, lengths)
        return last_logits(self.model, idx, caches, start, lengths)   # int start: the plain path's causal attention

    @torch.no_grad()
    def prefill(self, idx, lengths=None):
        """Runs idx [B, T] at positions pos..pos+T-1 in one call (eager: any T, no recompilation), appends its keys
        and values to the cache, and returns the float logits of the last position [B, vocab]. `lengths` [B] (a
        list or tensor): right-padded rows of those lengths, each row's logits from its own last token (padding
        never reaches a real token: causal attention looks back only, and the decode steps overwrite and mask it)."""
        B, T = idx.shape
        if B != self.batch_size:
            raise ValueError(f"this Decoder holds batch size {self.batch_size}, got {B} rows")
        if not self.even:
            raise ValueError("the rows stand at different positions after a right-padded prefill: reset() first")
        if self.pos + T > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} positions: {self.pos} used + {T} do not fit")
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=idx.device)
            if not ((lengths >= 1) & (lengths <= T)).all():
                raise ValueError(f"lengths must lie in 1..{T} (the padded prompt length)")
        logits = self._prefill_logits(self.caches, idx, self.pos, lengths)
        if lengths is None:
            self.input_pos.fill_(self.pos + T)
        else:
            self.input_pos.copy_(self.pos + lengths[:, None])
        self.active.fill_(True)
        self.even = lengths is None
        self.pos += T
        self.row_pos, self.live = [self.pos] * B, [True] * B   # (the padded length: a bound, read without a sync)
        return logits

    @torch.no_grad()
    def prefill_slot(self, slot, ids, temperature=0, top_k=None, top_p=None, generator=None):
        """Row `slot` starts a new sequence: the prompt `ids` (a list, or a [T] / [1, T] tensor) prefilled into that
        row alone at positions 0..T-1, the other rows untouched. Returns its first token [1, 1], sampled from the
        prompt's last logits (sample_next's settings), which the next step() takes as the row's input."""
        ids = torch.as_tensor(ids, device=self.tok.device).view(1, -1)
        if not 0 <= slot < self.batch_size or not 1 <= ids.shape[1] <= self.max_len:
            raise ValueError(f"slot {slot} (of {self.batch_size}) with a prompt of {ids.shape[1]} tokens (of {self.max_len})")
        logits = self._prefill_logits([c.rows(slot) for c in self.caches], ids, 0)
        first = sample_next(logits, temperature, top_k, top_p, generator=generator)
        self.tok[slot] = first[0]
        self.input_pos[slot], self.active[slot] = ids.shape[1], True
        self.row_pos[slot], self.live[slot], self.even = ids.shape[1], True, False
        return first

    def release(self, slot=None):
        """Row `slot` (None: every row) leaves the batch: parked at position 0 until prefill_slot refills it."""
        for b in range(self.batch_size) if slot is None else [slot]:
            self.input_pos[b], self.active[b] = 0, False
            self.row_pos[b], self.live[b] = 0, False
        self.even = False

    def _sampling(self, temperature, top_k, top_p, n):
        """decode_step's sampling arguments for the first n rows (and the graph's key): numbers go into the fixed
        tensors the graph reads; sequences (one value a row) into the per-row tensors, when they changed."""
        if not any(isinstance(x, (list, tuple)) for x in (temperature, top_k, top_p)):
            if temperature == 0:
                return (0, None, None), (n, "greedy")
            self.temperature.fill_(temperature)
            top_p = self.top_p.fill_(top_p) if top_p is not None and top_p < 1.0 else None
            return (self.temperature, top_k or None, top_p), (n, "uniform", top_k or None, top_p is not None)
        each = lambda x, off: [off if v is None else v for v in (x if isinstance(x, (list, tuple)) else [x] * self.batch_size)]
        values = each(temperature, 0), each(top_k, 0), each(top_p, 1.0)
        if any(len(v) != self.batch_size for v in values):
            raise ValueError(f"per-row sampling settings take {self.batch_size} values")
        rows = [b for b in range(n) if self.live[b] and values[0][b] > 0]   # the live rows that sample
        if not rows:
            return (0, None, None), (n, "greedy")
        if values != self.row_values:
            for buf, v in zip(self.row_settings, values):
                buf.copy_(torch.tensor(v, dtype=buf.dtype)[:, None])
            self.row_values = values
        t, k, p = (x[:n] for x in self.row_settings)
        use_k, use_p = any(values[1][b] > 0 for b in rows), any(values[2][b] < 1 for b in rows)
        return (t, k if use_k else None, p if use_p else None), (n, "rows", use_k, use_p)

    def _graph(self, key, args, n):
        """The CUDA graph of the step for this sampling mode and row count, captured on first use. The warm-up runs
        (compilation, autotuning) happen outside the capture; what they change (the input token, the positions) is
        put back after each, so both write the cache only at the current positions, which the real step rewrites
        (and a cache with one free position left is never written past its end)."""
        if key not in self.graphs:
            saved = self.tok.clone(), self.input_pos.clone()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):
                    self._advance(args, n)
                    self.tok.copy_(saved[0]), self.input_pos.copy_(saved[1])
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self._advance(args, n)
            self.graphs[key] = (graph, out)
        return self.graphs[key]

    def _advance(self, args, n):
        """One step of the first n rows (Triton, compiled or eager): the next token, which is also fed back as the
        next input, and every live row's position moved on by one (a released row stays at 0) -- so, in a graph, a
        replay is all a token costs. Freezing and the tuning are read while dynamo traces, so the flags are set
        around every call (graph replays never call Python)."""
        if self.step_kind == "triton":
            nxt = decode_step(*args, logits=partial(decode_kernel.decode_logits, weights=self.weights))
        elif self.step_kind == "eager":
            nxt = decode_step(*args)
        else:
            with torch._inductor.config.patch(freezing=True, coordinate_descent_tuning=True):
                nxt = decode_step(*args, logits=partial(decode_logits, hidden=compiled_decode_hidden()))
        self.tok[:n].copy_(nxt)
        self.input_pos[:n].copy_(torch.where(self.active[:n], self.input_pos[:n] + 1, 0))
        return nxt

    @torch.no_grad()
    def step(self, tok=None, temperature=0, top_k=None, top_p=None, generator=None):
        """Appends tok [B, 1] (None: the token each row's previous step or prefill returned) at each live row's next
        position and returns the next token of the first n rows [n, 1] (n = B unless rows were released; no host
        sync). temperature / top_k / top_p: numbers, or sequences of B (one a row; 0 = greedy / off, 1 = off);
        generator: one, or a sequence of B (a row's None: torch's default)."""
        live = [b for b in range(self.batch_size) if self.live[b]]
        if not live:
            raise ValueError("no live row to step: prefill_slot first")
        if max(self.row_pos[b] for b in live) >= self.max_len:
            raise ValueError(f"the cache is full ({self.max_len} positions)")
        n = min(self.batch_size, 1 << (live[-1]).bit_length())   # a power of two that holds every live row
        if tok is not None:
            self.tok.copy_(tok)
        (temperature, top_k, top_p), key = self._sampling(temperature, top_k, top_p, n)
        noise = None
        if torch.is_tensor(temperature):
            if self.noise is None:
                self.noise = torch.empty(self.batch_size, self.model.config.vocab_size, device=self.tok.device)
            noise = self.noise[:n]
            if isinstance(generator, (list, tuple)):   # a row's own generator draws its row, as the plain path would
                if None in generator[:n]:
                    noise.exponential_()
                for b, g in enumerate(generator[:n]):
                    if g is not None:
                        self.noise[b].exponential_(generator=g)
            else:
                noise.exponential_(generator=generator)
        if n not in self.views:
            self.views[n] = self.caches if n == self.batch_size else [c.rows(0, n) for c in self.caches]
        args = (self.model, self.views[n], self.tok[:n], self.input_pos[:n], temperature, top_k, top_p, noise)
        if self.cuda_graph:
            graph, out = self._graph(key, args, n)
            graph.replay()
            nxt = out.clone()  # the next replay overwrites `out`
        else:
            nxt = self._advance(args, n)
        for b in live:
            self.row_pos[b] += 1
        self.pos += 1
        return nxt

    def _columns(self, idx, max_new_tokens, temperature, top_k, top_p, eos, generator, check_every, lengths=None):
        """Prefill idx, then yield max_new_tokens columns [B, 1], as the plain `stream` does; whether every row has
        produced eos is read back (a host sync) only every `check_every` tokens. From the second step on, each step
        takes the token the previous one produced (a row that has finished is fed its own token, not eos: what it
        yields is eos whatever it computes)."""
        if self.pos + idx.shape[1] + max_new_tokens > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} positions: {self.pos} used + prompt {idx.shape[1]} + "
                             f"{max_new_tokens} new tokens do not fit")
        if max_new_tokens <= 0:
            return
        eos = _eos_ids(eos, idx.device)
        done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        nxt = sample_next(self.prefill(idx, lengths), temperature, top_k, top_p, generator=generator)
        for i in range(max_new_tokens):
            if i:
                nxt = self.step(nxt if i == 1 else None, temperature, top_k, top_p, generator)
            if eos.numel():
                nxt = _eos_update(nxt, eos, done)
            self.last = nxt
            yield nxt
            if eos.numel() and (i + 1) % check_every == 0 and done.all():
                return

    @torch.no_grad()
    def stream(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, eos=None, generator=None):
        """Yields the next token column [B, 1] at each step, as the plain `stream` does, continuing from the cache's
        current position (reset() first to start over)."""
        yield from self._columns(idx, max_new_tokens, temperature, top_k, top_p, eos, generator, 1)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, eos=None, generator=None,
                 lengths=None):
        """idx with the new tokens appended, as the plain `generate` returns it, continuing from the cache's current
        position (reset() first to start over). It reads nothing back
        while decoding (eos is checked every 16 tokens), then trims the columns generated after every row
        finished, so the result equals the plain path's. With `lengths` (right-padded prompts, see prefill) the new
        tokens of every row are the columns after idx.shape[1], whatever its length."""
        cols = list(self._columns(idx, max_new_tokens, temperature, top_k, top_p, eos, generator, 16, lengths))
        if not cols:
            return idx
        new = torch.cat(cols, 1)
        eos = _eos_ids(eos, idx.device)
        if eos.numel():
            hit = torch.isin(new, eos)
            if hit.any(1).all():  # the plain path stops at the first column where every row has finished
                new = new[:, :int(hit.int().argmax(1).max()) + 1]
        return torch.cat([idx, new], dim=1)
