"""
Generation: a KV cache, sampling (temperature, top-k, top-p) and the token loop over a Qwen3. Two paths, which
emit the same tokens (tests/test_generate.py):
- the plain path, `stream` / `generate`: a Python loop running the model one token at a time against caches that
  grow by slicing. It works anywhere and is the definition, but on a GPU it is launch-bound (28 layers x ~15 small
  kernels a token, each launched from Python).
- the fast path, a `Decoder` (`stream` / `generate`; `prefill` / `step` for a chat; `prefill_slot` / `release` for
  continuous batching): a static KV cache, the prompt prefilled in one call, and a one-token step whose shapes never
  change (positions arrive as a tensor), captured in a CUDA graph with the lm_head and sampling and replayed for
  every token (gpt-fast's recipe): nothing waits for the GPU but what the caller reads. The step is decode_kernel.py's
  Triton kernels (`step="triton"`, the default on CUDA), or the PyTorch step below compiled or eager (the CPU).

    out = generate(model, idx, 256, temperature=0)                 # the plain path
    dec = Decoder(model, batch_size=1, max_len=prompt_len + 256)   # once; on CUDA: Triton + CUDA graphs
    out = dec.generate(idx, 256, temperature=0)                    # continues the cache: dec.reset() to start over
The model runs a chunk of tokens from `start` (an int, or [B, T] positions) against per-layer caches (anything with
`update(start, k, v) -> (keys, values)`).
"""
from functools import partial

import torch
import torch.nn.functional as F

import decode_kernel
from model import rope_inv_freq


class KVCache:
    """Preallocated keys/values for one layer: [B, n_kv_heads, max_len, head_dim]. update(start, k, v) with an int
    `start` (the plain path, prefill) writes positions start.. and returns the filled prefix; with [B, T] positions
    (the decode step; each row its own) it writes there and returns the whole buffer (attention masks the rest)."""

    def __init__(self, batch, n_kv_heads, max_len, head_dim, device, dtype, inv_freq=None):
        self.k = torch.zeros(batch, n_kv_heads, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.inv_freq = inv_freq  # RoPE's frequencies, for decode_kernel.py's step (one table shared by the layers)

    def update(self, start, k, v):
        if torch.is_tensor(start):  # index_put (row b, every head, position start[b, t]): an in-place scatter
            rows = torch.arange(k.shape[0], device=k.device)[:, None]
            self.k[rows, :, start] = k.transpose(1, 2).to(self.k.dtype)
            self.v[rows, :, start] = v.transpose(1, 2).to(self.v.dtype)
            return self.k, self.v
        end = start + k.shape[2]
        self.k[:, :, start:end], self.v[:, :, start:end] = k, v
        return self.k[:, :, :end], self.v[:, :, :end]

    def rows(self, first, n=1):
        """Rows first..first+n-1 as a KVCache of their own, made of views: what is written there lands here."""
        view = KVCache.__new__(KVCache)
        view.k, view.v, view.inv_freq = self.k[first:first + n], self.v[first:first + n], self.inv_freq
        return view


def new_caches(model, batch, max_len, device, dtype, inv_freq=None):
    c = model.config
    return [KVCache(batch, c.num_key_value_heads, max_len, c.head_dim, device, dtype, inv_freq)
            for _ in range(c.num_hidden_layers)]


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, noise=None, generator=None):
    """logits [B, V] float -> next ids [B, 1]. temperature 0 = greedy; top_k / top_p filter before sampling.

    temperature and top_p may be numbers or device tensors (one captured graph then serves every value); per row,
    [B, 1] tensors (a Decoder's slots): temperature (0: that row greedy), top_k (long, 0 = off), top_p (1 = off).
    Sampling is the exponential race: argmax(probs / E), E ~ Exponential(1) i.i.d., picks i with probability
    probs[i] without a host sync, so it can live in a CUDA graph. `noise` is E ([B, V] float32), else drawn here."""
    if not torch.is_tensor(temperature) and temperature == 0:
        return logits.argmax(-1, keepdim=True)
    sampled = temperature > 0 if torch.is_tensor(temperature) and temperature.dim() == 2 else None   # per row
    raw, sorted_logits = logits, None
    logits = logits / (temperature if sampled is None else torch.where(sampled, temperature, 1.0))
    if torch.is_tensor(top_k):   # per row: the k-th largest value read from the sorted row (top_p sorts anyway)
        sorted_logits, order = logits.sort(-1, descending=True)
        kth = sorted_logits.gather(-1, torch.where(top_k > 0, top_k, logits.shape[-1]).clamp_max(logits.shape[-1]) - 1)
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
    noise = torch.empty_like(probs).exponential_(generator=generator) if noise is None else noise
    # E can be exactly 0; clamping keeps a filtered token (prob 0) at 0 instead of 0/0 = nan, which argmax would pick
    nxt = (probs / noise.clamp_min(torch.finfo(noise.dtype).tiny)).argmax(-1, keepdim=True)
    return nxt if sampled is None else torch.where(sampled, nxt, raw.argmax(-1, keepdim=True))   # rows at 0: greedy


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
    if (total := idx.shape[1] + max_new_tokens) > (ctx := model.config.max_position_embeddings):
        raise ValueError(f"prompt + max_new_tokens = {total} exceeds max_position_embeddings {ctx}")
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
    return torch.cat([idx, *stream(model, idx, max_new_tokens, temperature, top_k, top_p, eos, generator)], dim=1)


# ------------------------------------------------------------------------------------------------ fast path
def decode_hidden(model, caches, tok, input_pos):
    """The token tok [B, 1] at the positions input_pos ([B, 1] long) -> the final hidden state [B, hidden], its keys
    and values written into the caches. No shape depends on the position: compiled and captured once."""
    return model.hidden_states(tok, caches, input_pos)[:, -1]


def decode_logits(model, caches, tok, input_pos, hidden=decode_hidden):
    """decode_hidden (or its compiled form), then the lm_head -> float logits [B, vocab]. The lm_head stays outside
    the compiled part: cuBLAS reads the large embedding matrix faster than inductor's tuned reduction."""
    return F.linear(hidden(model, caches, tok, input_pos), model.lm_head_weight).float()


def decode_step(model, caches, tok, input_pos, temperature=0, top_k=None, top_p=None, noise=None, logits=decode_logits):
    """`logits` (decode_logits, compiled or not, or decode_kernel.decode_logits), then sample_next -> [B, 1]."""
    return sample_next(logits(model, caches, tok, input_pos), temperature, top_k, top_p, noise)


def frozen_decode_hidden(*args):
    """decode_hidden under its own code object, so that its compiled (frozen) code never mixes with decode_hidden's."""
    return decode_hidden(*args)


_compiled = {}


def compiled_decode_hidden():
    """decode_hidden under torch.compile with inductor's freezing, made on first use and shared by decoders of one batch
    size and max_len (another shape recompiles). Freezing makes the weights constants, so q/k/v and gate/up become one
    matmul each (4 a layer, not 7: a launch-bound step); dynamo guards on the parameters (another model recompiles)."""
    if "frozen" not in _compiled:
        _compiled["frozen"] = torch.compile(frozen_decode_hidden, fullgraph=True)
    return _compiled["frozen"]


def capture(run, warmups, undo=lambda: None):
    """run() captured in a CUDA graph after `warmups` runs on a side stream, each then undo() -> (graph, output)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(warmups):
            run(), undo()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run()
    return graph, out


STEPS = ("triton", "compiled", "eager")
PREFILL_GRAPH_MAX = 512   # prefill_slot: the longest padded prompt prefilled through a scratch row (a CUDA graph each)


def default_step(model, compiled=True):
    """The Decoder's step when none is named: on CUDA the Triton kernels where decode_kernel.available says they
    serve the model, else the compiled PyTorch step (compiled=False: the eager one); on the CPU the eager step."""
    w = model.model.embed_tokens.weight
    if w.device.type != "cuda":
        return "eager"
    return "triton" if decode_kernel.available(model.config, w.dtype) else "compiled" if compiled else "eager"


class Decoder:
    """The fast path for one model and batch size: a static KV cache of `max_len` positions (default: the model's
    context; the PyTorch step reads all of it, the Triton step what lies before each position) and the decode step
    (one of STEPS; default_step picks it), replayed as CUDA graphs (`cuda_graph`, the default on CUDA). Build it once:
    the compiled code and the graphs (one per sampling mode and row count) are kept. The compiled step has the
    weights compiled in: inference only; the Triton step's concatenated q/k/v and gate/up copy follows
    refresh_weights() (rl.py). The cache is continued: `prefill` appends at `pos` (a chat keeps its history; `reset(pos)`
    rewinds); after `stream`/`generate` it holds all but the last token (`last`). Right-padded prompts share a batch
    with `lengths` (C-Eval GEN), a prompt its rows with `repeat` (rl.py). Slots (serve.py): a request holds a row from
    `prefill_slot` to `release` (parked at position 0 by a device-side mask: no host sync); step() takes per-row
    sampling settings ([B, 1] tensors: one graph serves every mix) and runs the first n rows, n a power of two."""

    def __init__(self, model, batch_size=1, max_len=None, step=None, cuda_graph=None):
        cfg, w = model.config, model.model.embed_tokens.weight
        self.model, self.batch_size = model, batch_size
        max_len = max_len or cfg.max_position_embeddings
        if max_len > cfg.max_position_embeddings:
            raise ValueError(f"max_len {max_len} exceeds max_position_embeddings {cfg.max_position_embeddings}")
        # a multiple of 16 (within the model's context): the attention mask's rows stay aligned for the fused kernels
        self.max_len = min(-(-max_len // 16) * 16, cfg.max_position_embeddings)
        self.step_kind = default_step(model) if step is None else step
        if self.step_kind not in STEPS:
            raise ValueError(f"step must be one of {'|'.join(STEPS)}, got {step!r}")
        self.cuda_graph = w.is_cuda if cuda_graph is None else cuda_graph
        if self.cuda_graph and not w.is_cuda:
            raise ValueError("cuda_graph needs the model on a CUDA device")
        triton = self.step_kind == "triton"   # its concatenated weights and RoPE table
        self.weights = decode_kernel.fused_weights(model) if triton else None
        self.caches = new_caches(model, batch_size, self.max_len, w.device, w.dtype,
                                 rope_inv_freq(cfg.head_dim, cfg.rope_theta, w.device) if triton else None)
        # the step's inputs live at fixed addresses, because a captured graph reads them from there
        new = lambda fill, dtype=torch.float32, *shape: torch.full(shape or (batch_size, 1), fill, dtype=dtype, device=w.device)
        self.tok, self.input_pos = new(0, torch.long), new(0, torch.long)   # each row's next input and its position
        self.active = new(True, torch.bool)                                 # the rows that advance
        self.row_settings = new(1.0), new(0, torch.long), new(1.0)   # per row: temperature, top_k, top_p
        self.row_values = None   # what row_settings hold, on the host
        self.noise = new(0.0, torch.float32, batch_size, cfg.vocab_size)   # the sampling noise, drawn before each step
        self.graphs, self.views = {}, {n: [c.rows(0, n) for c in self.caches]   # the first n rows, n a power of two
                                       for n in {min(batch_size, 1 << i) for i in range(batch_size.bit_length() + 1)}}
        # on the host: pos filled (the longest row's); even: every row at pos; row_pos, live: input_pos's bounds, active
        self.pos, self.even, self.last, self.row_pos, self.live = 0, True, None, [0] * batch_size, [True] * batch_size
        self.slot_prefill = None   # prefill_slot's scratch cache and inputs, made on first use

    @torch.no_grad()
    def refresh_weights(self):
        """After the model's weights changed in place: the Triton step's concatenated copy rewritten in place (the
        graphs read it at fixed addresses). The compiled step has the old weights compiled in: it cannot follow."""
        if self.step_kind == "compiled":
            raise ValueError("the compiled step froze the weights in: use step='triton' or 'eager' for weights that change")
        if self.weights is not None:
            decode_kernel.fused_weights(self.model, out=self.weights)

    def reset(self, pos=0):
        """Forget everything from position `pos` on (what lies beyond is masked, then overwritten); every row live."""
        self.pos, self.even, self.last, self.row_pos, self.live = pos, True, None, [pos] * self.batch_size, [True] * self.batch_size
        self.input_pos.fill_(pos), self.active.fill_(True)

    def _prefill_logits(self, caches, idx, start, lengths=None):   # the Triton kernels' prefill, or the model's
        if self.step_kind == "triton" and idx.numel() <= decode_kernel.PREFILL_MAX_ROWS:
            return decode_kernel.prefill_logits(self.model, caches, idx, start, self.weights, lengths)
        return last_logits(self.model, idx, caches, start, lengths)

    @torch.no_grad()
    def prefill(self, idx, lengths=None, repeat=1):
        """Runs idx [B, T] at positions pos..pos+T-1 in one call (any T, no recompilation) into the cache; the float
        logits of the last position [B, vocab]. `lengths` [B]: right-padded rows, each row's logits from its own last
        token (padding never reaches a real token: causal attention looks back only; the steps overwrite it). repeat:
        a row of idx stands for `repeat` rows (rl.py's group answering one prompt), run once, its keys/values copied."""
        if (B := idx.shape[0] * repeat) != self.batch_size:
            raise ValueError(f"this Decoder holds batch size {self.batch_size}, got {B} rows")
        if not self.even or (repeat > 1 and self.pos):   # (repeat copies rows 0..n-1: they hold no group's history)
            raise ValueError("reset() first: " + ("a repeated prompt needs an empty cache" if self.even else
                                                  "the rows stand at different positions after a right-padded prefill"))
        if self.pos + (T := idx.shape[1]) > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} positions: {self.pos} used + {T} do not fit")
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=idx.device)
            if not ((lengths >= 1) & (lengths <= T)).all():
                raise ValueError(f"lengths must lie in 1..{T} (the padded prompt length)")
        n, at = idx.shape[0], slice(self.pos, self.pos + T)
        logits = self._prefill_logits([c.rows(0, n) for c in self.caches], idx, self.pos, lengths)
        if repeat > 1:   # rows 0..n-1 to all B (repeat_interleave reads all n before any is overwritten)
            for buf in (b for c in self.caches for b in (c.k, c.v)):
                buf[:, :, at] = buf[:n, :, at].repeat_interleave(repeat, 0)
            logits, lengths = logits.repeat_interleave(repeat, 0), lengths if lengths is None else lengths.repeat_interleave(repeat)
        self.input_pos.fill_(self.pos + T) if lengths is None else self.input_pos.copy_(self.pos + lengths[:, None])
        self.active.fill_(True)
        self.even, self.pos = lengths is None, self.pos + T
        self.row_pos, self.live = [self.pos] * B, [True] * B   # (the padded length: a bound, known without a sync)
        return logits

    @torch.no_grad()
    def prefill_slot(self, slot, ids, temperature=0, top_k=None, top_p=None, generator=None):
        """Row `slot` starts a new sequence: the prompt `ids` (a list, or a [T] / [1, T] tensor) prefilled into that
        row alone at positions 0..T-1, the other rows untouched. Returns its first token [1, 1], sampled from the
        prompt's last logits (sample_next's settings), which the next step() takes as the row's input. Up to
        PREFILL_GRAPH_MAX tokens it is right-padded to a power of two (>= 16), prefilled in a scratch row and copied into
        row `slot` (a tensor index): one CUDA graph a padded length serves every slot (eager: ~200 launches)."""
        ids = torch.as_tensor(ids, device=self.tok.device).view(-1)
        if not 0 <= slot < self.batch_size or not 1 <= (T := ids.shape[0]) <= self.max_len:
            raise ValueError(f"slot {slot} (of {self.batch_size}), a prompt of {T} tokens (of {self.max_len})")
        padded = max(16, 1 << (T - 1).bit_length())
        if padded > min(PREFILL_GRAPH_MAX, self.max_len):
            logits = self._prefill_logits([c.rows(slot) for c in self.caches], ids.view(1, -1), 0)
        else:
            if self.slot_prefill is None:   # a scratch row of the largest padded length; ids, length and slot buffers
                w, size = self.tok, 1 << (min(PREFILL_GRAPH_MAX, self.max_len).bit_length() - 1)
                scratch = new_caches(self.model, 1, size, w.device, self.caches[0].k.dtype, self.caches[0].inv_freq)
                self.slot_prefill = scratch, w.new_zeros(1, size), w.new_zeros(1), w.new_zeros(1), {}
            scratch, buf, length, row, graphs = self.slot_prefill
            buf[0, :T].copy_(ids), length.fill_(T), row.fill_(slot)

            def run():   # the padded prompt into the scratch row, its keys and values copied into row `row`
                logits = self._prefill_logits(scratch, buf[:, :padded], 0, length)
                for cache, tmp in zip(self.caches, scratch):
                    cache.k[:, :, :padded].index_copy_(0, row, tmp.k[:, :, :padded])
                    cache.v[:, :, :padded].index_copy_(0, row, tmp.v[:, :, :padded])
                return logits
            if self.cuda_graph and self.step_kind == "triton":
                if padded not in graphs:   # (its warm-up run computes this very prefill)
                    graphs[padded] = capture(run, 1)
                graphs[padded][0].replay()
                logits = graphs[padded][1]
            else:
                logits = run()
        first = sample_next(logits, temperature, top_k, top_p, generator=generator)
        self.tok[slot], self.input_pos[slot], self.active[slot] = first[0], T, True
        self.row_pos[slot], self.live[slot], self.even = T, True, False
        return first

    def release(self, slot=None):
        """Row `slot` (None: every row) leaves the batch: parked at position 0 until prefill_slot refills it."""
        for b in range(self.batch_size) if slot is None else [slot]:
            self.input_pos[b], self.active[b], self.row_pos[b], self.live[b] = 0, False, 0, False
        self.even = False

    def _sampling(self, temperature, top_k, top_p, n):
        """decode_step's sampling arguments for the first n rows, and the graph's key: the settings (numbers, or
        sequences of a value a row) go into the per-row tensors the graph reads, copied only when they change."""
        B = self.batch_size
        each = lambda x, off: [off if v is None else v for v in (x if isinstance(x, (list, tuple)) else [x] * B)]
        values = each(temperature, 0), each(top_k, 0), each(top_p, 1.0)
        if any(len(v) != B for v in values):
            raise ValueError(f"per-row sampling settings take {B} values")
        sampled = [b for b in range(n) if self.live[b] and values[0][b] > 0]
        if not sampled:
            return (0, None, None), (n, "greedy")
        if values != self.row_values:
            self.row_values = None   # until every buffer holds the new values: a value that fails to copy is redone
            for buf, v in zip(self.row_settings, values):
                buf.copy_(torch.tensor(v, dtype=buf.dtype)[:, None])
            self.row_values = values
        use_k, use_p = any(values[1][b] > 0 for b in sampled), any(values[2][b] < 1 for b in sampled)
        t, k, p = (x[:n] for x in self.row_settings)
        return (t, k if use_k else None, p if use_p else None), (n, use_k, use_p)

    def _advance(self, args, n):
        """One step of the first n rows: the next token, fed back as the next input, each live row's position moved on
        (a released row stays at 0): in a graph, a replay is all a token costs. (Dynamo reads the inductor flags.)"""
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
        """Appends tok [B, 1] (None: each row's token from its previous step or prefill) at each live row's next
        position and returns the next token of the first n rows [n, 1] (n = B unless rows were released; no host
        sync). temperature / top_k / top_p: numbers, or sequences of B (a value a row: 0 = greedy / off, 1 = off);
        generator: one, or a sequence of B (a row's None: torch's default)."""
        live = [b for b in range(self.batch_size) if self.live[b]]
        if not live or max(self.row_pos[b] for b in live) >= self.max_len:
            raise ValueError(f"the cache is full ({self.max_len} positions)" if live else "no live row: prefill_slot first")
        n = min(self.batch_size, 1 << live[-1].bit_length())   # a power of two that holds every live row
        self.tok.copy_(tok) if tok is not None else None
        (temperature, top_k, top_p), key = self._sampling(temperature, top_k, top_p, n)
        noise = None
        if torch.is_tensor(temperature):
            gens = generator if isinstance(generator, (list, tuple)) else None
            noise = self.noise[:n].exponential_(generator=None if gens else generator)
            for b, g in enumerate(gens[:n] if gens else []):   # a row's own generator draws its row, as alone
                if g is not None:
                    self.noise[b].exponential_(generator=g)
        args = (self.model, self.views[n], self.tok[:n], self.input_pos[:n], temperature, top_k, top_p, noise)
        if self.cuda_graph:   # a graph per sampling mode and row count, captured on first use after two warm-ups,
            if key not in self.graphs:   # each undone (token, positions): the cache is written where the step writes
                saved = self.tok.clone(), self.input_pos.clone()
                self.graphs[key] = capture(partial(self._advance, args, n), 2,
                                           lambda: (self.tok.copy_(saved[0]), self.input_pos.copy_(saved[1])))
            graph, out = self.graphs[key]
            graph.replay()
            nxt = out.clone()  # the next replay overwrites `out`
        else:
            nxt = self._advance(args, n)
        self.row_pos = [p + a for p, a in zip(self.row_pos, self.live)]
        self.pos += 1
        return nxt

    def _columns(self, idx, max_new_tokens, temperature, top_k, top_p, eos, generator, check_every, **prefill):
        """Prefill idx, then yield max_new_tokens columns [B, 1] as the plain `stream` does, reading back whether every
        row has produced eos (a host sync) every `check_every` tokens. A finished row yields eos, whatever it is fed."""
        if self.pos + idx.shape[1] + max_new_tokens > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} positions: {self.pos} used + prompt {idx.shape[1]} + "
                             f"{max_new_tokens} new tokens do not fit")
        if max_new_tokens <= 0:
            return
        eos = _eos_ids(eos, idx.device)
        done = torch.zeros(self.batch_size, dtype=torch.bool, device=idx.device)   # (prefill checks that idx fills it)
        nxt = sample_next(self.prefill(idx, **prefill), temperature, top_k, top_p, generator=generator)
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
        """The plain `stream`'s columns [B, 1], continuing from the cache's position (reset() first to start over)."""
        yield from self._columns(idx, max_new_tokens, temperature, top_k, top_p, eos, generator, 1)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, eos=None, generator=None,
                 lengths=None, repeat=1):
        """The plain `generate`'s result, continuing the cache (reset() to start over); eos checked every 16 tokens, the
        columns after every row finished trimmed. With `lengths` (see prefill) the new tokens follow idx.shape[1];
        with `repeat` (see prefill) each row of idx answers `repeat` times (rows of the result)."""
        cols = list(self._columns(idx, max_new_tokens, temperature, top_k, top_p, eos, generator, 16, lengths=lengths, repeat=repeat))
        idx = idx.repeat_interleave(repeat, 0) if repeat > 1 else idx
        if not cols:
            return idx
        new = torch.cat(cols, 1)
        if (eos := _eos_ids(eos, idx.device)).numel():
            hit = torch.isin(new, eos)
            if hit.any(1).all():  # the plain path stops at the first column where every row has finished
                new = new[:, :int(hit.int().argmax(1).max()) + 1]
        return torch.cat([idx, new], dim=1)
