"""Executable docs: find the command blocks of README.md and docs/*.md, run them, compare the output.

A fenced block that holds a line starting `$ ` shows commands and their output. Each such block is
marked on the line right before its fence (blank lines between are allowed):

    <!-- docs-test: fast -->              run in the default suite
    <!-- docs-test: slow -->              run under `pytest -m slow`
    <!-- docs-test: skip (reason) -->     never run; the reason says why (the test lists it)
    <!-- docs-test: fast; continues -->   run in the folder the page's previous checked block left
                                          (the two are one test, run in order)
    <!-- docs-test: file NAME -->         not a command block: its text is written to NAME in the
                                          folder of every later command block of the same page

An unmarked `$` block is an error, so no new block goes unchecked. Each test runs in a fresh
temporary folder `TMP/work` beside a link `TMP/shared` to the repository's `../shared`, so
`../shared/data` means what it means in a checkout; a block that names `../shared/data` is skipped
when that folder is absent. Commands run one at a time with bash (`$ ` lines; a line ending in `\\`
continues on the next), stdout and stderr together, with `fedmom` and `python` from the running
interpreter's bin folder and `PYTHONPATH` set to the repository root. A command that exits non-zero
is followed by `[exit N]` in its output, as the docs show it.

Comparison (`compare`), line by line after `mask` on both sides: timings (`0.2 s/round`, `eta 1 s`,
`0.7 s`), the sandbox's isolation mode, tqdm progress bars and Python warnings (`x.py:12:
FutureWarning: ...`, a library's notice that depends on its version) are masked or dropped; a documented
line `...` stands for any number of lines, and a documented line ending in ` ...` for any line that
starts with the text before it. Everything else (losses, tables, error lines, exit codes) must match.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!--\s*docs-test:\s*(?P<body>.*?)\s*-->\s*$")
MODES = ("fast", "slow", "skip", "file")


@dataclass
class Block:
    """One fenced block of a page: where it starts, its lines, and its marker (None if unmarked)."""

    path: Path
    line: int  # 1-based line of the opening fence
    lines: list[str]
    mode: str | None = None  # fast, slow, skip, file; None when unmarked
    arg: str = ""  # the skip reason or the file name
    continues: bool = False

    @property
    def is_command(self) -> bool:
        return any(x.startswith("$ ") for x in self.lines)

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO) if self.path.is_relative_to(REPO) else self.path}:{self.line}"


@dataclass
class Case:
    """One test: a chain of command blocks (the first and its `continues` followers) of one page."""

    blocks: list[Block]
    files: dict[str, str] = field(default_factory=dict)  # name -> text, from earlier `file` blocks

    @property
    def mode(self) -> str:
        return self.blocks[0].mode or "unmarked"

    @property
    def id(self) -> str:
        return self.blocks[0].where

    def needs_shared_data(self) -> bool:
        return any("../shared/data" in x for b in self.blocks for x in b.lines)


def parse_marker(body: str) -> tuple[str, str, bool]:
    """`fast` / `slow; continues` / `skip (reason)` / `file NAME` -> (mode, arg, continues)."""
    if body.startswith("skip") and ")" in body:  # the reason may hold ';'
        cut = body.rindex(")") + 1
        head, options = body[:cut], [p.strip() for p in body[cut:].split(";") if p.strip()]
    else:
        head, *options = [p.strip() for p in body.split(";")]
    mode = head.split(maxsplit=1)[0] if head else ""
    arg = head[len(mode) :].strip()
    if mode not in MODES:
        raise ValueError(f"unknown docs-test mode {mode!r} (one of {', '.join(MODES)})")
    if mode == "skip":
        if not (arg.startswith("(") and arg.endswith(")") and len(arg) > 2):
            raise ValueError("a skip needs its reason in parentheses: <!-- docs-test: skip (why) -->")
        arg = arg[1:-1]
    elif mode == "file" and not arg:
        raise ValueError("<!-- docs-test: file NAME --> needs the file's name")
    elif mode in ("fast", "slow") and arg:
        raise ValueError(f"unexpected text after {mode!r}: {arg!r}")
    unknown = [o for o in options if o != "continues"]
    if unknown:
        raise ValueError(f"unknown docs-test option(s) {unknown} (only 'continues')")
    return mode, arg, bool(options)


def parse_page(path: Path, text: str | None = None) -> list[Block]:
    """Every fenced block of a markdown page, with the marker found on the lines before it."""
    lines = (path.read_text() if text is None else text).split("\n")
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if not lines[i].startswith("```"):
            i += 1
            continue
        start = i
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        block = Block(path, start + 1, lines[start + 1 : j])
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        m = MARKER.match(lines[k]) if k >= 0 else None
        if m:
            try:
                block.mode, block.arg, block.continues = parse_marker(m.group("body"))
            except ValueError as e:
                raise ValueError(f"{block.where}: {e}") from None
        blocks.append(block)
        i = j + 1
    return blocks


def pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def cases(paths: Iterable[Path] | None = None) -> list[Case]:
    """The tests of the given pages (default: README.md and docs/*.md), in page order."""
    out: list[Case] = []
    for path in paths or pages():
        files: dict[str, str] = {}
        last: Case | None = None
        for b in parse_page(path):
            if b.mode == "file":
                files[b.arg] = "\n".join(b.lines) + "\n"
                continue
            if not b.is_command:
                if b.mode is not None:
                    raise ValueError(f"{b.where}: marked docs-test {b.mode} but shows no `$ ` command")
                continue
            if b.continues:
                if last is None or last.mode not in ("fast", "slow"):
                    raise ValueError(f"{b.where}: 'continues' needs a checked command block before it")
                if b.mode != last.mode:
                    raise ValueError(f"{b.where}: continues a {last.mode} block but is marked {b.mode}")
                last.blocks.append(b)
                continue
            last = Case([b], dict(files))
            out.append(last)
    return out


@dataclass
class Command:
    cmd: str
    expected: list[str]


def commands(lines: list[str]) -> list[Command]:
    """Split a block into its `$ ` commands (with `\\` continuations) and the output shown under each."""
    out: list[Command] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("$ "):
            if not out:
                raise ValueError(f"output before the first command: {line!r}")
            out[-1].expected.append(line)
            i += 1
            continue
        cmd = line[2:]
        while cmd.endswith("\\") and i + 1 < len(lines):
            i += 1
            cmd = cmd + "\n" + lines[i]  # bash's own backslash-newline: one command
        out.append(Command(cmd, []))
        i += 1
    return out


_TIMING = re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s?s(?=$|[\s,;)/])")
_ISOLATION = re.compile(r"\b(bwrap|namespaces)\b")
# a tqdm bar: "40%|████      | 2/5 [00:01<00:02, ...]", or one without a total: "40 examples [00:00, ...]"
_BAR = re.compile(r"\d+%\||\[\d+:\d\d(<|, )")


def mask(line: str) -> str:
    """What may differ between runs: timings and the sandbox's isolation mode."""
    line = _TIMING.sub("<t>", line.rstrip())
    return _ISOLATION.sub("<isolation>", line)


_WARNING = re.compile(r"^\S+:\d+: \w*Warning: ")  # "path.py:12: FutureWarning: ..."


def clean_output(raw: str) -> list[str]:
    """A command's raw output as lines: carriage-return redraws resolved, progress bars and Python
    warnings (a library's deprecation notice, which depends on its version) dropped."""
    out = []
    lines = raw.replace("\r\n", "\n").split("\n")
    for i, line in enumerate(lines):
        if _WARNING.match(line) or (
            line.startswith("  warnings.warn(") and i and _WARNING.match(lines[i - 1])
        ):
            continue
        segments = [s for s in line.split("\r") if s and not _BAR.search(s)]
        if segments:
            out.append(segments[-1])
        elif not line:
            out.append("")
    while out and out[-1] == "":
        out.pop()
    while out and out[0] == "":  # e.g. the newline a finished progress bar leaves
        out.pop(0)
    return out


def _match(exp: list[str], act: list[str]) -> bool:
    """exp against act, with `...` lines as wildcards for any run of lines and `X ...` as prefixes."""
    memo: dict[tuple[int, int], bool] = {}

    def go(i: int, j: int) -> bool:
        if (i, j) in memo:
            return memo[i, j]
        if i == len(exp):
            ok = j == len(act)
        elif exp[i] == "...":
            ok = go(i + 1, j) or (j < len(act) and go(i, j + 1))
        elif j == len(act):
            ok = False
        elif exp[i].endswith(" ...") and act[j].startswith(exp[i][:-4]):
            ok = go(i + 1, j + 1)
        else:
            ok = exp[i] == act[j] and go(i + 1, j + 1)
        memo[i, j] = ok
        return ok

    return go(0, 0)


def compare(expected: list[str], actual: list[str]) -> str | None:
    """None when they agree; else a unified diff (documented -> actual) of the masked lines."""
    exp = [mask(x) for x in expected]
    act = [mask(x) for x in actual]
    if _match(exp, act):
        return None
    import difflib

    return "\n".join(difflib.unified_diff(exp, act, "documented", "actual", lineterm="", n=2))


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", COLUMNS="120", TERM="dumb", NO_COLOR="1")
    env.pop("FORCE_COLOR", None)
    return env


def run_command(cmd: str, cwd: Path, env: dict[str, str], timeout: float = 600) -> list[str]:
    """One command in bash; its output lines, then `[exit N]` when it failed."""
    done = subprocess.run(
        ["bash", "-c", cmd],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=timeout,
    )
    lines = clean_output(done.stdout)
    return lines + ([f"[exit {done.returncode}]"] if done.returncode else [])


def workspace(tmp: Path, files: dict[str, str]) -> Path:
    """TMP/work (the block's cwd, holding the page's `file` blocks) beside TMP/shared -> ../shared."""
    work = tmp / "work"
    work.mkdir(parents=True)
    shared = REPO.parent / "shared"
    if shared.is_dir():
        (tmp / "shared").symlink_to(shared)
    for name, text in files.items():
        (work / name).write_text(text)
    return work


def run_case(case: Case, tmp: Path) -> list[str]:
    """Run a case's commands in order; the list of mismatches (empty when the docs hold)."""
    work = workspace(tmp, case.files)
    env = environment()
    problems = []
    for block in case.blocks:
        for c in commands(block.lines):
            actual = run_command(c.cmd, work, env)
            diff = compare(c.expected, actual)
            if diff is not None:
                problems.append(f"{block.where}: $ {c.cmd}\n{diff}")
    return problems
