#!/usr/bin/env bash
# Device call 2026-11-29 #3: the restructured trainer vs the HF peer again (issue 13), SFT vs pretraining (issue 14).
set -u
source "$(dirname "$0")/device_env.sh"
timeout 150 python3 mfu.py --bench config/h800.py --global_batch=96 2>&1 | grep -E "^BENCH|rror"
timeout 150 python3 .peer/hf_peer.py compile 4 2>&1 | tail -1
timeout 270 python3 bench/sft.py 2>&1 | grep -E "^(BENCH_SFT|CHECK_SFT)|Error|error" | tee $OUT/sft.txt
