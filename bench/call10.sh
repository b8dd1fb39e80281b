#!/usr/bin/env bash
# Device call 2026-11-29 session 3, #10 (1xH200): float8 training at our shape (issue 15). torchtitan 0.2.2 in bf16
# and with its torchao float8 converter (tensorwise, rowwise), then ours in bf16 and with torchao's float8.
set -u
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/tao .peer/tao/torchao-0.18.0*.whl
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import sys; sys.path.insert(0, '/tmp/tao'); import torchao.float8; print('torchao ok')" 2>&1 | tail -1
titan() {  # tag, extra args
  local tag=$1; shift
  (cd .peer/titan && PYTHONPATH=/tmp/tao BS=16 STEPS=16 WARMUP=6 TIMEOUT=170 LOG=/tmp/titan_$tag.log bash run.sh "$@" > $OUT/titan_$tag.out 2>&1)
  echo "titan $tag: $(grep -E 'SUMMARY' $OUT/titan_$tag.out | tail -1)"; grep -E "Error|error" $OUT/titan_$tag.out | tail -2
}
titan bf16
titan fp8_tensorwise --model.converters quantize.linear.float8 --quantize.linear.float8.recipe_name tensorwise
titan fp8_rowwise --model.converters quantize.linear.float8 --quantize.linear.float8.recipe_name rowwise
ARGS="config/h800.py --micro_batch=16 --global_batch=128"
PYTHONPATH=/tmp/site timeout 150 python3 mfu.py --bench $ARGS 2>&1 | grep -E "BENCH|Error" | tail -2
for r in tensorwise rowwise; do
  FP8_RECIPE=$r PYTHONPATH=/tmp/site:/tmp/tao timeout 150 python3 bench/fp8_torchao.py $ARGS 2>&1 | grep -E "float8|BENCH|Error" | tail -3
done
