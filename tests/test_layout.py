"""The package's boundaries (README "Layout"): each checked in a fresh interpreter, so what another
test imported cannot hide a stray import."""

from __future__ import annotations

import subprocess
import sys


def _loaded_after(code: str) -> set[str]:
    probe = code + "; import sys; print('\\n'.join(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(proc.stdout.split())


def test_the_report_package_imports_no_torch():
    loaded = _loaded_after(
        "import pkgutil, importlib, fedmom_cli.report as r; "
        "[importlib.import_module(m.name) for m in pkgutil.iter_modules(r.__path__, r.__name__ + '.')]"
    )
    assert {
        "fedmom_cli.report.tables",
        "fedmom_cli.report.render",
        "fedmom_cli.report.figures",
        "fedmom_cli.report.paired",
    } <= loaded
    assert "torch" not in loaded


TRAINING = ["train", "simulate", "client", "model", "sweep", "aggregate", "export", "partition", "bench"]


def test_training_imports_neither_evaluation_nor_report_nor_flower():
    loaded = _loaded_after("; ".join(f"import fedmom_cli.{m}" for m in TRAINING))
    assert {f"fedmom_cli.{m}" for m in TRAINING} <= loaded
    assert not {m for m in loaded if m.startswith(("fedmom_cli.evaluation", "fedmom_cli.report"))}
    assert not {m for m in loaded if m.startswith(("fedmom_cli.flower", "flwr"))}


def _imports() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its source (top level or inside a
    function: a lazy import is still a use), read with ast, never executed."""
    import ast
    from pathlib import Path

    import fedmom_cli

    root = Path(fedmom_cli.__file__).parent
    mods = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        edges[name] = {m for m in found if m in mods and m != name}
    return edges


def test_no_two_modules_import_each_other():
    """Each pair has one direction of use; the three that used to be tied (issue 26) by name."""
    edges = _imports()
    assert "fedmom_cli.bench_round" in edges["fedmom_cli.bench"]
    assert "fedmom_cli.evaluation.client_eval" in edges["fedmom_cli.evaluation.evaluate"]
    assert "fedmom_cli.flower.strategy" in edges["fedmom_cli.flower.engine"]
    assert "fedmom_cli.bench" not in edges["fedmom_cli.bench_round"]
    assert "fedmom_cli.evaluation.evaluate" not in edges["fedmom_cli.evaluation.client_eval"]
    assert "fedmom_cli.flower.engine" not in edges["fedmom_cli.flower.strategy"]
    mutual = sorted({tuple(sorted((a, b))) for a in edges for b in edges[a] if a in edges[b]})
    assert mutual == []
