"""
muon.py's Triton `gram` kernel against torch's matmuls, run by tests/test_muon.py in a subprocess with
TRITON_INTERPRET=1 (float32: the interpreter's bf16 arithmetic is wrong; bf16 is the CUDA test's).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

import torch

import muon

torch.manual_seed(0)
close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
for config in ((16, 16, 4, 1), (32, 32, 4, 2)):   # blocks dividing the shapes (EVEN) or not (masked loads and stores)
    muon.GRAM_CONFIG = config
    for shape in ((3, 32, 48), (2, 40, 70), (48, 32)):
        X = torch.randn(shape)
        XXt = X @ X.mT
        got = muon.gram(X, kernel=True)
        close(got, XXt)
        assert torch.equal(got, got.mT), "the result must be exactly symmetric"
        C = XXt / 10
        close(muon.gram(X, alpha=0.3, C=C, beta=-2.0, kernel=True), 0.3 * XXt - 2.0 * C)
    Xt = torch.randn(2, 64, 32).mT   # a transposed view: newton_schulz hands tall matrices over that way
    close(muon.gram(Xt, kernel=True), Xt @ Xt.mT)
    G = torch.randn(3, 64, 40)       # tall: newton_schulz works on the transpose
    close(muon.newton_schulz(G, dtype=torch.float32, kernel=True), muon.newton_schulz(G, dtype=torch.float32, kernel=False))
print("ok")
