"""
Serve a model behind an OpenAI-compatible API, with a chat page at `/`.

    pip install -r requirements-serve.txt
    python serve.py --init_from=out_poem --port=8000        # http://127.0.0.1:8000/ : the chat page
    python serve.py --init_from=out_poem --host=0.0.0.0     # reachable from other machines (there is no authentication)

Endpoints: GET /v1/models, POST /v1/chat/completions and /v1/completions (non-streamed, or `"stream": true`:
server-sent events ending in `data: [DONE]`), GET /health. Requests take temperature, top_p, top_k, max_tokens /
max_completion_tokens, stop, seed, stream_options.include_usage, and for a chat tools and
chat_template_kwargs.enable_thinking; what they leave out comes from the model's generation_config.json. The prompt is
tokenizer.render_chat's (Qwen3's template, what sft.py trains on); the answer is parsed as vLLM's qwen3 reasoning and
hermes tool parsers do: <think>...</think> -> reasoning_content, <tool_call>{json}</tool_call> -> tool_calls
(arguments a JSON string), finish_reason stop / length / tool_calls. A max_tokens past the context is cut to what fits.

Errors are OpenAI's {"error": {"message", "type", "param", "code"}}: 400 broken JSON or a value out of range
(max_tokens <= 0, temperature < 0), 422 a missing or wrongly typed field or an unknown role, 404 an unknown model
or route, 413 a prompt that leaves no room in the context, 429 a full queue. No request can stop the server.

Continuous batching: one engine thread owns a generate.Decoder of `slots` rows (on CUDA the Triton step replayed as
CUDA graphs). A request waits in a bounded queue, is prefilled into a free row between two decode steps (at most
`prefill_tokens` prompt tokens between two steps, so a long prompt stalls the others only for its own prefill), then
decodes with every other live row in one batched step, each row with its own sampling settings and seed, and leaves
when it ends or its client goes away (the slot is free for the next step). The engine launches step k+1 before it
hands out step k's tokens, so the GPU never waits for Python.

FastAPI + uvicorn, the field's usual ASGI pair (vLLM, SGLang and `transformers serve` use it): HTTP/1.1 keep-alive,
streaming and client disconnects handled by a maintained server instead of code of ours on http.server.
"""
import asyncio, json, os, sys, threading, time, traceback, uuid
from collections import deque

import torch

from checkpoint import load_model
from generate import Decoder
from tokenizer import END_THINK, EOT, IM_END, N_ORDINARY, QWEN_VOCAB, THINK, StreamDecoder, get_tokenizer, render_chat

init_from = "out"       # a training out_dir (its newest checkpoint), a checkpoint dir, or a Hugging Face directory
host = "127.0.0.1"      # loopback only; 0.0.0.0 exposes the server to the network
port = 8000
model_name = ""         # what clients send as "model" ("" = the name of init_from's directory)
slots = 32 if torch.cuda.is_available() else 8   # requests decoded together (the Decoder's batch)
context = 4096          # positions a request may fill, prompt + answer (at most the model's max_position_embeddings)
max_queue = 256         # requests waiting for a slot; one more gets 429
prefill_tokens = 2048   # prompt tokens prefilled between two decode steps (at least one prompt)
step = ""               # the Decoder's step ("" = its default: triton on CUDA, eager on the CPU)
warmup = True           # capture the CUDA graphs before the first request (CUDA only)
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = "bfloat16" if torch.cuda.is_available() else "float32"
STOP = (IM_END, EOT)
TOOL_CALL, END_TOOL_CALL = N_ORDINARY + 14, N_ORDINARY + 15   # <tool_call>, </tool_call>
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "chat.html")


class ApiError(Exception):
    def __init__(self, status, message, param=None, code=None, kind="invalid_request_error"):
        super().__init__(message)
        self.status, self.body = status, {"error": {"message": message, "type": kind, "param": param, "code": code}}


# ------------------------------------------------------------------------------------------ the answer's parser
class Output:
    """A request's tokens -> events ("content" | "reasoning", text) and ("tool_call", {name, arguments}), as vLLM's
    qwen3 reasoning parser and hermes tool parser read Qwen3's output; raw=True (/v1/completions) passes all text
    through. `stop` strings end the output (hit=True) where they occur, so text that may begin one is held back.
    The same events make the streamed deltas and the whole answer, so both always say the same."""

    def __init__(self, stop=(), raw=False):
        self.stop, self.raw, self.hit, self.tool_calls = list(stop), raw, False, 0
        self.detok, self.kind, self.window, self.call = StreamDecoder(get_tokenizer()), "content", "", None
        self.section, self.held = "", ""   # this section's text so far (leading whitespace dropped); trailing whitespace

    def push(self, tok):
        if self.hit:
            return []
        if self.raw or tok < N_ORDINARY or tok not in (THINK, END_THINK, TOOL_CALL, END_TOOL_CALL):
            if tok >= N_ORDINARY and not self.raw:
                return []   # other special tokens say nothing
            if self.call is not None:
                self.call += self.detok.push(tok)
                return []
            return self._text(self.detok.push(tok))
        events = self._text(self.detok.flush()) + self._text("", end=True)
        if tok == THINK:
            self.kind = "reasoning"
        elif tok == END_THINK:
            self.kind = "content"
        elif tok == TOOL_CALL:
            self.call = ""
        elif self.call is not None:   # </tool_call>: hermes' JSON, or (unparsable) left as content
            call, self.call = self.call + self.detok.flush(), None
            try:
                obj = json.loads(call)
                args = obj.get("arguments", {})
                event = {"name": str(obj["name"]), "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)}
            except (ValueError, KeyError, TypeError, AttributeError):
                return events + self._text(f"<tool_call>{call}</tool_call>") + self._text("", end=True)
            self.tool_calls += 1
            events.append(("tool_call", event))
        return events

    def close(self):
        if self.call is not None:   # a tool call cut off: its text is content
            text, self.call = "<tool_call>" + self.call, None
            return self._text(text + self.detok.flush()) + self._text("", end=True)
        return self._text(self.detok.flush()) + self._text("", end=True)

    def _text(self, text, end=False):
        """Stop strings over the text so far, then whitespace: a section's leading and trailing whitespace is dropped
        (the template's newlines around <think> blocks and tool calls), raw text is passed as is."""
        s = self.window + text
        cut = min((i for i in (s.find(x) for x in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            s, self.hit, end = s[:cut], True, True
        keep = 0 if end else max((k for x in self.stop for k in range(len(x) - 1, 0, -1) if s.endswith(x[:k])), default=0)
        s, self.window = s[:len(s) - keep], s[len(s) - keep:]
        if self.raw:
            return [("content", s)] if s else []
        s = self.held + s
        if not self.section:
            s = s.lstrip()
        body = s.rstrip()
        self.held = "" if end else s[len(body):]
        self.section = "" if end else self.section + body
        return [(self.kind, body)] if body else []


# ------------------------------------------------------------------------------------------ the engine
class Request:
    def __init__(self, ids, max_new, sampling, seed, output, loop):
        self.ids, self.max_new, self.sampling, self.output, self.loop = ids, max_new, sampling, output, loop
        self.gen = None if seed is None else torch.Generator(device).manual_seed(seed)
        self.queue, self.done, self.cancelled, self.generated = asyncio.Queue(), False, False, 0

    def send(self, item):   # from the engine thread to the request's handler
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class Engine:
    """The thread that owns the Decoder: admits waiting requests into free rows, steps the live rows, hands out
    their tokens (see the module's docstring)."""

    def __init__(self, model, n_slots, max_len, step_kind=None):
        self.dec = Decoder(model, n_slots, max_len=max_len, step=step_kind or None)
        self.context, self.slots = self.dec.max_len, n_slots
        self.dec.release()
        self.owner, self.waiting, self.lock, self.wake = [None] * n_slots, deque(), threading.Lock(), threading.Event()
        self.pinned = None
        if self.dec.tok.is_cuda:   # step k's tokens are copied out while step k+1 runs
            self.pinned = [torch.empty(n_slots, 1, dtype=torch.long, pin_memory=True) for _ in range(2)]
            self.events = [torch.cuda.Event() for _ in range(2)]
        self.count = self.generated = 0   # steps, tokens handed out

    def submit(self, req):
        with self.lock:
            if len(self.waiting) >= max_queue:
                raise ApiError(429, f"the server is busy ({max_queue} requests waiting): retry later", None,
                               "queue_full", "rate_limit_error")
            self.waiting.append(req)
        self.wake.set()

    def warm(self):
        """Every graph the server can need, captured now: greedy and sampled (with and without filters) steps over
        1, 2, 4, ... rows."""
        n = 1
        while True:
            n = min(n, self.slots)
            for b in range(n):
                self.dec.prefill_slot(b, [0])
            for t, k, p in ((0, 0, 1.0), (1.0, 0, 1.0), (1.0, 5, 1.0), (1.0, 0, 0.9), (1.0, 5, 0.9)):
                self.dec.step(None, [t] * self.slots, [k] * self.slots, [p] * self.slots)
            self.dec.release()
            if n == self.slots:
                break
            n *= 2

    def run(self):
        inflight = None
        while True:
            try:
                self._retire()
                self._admit()
                launched = None
                if any(self.dec.live):
                    live = [r if r is not None and not r.done else None for r in self.owner]
                    s = [r.sampling if r else (0, 0, 1.0) for r in live]
                    nxt = self.dec.step(None, *zip(*s), [r.gen if r else None for r in live])
                    launched = (self._to_host(nxt), live)
                if inflight:
                    self._deliver(*inflight)
                inflight = launched
                if inflight is None:
                    self.wake.wait(0.2)
                    self.wake.clear()
            except Exception as e:   # a failed step fails the requests in it, never the server
                traceback.print_exc()
                for r in self.owner:
                    if r is not None and not r.done:
                        r.done = True
                        r.send(("error", f"generation failed: {type(e).__name__}: {e}"))
                self.owner, inflight = [None] * self.slots, None
                self.dec.release()

    def _to_host(self, nxt):
        if self.pinned is None:
            return nxt
        self.count += 1
        buf, ev = self.pinned[self.count % 2][:len(nxt)], self.events[self.count % 2]
        buf.copy_(nxt, non_blocking=True)
        ev.record()
        return buf, ev

    def _deliver(self, toks, live):
        if self.pinned is not None:
            toks[1].synchronize()
            toks = toks[0]
        for slot, tok in enumerate(toks[:, 0].tolist()):
            if live[slot] is not None and not live[slot].done:
                self._token(live[slot], tok)

    def _retire(self):
        for slot, r in enumerate(self.owner):
            if r is not None and (r.done or r.cancelled):
                r.done = True
                self.owner[slot] = None
                self.dec.release(slot)

    def _admit(self):
        budget = prefill_tokens
        while None in self.owner:
            with self.lock:
                if not self.waiting or (budget < len(self.waiting[0].ids) and budget < prefill_tokens):
                    return
                r = self.waiting.popleft()
            if r.cancelled:
                continue
            slot = self.owner.index(None)
            budget -= len(r.ids)
            t, k, p = r.sampling
            try:
                first = self.dec.prefill_slot(slot, r.ids, t, k, p, generator=r.gen).item()
            except Exception as e:
                traceback.print_exc()
                self.dec.release(slot)
                r.done = True
                r.send(("error", f"prefill failed: {type(e).__name__}: {e}"))
                continue
            self.owner[slot] = r
            self._token(r, first)
            if r.done:
                self._retire()

    def _token(self, r, tok):
        r.generated += 1
        self.generated += 1
        events = [] if tok in STOP else r.output.push(tok)
        finish = None
        if tok in STOP or r.output.hit:
            finish = "stop"
        elif r.generated >= r.max_new:
            finish = "length"
        if finish:
            events += r.output.close()
            if finish == "stop" and r.output.tool_calls:
                finish = "tool_calls"
            r.done = True
        if events or finish:
            r.send(("events", events, finish))


# ------------------------------------------------------------------------------------------ the API
MISSING = object()


def field(body, key, types, default=MISSING, ok=None, want=""):
    """body[key] checked: missing or of the wrong type 422, a value that fails `ok` 400."""
    value = body.get(key)
    if value is None:
        if default is MISSING:
            raise ApiError(422, f"'{key}' is required", key, "missing_required_parameter")
        return default
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        raise ApiError(422, f"'{key}' must be {want}, got {json.dumps(value)[:80]}", key, "invalid_type")
    if ok is not None and not ok(value):
        raise ApiError(400, f"'{key}' must be {want}, got {json.dumps(value)[:80]}", key, "invalid_value")
    return value


def sampling_args(body, defaults):
    num = (int, float)
    t = field(body, "temperature", num, defaults.get("temperature", 1.0), lambda v: 0 <= v <= 2, "a number in [0, 2]")
    p = field(body, "top_p", num, defaults.get("top_p", 1.0), lambda v: 0 < v <= 1, "a number in (0, 1]")
    k = field(body, "top_k", (int,), defaults.get("top_k", 0), lambda v: v >= -1, "an integer >= -1 (-1 or 0: off)")
    n = field(body, "max_completion_tokens", (int,), None, lambda v: v > 0, "an integer > 0")
    n = field(body, "max_tokens", (int,), n, lambda v: v > 0, "an integer > 0")
    stop = field(body, "stop", (str, list), [], lambda v: isinstance(v, str) or (len(v) <= 4 and all(
        isinstance(s, str) and s for s in v)), "a string or a list of up to 4 non-empty strings")
    seed = field(body, "seed", (int,), None, None, "an integer")
    field(body, "n", (int,), 1, lambda v: v == 1, "1 (one choice per request)")
    if field(body, "logprobs", (bool, int), False) or field(body, "echo", (bool,), False):
        raise ApiError(400, "logprobs and echo are not supported", "logprobs", "unsupported_parameter")
    stream = field(body, "stream", (bool,), False, None, "a boolean")
    opts = field(body, "stream_options", (dict,), {}, None, "an object")
    usage = field(opts, "include_usage", (bool,), False, None, "a boolean")
    return (float(t), max(k, 0), float(p)), n, [stop] if isinstance(stop, str) else stop, seed, stream, usage


def chat_prompt(body):
    """The request's messages and tools rendered by Qwen3's template -> (ids, enable_thinking)."""
    messages = field(body, "messages", (list,), MISSING, lambda v: len(v) > 0, "a non-empty list")
    tools = field(body, "tools", (list,), None, None, "a list") or None
    kwargs = field(body, "chat_template_kwargs", (dict,), {}, None, "an object")
    think = field(kwargs, "enable_thinking", (bool,), True, None, "a boolean")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(422, f"{where} must be an object", where, "invalid_type")
        role = field(m, "role", (str,), MISSING, None, "a string")
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise ApiError(422, f"{where}.role must be system, user, assistant or tool, got {role!r}", where + ".role",
                           "invalid_value")
        content = m.get("content")
        if isinstance(content, list):   # parts: only text ones
            if not all(isinstance(c, dict) and c.get("type") == "text" and isinstance(c.get("text"), str) for c in content):
                raise ApiError(422, f"{where}.content: only text parts are supported", where + ".content", "invalid_type")
            content = "".join(c["text"] for c in content)
        if not isinstance(content, str) and not (content is None and role == "assistant"):
            raise ApiError(422, f"{where}.content must be a string", where + ".content", "invalid_type")
        msg = {**{k: m[k] for k in ("reasoning_content", "tool_calls") if k in m},
               "role": "system" if role == "developer" else role, "content": content or ""}
        if not isinstance(msg.get("tool_calls") or [], list) or not isinstance(msg.get("reasoning_content") or "", str):
            raise ApiError(422, f"{where}: tool_calls must be a list, reasoning_content a string", where, "invalid_type")
        out.append(msg)
    try:
        return render_chat(out, tools=tools, add_generation_prompt=True, enable_thinking=think)[0], think
    except (TypeError, AttributeError, ValueError) as e:
        raise ApiError(422, f"messages or tools cannot be rendered: {e}", "messages", "invalid_value")


def make_app(engine, name, vocab, defaults):
    from fastapi import FastAPI, Request as HttpRequest
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    app = FastAPI(title="BitBrain serve.py", docs_url=None, redoc_url=None)
    error = lambda e: JSONResponse(e.body, status_code=e.status)
    app.add_exception_handler(ApiError, lambda request, e: error(e))
    app.add_exception_handler(HTTPException, lambda request, e: error(ApiError(
        e.status_code, str(e.detail), None, "not_found" if e.status_code == 404 else None)))
    app.add_exception_handler(RequestValidationError, lambda request, e: error(ApiError(422, str(e))))
    app.add_exception_handler(Exception, lambda request, e: error(ApiError(500, f"{type(e).__name__}: {e}", None,
                                                                               None, "server_error")))

    @app.get("/")
    def page():
        return FileResponse(PAGE, media_type="text/html")

    @app.get("/health")
    def health():
        return {"status": "ok", "slots": engine.slots, "busy": sum(r is not None for r in engine.owner),
                "waiting": len(engine.waiting), "context": engine.context, "generated": engine.generated}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": int(START), "owned_by": "bitbrain",
                                            "max_model_len": engine.context}]}

    async def read(request):
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the body is not valid JSON: {e}", None, "invalid_json")
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object", None, "invalid_json")
        model = field(body, "model", (str,), MISSING, None, "a string")
        if model != name:
            raise ApiError(404, f"the model {model!r} does not exist (this server has {name!r})", "model", "model_not_found")
        return body

    def start(ids, body, output, max_new, sampling, seed):
        if len(ids) >= engine.context:
            raise ApiError(413, f"the prompt has {len(ids)} tokens; the context holds {engine.context} (prompt and "
                                "answer)", "messages", "context_length_exceeded")
        if max(ids) >= vocab:
            raise ApiError(400, f"the prompt has token ids past the model's vocabulary ({vocab})", "prompt", "invalid_value")
        max_new = min(max_new or engine.context, engine.context - len(ids))
        r = Request(ids, max_new, sampling, seed, output, asyncio.get_running_loop())
        engine.submit(r)
        return r

    async def answer(request, r, chunk, whole, include_usage, stream):
        """Streams chunk(events, finish) as server-sent events, or returns whole(events, finish) as one JSON."""
        usage = lambda: {"prompt_tokens": len(r.ids), "completion_tokens": r.generated,
                         "total_tokens": len(r.ids) + r.generated}
        if not stream:
            events, finish = [], None
            try:
                while finish is None:
                    try:
                        item = await asyncio.wait_for(r.queue.get(), 1.0)
                    except asyncio.TimeoutError:
                        if await request.is_disconnected():
                            return None
                        continue
                    if item[0] == "error":
                        raise ApiError(500, item[1], None, None, "server_error")
                    events, finish = events + item[1], item[2]
            finally:
                r.cancelled = True   # (a finished request is retired anyway)
            return {**whole(events, finish), "usage": usage()}

        async def sse():
            try:
                yield sse_line(chunk(None, None, include_usage))
                while True:
                    item = await r.queue.get()
                    if item[0] == "error":
                        yield sse_line(ApiError(500, item[1], None, None, "server_error").body)
                        break
                    while not r.queue.empty() and item[2] is None:   # the consumer lagged: one chunk for all
                        more = r.queue.get_nowait()
                        if more[0] == "error":
                            r.queue.put_nowait(more)
                            break
                        item = ("events", item[1] + more[1], more[2])
                    for c in ([chunk(item[1], None, include_usage)] if item[1] else []) + (
                            [chunk([], item[2], include_usage)] if item[2] else []):
                        yield sse_line(c)
                    if item[2]:
                        if include_usage:
                            yield sse_line({**chunk([], None, False), "choices": [], "usage": usage()})
                        break
                yield "data: [DONE]\n\n"
            finally:   # the client went away (or the answer ended): the engine frees the slot before its next step
                r.cancelled = True
        return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/chat/completions")
    async def chat(request: HttpRequest):
        body = await read(request)
        ids, think = chat_prompt(body)
        sampling, max_new, stop, seed, stream, include_usage = sampling_args(body, defaults)
        if vocab < QWEN_VOCAB:
            raise ApiError(400, f"the model's vocabulary ({vocab}) has no room for the chat tokens: use /v1/completions")
        r = start(ids, body, Output(stop), max_new, sampling, seed)
        head = {"id": "chatcmpl-" + uuid.uuid4().hex, "created": int(time.time()), "model": name}
        calls = []

        def delta(events):
            d = {}
            for kind, value in events:
                if kind == "tool_call":
                    calls.append(value)
                    d.setdefault("tool_calls", []).append({"index": len(calls) - 1, "id": f"call_{uuid.uuid4().hex[:24]}",
                                                           "type": "function", "function": value})
                else:
                    d[kind + "_content" * (kind == "reasoning")] = d.get(kind + "_content" * (kind == "reasoning"), "") + value
            return d

        def chunk(events, finish, with_usage):
            d = {"role": "assistant", "content": ""} if events is None else delta(events)
            c = {**head, "object": "chat.completion.chunk",
                 "choices": [{"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}]}
            return {**c, "usage": None} if with_usage else c

        def whole(events, finish):
            d = delta(events)
            message = {"role": "assistant", "content": d.get("content") or (None if d.get("tool_calls") else ""),
                       **({"reasoning_content": d["reasoning_content"]} if "reasoning_content" in d else {}),
                       "tool_calls": d.get("tool_calls", [])}
            return {**head, "object": "chat.completion",
                    "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}]}
        return await answer(request, r, chunk, whole, include_usage, stream)

    @app.post("/v1/completions")
    async def completions(request: HttpRequest):
        body = await read(request)
        prompt = field(body, "prompt", (str, list), MISSING, lambda v: isinstance(v, str) or (
            len(v) > 0 and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in v)),
            "a string or a non-empty list of token ids")
        ids = get_tokenizer().encode(prompt, allowed_special="all") if isinstance(prompt, str) else prompt
        ids = ids or [EOT]   # an empty prompt starts a document
        sampling, max_new, stop, seed, stream, include_usage = sampling_args(body, defaults)
        r = start(ids, body, Output(stop, raw=True), max_new or 16, sampling, seed)
        head = {"id": "cmpl-" + uuid.uuid4().hex, "object": "text_completion", "created": int(time.time()), "model": name}
        text = lambda events: "".join(v for _, v in events or [])

        def chunk(events, finish, with_usage):
            c = {**head, "choices": [{"index": 0, "text": text(events), "finish_reason": finish, "logprobs": None}]}
            return {**c, "usage": None} if with_usage else c
        return await answer(request, r, chunk, lambda events, finish: chunk(events, finish, False), include_usage, stream)
    return app


def sse_line(obj):
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


START = time.time()


def main():
    try:
        import fastapi, uvicorn  # noqa: F401
    except ImportError:
        sys.exit("error: serve.py needs FastAPI and uvicorn: pip install -r requirements-serve.txt")
    model, model_dir = load_model(init_from, dtype=getattr(torch, dtype), device=device)
    model.eval()
    defaults = {}
    try:   # the sampling defaults the model was exported with (as vLLM and transformers serve read them)
        with open(os.path.join(model_dir, "generation_config.json")) as f:
            defaults = {k: v for k, v in json.load(f).items() if k in ("temperature", "top_p", "top_k")}
    except (OSError, ValueError):
        pass
    ctx = min(context, model.config.max_position_embeddings)
    engine = Engine(model, slots, ctx, step)
    if warmup and engine.dec.cuda_graph:
        t0 = time.time()
        engine.warm()
        print(f"[graphs captured in {time.time() - t0:.1f} s]", file=sys.stderr)
    threading.Thread(target=engine.run, daemon=True, name="engine").start()
    name = model_name or os.path.basename(os.path.normpath(init_from))
    app = make_app(engine, name, model.config.vocab_size, defaults)
    print(f"[{model_dir}] serving {name!r} on http://{host}:{port}/ : {slots} slots of {engine.context} tokens, "
          f"{engine.dec.step_kind} step, defaults {defaults or 'OpenAI'}", file=sys.stderr, flush=True)
    import uvicorn
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=3)


if __name__ == "__main__":   # the settings are read here, so that tests can import the parser
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configurator.py")).read())
    main()
