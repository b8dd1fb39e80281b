"""
Evaluation: validation loss / bits-per-byte, and C-Eval (PPL and GEN modes) from local C-Eval files.

    python eval.py --init_from=out --data_dir=data/demo                  # val loss + bpb of the newest checkpoint
    python eval.py --init_from=out/hf --ceval_dir=ceval-exam --mode=both --split=val --shots=5
"""
import math
import os
import sys
from contextlib import nullcontext

import numpy as np
import torch

from data import token_byte_lengths, val_batches


@torch.no_grad()
def val_loss_bpb(model, data_dir, seq_len, batch_size, n_batches, device, autocast=nullcontext()):
    """Mean next-token loss (nats) over the fixed held-out set, and bits per byte: the same total loss in bits
    divided by the UTF-8 bytes of the scored target tokens (special tokens such as <|endoftext|> count 0 bytes),
    i.e. bpb = loss / ln 2 * tokens / bytes. Unlike loss, bpb does not depend on the tokenizer."""
    was_training = model.training
    model.eval()
    nbytes = torch.from_numpy(token_byte_lengths(model.config.vocab_size)).to(device)
    total_nats, total_tokens, total_bytes = 0.0, 0, 0
    for x, y in val_batches(data_dir, seq_len, batch_size, n_batches, device):
        with autocast:
            _, loss = model(x, y)
        total_nats += loss.item() * y.numel()
        total_tokens += y.numel()
        total_bytes += int(nbytes[y].sum())
    model.train(was_training)
    return total_nats / total_tokens, total_nats / math.log(2) / max(total_bytes, 1)
