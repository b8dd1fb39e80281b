"""
Sample from a trained model, streaming text as it is generated.

    python sample.py --prompt "你好"                          # newest checkpoint in out/
    python sample.py --init_from=out --prompt "Python is" --max_new_tokens=100 --temperature=0.8   # the demo model
    python sample.py --init_from=/path/to/hf_qwen3_dir --prompt "..." --top_p 0.9

On CUDA it decodes through generate.Decoder (static KV cache, decode_kernel.py's Triton step replayed as a CUDA
graph); on the CPU through the plain loop. --num_samples > 1 decodes the samples as one batch and prints them one
after another; a single sample streams as it is generated. An empty prompt starts from <|endoftext|>, the token
that begins every pretraining document. The decode benchmark is bench/decode.py.
"""
import os
import sys
import time
from functools import partial

import torch

from checkpoint import load_model
from configurator import check_sampling_settings
from generate import Decoder, stream
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
fast = None             # None: the Decoder (Triton step + CUDA graph) on CUDA, the plain loop elsewhere
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configurator.py")).read())


if __name__ == "__main__":
    check_sampling_settings(max_new_tokens, temperature, top_k, top_p, num_samples)
    torch.manual_seed(seed)
    model, model_dir = load_model(init_from, dtype=getattr(torch, dtype), device=device)
    model.eval()
    enc = get_tokenizer()
    ids = enc.encode(prompt, allowed_special="all") or [EOT]  # an empty prompt starts a document
    if max(ids) >= model.config.vocab_size:
        sys.exit(f"error: the prompt has token ids >= the model's vocab_size {model.config.vocab_size}")
    if len(ids) + max_new_tokens > model.config.max_position_embeddings:
        sys.exit(f"error: prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                 f"max_position_embeddings {model.config.max_position_embeddings}")
    print(f"[{model_dir}]", file=sys.stderr)
    use_decoder = device.startswith("cuda") if fast is None else fast
    decoder = Decoder(model, num_samples, max_len=len(ids) + max_new_tokens) if use_decoder else None
    x = torch.tensor([ids] * num_samples, device=device)
    t0, count = time.time(), 0
    decs = [StreamDecoder(enc) for _ in range(num_samples)]
    texts, finished = [prompt] * num_samples, [False] * num_samples
    if num_samples == 1:
        print(prompt, end="", flush=True)
    columns = decoder.stream if decoder else partial(stream, model)   # the fast path, or the plain loop
    for col in columns(x, max_new_tokens, temperature, top_k or None, top_p, eos=EOT):
        count += 1
        for i, tok in enumerate(col[:, 0].tolist()):  # the one host sync per token: the text has to be printed
            finished[i] |= tok == EOT
            if finished[i] or tok >= enc.n_vocab:  # ids past the tokenizer's (unused embedding rows) print nothing
                continue
            piece = decs[i].push(tok)
            if num_samples == 1:
                print(piece, end="", flush=True)
            texts[i] += piece
    if num_samples == 1:
        print(decs[0].flush())
    else:
        for i, (text, d) in enumerate(zip(texts, decs)):
            print(f"--- sample {i + 1}\n{text}{d.flush()}")
    how = f"Decoder, {decoder.step_kind} step: includes the first call's set-up" if use_decoder else "plain loop"
    print(f"--- {count} steps x {num_samples} samples, {count * num_samples / (time.time() - t0):.1f} tok/s ({how})",
          file=sys.stderr)
