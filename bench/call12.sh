#!/usr/bin/env bash
# Device call 2026-11-29 session 4, #12 (1xH200): the CUDA generation tests (the all-Triton decode step), then the
# probe: matvec block-config sweep, attention chunk sweep, the Triton step against the compiled PyTorch step.
set -u
source "$(dirname "$0")/device_env.sh"
timeout 200 python3 -m pytest -q -s tests/test_generate.py -k "cuda" 2>&1 | grep -E "agree|passed|failed|Error|assert" | head -20
BUDGET=300 timeout 380 python3 bench/decode_probe.py > $OUT/decode_probe.jsonl 2> $OUT/decode_probe.err
grep -E 'best|attention|variant|profile|done|error' $OUT/decode_probe.jsonl; grep -E "Error|error" $OUT/decode_probe.err | tail -5
