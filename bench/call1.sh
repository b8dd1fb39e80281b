#!/usr/bin/env bash
# Device call 2026-11-29 #1: the restructured trainer vs its peers, one H200, one call.
set -u
source "$(dirname "$0")/device_env.sh"
python3 -m pytest -q tests/test_cuda.py 2>&1 | tail -2
python3 mfu.py --bench config/h800.py --global_batch=96 2>&1 | grep -E "^BENCH|rror"
python3 mfu.py --bench config/h800.py --global_batch=128 --micro_batch=16 2>&1 | grep -E "^BENCH|rror"
python3 .peer/hf_peer.py compile 4 2>&1 | tail -1
(cd .peer/titan && BS=16 STEPS=20 WARMUP=8 bash run.sh 2>&1 | grep -E "SUMMARY|rror" | tail -3)
