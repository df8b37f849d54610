"""The layout's promises, checked on the source: the algorithm in ``pruning/`` imports nothing
from the run machinery or the architectures, imports run one way, and no modules import each other
in a loop (docs/extending.md, "Layout")."""

import ast
from pathlib import Path

from tests.support import ROOT

#: Top-level packages of this repository, from the bottom layer up. A module may import its own
#: layer and the layers below it; ``torchvision_compat`` is the shim every layer may use.
LAYERS = ("pruning", "models", "data", "scripts")
BELOW = {"pruning": set(), "data": set(), "models": {"pruning"},
         "scripts": {"pruning", "models", "data"}}


def first_party_imports(path: Path) -> set[str]:
    """The repository modules ``path`` imports (absolute names; relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {n for n in names if n.split(".")[0] in LAYERS}


def modules(package: str) -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts): p
            for p in sorted((ROOT / package).rglob("*.py"))}


def test_each_layer_imports_only_the_layers_below_it():
    for layer in LAYERS:
        for name, path in modules(layer).items():
            for imported in first_party_imports(path):
                top = imported.split(".")[0]
                assert top == layer or top in BELOW[layer], (
                    f"{name} imports {imported}: {layer}/ may import only {sorted(BELOW[layer])}")


def test_the_algorithm_reads_no_command_line():
    """``pruning/`` takes typed arguments (``PruneConfig``); parsing flags is the scripts' job."""
    for name, path in modules("pruning").items():
        tree = ast.parse(path.read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert "argparse" not in imported, f"{name} imports argparse"


def test_no_import_cycles():
    everything = {**modules("pruning"), **modules("models"), **modules("data"),
                  **modules("scripts")}
    graph = {name: {m for m in first_party_imports(path) if m in everything and m != name}
             for name, path in everything.items()}
    visiting, done = [], set()

    def visit(name: str) -> None:
        if name in done:
            return
        assert name not in visiting, "import cycle: " + " -> ".join(
            visiting[visiting.index(name):] + [name])
        visiting.append(name)
        for imported in graph[name]:
            visit(imported)
        visiting.pop()
        done.add(name)

    for name in graph:
        visit(name)
    assert done == set(graph)
