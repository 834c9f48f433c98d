"""Opt-in: fedmom's HumanEval/MBPP path against the bigcode harness installed in a separate venv.

Prepare the venv once (`python scripts/check_bigcode_equivalence.py --venv DIR` installs
nvidia-bigcode-eval there), then run
`FEDMOM_BIGCODE_VENV=DIR [FEDMOM_BIGCODE_MBPP=mbpp.jsonl] pytest -m slow tests/test_bigcode_equivalence.py`.
Without FEDMOM_BIGCODE_MBPP the MBPP side runs on the script's synthetic fixture.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "check_bigcode_equivalence.py"


@pytest.mark.slow
def test_fedmom_code_path_is_byte_identical_to_bigcode(shared_data, tmp_path):
    venv = os.environ.get("FEDMOM_BIGCODE_VENV")
    if not venv:
        pytest.skip("set FEDMOM_BIGCODE_VENV to a venv holding nvidia-bigcode-eval")
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--no-install",
        "--venv",
        venv,
        "--json-out",
        str(tmp_path / "r.json"),
        "--humaneval",
        str(shared_data / "humaneval" / "HumanEval.jsonl.gz"),
    ]
    if os.environ.get("FEDMOM_BIGCODE_MBPP"):
        cmd += ["--mbpp", os.environ["FEDMOM_BIGCODE_MBPP"]]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert "humaneval: " in done.stdout and "mbpp: " in done.stdout, done.stderr[-2000:]
    assert done.returncode == 0, done.stdout[-4000:]
