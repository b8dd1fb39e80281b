#!/usr/bin/env bash
# Device call 2026-11-29 #2: CUDA tests (fast path, decode graphs), decode speed vs HF static, C-Eval speed.
set -u
source "$(dirname "$0")/device_env.sh"
timeout 200 python3 -m pytest -q -s tests/test_cuda.py tests/test_generate.py -k "cuda or fast_path or checkpointing" 2>&1 | grep -E "agree|passed|failed|Error|assert" | head -20
timeout 260 python3 bench/decode.py 2>&1 | grep -E '^\{|Error' | tee $OUT/decode.jsonl
timeout 280 python3 bench/ceval.py 2>&1 | grep -E '^\{|Error|rror' | tail -8 | tee $OUT/ceval.jsonl
