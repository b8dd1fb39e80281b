"""
Chat with an instruction-tuned model in the terminal: multi-turn, streamed, in Qwen3's chat template (tokenizer.py).

    python chat.py --init_from=out_sft                                   # newest checkpoint of an SFT run
    python chat.py --init_from=out_sft/hf --system "你是一个乐于助人的助手。" --temperature=0.7 --think=False
    printf '你好\\n再见\\n' | python chat.py --init_from=out_sft --temperature=0   # piped: a line is a turn

--think is Qwen3's enable_thinking: True lets the model reason in a <think> block before it answers (shown dimmed
on a terminal, between its tags elsewhere; --show_think=False hides it), False closes an empty think block in the
prompt so that it answers at once. As in the template, an earlier answer stays in the history without its
reasoning. Piped (stdin not a terminal), each turn prints as `user: ...` / `assistant: ...`, a readable transcript;
runs of blank lines in an answer are squeezed into one. --chat_template=chatml chats in plain ChatML. For a model
never tuned to think (the SFT demo's, the poem model) use --think=False, the prompt it was tuned on: with True it
may open a think block of its own and ramble (the SFT demo's model on an out-of-format question).

What you type is plain text (--plain_user_text=True, tokenizer.render_chat): typing <|im_start|>system, <think> or
<tool_call> gives those characters, not the special tokens, so a message cannot open a turn of its own. False
tokenizes as transformers' apply_chat_template does (the training ids), special tokens' text included.
Ctrl-C ends the answer being written (it stays in the history); at the prompt, Ctrl-C or Ctrl-D ends the chat.

The KV cache lives across turns: a turn renders the whole conversation, rewinds the cache to the first token where
it differs from what the cache holds (the last answer's think block, or its end), and feeds only the rest (the
user's message and the generation prompt), never the history again. When a turn would not fit in max_context
(with room for max_new_tokens), the oldest exchanges are dropped (the system message stays) and what is kept is
encoded once more. /reset starts over. Decoding is generate.Decoder's: on CUDA its Triton one-token step replays as a
CUDA graph.
"""
import os
import re
import sys

import torch

from checkpoint import load_model
from configurator import check_ranges, check_sampling_settings
from generate import Decoder, sample_next
from tokenizer import (CHAT_TEMPLATES, END_THINK, EOT, IM_END, QWEN_VOCAB, THINK, StreamDecoder, get_tokenizer,
                       render_chat)

init_from = "out_sft"   # a training out_dir (its newest checkpoint), a checkpoint dir, or a Hugging Face directory
system = ""             # the system message ("" = none)
think = True            # Qwen3's enable_thinking: False closes an empty think block in the prompt (no reasoning)
show_think = True       # print the reasoning (dimmed on a terminal); False hides it
chat_template = "qwen3"  # or "chatml" (a model tuned on sft.py --chat_template=chatml data)
plain_user_text = True  # what you type is text: <|im_start|>, <think>, <tool_call> typed are not the special tokens
max_new_tokens = 512    # per answer
max_context = 0         # tokens of history kept in the cache; 0 = the model's max_position_embeddings
temperature = 0.7       # 0 = greedy
top_k = 20              # 0 = off
top_p = 0.8             # 1.0 = off
seed = 1337
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = "bfloat16" if torch.cuda.is_available() else "float32"
STOP = (IM_END, EOT)
DIM, PLAIN = "\x1b[2m", "\x1b[0m"   # ANSI faint / reset


@torch.no_grad()
def reply(decoder, new_ids):
    """Append new_ids to the decoder's cache in one prefill, then sample token by token (generate.Decoder: on
    CUDA the Triton step replayed as a CUDA graph, elsewhere the PyTorch step eagerly); yields each sampled id, the
    last one a STOP id unless max_new_tokens ran out. Each sampled id but the last is appended to the cache by the
    step that follows it, so the cache holds exactly what was said."""
    nxt = sample_next(decoder.prefill(torch.tensor([new_ids], device=device)), temperature, top_k or None, top_p)
    for i in range(max_new_tokens):
        yield nxt.item()
        if nxt.item() in STOP or i == max_new_tokens - 1:
            return
        nxt = decoder.step(nxt, temperature, top_k or None, top_p)


class Printer:
    """Writes an answer as it streams: the reasoning dimmed on a terminal, between <think> tags elsewhere, or not
    at all (show_think=False); whitespace at either end dropped and runs of blank lines squeezed into one, since a
    model that has not learnt to stop can print pages of newlines."""

    def __init__(self, out, show_think=True):
        self.out, self.show_think, self.tty = out, show_think, out.isatty()
        self.held, self.started, self.thinking = "", False, False   # held: whitespace not yet written

    def write(self, text, thinking=False):
        if thinking and not self.show_think:
            return
        for part in re.split(r"(\s+)", text):
            if part.isspace():
                self.held += part
            elif part:
                gap = ("\n\n" if self.held.count("\n") > 1 else self.held) if self.started else ""
                if thinking and not self.thinking:
                    gap += DIM if self.tty else "<think>\n"
                elif self.thinking and not thinking:
                    gap = (PLAIN if self.tty else "\n</think>") + gap
                self.out.write(gap + part)
                self.out.flush()
                self.held, self.started, self.thinking = "", True, thinking

    def close(self):
        self.out.write((PLAIN if self.tty else "\n</think>") * self.thinking + "\n")
        self.out.flush()


class Conversation:
    """The messages so far (OpenAI-style dicts, answers as the model wrote them, think block included: the template
    drops it) and the ids the decoder's cache holds."""

    def __init__(self, model, ctx):
        self.ctx = ctx
        self.decoder = Decoder(model, batch_size=1, max_len=ctx)   # one static KV cache for the whole chat
        self.reset()

    def reset(self):
        self.messages = [{"role": "system", "content": system}] if system else []
        self.decoder.reset(0)
        self.cached = []

    def prompt(self, messages):
        return render_chat(messages, add_generation_prompt=True, enable_thinking=think, template=chat_template,
                           plain_user_text=plain_user_text)[0]

    def turn(self, text, out=sys.stdout, prefix=""):
        """Stream the answer to one user message to `out`, after `prefix`."""
        user = {"role": "user", "content": text}
        ids = self.prompt(self.messages + [user])
        if len(ids) + max_new_tokens > self.ctx:   # trim: keep the newest exchanges that fit
            keep = self.messages[:1] if system else []
            if len(self.prompt(keep + [user])) + max_new_tokens > self.ctx:   # not even alone: the history stays
                print("[message too long for the context; not sent]", file=sys.stderr)
                return
            rest = self.messages[len(keep):]
            while rest and len(self.prompt(keep + rest + [user])) + max_new_tokens > self.ctx:
                rest = rest[2:]   # the oldest user message and its answer
            self.messages = keep + rest
            ids = self.prompt(self.messages + [user])
            print(f"[history trimmed to {len(rest) // 2} earlier exchange(s) to fit {self.ctx} tokens]", file=sys.stderr)
        same = 0   # the cache's ids that the conversation still starts with (at least one id is fed)
        while same < min(len(self.cached), len(ids) - 1) and self.cached[same] == ids[same]:
            same += 1
        self.decoder.reset(same)
        out.write(prefix)
        dec, printer, sampled, thinking = StreamDecoder(get_tokenizer()), Printer(out, show_think), [], False
        try:
            for tok in reply(self.decoder, ids[same:]):
                sampled.append(tok)
                if tok in STOP:
                    break
                if tok in (THINK, END_THINK):
                    printer.write(dec.flush(), thinking)
                    thinking = tok == THINK
                else:
                    printer.write(dec.push(tok), thinking)
        except KeyboardInterrupt:   # Ctrl-C ends this answer (what was said so far stays), not the chat
            printer.write(dec.flush(), thinking)
            printer.close()
            print("[interrupted]", file=sys.stderr)
            if not sampled:   # stopped in the prefill: the cache past the common prefix is not to be trusted
                self.cached = self.cached[:same]
                return
        else:
            printer.write(dec.flush(), thinking)
            printer.close()
        # every sampled id but the last was fed by the step after it (a step cut short by Ctrl-C fed none)
        self.cached = ids + sampled[:-1]
        said = get_tokenizer().decode([t for t in sampled if t not in STOP])
        self.messages += [user, {"role": "assistant", "content": said}]


def main():
    if chat_template not in CHAT_TEMPLATES:
        sys.exit(f"error: --chat_template must be {'|'.join(CHAT_TEMPLATES)}, got {chat_template!r}")
    check_streams()
    check_sampling_settings(max_new_tokens, temperature, top_k, top_p)
    check_ranges(globals(), {"max_context": 0})
    torch.manual_seed(seed)
    model, model_dir = load_model(init_from, dtype=getattr(torch, dtype), device=device)
    model.eval()
    if model.config.vocab_size < QWEN_VOCAB:
        sys.exit(f"error: {model_dir} has vocab_size {model.config.vocab_size}: no room for the chat tokens")
    ctx = min(max_context or model.config.max_position_embeddings, model.config.max_position_embeddings)
    if ctx <= max_new_tokens:
        sys.exit(f"error: max_context {ctx} leaves no room beyond max_new_tokens {max_new_tokens}")
    chat, tty = Conversation(model, ctx), sys.stdin.isatty()
    print(f"[{model_dir}] context {ctx} tokens; /reset starts over" + ("; Ctrl-D or Ctrl-C quits" if tty else ""),
          file=sys.stderr)
    while True:
        try:
            text = input("> " if tty else "")
        except (EOFError, KeyboardInterrupt):   # Ctrl-D, the pipe's end, or Ctrl-C at the prompt: the chat ends
            print(file=sys.stderr) if tty else None
            break
        if text.strip() == "/reset":
            chat.reset()
        elif text.strip():
            if not tty:   # piped: a transcript that says who speaks
                print(f"user: {text}")
            chat.turn(text, prefix="" if tty else "assistant: ")


def check_streams():
    """stdin or stdout closed (`<&-`, `>&-`) is one line, not an AttributeError or RuntimeError later; bytes that
    are not UTF-8 in the input become U+FFFD instead of stopping the chat."""
    for name in ("stdin", "stdout"):
        if getattr(sys, name) is None:
            sys.exit(f"error: chat.py's {name} is closed: run it in a terminal, or pipe messages in and the answers out")
    for stream in (sys.stdin, sys.stdout):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")


if __name__ == "__main__":   # the settings are read here, so that tests can import the chat loop
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configurator.py")).read())
    try:
        main()
    except BrokenPipeError:   # the reader of a piped transcript went away (| head): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
