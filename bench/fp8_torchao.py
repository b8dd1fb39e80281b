"""
Exploration (issue 15): our training step with torchao's float8 training (the library torchtitan's float8 uses),
measured by mfu.py's benchmark. Every Linear of the 28 blocks becomes torchao's Float8Linear (dynamic scaling,
`recipe` tensorwise or rowwise) after the model is built, before its blocks are first traced by torch.compile; the
lm_head (liger's fused loss) stays bf16. torchao is not a dependency of this repo: it is carried to the device.

    FP8_RECIPE=rowwise python bench/fp8_torchao.py config/h800.py --micro_batch=16 --global_batch=128
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model as M
from torchao.float8 import Float8LinearConfig, convert_to_float8_training

recipe = os.environ.get("FP8_RECIPE", "tensorwise")
build = M.Qwen3.__init__


def init_then_convert(self, *args, **kwargs):
    build(self, *args, **kwargs)
    convert_to_float8_training(self.model.layers, config=Float8LinearConfig.from_recipe_name(recipe))
    print(f"float8 ({recipe}):", sum(type(m).__name__ == "Float8Linear" for m in self.modules()), "Linear layers")


M.Qwen3.__init__ = init_then_convert
import mfu  # noqa: E402

mfu.bench(sys.argv[1:])
