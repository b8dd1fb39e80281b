"""serve.py against a live server on 127.0.0.1 (a subprocess, a tiny model on the CPU): the official openai client,
streamed and whole answers, the think/tool parser, concurrency, errors, a client that goes away, the chat page in
headless chromium, and bench/serve.py's smoke run. Every wait is bounded."""
import json, os, shutil, subprocess, sys, threading, time, urllib.error, urllib.request

import pytest
import torch
from conftest import PY, ROOT, copy_tokenizer, cuda, free_port, small_config

from checkpoint import save_pretrained
from model import Qwen3
from tokenizer import END_THINK, EOT, IM_END, N_ORDINARY, THINK, get_tokenizer

pytest.importorskip("fastapi", reason="serve.py needs FastAPI + uvicorn: pip install -r requirements-serve.txt")
pytest.importorskip("uvicorn", reason="serve.py needs FastAPI + uvicorn: pip install -r requirements-serve.txt")
import serve  # noqa: E402

TOOL_CALL, END_TOOL_CALL = N_ORDINARY + 14, N_ORDINARY + 15
CALL = '{"name": "get_weather","arguments":{"city":"Paris"}}'   # a spelling whose tokens are all different
# what the scripted model says after the generation prompt's last token ("assistant\n"): a think block, an answer
# and a tool call, each token once (the model's next token depends on its current one only)
SCRIPT = [198, THINK] + get_tokenizer().encode("Let me see.") + [END_THINK] + get_tokenizer().encode("Sure") + [
    TOOL_CALL] + get_tokenizer().encode(CALL) + [END_TOOL_CALL, IM_END]


def scripted_model(path, tokenizer_files):
    """A tiny Qwen3 (hidden 64, the real vocabulary) that follows SCRIPT after its first token and otherwise babbles:
    the script's tokens have one-hot embeddings in dimensions 0..23 and the lm_head row of each token's successor
    reads its predecessor's dimension (a margin of ~80 logits), every other token lives in dimensions 32..63 (random
    embeddings and lm_head rows: a random walk that never picks a special token); the layers are random but small,
    so the context still nudges the babble."""
    assert len(SCRIPT) == len(set(SCRIPT)) <= 32
    torch.manual_seed(0)
    model = Qwen3(small_config(vocab_size=151936, hidden_size=64, intermediate_size=128, head_dim=16,
                               max_position_embeddings=1024, tie_word_embeddings=False))
    with torch.no_grad():
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        emb.zero_(), head.zero_()
        emb[:, 32:] = torch.randn(emb.shape[0], 32)
        head[:N_ORDINARY, 32:] = torch.randn(N_ORDINARY, 32)
        for i, tok in enumerate(SCRIPT):
            emb[tok] = 0
            emb[tok, i] = 1.0
            head[tok] = 0
            if i:
                head[tok, i - 1] = 10.0
        for block in model.model.layers:
            block.self_attn.o_proj.weight.mul_(0.05)
            block.mlp.down_proj.weight.mul_(0.05)
    save_pretrained(model, path, dtype=torch.float32, eos_token_id=EOT)
    copy_tokenizer(tokenizer_files, path)
    return model


def post(url, body, timeout=30):
    """(status, parsed JSON) of a POST; body: an object (sent as JSON) or raw bytes."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def start_server(d, *args):
    """serve.py on a free loopback port for the model in d; yields its base URL, then stops it (no traceback in its
    log allowed)."""
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    log = open(d + ".log", "w+")   # a file, not a pipe: a server that writes much never blocks on it
    proc = subprocess.Popen([PY, "serve.py", f"--init_from={d}", f"--port={port}", *args], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    read = lambda: open(d + ".log").read()
    for _ in range(1200):   # up to 120 s to import, load, capture graphs and listen
        try:
            get(url + "/health", timeout=1)
            break
        except OSError:
            assert proc.poll() is None, read()
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("serve.py did not start: " + read())
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    assert "Traceback" not in read(), read()[-3000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tokenizer_files):
    """serve.py on the CPU, 4 slots of 512 positions, a queue of 8."""
    d = str(tmp_path_factory.mktemp("served") / "scripted")
    scripted_model(d, tokenizer_files)
    yield from start_server(d, "--slots=4", "--context=512", "--max_queue=8", "--device=cpu", "--dtype=float32")


@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server + "/v1", api_key="none", timeout=60, max_retries=0)


def idle(server, timeout=10):
    """Waits until no slot is busy; the /health it saw last."""
    for _ in range(int(timeout * 20)):
        h = get(server + "/health")
        if h["busy"] == 0 and h["waiting"] == 0:
            return h
        time.sleep(0.05)
    return h


def test_parser_reads_think_blocks_and_hermes_tool_calls_from_tokens():
    """serve.Output on token ids, as vLLM's qwen3 reasoning and hermes tool parsers read text: <think>...</think>
    -> reasoning, <tool_call>{json}</tool_call> -> a call with its arguments as a JSON string, broken JSON left as
    content; the template's whitespace around sections dropped; a stop string ends the output, also when it spans
    tokens."""
    enc = get_tokenizer()

    def parse(ids, **kw):
        out = serve.Output(**kw)
        events = [e for t in ids for e in out.push(t)] + out.close()
        merged = {}
        for kind, value in events:
            merged.setdefault(kind, []).append(value)
        return {k: v if k == "tool_call" else "".join(v) for k, v in merged.items()}, out.hit
    text = lambda s: enc.encode(s, allowed_special="all")
    got, _ = parse([THINK] + text("\nhmm, rain?\n") + [END_THINK] + text("\n\nLet me check.\n") + [TOOL_CALL]
                   + text('\n{"name": "get_weather", "arguments": {"city": "巴黎", "days": 2}}\n') + [END_TOOL_CALL]
                   + text("\n") + [TOOL_CALL] + text('{"name": "f", "arguments": "{}"}') + [END_TOOL_CALL])
    assert got == {"reasoning": "hmm, rain?", "content": "Let me check.", "tool_call": [
        {"name": "get_weather", "arguments": '{"city": "巴黎", "days": 2}'}, {"name": "f", "arguments": "{}"}]}
    got, _ = parse(text("a ") + [TOOL_CALL] + text("{not json") + [END_TOOL_CALL])
    assert got == {"content": "a<tool_call>{not json</tool_call>"}   # (the whitespace before a tool call goes)
    got, hit = parse(text("one two three four"), stop=["e fo", "zzz"])
    assert got == {"content": "one two thre"} and hit
    got, hit = parse([THINK] + text("x") + [END_THINK] + text(" y <|im_start|>"), raw=True)
    assert got == {"content": "<think>x</think> y <|im_start|>"} and not hit


def test_models_chat_and_completions_with_the_openai_client(server, client):
    """models.list names the served model; a greedy chat answer streamed equals the whole one (reasoning, content,
    the tool call, finish_reason tool_calls, usage); completions (whole and streamed) give the same greedy text."""
    assert [m.id for m in client.models.list()] == ["scripted"]
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    r = client.chat.completions.create(model="scripted", messages=messages, tools=tools, temperature=0, max_tokens=50)
    m = r.choices[0].message
    assert m.content == "Sure" and m.reasoning_content == "Let me see." and r.choices[0].finish_reason == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in m.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert r.usage.completion_tokens == len(SCRIPT) - 1 and r.usage.total_tokens == r.usage.prompt_tokens + len(SCRIPT) - 1
    chunks = list(client.chat.completions.create(model="scripted", messages=messages, tools=tools, temperature=0,
                                                 max_tokens=50, stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == "Sure"
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == "Let me see."
    calls = [t for d in deltas for t in d.tool_calls or []]
    assert [(t.function.name, t.function.arguments) for t in calls] == [(c.function.name, c.function.arguments) for c in m.tool_calls]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens and not chunks[-1].choices

    from tokenizer import render_chat   # a typed <|im_end|> or <think> is text, not a turn's end or a think block
    typed = [{"role": "user", "content": "<|im_end|><think>"}]
    r = client.chat.completions.create(model="scripted", messages=typed, temperature=0, max_tokens=1)
    ids = lambda plain: render_chat(typed, add_generation_prompt=True, plain_user_text=plain)[0]
    assert r.usage.prompt_tokens == len(ids(True)) > len(ids(False))
    r = client.chat.completions.create(model="scripted", messages=messages, temperature=0, max_tokens=40,
                                       extra_body={"ignore_eos": True})   # vLLM's extension: on past <|im_end|>
    assert r.usage.completion_tokens == 40 and r.choices[0].finish_reason == "length"
    # thinking off: the prompt closes an empty think block, and this model then babbles until max_tokens
    r = client.chat.completions.create(model="scripted", messages=messages, temperature=0, max_tokens=20,
                                       extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 20 and r.choices[0].message.content
    assert getattr(r.choices[0].message, "reasoning_content", None) is None
    streamed = client.chat.completions.create(model="scripted", messages=messages, temperature=0, max_tokens=20,
                                              extra_body={"chat_template_kwargs": {"enable_thinking": False}}, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == r.choices[0].message.content

    c = client.completions.create(model="scripted", prompt="The weather in Paris", max_tokens=24, temperature=0)
    assert c.choices[0].finish_reason == "length" and c.usage.completion_tokens == 24 and c.choices[0].text
    s = client.completions.create(model="scripted", prompt="The weather in Paris", max_tokens=24, temperature=0, stream=True)
    assert "".join(x.choices[0].text for x in s) == c.choices[0].text
    stopped = client.completions.create(model="scripted", prompt="The weather in Paris", max_tokens=24, temperature=0,
                                        stop=[c.choices[0].text[5:9]])
    assert stopped.choices[0].text == c.choices[0].text[:5] and stopped.choices[0].finish_reason == "stop"
    # a seed makes a sampled answer reproducible
    seeded = [client.completions.create(model="scripted", prompt="Hi", max_tokens=16, temperature=1.0, seed=7).choices[0].text
              for _ in range(2)]
    assert seeded[0] == seeded[1]
    # tool_choice "none": no tool offered, none parsed (the script still writes its call: text); a temperature too
    # small to divide by is greedy
    r = client.chat.completions.create(model="scripted", messages=messages, tools=tools, tool_choice="none",
                                       temperature=0, max_tokens=50)
    assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls
    assert "get_weather" in r.choices[0].message.content and "Paris" in r.choices[0].message.content
    tiny = client.completions.create(model="scripted", prompt="The weather in Paris", max_tokens=24, temperature=1e-40)
    assert tiny.choices[0].text == c.choices[0].text


def test_eight_concurrent_streams_all_complete(server, client):
    """8 streams on 4 slots (a queue in front): every stream completes with its own answer, the greedy ones equal to
    the same request alone; the slots are all free afterwards."""
    def ask(i, results):
        if i % 2:
            s = client.completions.create(model="scripted", prompt=f"story {i}:", max_tokens=30, temperature=0, stream=True)
            results[i] = ("".join(x.choices[0].text for x in s), None)
        else:
            s = client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": f"q{i}"}],
                                               temperature=0, max_tokens=40, stream=True)
            parts = list(s)
            results[i] = ("".join(p.choices[0].delta.content or "" for p in parts), parts[-1].choices[0].finish_reason)
    results = {}
    threads = [threading.Thread(target=ask, args=(i, results)) for i in range(8)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    assert sorted(results) == list(range(8))
    for i in range(0, 8, 2):
        assert results[i] == ("Sure", "tool_calls")
    for i in range(1, 8, 2):
        alone = client.completions.create(model="scripted", prompt=f"story {i}:", max_tokens=30, temperature=0)
        assert results[i][0] == alone.choices[0].text
    assert idle(server)["busy"] == 0


@pytest.mark.parametrize("body, status, param", [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    ({"model": "scripted"}, 422, "messages"),
    ({"model": "scripted", "messages": "hi"}, 422, "messages"),
    ({"model": "scripted", "messages": [{"role": "wizard", "content": "hi"}]}, 422, "messages[0].role"),
    ({"model": "scripted", "messages": [{"role": "user", "content": 5}]}, 422, "messages[0].content"),
    ({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
    ({"messages": [{"role": "user", "content": "hi"}]}, 422, "model"),
    ({"model": "scripted", "messages": [{"role": "user", "content": "word " * 600}]}, 413, "messages"),
    ({"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "9"}, 422, "max_tokens"),
    ({"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "temperature": -1}, 400, "temperature"),
    ({"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "stop": [1]}, 400, "stop"),
    ({"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "seed": 2 ** 70}, 400, "seed"),
    ({"model": "scripted", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 422, "messages[0].content"),
    ({"model": "scripted", "messages": [{"role": "assistant", "content": None, "tool_calls": [7]}]}, 422, "messages"),
    ({"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "top_k": 2 ** 63}, 400, "top_k"),
    ({"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "stop": ""}, 400, "stop"),
    # parameters this server would otherwise ignore: refused, each named
    ({"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "echo": True}, 400, "echo"),
    ({"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "presence_penalty": 0.5}, 400, "presence_penalty"),
    ({"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}}, 400,
     "response_format"),
    ({"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "tool_choice": "required"}, 400, "tool_choice"),
])
def test_bad_requests_get_openai_errors_and_the_server_keeps_answering(server, body, status, param):
    code, j = post(server + "/v1/chat/completions", body)
    assert code == status and set(j["error"]) == {"message", "type", "param", "code"} and j["error"]["param"] == param, j
    code, j = post(server + "/v1/completions", {"model": "scripted", "prompt": "ok", "max_tokens": 2})
    assert code == 200 and j["usage"]["completion_tokens"] == 2


def test_an_unknown_role_is_told_every_role_there_is(server):
    """The 422 for an unknown role lists the roles accepted, developer (OpenAI's newer name for system) among them."""
    code, j = post(server + "/v1/chat/completions", {"model": "scripted", "messages": [{"role": "wizard", "content": "hi"}]})
    assert code == 422 and all(r in j["error"]["message"] for r in ("system", "developer", "user", "assistant", "tool")), j
    code, j = post(server + "/v1/chat/completions", {"model": "scripted", "max_tokens": 2, "messages": [
        {"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}]})
    assert code == 200 and j["usage"]["completion_tokens"] == 2, j

def test_unknown_route_and_full_queue(server):
    """404 in OpenAI's shape for a route that does not exist; 429 once 4 slots and a queue of 8 are taken."""
    with pytest.raises(urllib.error.HTTPError) as e:
        get(server + "/v1/nothing")
    assert e.value.code == 404 and json.loads(e.value.read())["error"]["code"] == "not_found"
    statuses, lock = [], threading.Lock()

    def long_request():
        s, _ = post(server + "/v1/completions", {"model": "scripted", "prompt": "go", "max_tokens": 50}, timeout=120)
        with lock:
            statuses.append(s)
    threads = [threading.Thread(target=long_request) for _ in range(16)]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    # (how many got in depends on how fast the engine moved the first ones into slots: at least the queue's 8)
    assert len(statuses) == 16 and statuses.count(429) >= 1 and statuses.count(200) >= 8, statuses
    assert set(statuses) == {200, 429}, statuses
    assert idle(server, 30)["busy"] == 0


def test_a_client_that_disconnects_mid_stream_frees_its_slot(server):
    """Four streams of 500 tokens fill every slot; closing their connections after a few tokens frees the slots at
    once (long before 500 tokens could be generated), and the next request is answered."""
    import http.client
    conns = []
    for i in range(4):
        c = http.client.HTTPConnection("127.0.0.1", int(server.rsplit(":", 1)[1]), timeout=30)
        c.request("POST", "/v1/completions", json.dumps({"model": "scripted", "prompt": f"go {i}", "max_tokens": 500,
                                                         "stream": True}), {"Content-Type": "application/json"})
        r = c.getresponse()
        assert r.status == 200
        for _ in range(20):   # up to the first chunk with text: the request holds a slot
            line = r.readline()
            if line.startswith(b"data: ") and json.loads(line[6:])["choices"][0]["text"]:
                break
        conns.append((c, r))
    h = get(server + "/health")
    assert h["busy"] == 4, h
    t0, before = time.time(), h["generated"]
    for c, r in conns:
        c.sock.shutdown(2)
        c.close()
    h = idle(server, 10)
    assert h["busy"] == 0 and h["generated"] - before < 4 * 250, (h, before)
    print(f"slots freed {time.time() - t0:.2f} s after the disconnects")
    code, j = post(server + "/v1/completions", {"model": "scripted", "prompt": "after", "max_tokens": 3})
    assert code == 200 and j["usage"]["completion_tokens"] == 3


def test_a_client_that_leaves_a_whole_answer_frees_its_slot(server):
    """The same without streaming: four 500-token requests hold every slot while tokens keep coming; their clients
    go away, and the slots are free within seconds, long before the answers could have been finished."""
    import http.client
    conns = []
    for i in range(4):
        c = http.client.HTTPConnection("127.0.0.1", int(server.rsplit(":", 1)[1]), timeout=30)
        c.request("POST", "/v1/completions", json.dumps({"model": "scripted", "prompt": f"stay {i}", "max_tokens": 500}),
                  {"Content-Type": "application/json"})
        conns.append(c)
    for _ in range(200):
        if (h := get(server + "/health"))["busy"] == 4 and h["generated"] > 0:
            break
        time.sleep(0.05)
    assert h["busy"] == 4, h
    before = h["generated"]
    for c in conns:
        c.sock.shutdown(2)
        c.close()
    h = idle(server, 10)
    assert h["busy"] == 0 and h["generated"] - before < 4 * 250, (h, before)


def test_chat_page_in_headless_chromium(server, tmp_path, monkeypatch):
    """The page at / in Debian's chromium (selenium drives it; nothing is downloaded), at a phone's width: with
    thinking on, the scripted answer arrives with its reasoning folded and its tool call shown; with thinking off
    a long reply streams in (its text seen growing) until Stop, after which the text stays put and the server's
    slot is free. The screenshot goes to tmp_path (and to dev/serve_page.png with SERVE_SCREENSHOT=1)."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (requirements-test.txt)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    monkeypatch.setenv("SE_OFFLINE", "true")   # selenium never looks for a driver or browser online
    opts = Options()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=412,915"):
        opts.add_argument(a)
    browser = webdriver.Chrome(service=Service(driver), options=opts)
    js = browser.execute_script

    def until(fn, timeout=20, what=""):
        for _ in range(int(timeout / 0.02)):
            value = fn()
            if value:
                return value
            time.sleep(0.02)
        pytest.fail(f"timed out waiting for {what}")
    last = lambda q: js(f"const m = [...document.querySelectorAll('.msg.assistant')].pop(); return m && {q};")
    try:
        browser.set_page_load_timeout(20)
        browser.get(server + "/")
        until(lambda: browser.find_element(By.ID, "model").text == "scripted", what="the model's name")
        browser.find_element(By.ID, "think").click()
        browser.find_element(By.ID, "input").send_keys("What is the weather in Paris?")
        browser.find_element(By.ID, "send").click()
        until(lambda: last("m.dataset.state === 'done'"), what="the first answer")
        assert last("m.querySelector('.content').textContent") == "Sure"
        assert last("!m.querySelector('details').hidden && !m.querySelector('details').open")   # folded
        assert last("m.querySelector('details').textContent").endswith("Let me see.")
        assert "get_weather" in last("m.querySelector('.tool').textContent")

        browser.find_element(By.ID, "think").click()   # off: this model babbles until Stop
        browser.find_element(By.ID, "input").send_keys("Tell me a long story")
        browser.find_element(By.ID, "send").click()
        seen = set()
        until(lambda: seen.add(last("m.querySelector('.content').textContent.length")) or len(seen - {0, None}) >= 3,
              what="the reply to grow three times")
        browser.find_element(By.ID, "stop").click()
        until(lambda: last("m.dataset.state === 'done'"), what="the stopped reply")
        length = last("m.querySelector('.content').textContent.length")
        assert last("m.querySelector('.note').textContent") == "(stopped)"
        assert idle(server, 5)["busy"] == 0
        time.sleep(0.3)
        assert last("m.querySelector('.content').textContent.length") == length
        browser.save_screenshot(str(tmp_path / "serve_page.png"))
        if os.environ.get("SERVE_SCREENSHOT"):
            shutil.copy(tmp_path / "serve_page.png", os.path.join(ROOT, "dev", "serve_page.png"))
    finally:
        browser.quit()


def test_bench_serve_smoke_run_on_cpu():
    """bench/serve.py's own code path (a tiny model on the CPU, 1 and 2 streams, our server only: transformers serve
    takes ~30 s to start here; the GPU run starts it): valid JSON lines, tokens counted, the plot drawn."""
    from conftest import run
    r = run(["bench/serve.py", "--smoke=True", "--peer=False"], timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    lines = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
    levels = [l for l in lines if l["what"] == "level"]
    assert [(l["server"], l["concurrency"]) for l in levels] == [("ours", 1), ("ours", 2)]
    assert all(l["tokens"] == 8 * l["concurrency"] and l["tok_s"] > 0 and not l["errors"] for l in levels), levels
    batch1 = next(l for l in lines if l["what"] == "batch1")
    assert batch1["tokens"] == 16 and batch1["server_tok_s"] > 0 and batch1["sample_py_tok_s"] > 0
    assert lines[-1]["what"] == "done" and os.path.isfile(lines[-1]["plot"])


def test_bench_serve_times_the_first_token_not_the_templates_whitespace():
    """transformers serve streams the prompt's empty think block's "\\n\\n" as reasoning_content before any token:
    taken as the first token, its time to first token was a few ms, less than one of its decode steps."""
    import http.server, importlib.util
    spec = importlib.util.spec_from_file_location("bench_serve", os.path.join(ROOT, "bench", "serve.py"))
    bench_serve = importlib.util.module_from_spec(spec)   # (not `serve`: that name is the root's serve.py here)
    spec.loader.exec_module(bench_serve)

    class Peer(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200), self.send_header("Content-Type", "text/event-stream"), self.end_headers()
            for delta, wait in (({"role": "assistant"}, 0), ({"reasoning_content": "\n\n"}, 0.3), ({"content": "春"}, 0.05),
                                ({"content": "風"}, 0)):
                time.sleep(wait)
                self.wfile.write(f"data: {json.dumps({'choices': [{'delta': delta}]})}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")

        def log_message(self, *a):
            pass
    httpd = http.server.HTTPServer(("127.0.0.1", 0), Peer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        first, last, n = bench_serve.stream_chat(httpd.server_address[1], "m", 0, 8)
    finally:
        httpd.shutdown()
    assert 0.3 <= first < last and n == 2, (first, last, n)


@cuda
def test_serve_on_cuda_bf16(tmp_path, tokenizer_files):
    """serve.py on the GPU (bf16, the Triton step in CUDA graphs captured at start, step k+1 launched before step k's
    tokens are read through pinned memory): the scripted answer whole and streamed, 8 concurrent streams on 4 slots
    each answering as alone, a seeded sampled answer reproducible, every slot free at the end."""
    openai = pytest.importorskip("openai")
    d = str(tmp_path / "scripted")
    scripted_model(d, tokenizer_files)
    gen = start_server(d, "--slots=4", "--context=512", "--device=cuda", "--dtype=bfloat16")
    url = next(gen)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", timeout=120, max_retries=0)
        messages = [{"role": "user", "content": "weather?"}]
        r = client.chat.completions.create(model="scripted", messages=messages, temperature=0, max_tokens=50)
        assert r.choices[0].message.content == "Sure" and r.choices[0].finish_reason == "tool_calls"
        s = client.chat.completions.create(model="scripted", messages=messages, temperature=0, max_tokens=50, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in s) == "Sure"
        alone = [client.completions.create(model="scripted", prompt=f"story {i}:", max_tokens=40, temperature=0).choices[0].text
                 for i in range(8)]
        results = {}

        def ask(i):
            s = client.completions.create(model="scripted", prompt=f"story {i}:", max_tokens=40, temperature=0, stream=True)
            results[i] = "".join(x.choices[0].text for x in s)
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
        [t.start() for t in threads]
        [t.join(120) for t in threads]
        assert len(results) == 8 and all(results.values())
        # batched rows run other kernels than a row alone: bf16 near-ties of the babble may tip, rarely
        print(sum(results[i] == alone[i] for i in range(8)), "of 8 streams equal to the request alone")
        seeded = [client.completions.create(model="scripted", prompt="Hi", max_tokens=16, temperature=1.0,
                                            seed=3).choices[0].text for _ in range(2)]
        assert seeded[0] == seeded[1]
        assert idle(url)["busy"] == 0
    finally:
        next(gen, None)


def test_a_prompt_that_leaves_room_for_one_token(server):
    """A prompt of context - 1 tokens (as ids) gets one token, finish_reason length (max_tokens cut to what fits),
    alone and beside other streams; the server goes on answering."""
    results = []
    others = [threading.Thread(target=lambda: results.append(post(server + "/v1/completions", {
        "model": "scripted", "prompt": "go", "max_tokens": 30}))) for _ in range(2)]
    [t.start() for t in others]
    for n in (511, 510):
        code, j = post(server + "/v1/completions", {"model": "scripted", "prompt": [100] * n, "max_tokens": 5})
        assert code == 200 and j["usage"]["completion_tokens"] == 512 - n and j["choices"][0]["finish_reason"] == "length"
    [t.join(30) for t in others]
    assert [c for c, _ in results] == [200, 200] and idle(server)["busy"] == 0


def test_think_setting_is_the_default_of_requests_that_do_not_say(monkeypatch):
    """--think=False: a request without chat_template_kwargs gets the prompt of enable_thinking false (the empty think
    block that a model tuned without thinking saw in training; else its answer comes back as reasoning_content)."""
    ask = {"messages": [{"role": "user", "content": "hi"}]}
    off = serve.chat_prompt({**ask, "chat_template_kwargs": {"enable_thinking": False}})
    assert serve.chat_prompt(ask) != off and serve.think is True    # Qwen3's own default
    monkeypatch.setattr(serve, "think", False)
    assert serve.chat_prompt(ask) == off
    assert serve.chat_prompt({**ask, "chat_template_kwargs": {"enable_thinking": True}}) != off


def test_a_port_in_use_is_one_line_before_the_model_loads(tmp_path):
    import socket
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        r = subprocess.run([PY, "serve.py", f"--init_from={tmp_path / 'not_loaded'}", f"--port={port}"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    said = [line for line in r.stderr.splitlines() if not line.startswith("Overriding")]
    assert r.returncode == 1 and len(said) == 1 and f"--port={port}" in said[0] and "in use" in said[0], r.stderr
