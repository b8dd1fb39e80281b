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
