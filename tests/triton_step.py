"""
decode_kernel.py's kernels against the PyTorch ops they replace, run by tests/test_generate.py in a subprocess with
TRITON_INTERPRET=1 (Triton's CPU interpreter must be switched on before triton is imported).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))                   # tests/: test_generate.peaky_model

import torch
import torch.nn.functional as F

import decode_kernel
import generate as G
from test_generate import peaky_model, run_slots

model = peaky_model(seed=0, head_dim=16, max_position_embeddings=1024)  # norm gains away from 1, peaky logits
block = model.model.layers[0]
close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
tuned = decode_kernel.linear_config
small_blocks = lambda N, K, rows: (8, 32, 4, 1) if rows == 1 else (16, 32, 4, 1)
# for the whole step: few programs a launch (the interpreter runs them one after another), a K loop of 1-2 blocks
wide_blocks = lambda N, K, rows: (32, 64, 4, 1)


def check_fused_linear():
    """fused_linear alone: every option, one row (multiply-and-sum) and 3 rows (tl.dot), a K loop of 1-3 blocks, N
    not a multiple of the block."""
    for B in (1, 3):
        x, r = torch.randn(B, 64), torch.randn(B, 96)
        w = torch.randn(2 * 96, 64)
        mv = decode_kernel.fused_linear
        close(mv(x, w[:96]), x @ w[:96].T)
        close(mv(x, w[:96], residual=r), r + x @ w[:96].T)
        xn = block.input_layernorm(x)
        close(mv(x, w, norm=block.input_layernorm, glu=True), F.silu(xn @ w[:96].T) * (xn @ w[96:].T))
        w2 = torch.randn(64, 96)
        close(mv(r, w2), r @ w2.T)  # K=96, N=64


def check_decoder(B, max_len, prompt, lengths, new):
    """The whole step inside a Decoder: the same greedy tokens and cache contents as the PyTorch step. A cache of 32
    positions is one program; longer ones go in chunks of 32 keys, which the rows cross. With one row, a second
    prompt then continues the cache (a chat turn: a prefill that starts mid-cache)."""
    outs = []
    for step in ("eager", "triton"):
        dec = G.Decoder(model, B, max_len=max_len, step=step)
        assert dec.step_kind == step and not dec.cuda_graph
        out = dec.generate(prompt[:B], new, temperature=0, lengths=lengths)
        if B == 1:
            out = torch.cat([out, dec.generate(torch.cat([dec.last, prompt[:1, :7]], 1), 4, temperature=0)], 1)
        outs.append((out, torch.stack([torch.stack([c.k, c.v]) for c in dec.caches])))
    (plain, plain_cache), (kernel, kernel_cache) = outs
    assert torch.equal(plain, kernel), (plain, kernel)
    err = (plain_cache - kernel_cache).abs().max().item()
    assert err < 1e-5, err   # the keys and values the kernel wrote (normalised, rotated) are the plain path's


def check_refresh_weights():
    """rl.py changes the weights between rollouts: refresh_weights rewrites the step's concatenated copy in place (the
    captured graphs read it at fixed addresses), after which the Triton step decodes as the PyTorch step does on the
    new weights."""
    m = peaky_model(seed=1, head_dim=16, max_position_embeddings=1024)
    dec = G.Decoder(m, 1, max_len=32, step="triton")
    addresses = [(a.data_ptr(), b.data_ptr()) for a, b in dec.weights]
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    assert not torch.equal(dec.weights[0][0], decode_kernel.fused_weights(m)[0][0])   # stale until refreshed
    dec.refresh_weights()
    assert [(a.data_ptr(), b.data_ptr()) for a, b in dec.weights] == addresses
    x = prompt[:1, :8]
    assert torch.equal(dec.generate(x, 5, temperature=0), G.Decoder(m, 1, max_len=32, step="eager").generate(x, 5, temperature=0))



def check_slots():
    """Continuous batching with the Triton step: slots prefilled alone (prefill_logits on one row's cache view),
    joining and leaving, steps over 1, 2 and 4 rows, sampled rows with their own generators: the eager step's tokens."""
    prompts = [prompt[r, :n].tolist() for r, n in enumerate((5, 9, 3))] + [prompt[0, 20:26].tolist()]
    settings = [(0, None, None), (1.0, 8, None), (0, None, None), (0.9, None, 0.8)]
    outs = [run_slots(G.Decoder(model, 3, max_len=32, step=step), prompts, 4, settings,
                      [torch.Generator().manual_seed(r) for r in range(4)]) for step in ("eager", "triton")]
    assert outs[0] == outs[1], outs

for config in (tuned, small_blocks):
    decode_kernel.linear_config = config
    check_fused_linear()
decode_kernel.linear_config = wide_blocks
# the interpreter's time goes with the prompt rows and the steps, so both are as few as the cases need
prompt = torch.randint(0, 320, (3, 36))
check_decoder(3, 32, prompt[:, :12], [12, 9, 4], 6)     # right-padded rows at different positions, one program
check_decoder(2, 64, prompt, [36, 29], 6)               # ... in 2 chunks: row 0 in the second, row 1 crosses 32
check_decoder(1, 64, prompt[:, :24], None, 6)            # one row (the one-row kernels), a continued cache that crosses 32
check_refresh_weights()
check_slots()
print("ok")
