"""The package's shape: imports run only downward through its layers, with no circle."""

from __future__ import annotations

import ast
from pathlib import Path

import matseg

ROOT = Path(matseg.__file__).parent
# Layers, bottom first: a module may import its own layer and those below it only.
LAYERS = [
    (
        "matseg._version",
        "matseg.errors",
        "matseg.defaults",
        "matseg.malloc",
        "matseg.monitor",
        "matseg.validate",
    ),
    ("matseg.slurm", "matseg.workers"),
    ("matseg.io",),
    ("matseg.tiling", "matseg.stitch", "matseg.metrics", "matseg.synth", "matseg.augment"),
    ("matseg.models",),
    ("matseg.normalize", "matseg.labelled"),
    ("matseg.candidates",),
    ("matseg.selector.policy", "matseg.selector.plan", "matseg.cluster", "matseg.sample"),
    ("matseg.pipeline",),
    (
        "matseg.training_checks",
        "matseg.training",
        "matseg.selector.table",
        "matseg.review",
        "matseg.statistics",
    ),
    (
        "matseg.selector.train",
        "matseg.selector.refit",
        "matseg.corrections",
        "matseg.finetune",
        "matseg.evaluate",
        "matseg.batch",
        "matseg.microstructure",
    ),
    ("matseg", "matseg.cli", "matseg.console", "matseg.terminal"),
]


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every matseg module and the matseg modules it imports (anywhere in its body)."""
    modules = {_module(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("matseg"):
                for alias in node.names:  # ``from matseg.x import y`` may import module x.y
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("matseg")}
        graph[name] = {m for m in found if m != name and m in modules}
    return graph


def _layer(module: str) -> int:
    best = None
    for i, names in enumerate(LAYERS):
        for prefix in names:
            if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(prefix) > len(best[1])
            ):
                best = (i, prefix)
    assert best is not None, f"{module} is in no layer of tests/test_layers.py"
    return best[0]


def test_imports_run_only_downward():
    upward = [
        f"{module} -> {target}"
        for module, targets in _imports().items()
        for target in targets
        if module != "matseg" and _layer(target) > _layer(module)
    ]
    assert upward == []


def test_no_import_circle():
    graph = _imports()
    graph["matseg"] = set()  # the package top only names its API (imported on first use)
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join([*path, nxt]))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_modules_stay_small():
    sizes = {_module(p): len(p.read_text().splitlines()) for p in ROOT.rglob("*.py")}
    assert max(sizes.values()) > 0
    too_long = {m: n for m, n in sizes.items() if n > 450}
    assert too_long == {}
