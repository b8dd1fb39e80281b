"""The install stays lean on CPU machines and one command on GPU machines."""
import os
import re

from conftest import ROOT


def _requirements(name):
    lines = [l.split("#")[0].strip() for l in open(os.path.join(ROOT, name))]
    return [l for l in lines if l]


def test_cpu_requirements_do_not_pull_gpu_only_packages():
    """liger-kernel brings triton (~1 GB) that a CPU machine never uses."""
    names = [re.split(r"[<>=;\[ ]", l)[0].lower() for l in _requirements("requirements.txt")]
    assert "torch" in names and not {"liger-kernel", "liger_kernel", "triton"} & set(names), names


def test_gpu_requirements_are_the_cpu_ones_plus_liger():
    reqs = _requirements("requirements-gpu.txt")
    assert "-r requirements.txt" in reqs and any(r.startswith("liger-kernel") for r in reqs)


def test_readme_says_how_to_install_on_cpu_and_gpu():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert "-r requirements-gpu.txt" in readme
    assert "https://download.pytorch.org/whl/cpu" in readme   # the CPU build of torch on a stock index
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    quick = re.findall(r"^pip install .*-r requirements-test.txt && (python -m pytest .*)$", readme, re.M)
    assert quick and quick[0].split("&&")[-1].strip().replace("python ", "") in ci.replace("python ", "")


def test_documented_training_commands_use_existing_config_keys():
    """Every --key= on a train.py / mfu.py command line of the README and the device scripts (bench/*.sh) is a key
    train.py knows: a renamed key must not leave a command that stops with 'unknown config key' (bench/benchmarks.sh
    kept --eval_batches after it became --val_tokens, and its reference run failed on the device)."""
    import ast
    import glob
    tree = ast.parse(open(os.path.join(ROOT, "train.py"), encoding="utf-8").read())
    keys = {t.id for node in tree.body if isinstance(node, ast.Assign) for target in node.targets
            for t in (target.elts if isinstance(target, ast.Tuple) else [target]) if isinstance(t, ast.Name)}
    files = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "bench", "*.sh")))
    used = set()
    for path in files:
        text = open(path, encoding="utf-8").read().replace("\\\n", " ")   # join continued shell lines
        for line in text.splitlines():
            for args in re.split(r"\b(?:train|mfu)\.py\b", line)[1:]:   # the flags after the script (not torchrun's)
                args = re.split(r"[|;&>]", args)[0]
                used |= {(os.path.basename(path), k) for k in re.findall(r"--(\w+)=", args) if k != "key"}
    assert len(used) > 10 and "max_steps" in {k for _, k in used}, used   # the scan finds the commands
    unknown = sorted((f, k) for f, k in used if k not in keys)
    assert not unknown, unknown
