"""
Example rewards for rl.py: how to write one.

A reward is a plain function `reward(prompt, completion, **fields) -> float`, or a dict of named float components
(rl.py sums them and logs each), named on the command line as `--reward=rewards.py:exact_answer` (a module name or a
.py path, then the function; several joined by commas are summed). `prompt` is the prompts file's "prompt" string (or
its "messages" list), `completion` the model's answer as text (its end token removed; a think block, if the model
thinks, included), and `fields` the line's other keys -- an "answer" to check, test cases to run. It must be
deterministic and cheap (it runs for every answer of every step, on the CPU, in the training process) and it must
never be gameable by something other than what you want: RL finds every hole in a reward (an answer checker that
accepts "the answer is 3 or 4" is a hole). A reward that raises or returns NaN stops the run with one line naming it.
One that names a parameter `group_completions` also gets every answer to the same prompt (itself included): a
reward may then compare them (the poem reward's `variety` marks down answers that all rhyme alike).

    {"prompt": "What is 17 * 23? Answer with the number only.", "answer": "391"}     # a line of prompts.jsonl
    python rl.py --init_from=out_sft --prompts=prompts.jsonl --reward=rewards.py:exact_answer,rewards.py:concise

bench/poetry_rules.py's `reward` is the full example: form, rhyme and tones of classical Chinese poems, checked
against the Pingshui rhyme dictionary, with penalties for copied and repeated lines.
"""
import re

THINK = re.compile(r"<think>.*?</think>\s*", re.S)


NUMBER = re.compile(r"[-+]?(\d{1,3}(,\d{3})+|\d+)(\.\d*)?", re.ASCII)   # digits, thousands grouped by commas or not


def final_answer(completion):
    """The answer without its think block and surrounding space."""
    return THINK.sub("", completion).strip()


def exact_answer(prompt, completion, answer=None, **fields):
    """1 if the answer (think block aside) is exactly the line's "answer" -- numbers compared as numbers -- else 0.
    An exact comparison leaves no room for hedging ("391 or 392" scores 0)."""
    if answer is None:
        raise ValueError("exact_answer needs an \"answer\" field in every line of the prompts file")
    got, want = final_answer(completion), str(answer).strip()
    if NUMBER.fullmatch(got) and NUMBER.fullmatch(want):   # "391.", "1,234": a number written as numbers are written
        return float(float(got.replace(",", "").rstrip(".")) == float(want.replace(",", "").rstrip(".")))
    return float(got == want)   # ("3,91", "3_91", "３９１": not numbers to float(), which would take them)


def concise(prompt, completion, max_chars=200, **fields):
    """A format/length reward: 1 for a non-empty answer of at most max_chars characters (think block aside) with no
    stray template tags, falling linearly to 0 at twice that length; -1 for an empty answer or a stray tag."""
    text = final_answer(completion)
    if not text or any(tag in text for tag in ("<think>", "</think>", "<|im_start|>", "<|im_end|>")):
        return -1.0
    return max(0.0, min(1.0, 2.0 - len(text) / max_chars))
