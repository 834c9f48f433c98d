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
