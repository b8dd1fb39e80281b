#!/usr/bin/env bash
# The README's poem recipe end to end on one GPU: corpus -> pretraining -> SFT -> RL -> evaluation of all three.
#   CORPUS=package/dist bash bench/poem_recipe.sh        # the npm package's dist/ (or poetry.jsonl.xz)
# Each stage is skipped when its output exists (rerun after a failure continues); SKIP_EVAL=1 stops after RL;
# BUILD_ARGS (e.g. --sft_regular: SFT on the regular shi only) / PT_STEPS / SFT_STEPS / RL_ARGS / EVAL_MODELS change the
# data, the stages' lengths and what is scored (a shorter rehearsal).
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${CORPUS:-package/dist}
stage() { echo "== $(date +%T) $*"; }
again() { [ -d "$1" ] && { ls "$1" | grep -q '^ckpt-' && echo --init_from=resume || echo --overwrite=True; }; }   # a stage cut off: resumed, or begun again
[ -f data/poetry_raw/rl_prompts.jsonl ] || { stage build; python bench/poetry.py build --corpus "$CORPUS" --out data/poetry_raw ${BUILD_ARGS:-}; }
[ -f data/poetry_pt/meta.json ] || { stage prepare; python prepare.py --input data/poetry_raw/pretrain --out data/poetry_pt; }
[ -f out_poem_base/hf/config.json ] || { stage pretrain; python train.py config/reference.py --data_dir=data/poetry_pt \
    --global_batch=16 --micro_batch=16 --max_steps=${PT_STEPS:-600} --warmup_steps=12 --decay_steps=$(( ${PT_STEPS:-600} / 5 )) --doc_mask=True \
    --out_dir=out_poem_base --log_interval=50 --eval_interval=300 $(again out_poem_base); }
[ -f data/poetry_sft/meta.json ] || { stage sft-prep; python sft.py --input data/poetry_raw/sft.jsonl --out data/poetry_sft --seq_len 2048; }
[ -f out_poem/hf/config.json ] || { stage sft; python train.py config/reference.py --init_from=out_poem_base/hf \
    --sft_data=data/poetry_sft --out_dir=out_poem --global_batch=16 --micro_batch=16 --max_steps=${SFT_STEPS:-256} --warmup_steps=10 \
    --decay_steps=$(( ${SFT_STEPS:-256} * 5 / 16 )) --muon_lr=0.01 --log_interval=50 --eval_interval=128 $(again out_poem); }
[ -f out_poem_rl/hf/config.json ] || { stage rl; python rl.py config/rl_poem.py ${RL_ARGS:-} $(again out_poem_rl); }
[ -n "${SKIP_EVAL:-}" ] || { stage eval; python bench/poetry.py eval --corpus "$CORPUS" --data data/poetry_raw \
    --model ${EVAL_MODELS:-out_poem_rl/hf out_poem/hf out_poem_base/hf} --fluency_model out_poem_base/hf --samples poems.jsonl; }
stage done
