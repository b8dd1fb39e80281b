#!/usr/bin/env bash
# Device call 2026-11-29 session 4, #14 (1xH200): the CUDA generation tests with the tuned block configs, then the
# decode benchmark against HF static (issue 12: batch 1, 8, 32, TTFT, agreement), then C-Eval PPL + GEN.
set -u
source "$(dirname "$0")/device_env.sh"
timeout 200 python3 -m pytest -q -s tests/test_generate.py -k "cuda" 2>&1 | grep -E "agree|passed|failed|Error|assert" | head -20
timeout 280 python3 bench/decode.py > $OUT/decode.jsonl 2> $OUT/decode.err; grep -v '"what": "setup"' $OUT/decode.jsonl; grep -E "Error|error" $OUT/decode.err | tail -3
timeout 240 python3 bench/ceval.py > $OUT/ceval.jsonl 2> $OUT/ceval.err; cat $OUT/ceval.jsonl; grep -E "Error|error" $OUT/ceval.err | tail -3
