"""
Serve a model behind an OpenAI-compatible API, with a chat page at `/`.

    pip install -r requirements-serve.txt
    python serve.py --init_from=out_poem --port=8000        # http://127.0.0.1:8000/ : the chat page
    python serve.py --init_from=out_poem --host=0.0.0.0     # reachable from other machines (there is no authentication)

GET /v1/models, POST /v1/chat/completions and /v1/completions (whole, or `"stream": true`: server-sent events ending
in `data: [DONE]`), GET /health. Requests take temperature (under 1e-5: greedy, as vLLM), top_p, top_k, max_tokens /
max_completion_tokens, stop, seed, stream_options.include_usage, ignore_eos (vLLM's), for a chat tools, tool_choice
auto | none and chat_template_kwargs.enable_thinking; the rest comes from the model's generation_config.json. The
prompt is tokenizer.render_chat's (what sft.py trains on); the answer is parsed as vLLM's qwen3 reasoning and hermes
tool parsers do (<think> -> reasoning_content, <tool_call> -> tool_calls). Errors are OpenAI's {"error": {"message",
"type", "param", "code"}}: 400 broken JSON, a value out of range or a parameter not honoured here (REFUSED: logprobs,
penalties, a response_format...), 422 a missing or wrongly typed field or an unknown role, 404 an unknown model or
route, 413 a prompt filling the context, 429 a full queue. No request can stop the server.

Continuous batching: an engine thread owns a generate.Decoder of `slots` rows (the Triton step in CUDA graphs). A
request waits in a bounded queue, is prefilled into a free row between two steps (at most `prefill_tokens` prompt
tokens between two: a long prompt stalls the others for its own prefill only), steps with the other rows with its
own sampling settings and seed, and leaves when it ends or its client goes away. Step k+1 is launched before step
k's tokens are read: the GPU never waits for Python. FastAPI + uvicorn: the field's usual pair (vLLM, SGLang)."""
import asyncio, json, os, socket, sys, threading, time, traceback, uuid
from collections import deque

import torch

from checkpoint import load_model
from generate import PREFILL_GRAPH_MAX, Decoder
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
think = True            # enable_thinking where a request does not say; False for a model tuned without (chat.py's --think)
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = "bfloat16" if torch.cuda.is_available() else "float32"
STOP = (IM_END, EOT)
TOOL_CALL, END_TOOL_CALL = N_ORDINARY + 14, N_ORDINARY + 15   # <tool_call>, </tool_call>
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "chat.html")
MISSING, START = object(), time.time()   # a required field's default; when the server started
REFUSED = {"logprobs": (False,), "echo": (False,), "suffix": ("",), "logit_bias": ({},), "presence_penalty": (0,),   # 400
           "frequency_penalty": (0,), "response_format": ({"type": "text"},), "tool_choice": ("auto", "none")}   # unless


class ApiError(Exception):
    def __init__(self, status, message, param=None, code=None, kind="invalid_request_error"):
        super().__init__(message)
        self.status, self.body = status, {"error": {"message": message, "type": kind, "param": param, "code": code}}


class Output:
    """A request's tokens -> events ("content" | "reasoning", text) and ("tool_call", {name, arguments}), read as
    vLLM's qwen3 reasoning and hermes tool parsers read Qwen3's output; raw=True (/v1/completions) passes all text
    through. `stop` strings end the output (hit) where they occur, so text that may begin one is held back. The
    streamed deltas and the whole answer are made of the same events: they always say the same."""

    def __init__(self, stop=(), raw=False, tools=True):
        self.stop, self.raw, self.hit, self.tool_calls = list(stop), raw, False, 0
        self.special = (THINK, END_THINK) + (TOOL_CALL, END_TOOL_CALL) * tools   # tools=False: tool_choice "none"
        self.detok, self.kind, self.window, self.call = StreamDecoder(get_tokenizer()), "content", "", None
        self.started, self.held = False, ""   # text in this section yet; its trailing whitespace, held back

    def push(self, tok):
        if self.hit or (tok >= N_ORDINARY and not self.raw and tok not in self.special):
            return []   # (other special tokens say nothing)
        if self.raw or tok < N_ORDINARY:
            if self.call is None:
                return self._text(self.detok.push(tok))
            self.call += self.detok.push(tok)
            return []
        events = self._text(self.detok.flush(), end=True)
        if tok in (THINK, END_THINK):
            self.kind = "reasoning" if tok == THINK else "content"
        elif tok == TOOL_CALL:
            self.call = ""
        elif self.call is not None:   # </tool_call>: hermes' JSON, or (unparsable) left as content
            call, self.call = self.call + self.detok.flush(), None
            try:
                obj = json.loads(call)
                args = a if isinstance(a := obj.get("arguments", {}), str) else json.dumps(a, ensure_ascii=False)
                events.append(("tool_call", {"name": str(obj["name"]), "arguments": args}))
                self.tool_calls += 1
            except (ValueError, KeyError, TypeError, AttributeError):
                events += self._text(f"<tool_call>{call}</tool_call>", end=True)
        return events

    def close(self):   # a tool call cut off is content
        text, self.call = "" if self.call is None else "<tool_call>" + self.call, None
        return self._text(text + self.detok.flush(), end=True)

    def _text(self, text, end=False):
        """The stop strings over the text so far; then a section's leading and trailing whitespace dropped (the
        template's newlines around think blocks and tool calls). `end`: the section ends here."""
        s = self.window + text
        cut = min((i for i in (s.find(x) for x in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            s, self.hit, end = s[:cut], True, True
        keep = 0 if end else max((k for x in self.stop for k in range(len(x) - 1, 0, -1) if s.endswith(x[:k])), default=0)
        s, self.window = s[:len(s) - keep], s[len(s) - keep:]
        if self.raw:
            return [("content", s)] if s else []
        s = self.held + s if self.started else s.lstrip()
        body = s.rstrip()
        self.held, self.started = ("", False) if end else (s[len(body):], self.started or bool(body))
        return [(self.kind, body)] if body else []


class Request:
    def __init__(self, ids, max_new, sampling, seed, output):
        self.ids, self.max_new, self.sampling, self.output, self.loop = ids, max_new, sampling, output, asyncio.get_running_loop()
        self.gen = None if seed is None else torch.Generator(device).manual_seed(seed)
        self.queue, self.done, self.cancelled, self.generated, self.launched = asyncio.Queue(), False, False, 0, 1


class Engine:
    """The thread that owns the Decoder: admits waiting requests into free rows, steps them, hands out their tokens."""

    def __init__(self, model, n_slots, max_len, step_kind=None):
        self.dec = Decoder(model, n_slots, max_len=max_len, step=step_kind or None)
        self.context, self.slots = self.dec.max_len, n_slots
        self.dec.release()
        self.owner, self.waiting, self.lock, self.wake = [None] * n_slots, deque(), threading.Lock(), threading.Event()
        self.steps, self.generated = 0, 0
        self.outbox, self.joined = [], []   # (request, what to hand it); (request, first token) prefilled since the last step
        if self.dec.tok.is_cuda:   # step k's tokens are copied out while step k+1 runs
            self.pinned = [torch.empty(2 * n_slots, 1, dtype=torch.long, pin_memory=True) for _ in range(2)]
            self.events = [torch.cuda.Event() for _ in range(2)]

    def submit(self, req):
        with self.lock:
            if len(self.waiting) >= max_queue:
                raise ApiError(429, f"the server is busy ({max_queue} requests waiting): retry later", None,
                               "queue_full", "rate_limit_error")
            self.waiting.append(req)
        self.wake.set()

    def warm(self):
        """Every graph the server can need, captured now: steps (each sampling mode) of 1, 2, 4... rows, prefills."""
        for n in sorted(self.dec.views):
            for b in range(n):
                self.dec.prefill_slot(b, [0] * min(16 << b, PREFILL_GRAPH_MAX, self.context // 2))
            for t, k, p in ((0, 0, 1.0), (1.0, 0, 1.0), (1.0, 5, 1.0), (1.0, 0, 0.9), (1.0, 5, 0.9)):
                self.dec.step(None, [t] * self.slots, [k] * self.slots, [p] * self.slots)
            self.dec.release()

    def run(self):
        inflight = None
        while True:
            try:
                for slot, r in enumerate(self.owner):   # rows free: requests ended, gone, or with every token launched
                    if r is not None and (r.done or r.cancelled or r.launched >= r.max_new):
                        self.owner[slot], r.done = None, r.done or r.cancelled   # (the last tokens still to hand out)
                        self.dec.release(slot)
                self._admit()
                launched, joined, self.joined = None, self.joined, []
                if any(self.dec.live):   # (a joined request's first token is read with the step's: no sync here)
                    live = [r if r is not None and not r.done else None for r in self.owner]
                    settings = zip(*[r.sampling if r else (0, 0, 1.0) for r in live])
                    nxt = self.dec.step(None, *settings, [r and r.gen for r in live])
                    for r in filter(None, live):
                        r.launched += 1
                    launched = self._to_host(torch.cat([nxt] + [f for _, f in joined])), live, [r for r, _ in joined]
                if inflight:
                    self._deliver(*inflight)
                inflight = launched
                self._flush()
                if inflight is None and self.wake.wait(0.2):
                    self.wake.clear()
            except Exception as e:   # a failed step fails the requests in it, never the server
                traceback.print_exc()
                for r in self.owner:
                    if r is not None and not r.done:
                        r.done = True
                        self.outbox.append((r, ("error", f"generation failed: {type(e).__name__}: {e}")))
                self.owner, inflight, self.joined = [None] * self.slots, None, []
                self.dec.release()
                self._flush()

    def _flush(self):   # what the step said to every request, handed to the event loop in one wake-up
        if self.outbox:
            box, self.outbox = self.outbox, []
            box[0][0].loop.call_soon_threadsafe(lambda: [r.queue.put_nowait(item) for r, item in box])

    def _to_host(self, nxt):   # (on CUDA: a copy into pinned memory, and an event that says when it is there)
        if not nxt.is_cuda:
            return nxt, None
        self.steps += 1
        buf, ev = self.pinned[self.steps % 2][:len(nxt)], self.events[self.steps % 2]
        return buf.copy_(nxt, non_blocking=True), ev.record() or ev

    def _deliver(self, toks, live, joined):
        if toks[1] is not None:
            toks[1].synchronize()
        toks = toks[0][:, 0].tolist()
        n = len(toks) - len(joined)   # the step's rows, then the joined requests' first tokens
        for r, tok in [*zip(joined, toks[n:]), *zip(live, toks[:n])]:
            if r is not None and not r.done:
                self._token(r, tok)

    def _admit(self):
        budget = prefill_tokens
        while None in self.owner:
            with self.lock:
                if not self.waiting or (budget < len(self.waiting[0].ids) and budget < prefill_tokens):
                    return
                r = self.waiting.popleft()
            if r.cancelled:
                continue
            slot, budget = self.owner.index(None), budget - len(r.ids)
            try:
                first = self.dec.prefill_slot(slot, r.ids, *r.sampling, generator=r.gen)
            except Exception as e:
                traceback.print_exc()
                self.dec.release(slot)
                r.done = True
                self.outbox.append((r, ("error", f"prefill failed: {type(e).__name__}: {e}")))
                continue
            self.owner[slot] = r
            self.joined.append((r, first))

    def _token(self, r, tok):
        r.generated, self.generated = r.generated + 1, self.generated + 1
        events = [] if tok in r.stops else r.output.push(tok)
        finish = "stop" if tok in r.stops or r.output.hit else "length" if r.generated >= r.max_new else None
        if finish:
            events += r.output.close()
            finish = "tool_calls" if finish == "stop" and r.output.tool_calls else finish
            r.done = True
        if events or finish:
            self.outbox.append((r, ("events", events, finish)))


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
    t = field(body, "temperature", (int, float), defaults.get("temperature", 1.0), lambda v: 0 <= v <= 2, "a number in [0, 2]")
    p = field(body, "top_p", (int, float), defaults.get("top_p", 1.0), lambda v: 0 < v <= 1, "a number in (0, 1]")
    k = field(body, "top_k", (int,), defaults.get("top_k", 0), lambda v: -1 <= v < 2 ** 31, "an integer in [-1, 2^31) (-1, 0: off)")
    n = field(body, "max_completion_tokens", (int,), None, lambda v: v > 0, "an integer > 0")
    n = field(body, "max_tokens", (int,), n, lambda v: v > 0, "an integer > 0")
    stop = field(body, "stop", (str, list), [], lambda v: (isinstance(v, str) or len(v) <= 4) and all(
        isinstance(s, str) and s for s in ([v] if isinstance(v, str) else v)), "a non-empty string or a list of up to 4")
    seed = field(body, "seed", (int,), None, lambda v: 0 <= v < 2 ** 63, "an integer in [0, 2^63)")
    field(body, "n", (int,), 1, lambda v: v == 1, "1 (one choice a request)")
    if bad := next((key for key, ok in REFUSED.items() if body.get(key) not in (None, *ok)), None):
        raise ApiError(400, f"{bad}={json.dumps(body[bad])[:60]} is not supported here", bad, "unsupported_parameter")
    stream = field(body, "stream", (bool,), False, None, "a boolean")
    usage = field(field(body, "stream_options", (dict,), {}, None, "an object"), "include_usage", (bool,), False)
    return (float(t) if t >= 1e-5 else 0.0, max(k, 0), float(p)), n, [stop] if isinstance(stop, str) else stop, seed, stream, usage


def chat_prompt(body):
    """The request's messages (and tools) rendered by Qwen3's template -> ids."""
    messages = field(body, "messages", (list,), MISSING, lambda v: len(v) > 0, "a non-empty list")
    kwargs = field(body, "chat_template_kwargs", (dict,), {}, None, "an object")
    out = []
    for i, m in enumerate(messages):
        at = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(422, f"{at} must be an object", at, "invalid_type")
        role, content = field(m, "role", (str,), MISSING, None, "a string"), m.get("content")
        if role not in (roles := ("system", "developer", "user", "assistant", "tool")):
            raise ApiError(422, f"{at}.role: {role!r} is not one of {', '.join(roles)}", at + ".role", "invalid_value")
        if isinstance(content, list) and all(isinstance(c, dict) and c.get("type") == "text" and isinstance(
                c.get("text"), str) for c in content):   # parts: text ones only
            content = "".join(c["text"] for c in content)
        if not isinstance(content, str) and not (content is None and role == "assistant"):
            raise ApiError(422, f"{at}.content must be a string (or text parts)", at + ".content", "invalid_type")
        extra = {k: m[k] for k in ("reasoning_content", "tool_calls") if m.get(k) is not None}
        if not isinstance(extra.get("tool_calls", []), list) or not isinstance(extra.get("reasoning_content", ""), str):
            raise ApiError(422, f"{at}: tool_calls must be a list, reasoning_content a string", at, "invalid_type")
        out.append({**extra, "role": "system" if role == "developer" else role, "content": content or ""})
    try:
        tools = None if body.get("tool_choice") == "none" else field(body, "tools", (list,), None, None, "a list") or None
        return render_chat(out, tools=tools, add_generation_prompt=True, plain_user_text=True,   # a typed <|im_start|>: text
                           enable_thinking=field(kwargs, "enable_thinking", (bool,), think, None, "a boolean"))[0]
    except (TypeError, AttributeError, ValueError, KeyError) as e:
        raise ApiError(422, f"the messages or tools cannot be rendered: {e}", "messages", "invalid_value")


def make_app(engine, name, vocab, defaults):
    from fastapi import FastAPI, Request as HttpRequest
    from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    app = FastAPI(title="serve.py", docs_url=None, redoc_url=None, openapi_url=None)
    error = lambda e: JSONResponse(e.body, status_code=e.status)
    app.add_exception_handler(ApiError, lambda request, e: error(e))
    app.add_exception_handler(HTTPException, lambda request, e: error(ApiError(
        e.status_code, str(e.detail), None, "not_found" if e.status_code == 404 else None)))
    app.add_exception_handler(Exception, lambda request, e: error(ApiError(500, f"{type(e).__name__}: {e}", kind="server_error")))
    app.get("/")(lambda: FileResponse(PAGE, media_type="text/html"))
    app.get("/health")(lambda: {"status": "ok", "slots": engine.slots, "busy": sum(r is not None for r in engine.owner),
                                "waiting": len(engine.waiting), "context": engine.context, "generated": engine.generated})
    app.get("/v1/models")(lambda: {"object": "list", "data": [{"id": name, "object": "model", "created": int(START),
                                                                "owned_by": "bitbrain", "max_model_len": engine.context}]})

    @app.post("/v1/chat/completions")
    @app.post("/v1/completions")
    async def complete(request: HttpRequest):
        chat = request.url.path.endswith("/chat/completions")
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the body is not valid JSON: {e}", None, "invalid_json")
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object", None, "invalid_json")
        if (model := field(body, "model", (str,), MISSING, None, "a string")) != name:
            raise ApiError(404, f"no model {model!r} here (only {name!r})", "model", "model_not_found")
        if chat:
            if vocab < QWEN_VOCAB:
                raise ApiError(400, f"the model's vocabulary ({vocab}) lacks the chat tokens: use /v1/completions")
            ids = chat_prompt(body)
        else:
            prompt = field(body, "prompt", (str, list), MISSING, lambda v: isinstance(v, str) or (len(v) > 0 and all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in v)), "a string or a list of token ids")
            ids = (get_tokenizer().encode(prompt, allowed_special="all") if isinstance(prompt, str) else prompt) or [EOT]
        sampling, max_new, stop, seed, stream, include_usage = sampling_args(body, defaults)
        if len(ids) >= engine.context:
            raise ApiError(413, f"the prompt has {len(ids)} tokens; the context holds {engine.context} (prompt and "
                                "answer)", "messages" if chat else "prompt", "context_length_exceeded")
        if max(ids) >= vocab:
            raise ApiError(400, f"the prompt has ids past the vocabulary ({vocab})", "prompt", "invalid_value")
        max_new = min(max_new or (engine.context if chat else 16), engine.context - len(ids))   # OpenAI's defaults
        r = Request(ids, max_new, sampling, seed, Output(stop, raw=not chat, tools=body.get("tool_choice") != "none"))
        r.stops = () if field(body, "ignore_eos", (bool,), False, None, "a boolean") else STOP   # (vLLM's extension)
        engine.submit(r)
        head = {"id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex, "created": int(time.time()), "model": name,
                "object": "chat.completion" if chat else "text_completion"}
        usage = lambda: {"prompt_tokens": len(ids), "completion_tokens": r.generated, "total_tokens": len(ids) + r.generated}
        calls = []

        def choice(events, finish, whole=False):
            d = {}
            for kind, value in events:
                if kind == "tool_call":
                    calls.append(value)
                    d.setdefault("tool_calls", []).append({"index": len(calls) - 1, "id": "call_" + uuid.uuid4().hex[:24],
                                                           "type": "function", "function": value})
                else:
                    key = "reasoning_content" if kind == "reasoning" else "content"
                    d[key] = d.get(key, "") + value
            if not chat:
                return {"index": 0, "text": d.get("content", ""), "finish_reason": finish, "logprobs": None}
            if whole:
                d = {"role": "assistant", **d, "content": d.get("content") or (None if "tool_calls" in d else ""),
                     "tool_calls": d.get("tool_calls", [])}
            return {"index": 0, "message" if whole else "delta": d, "finish_reason": finish, "logprobs": None}

        if not stream:
            events, finish, seen = [], None, time.time()
            try:
                while finish is None:
                    if time.time() - seen > 1.0:   # each second, tokens or not: a client that went away frees the slot
                        if await request.is_disconnected():
                            return None
                        seen = time.time()
                    try:
                        item = await asyncio.wait_for(r.queue.get(), 1.0)
                    except asyncio.TimeoutError:
                        continue
                    if item[0] == "error":
                        raise ApiError(500, item[1], None, None, "server_error")
                    events, finish = events + item[1], item[2]
            finally:
                r.cancelled = True
            return {**head, "choices": [choice(events, finish, whole=True)], "usage": usage()}

        def chunk(c, **extra):
            obj = {**head, "object": head["object"] + ".chunk" * chat, "choices": c, **extra}
            obj = {**obj, "usage": None} if include_usage and "usage" not in extra else obj
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        async def sse():
            try:
                if chat:
                    yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                                  "logprobs": None}])
                while True:
                    item = await r.queue.get()
                    while item[0] != "error" and item[2] is None and not r.queue.empty():   # behind: one chunk for all
                        more = r.queue.get_nowait()
                        item = more if more[0] == "error" else ("events", item[1] + more[1], more[2])
                    if item[0] == "error":
                        yield f"data: {json.dumps(ApiError(500, item[1], None, None, 'server_error').body)}\n\n"
                        break
                    if item[1]:
                        yield chunk([choice(item[1], None)])
                    if item[2]:
                        yield chunk([choice([], item[2])])
                        if include_usage:
                            yield chunk([], usage=usage())
                        break
                yield "data: [DONE]\n\n"
            finally:   # the answer ended, or the client went away: the engine frees the row before its next step
                r.cancelled = True
        return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    return app


def main():
    try:
        import fastapi, uvicorn  # noqa: F401
    except ImportError:
        sys.exit("error: serve.py needs FastAPI and uvicorn: pip install -r requirements-serve.txt")
    try:   # a port in use: one line now, not uvicorn's error after minutes of loading (SO_REUSEADDR, as uvicorn)
        socket.create_server((host, port)).close()
    except OSError as e:
        sys.exit(f"error: --host={host} --port={port}: {os.strerror(e.errno)} (another server there? choose another --port)")
    model, model_dir = load_model(init_from, dtype=getattr(torch, dtype), device=device)
    model.eval()
    path = os.path.join(model_dir, "generation_config.json")   # the export's sampling defaults (vLLM reads them too)
    defaults = {k: v for k, v in (json.load(open(path)) if os.path.isfile(path) else {}).items()
                if k in ("temperature", "top_p", "top_k")}
    engine = Engine(model, slots, min(context, model.config.max_position_embeddings), step)
    if warmup and engine.dec.cuda_graph:
        t0 = time.time()
        engine.warm()
        print(f"[graphs captured in {time.time() - t0:.1f} s]", file=sys.stderr)
    threading.Thread(target=engine.run, daemon=True, name="engine").start()
    name = model_name or os.path.basename(os.path.normpath(init_from))
    print(f"[{model_dir}] serving {name!r} on http://{host}:{port}/ : {slots} slots of {engine.context} tokens, "
          f"{engine.dec.step_kind} step, sampling defaults {defaults or 'of OpenAI (none in generation_config.json)'}", file=sys.stderr, flush=True)
    uvicorn.run(make_app(engine, name, model.config.vocab_size, defaults), host=host, port=port, log_level="warning",
                access_log=False, timeout_graceful_shutdown=3)


if __name__ == "__main__":   # the settings are read here, so that tests can import the parser
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configurator.py")).read())
    main()
