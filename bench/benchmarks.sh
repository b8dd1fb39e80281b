#!/usr/bin/env bash
# The device runs behind the README's speed table and dev/LOG.md, so their numbers can be reproduced. Each stage fits one
# 10-minute call.
#   bash bench/benchmarks.sh check OUTDIR     # 2 GPUs: CUDA tests, fast-vs-plain 200-step curves, liger-vs-compile kernel A/B
#   bash bench/benchmarks.sh speed OUTDIR     # N GPUs (NPROC, default 2): 1-GPU bench + HF peer, N-GPU DDP bench, and
#                                       # the reference command `train.py config/reference.py` shortened to 10 steps + resume
#   bash bench/benchmarks.sh mem OUTDIR       # 1 GPU: config/24gb.py memory / throughput variants, attention roofline
# Needs liger-kernel importable and the HF peer bench/peers/hf_peer.py.
set -u
cd "$(dirname "$0")/.."
stage=${1:-check}; O=${2:-bench_out}; mkdir -p "$O"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
keep() { grep -E "^BENCH|rror" | tee -a "$O/bench.txt"; }   # the result line (and any error) of a bench run
if [ "$stage" = check ]; then
  # fast vs plain path: 200 steps on the demo corpus, same seed and data; the plain (eager) one is slower, so it
  # starts first on GPU 1 while GPU 0 runs the CUDA unit tests
  common="--data_dir=data/demo --seq_len=1024 --micro_batch=8 --global_batch=8 --max_steps=200 --warmup_steps=20
          --decay_steps=50 --eval_interval=0 --ckpt_interval=0 --export_at_end=False --log_interval=10"
  CUDA_VISIBLE_DEVICES=1 python3 train.py config/reference.py $common --out_dir="$O/plain" --compile=False --liger=False > "$O/plain.txt" 2>&1 &
  CUDA_VISIBLE_DEVICES=0 python3 -m pytest -q tests/test_cuda.py 2>&1 | tail -3
  CUDA_VISIBLE_DEVICES=0 python3 train.py config/reference.py $common --out_dir="$O/fast" > "$O/fast.txt" 2>&1
  wait
  python3 -c "
import json
f = [json.loads(l) for l in open('$O/fast/log.jsonl')]; p = [json.loads(l) for l in open('$O/plain/log.jsonl')]
print('curve step fast plain'); [print(a['step'], round(a['loss'], 4), round(b['loss'], 4)) for a, b in zip(f, p)]
print('max |diff| over logged steps', max(abs(a['loss'] - b['loss']) for a, b in zip(f, p)))"
  # RMSNorm / RoPE / SwiGLU: liger's kernels vs torch.compile's fusion, full model fwd+bwd, micro-batch 12
  CUDA_VISIBLE_DEVICES=0 python3 bench/fusions.py --micro_batch=12 2>&1 | grep -E "^FUSIONS|rror" | tee -a "$O/fusions.txt"
fi
if [ "$stage" = speed ]; then
  N=${NPROC:-2}
  # 1 GPU: our reference config at the reference per-GPU accumulation (8), then the HF peer, same machine
  CUDA_VISIBLE_DEVICES=0 python3 bench/train_speed.py config/reference.py --global_batch=96 2>&1 | keep
  CUDA_VISIBLE_DEVICES=0 python3 bench/peers/hf_peer.py compile 4 2>&1 | tail -1 | tee -a "$O/bench.txt"
  # N GPUs DDP, same per-GPU work (micro 12 x accum 8)
  python3 -m torch.distributed.run --nproc_per_node=$N bench/train_speed.py config/reference.py --global_batch=$((96 * N)) 2>&1 | keep
  # the reference command itself, shortened: demo data, 10 optimizer steps of 786k tokens, an evaluation and a
  # checkpoint at the end, then a resume from that checkpoint for 2 more steps
  run() { python3 -m torch.distributed.run --nproc_per_node=$N train.py config/reference.py --data_dir=data/demo \
    --warmup_steps=5 --decay_steps=5 --eval_interval=10 --val_tokens=98304 --ckpt_interval=10 --log_interval=2 \
    --export_at_end=False --out_dir=/tmp/run "$@" 2>&1 | grep -vE "^\s*$" | tail -12 | tee -a "$O/run.txt"; }
  run --max_steps=10
  run --max_steps=12 --init_from=resume
fi
if [ "$stage" = mem ]; then
  CUDA_VISIBLE_DEVICES=0 python3 bench/train_speed.py config/24gb.py --global_batch=8 2>&1 | keep
  CUDA_VISIBLE_DEVICES=0 python3 bench/train_speed.py config/24gb.py --global_batch=12 --micro_batch=6 2>&1 | keep
  CUDA_VISIBLE_DEVICES=0 python3 bench/train_speed.py config/24gb.py --global_batch=8 --micro_batch=4 --checkpointing=none 2>&1 | keep
  CUDA_VISIBLE_DEVICES=0 python3 bench/train_speed.py config/24gb.py --global_batch=16 --micro_batch=8 --checkpointing=block 2>&1 | keep
  CUDA_VISIBLE_DEVICES=0 python3 bench/peers/roofline.py 12 > "$O/roofline.json" 2>&1; tail -5 "$O/roofline.json"
fi
