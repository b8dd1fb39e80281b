"""Imported by torchtitan through `--experimental.custom_import titan_flavor` (run.sh puts this folder on
PYTHONPATH): registers the Qwen3 flavor "0.6B-bench" = torchtitan's own "0.6B" (vocab 151936, dim 1024, 28 layers,
16 heads, 8 kv heads, head_dim 128, FFN 3072, qk-norm, tied embeddings) with this project's rope_theta 1e4, and
"0.6B-bench-doc", the same with torchtitan's document masking (block-causal at each EOS, flex attention): the peer
of our --doc_mask (bench/time_to_loss.py)."""
import dataclasses

from torchtitan.models import qwen3

qwen3.qwen3_args["0.6B-bench"] = dataclasses.replace(qwen3.qwen3_args["0.6B"], rope_theta=10000)
qwen3.qwen3_args["0.6B-bench-doc"] = dataclasses.replace(qwen3.qwen3_args["0.6B-bench"], attn_type="flex",
                                                          attn_mask_type="block_causal")
