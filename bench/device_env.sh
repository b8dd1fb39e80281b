# Sourced by bench/call*.sh on the device machine: the repo root as the working directory, the carried liger-kernel
# wheel (.whl/, see the device README's notes) installed and importable, unbuffered Python, the GPUs in the log.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
