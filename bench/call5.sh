#!/usr/bin/env bash
# Device call 2026-11-29 #5 (2xH200): GPU 0 the decode probe (issue 12); GPU 1 --doc_mask vs full causal
# pretraining on the demo corpus (issue 14), then the CUDA-graph micro-step probe (issue 15).
set -u
source "$(dirname "$0")/device_env.sh"
( CUDA_VISIBLE_DEVICES=0 BUDGET=400 timeout 540 python3 bench/decode_probe.py > $OUT/decode_probe.jsonl 2> $OUT/decode_probe.err ) &
dm() { CUDA_VISIBLE_DEVICES=1 timeout 200 python3 train.py --data_dir=data/demo --out_dir=$OUT/dm_$1 --doc_mask=$1 \
  --seq_len=2048 --micro_batch=8 --global_batch=16 --max_steps=200 --warmup_steps=20 --decay_steps=60 \
  --eval_interval=25 --val_tokens=32768 --ckpt_interval=0 --export_at_end=False --log_interval=10 > $OUT/dm_$1.txt 2>&1; }
dm False; dm True
python3 - <<PY
import json
for m in ("False", "True"):
    try:
        recs = [json.loads(l) for l in open("$OUT/dm_%s/log.jsonl" % m)]
    except OSError as e:
        print(m, e); continue
    tps = sorted(r["tok_per_s"] for r in recs if "tok_per_s" in r and r["step"] > 20)
    print("doc_mask", m, "median tok/s", round(tps[len(tps) // 2]) if tps else None,
          "val", [(r["step"], round(r["val_loss"], 4)) for r in recs if "val_loss" in r])
PY
CUDA_VISIBLE_DEVICES=1 timeout 170 python3 bench/graph_probe.py 2>&1 | grep -E '^\{|Error' | tee $OUT/graph_probe.jsonl
wait
cat $OUT/decode_probe.jsonl; tail -5 $OUT/decode_probe.err
