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


def _accepted_flags(script):
    """The flags an entry point accepts: the globals assigned before it runs the configurator (the keys it may
    override), and every flag its source spells out in quotes (argparse options; bench scripts and `--bench` read
    sys.argv themselves). mfu.py --bench hands its flags to train.py."""
    import ast
    src = open(os.path.join(ROOT, script), encoding="utf-8").read()
    flags = set(re.findall(r"""["']--([A-Za-z][\w-]*)""", src))
    for node in ast.walk(ast.parse(src)):
        body = getattr(node, "body", None)
        runs = [i for i, st in enumerate(body) if isinstance(st, ast.Expr) and isinstance(st.value, ast.Call)
                and "configurator" in ast.unparse(st)] if isinstance(body, list) else []
        for st in body[:runs[0]] if runs else []:
            for target in st.targets if isinstance(st, ast.Assign) else []:
                flags |= {t.id for t in (target.elts if isinstance(target, ast.Tuple) else [target])
                          if isinstance(t, ast.Name)}
    return flags | (_accepted_flags("train.py") if script == "mfu.py" else set())


def _documented_commands():
    """(file, script, arguments) of every python / torchrun command in README.md and bench/*.sh."""
    import glob
    for path in [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "bench", "*.sh"))):
        text = open(path, encoding="utf-8").read().replace("\\\n", " ")   # join continued shell lines
        for line in text.splitlines():
            for part in re.split(r"&&|[|;`()]", line):   # one command of a chain, or of a `code span`
                m = re.search(r"\b(?:python3?|torchrun|torch\.distributed\.run)\b.*?([\w./-]+\.py)\b(.*)", part)
                if m and "-m pytest" not in part:
                    yield os.path.basename(path), m.group(1), re.split(r"\s#|>", m.group(2))[0]


def test_documented_commands_use_flags_their_script_accepts():
    """Every command of the README and the device scripts (bench/*.sh) runs as written: its script and config files
    exist and each --flag is one the script accepts, for every entry point -- a renamed key must not leave a
    command that stops with 'unknown config key' (bench/benchmarks.sh kept --eval_batches after it became
    --val_tokens, and its reference run failed on the device)."""
    bad, scripts = [], set()
    for doc, script, args in _documented_commands():
        if script.startswith("."):   # a device-only copy outside the repository
            continue
        scripts.add(script)
        files = [script] + [a for a in args.split() if a.endswith(".py")]
        bad += [(doc, f, "no such file") for f in files if not os.path.isfile(os.path.join(ROOT, f))]
        if os.path.isfile(os.path.join(ROOT, script)):
            known = _accepted_flags(script)
            flags = re.findall(r"(?:^|\s)--([A-Za-z][\w-]*)", args)
            bad += [(doc, script, "--" + f) for f in flags if f not in known]
    # the scan finds the commands of every entry point the README documents
    assert {"train.py", "mfu.py", "sample.py", "eval.py", "chat.py", "sft.py", "prepare.py"} <= scripts, scripts
    assert not bad, bad
