# One 24 GB card (RTX 3090/4090): the full 0.6B model at seq 2048, peak allocated memory 18.8 GiB (<= 22 GiB)
# (measured on an H100 with mfu.py --bench, see BENCHMARKS.md). Same global batch: accumulation 64.
exec(open("config/h800.py").read())
micro_batch = 6
checkpointing = "selective"
