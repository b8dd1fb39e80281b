"""
Sample from a trained model, streaming text as it is generated.

    python sample.py --prompt "你好"                          # newest checkpoint in out/
    python sample.py --init_from=out_tiny --prompt "Python is" --max_new_tokens=100 --temperature=0.8
    python sample.py --init_from=/path/to/hf_qwen3_dir --prompt "..." --top_p 0.9
"""
import os
import sys
import time

import torch

from generate import stream
from model import find_model_dir, from_pretrained
from tokenizer import EOT, StreamDecoder, get_tokenizer

init_from = "out"       # a training out_dir (its newest checkpoint), a checkpoint dir, or a Hugging Face directory
prompt = "你好"
max_new_tokens = 200
temperature = 0.8       # 0 = greedy
top_k = 200             # 0 = off
top_p = 0.95            # 1.0 = off
num_samples = 1
seed = 1337
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = "bfloat16" if torch.cuda.is_available() else "float32"
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configurator.py")).read())


if __name__ == "__main__":
    if dtype not in ("float32", "bfloat16", "float16"):
        sys.exit(f"error: --dtype must be float32|bfloat16|float16, got {dtype!r}")
    torch.manual_seed(seed)
    model_dir = find_model_dir(init_from)
    model = from_pretrained(model_dir, dtype=getattr(torch, dtype), device=device).eval()
    enc = get_tokenizer()
    ids = enc.encode(prompt, allowed_special="all")
    if max(ids, default=0) >= model.config.vocab_size:
        sys.exit(f"error: the prompt has token ids >= the model's vocab_size {model.config.vocab_size}")
    print(f"[{model_dir}]", file=sys.stderr)
    for n in range(num_samples):
        x = torch.tensor([ids], device=device)
        dec = StreamDecoder(enc)
        print(prompt, end="", flush=True)
        t0, count = time.time(), 0
        for tok in stream(model, x, max_new_tokens, temperature, top_k or None, top_p, eos=EOT):
            count += 1
            if tok.item() == EOT:
                break
            print(dec.push(tok.item()), end="", flush=True)
        print(dec.flush())
        print(f"--- {count} tokens, {count / (time.time() - t0):.1f} tok/s", file=sys.stderr)
