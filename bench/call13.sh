#!/usr/bin/env bash
# Device call 2026-11-29 session 4, #13 (1xH200): the CUDA generation tests (Triton step + prefill, PDL), then the
# probe: linear block-config sweep (batch 1/8/32, a 2,000-token prefill), attention chunks, the step with and
# without PDL, the Triton prefill against the model's eager forward.
set -u
source "$(dirname "$0")/device_env.sh"
timeout 200 python3 -m pytest -q -s tests/test_generate.py -k "cuda" 2>&1 | grep -E "agree|passed|failed|Error|assert" | head -20
BUDGET=240 timeout 330 python3 bench/decode_probe.py > $OUT/decode_probe.jsonl 2> $OUT/decode_probe.err
grep -E 'best|attention|variant|profile|prefill|done|error' $OUT/decode_probe.jsonl; grep -E "Error|error" $OUT/decode_probe.err | tail -5
