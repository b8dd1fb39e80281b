# 8 x RTX 4090 (24 GB each): the reference recipe's model and global batch; smaller micro-batches with selective
# activation checkpointing (keeps matmul outputs, recomputes elementwise ops) to fit 24 GB, more accumulation.
exec(open("config/h800.py").read())
micro_batch = 4
checkpointing = "selective"
