#!/usr/bin/env bash
# Device call 2026-11-29 #6 (2xH200): GPU 0 the CUDA tests, decode vs HF static, C-Eval speed (issue 12);
# GPU 1 the decode probe (profile, max-autotune, unfrozen) and the graphed-body micro-step (issue 15).
set -u
source "$(dirname "$0")/device_env.sh"
( CUDA_VISIBLE_DEVICES=1 BUDGET=330 timeout 420 python3 bench/decode_probe.py > $OUT/decode_probe.jsonl 2> $OUT/decode_probe.err
  CUDA_VISIBLE_DEVICES=1 timeout 150 python3 bench/graph_probe.py 12 > $OUT/graph_probe.jsonl 2>&1 ) &
export CUDA_VISIBLE_DEVICES=0
timeout 150 python3 -m pytest -q -s tests/test_cuda.py tests/test_generate.py tests/test_sft.py -k "cuda" 2>&1 | grep -E "agree|passed|failed|Error|assert" | head -20
timeout 250 python3 bench/decode.py 2>&1 | grep -E '^\{|Error' | tee $OUT/decode.jsonl
timeout 160 python3 bench/ceval.py 2>&1 | grep -E '^\{|Error|rror' | tail -8 | tee $OUT/ceval.jsonl
wait
cat $OUT/decode_probe.jsonl | head -60; tail -3 $OUT/decode_probe.err; grep -E '^\{|Error' $OUT/graph_probe.jsonl
