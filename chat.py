"""
Chat with an instruction-tuned model in the terminal: multi-turn, streamed, in ChatML (sft.py's template).

    python chat.py --init_from=out_sft                                   # newest checkpoint of an SFT run
    python chat.py --init_from=out_sft/hf --system "你是一个乐于助人的助手。" --temperature=0.7
    printf '你好\\n再见\\n' | python chat.py --init_from=out_sft --temperature=0   # piped: a line is a turn

The KV cache lives across turns: a turn feeds only its new tokens (the last answer's <|im_end|>\\n, the user's
message, the generation prompt), never the history again. When a turn would not fit in max_context (with room
for max_new_tokens), the oldest exchanges are dropped (the system message stays) and what is kept is encoded
once more. /reset starts over. Decoding is generate.Decoder's: on CUDA its Triton one-token step replays as a
CUDA graph.
"""
import os
import sys

import torch

from checkpoint import find_model_dir, from_pretrained
from generate import Decoder, sample_next
from sft import render
from tokenizer import EOT, IM_END, StreamDecoder, get_tokenizer

init_from = "out_sft"   # a training out_dir (its newest checkpoint), a checkpoint dir, or a Hugging Face directory
system = ""             # the system message ("" = none)
max_new_tokens = 512    # per answer
max_context = 0         # tokens of history kept in the cache; 0 = the model's max_position_embeddings
temperature = 0.7       # 0 = greedy
top_k = 20              # 0 = off
top_p = 0.8             # 1.0 = off
seed = 1337
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = "bfloat16" if torch.cuda.is_available() else "float32"
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configurator.py")).read())
STOP = (IM_END, EOT)


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


class Conversation:
    """The messages so far and how many of their tokens the cache holds; `pending` are tokens of the
    conversation not yet in the cache (the closing <|im_end|>\\n of the last answer)."""

    def __init__(self, model, ctx):
        self.model, self.ctx = model, ctx
        self.decoder = Decoder(model, batch_size=1, max_len=ctx)   # one static KV cache for the whole chat
        self.reset()

    def reset(self):
        self.messages = [("system", system)] if system else []
        self.decoder.reset(0)
        self.pending = render(self.messages)[0]

    def turn(self, text):
        """Stream the answer to one user message to stdout."""
        new = self.pending + render([("user", text)], add_generation_prompt=True)[0]
        if self.decoder.pos + len(new) + max_new_tokens > self.ctx:   # trim: re-encode the newest exchanges that fit
            keep = self.messages[:1] if system else []
            rest = self.messages[len(keep):]
            while rest and len(render(keep + rest + [("user", text)], True)[0]) + max_new_tokens > self.ctx:
                rest = rest[2:]   # the oldest user message and its answer
            self.messages = keep + rest
            self.decoder.reset(0)
            new = render(self.messages + [("user", text)], add_generation_prompt=True)[0]
            print(f"[history trimmed to {len(rest) // 2} earlier exchange(s) to fit {self.ctx} tokens]", file=sys.stderr)
            if len(new) + max_new_tokens > self.ctx:
                print("[message too long for the context; not sent]", file=sys.stderr)
                self.reset()
                return
        dec, said, sampled = StreamDecoder(get_tokenizer()), [], 0
        for tok in reply(self.decoder, new):
            sampled += 1
            if tok in STOP:
                break
            said.append(tok)
            print(dec.push(tok), end="", flush=True)
        print(dec.flush(), flush=True)
        # the cache now holds `new` and every sampled id but the last (never fed back); the answer is closed
        # with <|im_end|>\n when the next turn is fed (a stop id sampled is replaced by <|im_end|>)
        self.pending = (said[-1:] if sampled == len(said) else []) + [IM_END] + get_tokenizer().encode_ordinary("\n")
        self.messages += [("user", text), ("assistant", get_tokenizer().decode(said))]


def main():
    torch.manual_seed(seed)
    model_dir = find_model_dir(init_from)
    model = from_pretrained(model_dir, dtype=getattr(torch, dtype), device=device).eval()
    if model.config.vocab_size <= IM_END:
        sys.exit(f"error: {model_dir} has vocab_size {model.config.vocab_size}: no room for the chat tokens")
    ctx = min(max_context or model.config.max_position_embeddings, model.config.max_position_embeddings)
    if ctx <= max_new_tokens:
        sys.exit(f"error: max_context {ctx} leaves no room beyond max_new_tokens {max_new_tokens}")
    chat, tty = Conversation(model, ctx), sys.stdin.isatty()
    print(f"[{model_dir}] context {ctx} tokens; /reset starts over" + ("; Ctrl-D quits" if tty else ""), file=sys.stderr)
    while True:
        try:
            text = input("> " if tty else "")
        except EOFError:
            break
        if text.strip() == "/reset":
            chat.reset()
        elif text.strip():
            chat.turn(text)


if __name__ == "__main__":
    main()
