#!/usr/bin/env bash
# torchtitan 0.2.2, the Qwen3-0.6B shape, one GPU: the peer of bench/train_speed and bench/time_to_loss.py.
#
#   BS=16 STEPS=30 bash bench/peers/titan/run.sh                       # throughput on the built-in tiny text set
#   bash bench/peers/titan/run.sh --training.dataset_path DIR ...       # any torchtitan flag overrides titan.toml
#
# Needs torchtitan 0.2.2 and its dependencies (pip install torchtitan==0.2.2 torchdata datasets tyro), or their
# wheels in TITAN_WHEELS (installed offline into /tmp/titan_site). The tokenizer is this project's, written by
# tokenizer.save_tokenizer into TOK (default /tmp/titan_tok), so losses are in the same units as ours.
# Why 0.2.2: 0.3.0 imports torch.distributed APIs that torch 2.11 lacks.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/../../.." && pwd)
BS=${BS:-16}; STEPS=${STEPS:-30}; PY=${PYTHON:-python3}; TOK=${TOK:-/tmp/titan_tok}; LOG=${LOG:-/tmp/titan.log}
if [ -n "${TITAN_WHEELS:-}" ] && [ ! -d /tmp/titan_site/torchtitan ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --target /tmp/titan_site \
      "$TITAN_WHEELS"/*.whl || { echo "error: installing the wheels in $TITAN_WHEELS failed"; exit 1; }
fi
export PYTHONPATH="/tmp/titan_site:$HERE${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HOME=/tmp/titan_hf PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
[ -f "$TOK/tokenizer.json" ] || (cd "$ROOT" && $PY -c "import sys, tokenizer; tokenizer.save_tokenizer(sys.argv[1])" "$TOK") \
  || { echo "error: writing the tokenizer to $TOK failed"; exit 1; }
DATA=/tmp/titan_data  # the default data: a few hundred Python doc pages (offline)
if [ ! -f $DATA/train.jsonl ]; then mkdir -p $DATA && $PY - $DATA/train.jsonl <<'PYEOF'
import json, sys, pydoc_data.topics as t
open(sys.argv[1], "w").writelines(json.dumps({"text": v}) + "\n" for v in t.topics.values())
PYEOF
fi
export RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 LOCAL_WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=${MASTER_PORT:-29517}
cd "$HERE"
$PY -m torchtitan.train --job.config_file titan.toml --model.hf_assets_path "$TOK" --training.dataset_path $DATA \
    --training.local_batch_size "$BS" --training.steps "$STEPS" --compile.enable "$@" 2>&1 | tee "$LOG"
exit ${PIPESTATUS[0]}
