"""`--no-progress` on a terminal (issue 29): no library draws a progress bar or writes a colour code.

The commands run as a user runs them, in their own process on a pseudo-terminal (where rich, tqdm
and Flower would colour and animate), and everything they print is read back."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")

ANSI = re.compile(r"\x1b[\[\]()#;?]*[0-9;]*[A-Za-z]?")
BAR_CHARS = set("█▉▊▋▌▍▎▏━╸╺━░▒▓") | {"\r"}  # tqdm's and rich's bars, and a redrawn line


def _in_terminal(args: list[str], cwd, module: bool = True) -> tuple[int, str]:
    import pty

    quiet = ("NO_COLOR", "FORCE_COLOR", "TQDM_DISABLE", "FEDMOM_NO_PROGRESS", "WANDB_SILENT")
    env = {k: v for k, v in os.environ.items() if k not in quiet and not k.endswith("_PROGRESS_BARS")}
    env.update(TERM="xterm-256color", COLUMNS="120", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    master, slave = pty.openpty()
    import fcntl
    import struct
    import termios

    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # else 0 columns: no bar
    proc = subprocess.Popen(
        [sys.executable, *(["-m", "fedmom_cli"] if module else []), *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=cwd,
        env=env,
    )
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the command closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    code = proc.wait(timeout=600)
    return code, out.decode(errors="replace").replace("\r\n", "\n")  # the terminal's own newline


def _noise(text: str) -> list[str]:
    """Lines with a colour or control code or a bar character."""
    return [line for line in text.splitlines() if ANSI.search(line) or BAR_CHARS & set(line)]


def test_no_progress_prints_no_bars_and_no_colour_codes(tmp_path):
    run = tmp_path / "run"
    train = ["train", "--recipe", "smoke", "--rounds", "2", "--local-steps", "1", "--out", str(run)]
    code, out = _in_terminal([*train, "--no-progress"], tmp_path)
    assert code == 0, out
    assert "finished: fedmomentum on math, 2 rounds" in out
    assert not _noise(out), _noise(out)
    evaluate = ["eval", str(run), "--tasks", "synthetic_math", "--limit", "3", "--protocol", "train-format"]
    code, out = _in_terminal([*evaluate, "--no-progress"], tmp_path)
    assert code == 0, out
    assert "synthetic_math: exact_match,none = " in out
    assert not _noise(out), _noise(out)
    # the check sees what it looks for: a tqdm bar and rich's colours, on the same terminal, and so
    # does lm-eval's bar without --no-progress
    show = "import tqdm, rich; [None for _ in tqdm.tqdm(range(3))]; rich.print('[red]x[/red]')"
    code, out = _in_terminal(["-c", show], tmp_path, module=False)
    assert code == 0, out
    assert len(_noise(out)) >= 2, out
    code, out = _in_terminal([*evaluate, "--force"], tmp_path)
    assert code == 0, out
    assert any("Running generate_until requests" in line for line in _noise(out)), out
