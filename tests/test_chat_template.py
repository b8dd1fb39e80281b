"""The chat template: our Python renderer against the exported Jinja template in transformers (text and ids, every
Qwen3 case: thinking on/off, reasoning in the history, the multi-step tool rule, tools, tool calls and responses),
the loss mask of a tool-using conversation, plain ChatML as the option."""
import numpy as np
import pytest
from conftest import small_config  # noqa: F401  (puts the repo root on sys.path)

from tokenizer import CHAT_TEMPLATES, IM_START, get_tokenizer, render_chat, render_chat_text, save_tokenizer

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "当前天气 (°C)", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "time_in", "parameters": {"type": "object", "properties": {}}}}


def call(name, arguments):
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def u(text):
    return {"role": "user", "content": text}


def a(text, reasoning=None, calls=None):
    m = {"role": "assistant", "content": text}
    if reasoning is not None:
        m["reasoning_content"] = reasoning
    if calls is not None:
        m["tool_calls"] = calls
    return m


def tool(text):
    return {"role": "tool", "content": text}


SYS = {"role": "system", "content": "你是一个助手。"}
PARIS = [u("Weather in Paris?"), a("", "The user wants the weather: call the tool.", [call("get_weather", {"city": "Paris"})]),
         tool('{"temp": 21, "sky": "sunny"}'), a("It is sunny in Paris, 21 °C.")]
# (messages, tools): each rendered with and without the generation prompt, thinking on and off
CASES = [
    ([u("Hello, 你好")], None),
    ([SYS, u("Hello")], None),
    ([u("Hi"), a("Hello!")], None),                                                  # ends with an answer
    ([SYS, u("1+1"), a("2"), u("2+2")], None),
    ([SYS, u("1+1"), a("2"), u("2+2"), a("4")], None),
    ([u("1+1"), a("2", "one plus one"), u("2+2"), a("4", "two plus two")], None),     # reasoning_content
    ([u("1+1"), a("<think>\nadd them\n</think>\n\n2"), u("2+2")], None),             # reasoning in the content
    ([u("1+1"), a("<think>add them</think>2")], None),
    ([u("x"), a("\n\nanswer\n", "\n\nreasoning\n\n")], None),                        # newlines around both
    ([u("x"), a("answer", "")], None),                                               # empty reasoning, last turn
    ([u("x"), a("answer", ""), u("y"), a("again", "")], None),
    (PARIS, [WEATHER]),                                                             # tools, no system prompt
    ([SYS] + PARIS, [WEATHER]),
    ([SYS] + PARIS[:1], [WEATHER, CLOCK]),                                           # tools, the question only
    ([u("Weather?"), a("", None, [call("get_weather", '{"city": "Paris"}')])], [WEATHER]),   # arguments as JSON text
    ([u("Paris and time?"), a("Let me check both.", None, [call("get_weather", {"city": "Paris"}), call("time_in", {})]),
      tool("sunny"), tool("12:00"), a("Sunny, and it is noon.")], [WEATHER, CLOCK]),     # two calls, two responses
    ([u("Plan?"), a("", "step 1", [call("get_weather", {"city": "Oslo"})]), tool("rain"),
      a("", "step 2", [call("time_in", {})]), tool("09:00"), a("Rain at nine.", "step 3")], [WEATHER, CLOCK]),
    ([u("Plan?"), a("", "step 1", [call("get_weather", {"city": "Oslo"})]), tool("rain"), a("Rain.", "done"),
      u("Thanks!")], [WEATHER]),                                                    # a new query drops all of it
    ([u("Weather?"), a("", None, [{"name": "get_weather", "arguments": {"city": "Rome"}}]), tool("hot")], [WEATHER]),
    ([u("Weather?"), a("ok", "call", [call("get_weather", {"city": "Rome"})]),
      u("<tool_response>\nhot\n</tool_response>"), a("Hot.", "done")], [WEATHER]),      # an old-style tool response
    ([u("a"), a("b"), {"role": "system", "content": "Now answer in French."}, u("c")], None),
    ([SYS, a("Welcome!")], None),                                                    # no user message at all
    ([u("é (e + \u0301) 🤖 “quotes”"), a("<think>\n</think>\n\n好的 ok\n")], None),
]


@pytest.fixture(scope="module")
def hf_tokenizer(tokenizer_files):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tokenizer_files)   # save_tokenizer's files: Qwen3's template by default


def hf_ids(out):
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_our_rendering_is_the_exported_templates_in_transformers(hf_tokenizer, case):
    messages, tools = CASES[case]
    for gen in (False, True):
        for thinking in (True, False):
            kw = dict(tools=tools, add_generation_prompt=gen, enable_thinking=thinking)
            text = render_chat_text(messages, **kw)
            assert hf_tokenizer.apply_chat_template(messages, tokenize=False, **kw) == text, kw
            assert hf_ids(hf_tokenizer.apply_chat_template(messages, tokenize=True, **kw)) == render_chat(messages, **kw)[0]


def test_the_cases_where_qwen3_differs_from_chatml():
    """An answer that ends the conversation gets an (empty) think block; thinking off closes one in the generation
    prompt; reasoning before the last query is dropped, after it kept; tool calls and responses as Qwen3 writes them."""
    assert render_chat_text([u("Hi"), a("Hello!")]) == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello!<|im_end|>\n"
    assert render_chat_text([u("Hi")], add_generation_prompt=True) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert render_chat_text([u("Hi")], add_generation_prompt=True, enable_thinking=False) == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert render_chat_text([u("1+1"), a("<think>\nadd\n</think>\n\n2"), u("2+2"), a("4", "add again")]) == (
        "<|im_start|>user\n1+1<|im_end|>\n<|im_start|>assistant\n2<|im_end|>\n<|im_start|>user\n2+2<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nadd again\n</think>\n\n4<|im_end|>\n")
    steps = render_chat_text(CASES[16][0], CASES[16][1])   # three steps after one query: every step's reasoning stays
    assert all(f"<think>\nstep {i}\n</think>\n\n" in steps for i in (1, 2, 3))
    assert "<think>" not in render_chat_text(CASES[17][0], CASES[17][1])   # a new query: none of it stays
    assert render_chat_text([u("Hi"), a("Hello!")], template="chatml") == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    with pytest.raises(ValueError, match="chatml"):
        render_chat_text(PARIS, [WEATHER], template="chatml")


def test_loss_mask_of_a_tool_use_conversation():
    """Trained: each answer from its think block to its <|im_end|> (the tool call included); not trained: the
    system prompt with the tools, the question, the tool's response, '<|im_start|>assistant\\n', the newlines."""
    tools_prompt = (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function "
        "signatures within <tools></tools> XML tags:\n<tools>\n"
        '{"type": "function", "function": {"name": "get_weather", "description": "当前天气 (°C)", "parameters": '
        '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}\n</tools>\n\n'
        "For each function call, return a json object with function name and arguments within <tool_call></tool_call> "
        'XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')
    pieces = [
        (f"<|im_start|>system\n你是一个助手。\n\n{tools_prompt}<|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n"
         "<|im_start|>assistant\n", False),
        ('<think>\nThe user wants the weather: call the tool.\n</think>\n\n<tool_call>\n{"name": "get_weather", '
         '"arguments": {"city": "Paris"}}\n</tool_call><|im_end|>', True),
        ('\n<|im_start|>user\n<tool_response>\n{"temp": 21, "sky": "sunny"}\n</tool_response><|im_end|>\n'
         "<|im_start|>assistant\n", False),
        ("<think>\n\n</think>\n\nIt is sunny in Paris, 21 °C.<|im_end|>", True),
        ("\n", False)]
    enc = get_tokenizer()
    text = "".join(t for t, _ in pieces)
    ids, mask = render_chat([SYS] + PARIS, [WEATHER])
    assert render_chat_text([SYS] + PARIS, [WEATHER]) == text and ids == enc.encode(text, allowed_special="all")
    bounds = [len(enc.encode("".join(t for t, _ in pieces[:i]), allowed_special="all")) for i in range(len(pieces) + 1)]
    edges = np.flatnonzero(np.diff([0] + mask + [0])).tolist()   # where the runs of 1s start and end
    assert list(zip(edges[::2], edges[1::2])) == [(bounds[1], bounds[2]), (bounds[3], bounds[4])]
    assert enc.decode([t for t, m in zip(ids, mask) if m]) == pieces[1][0] + pieces[3][0]


CHATML = [[SYS, u("Hello, 你好"), a("Hi! 很高兴见到你。"), u("2+2?"), a("4")],
          [u("a\n\n  b "), a("\n\n 好的 ok\n"), u("é (e + \u0301)"), a(" x")]]


def test_chatml_option_in_transformers(tmp_path):
    """--chat_template=chatml: plain ChatML, exported and rendered the same; the loss on the answers and their
    <|im_end|> (not on '<|im_start|>assistant\\n')."""
    from transformers import AutoTokenizer
    save_tokenizer(tmp_path, chat_template="chatml")
    tok = AutoTokenizer.from_pretrained(tmp_path)
    for conv in CHATML + [CHATML[0][1:], CHATML[0][1:2]]:
        for gen in (False, True):
            ids, mask = render_chat(conv, add_generation_prompt=gen, template="chatml")
            assert hf_ids(tok.apply_chat_template(conv, tokenize=True, add_generation_prompt=gen)) == ids, (conv, gen)
    ids, mask = render_chat(CHATML[0], template="chatml")
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in CHATML[0])
    assert ids == get_tokenizer().encode(text, allowed_special="all") and ids[0] == IM_START
    assert get_tokenizer().decode([t for t, m in zip(ids, mask) if m]) == "Hi! 很高兴见到你。<|im_end|>4<|im_end|>"
    with pytest.raises(ValueError, match="unknown chat template"):
        save_tokenizer(tmp_path, chat_template="llama")
    assert set(CHAT_TEMPLATES) == {"qwen3", "chatml"}
