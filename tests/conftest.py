"""Test setup: never touch the network; locate the shared real data when it is present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The tests run offline: no Hub look-ups, ever (a user's machine may be online; CI's is not).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture
def gsm8k_train(shared_data) -> Path:
    path = shared_data / "gsm8k" / "train.jsonl"
    if not path.is_file():
        pytest.skip("GSM8K train file is not present")
    return path


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    """A finished smoke-recipe run (tiny model, synthetic math rows), one per test module."""
    from fedmom_cli import config as cfgmod
    from fedmom_cli import train as tr

    out = tmp_path_factory.mktemp("runs") / "fm"
    cfg = cfgmod.resolve("smoke", "math", {"rounds": 2, "local_steps": 2})
    tr.run(tr.TrainOptions(cfg, out=out, progress=False))
    return out


@pytest.fixture(autouse=True)
def _restore_environ():
    """`--no-progress` run in this process (run_main) sets process-wide switches in os.environ
    (fedmom_cli.progress.quiet_libraries: TQDM_DISABLE, NO_COLOR, ...): each test starts from the
    environment the one before it started with."""
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)
