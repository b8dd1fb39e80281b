#!/usr/bin/env bash
# Device calls 2026-11-29 session 3, #9 and #11 (1xH200): the CUDA generation tests (the Triton decode kernel), the
# benchmark against HF static (issue 12), then the Triton step profiled.
set -u
source "$(dirname "$0")/device_env.sh"
timeout 150 python3 -m pytest -q -s tests/test_generate.py -k "cuda or interpreter" 2>&1 | grep -E "agree|passed|failed|Error|assert" | head -20
timeout 270 python3 bench/decode.py --quick > $OUT/decode.jsonl 2> $OUT/decode.err; grep -v '"what": "setup"' $OUT/decode.jsonl; grep -E "Error|error" $OUT/decode.err | tail -3
BUDGET=200 timeout 260 python3 bench/decode_probe.py > $OUT/decode_probe.jsonl 2> $OUT/decode_probe.err
grep -E 'variant|profile|skipped|done|error' $OUT/decode_probe.jsonl; grep -E "Error|error" $OUT/decode_probe.err | tail -3
