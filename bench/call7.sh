#!/usr/bin/env bash
# Device call 2026-11-29 #7 (1xH200): the CUDA tests again (the FlexAttention test's fix), then the decode probe:
# the new Decoder profiled, unfolded attention, max-autotune, unfrozen weights (issue 12).
set -u
source "$(dirname "$0")/device_env.sh"
timeout 120 python3 -m pytest -q -s tests/test_sft.py tests/test_generate.py -k "cuda" 2>&1 | grep -E "agree|passed|failed|Error|assert" | head -20
BUDGET=330 timeout 420 python3 bench/decode_probe.py > $OUT/decode_probe.jsonl 2> $OUT/decode_probe.err
grep -E 'variant|profile|skipped|done|error' $OUT/decode_probe.jsonl; grep -E "Error|error" $OUT/decode_probe.err | tail -3
