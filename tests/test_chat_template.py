"""The chat template: our Python renderer against the exported Jinja template in transformers (text and ids, every
Qwen3 case: thinking on/off, reasoning in the history, the multi-step tool rule, tools, tool calls and responses),
the loss mask of a tool-using conversation, plain ChatML as the option."""
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
def hf_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer
    d = tmp_path_factory.mktemp("tok")
    save_tokenizer(d)   # Qwen3's template by default
    return AutoTokenizer.from_pretrained(d)


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
