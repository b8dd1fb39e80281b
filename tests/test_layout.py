"""The shape a reader meets: no import circle between the top-level modules, train.py's few dependencies, files
short enough to read, and train.py's model settings the model's own defaults."""
import ast
import glob
import os

from conftest import ROOT

MODULES = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "*.py"))}


def project_imports(name):
    """The project modules `name`.py imports, anywhere in the file (a function-level import is an edge too)."""
    tree = ast.parse(open(os.path.join(ROOT, name + ".py"), encoding="utf-8").read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found & MODULES - {name}


def find_cycle(graph):
    """One import circle as a list of modules (first == last), or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [nxt])
                if cycle:
                    return cycle
        state[node] = "done"
        return None
    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_circle_between_top_level_modules():
    graph = {m: project_imports(m) for m in MODULES}
    assert find_cycle(graph) is None, find_cycle(graph)


def test_train_imports_at_most_six_project_modules_and_not_eval():
    deps = project_imports("train")
    assert len(deps) <= 6 and "eval" not in deps, sorted(deps)


def test_files_stay_short_enough_to_read():
    lines = {m: sum(1 for _ in open(os.path.join(ROOT, m + ".py"), encoding="utf-8")) for m in MODULES}
    assert lines["model"] + lines["train"] <= 750, (lines["model"], lines["train"])
    assert not {m: n for m, n in lines.items() if n > 450}


def test_train_model_settings_are_the_model_defaults():
    """train.py writes the 12 Qwen3Config fields out as plain settings: they must stay the model's defaults."""
    from dataclasses import fields
    from model import Qwen3Config
    tree = ast.parse(open(os.path.join(ROOT, "train.py"), encoding="utf-8").read())
    assigned, names = {}, {f.name for f in fields(Qwen3Config)}
    for node in tree.body:   # `name = value` and `a, b = x, y`
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], (ast.Name, ast.Tuple)):
            one = isinstance(node.targets[0], ast.Name)
            pairs = [(node.targets[0], node.value)] if one else zip(node.targets[0].elts, node.value.elts)
            assigned.update({t.id: ast.literal_eval(v) for t, v in pairs if t.id in names})
    assert assigned == {f.name: f.default for f in fields(Qwen3Config)}
