# The reference recipe on 24 GB cards (RTX 3090/4090, one or eight): the full 0.6B model at seq 2048 with
# micro-batch 6 and selective activation checkpointing (keeps matmul/attention outputs, recomputes elementwise ops)
# fits in 24 GB with room to spare (measured in the lab notebook). Same global batch, so the same run:
# accumulation 64 on one card, 8 on eight.
data_dir = "data/fineweb-edu-zh"
micro_batch = 6
checkpointing = "selective"
