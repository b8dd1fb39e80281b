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


# every entry point and where its keys are: configurator scripts take their module globals (bench/train_speed.py
# passes its arguments to train.py), the data tools their argparse flags
ENTRY_POINTS = {"train": "train.py", "sample": "sample.py", "chat": "chat.py", "eval": "eval.py", "mfu": None,
                "sft_demo": None, "prepare": "prepare.py", "sft": "sft.py", "bench/train_speed": "train.py",
                "bench/decode": "bench/decode.py", "bench/sft": "bench/sft.py", "bench/ceval": "bench/ceval.py",
                "bench/fusions": "bench/fusions.py", "rl": "rl.py", "serve": "serve.py", "bench/poetry": "bench/poetry.py",
                "bench/serve": "bench/serve.py", "bench/time_to_loss": "bench/time_to_loss.py"}


def entry_point_keys(path):
    """The --keys a script accepts: its argparse flags if it has any, else its module-level settings."""
    import ast
    if path is None:
        return set()
    tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())
    flags = {a.value[2:] for node in ast.walk(tree) if isinstance(node, ast.Call)
             and getattr(node.func, "attr", "") == "add_argument" for a in node.args
             if isinstance(a, ast.Constant) and str(a.value).startswith("--")}
    if flags:
        return flags
    return {t.id for node in tree.body if isinstance(node, ast.Assign) for target in node.targets
            for t in (target.elts if isinstance(target, ast.Tuple) else [target]) if isinstance(t, ast.Name)}


def documented_commands():
    """(file, script, flag) for every --flag after an entry point's name on a line of the README, the device
    scripts (bench/*.sh) and the docstrings of the Python files (their usage examples)."""
    import ast
    import glob
    texts = [(p, open(p, encoding="utf-8").read()) for p in
             [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "bench", "*.sh")))]
    for p in sorted(glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "bench", "*.py"))):
        texts.append((p, ast.get_docstring(ast.parse(open(p, encoding="utf-8").read())) or ""))
    script = re.compile(r"(?<![\w/.])((?:bench/)?\w+)\.py\b")
    for path, text in texts:
        for line in text.replace("\\\n", " ").splitlines():   # continued shell lines joined
            parts = script.split(line)   # [before, name, args, name, args, ...]
            for name, args in zip(parts[1::2], parts[2::2]):
                if name in ENTRY_POINTS:
                    args = re.split(r"[|;&>#]|`", args)[0]   # the flags of this command only (not a pipe's or comment's)
                    for flag in re.findall(r"(?<![\w-])--(\w+)", args):
                        yield os.path.relpath(path, ROOT), name, flag


def test_documented_commands_use_existing_keys_of_every_entry_point():
    """Every --key on a command line of an entry point (train, sample, chat, eval, the data tools, the bench
    scripts) in the README, the device scripts and the usage docstrings is a key that entry point knows: a renamed
    key must not leave a command that stops with 'unknown config key' (bench/benchmarks.sh kept --eval_batches after
    it became --val_tokens, and its reference run failed on the device)."""
    used = set(documented_commands())
    names = {name for _, name, _ in used}
    assert {"train", "sample", "eval", "prepare", "sft", "bench/train_speed"} <= names, names   # the scan finds them
    unknown = sorted((f, name, k) for f, name, k in used
                     if k != "key" and k not in entry_point_keys(ENTRY_POINTS[name]))
    assert not unknown, unknown
