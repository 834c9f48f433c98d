"""The memory budget of generated programs (sandbox_memory.py): hostile allocators end as failed
cases within a time bound, and the run's memory by the mechanism's own accounting (the cgroup's
peak) stays within the budget. The bombs are small (8 x 100 MB intended, budget 128 MiB, or
640 MiB under the rlimits fallback, which needs room for its in-memory folders), so that a test
never endangers the machine; scripts/memory_bombs.py measures the host with bigger ones.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_sandbox import ADD, TAIL, eval_cli, fake_humaneval, modes

from fedmom_cli.evaluation import codeexec, sandbox, sandbox_memory

CHUNK = "bytearray(100 << 20)"  # 100 MB, every page written (bytearray zero-fills)
BOMBS = {
    "one big allocation": f"    b = bytearray(3 << 30)\n{TAIL}",
    "fork + allocate": (
        "    import os, time\n    kids = []\n    for _ in range(8):\n        pid = os.fork()\n"
        f"        if pid == 0:\n            b = {CHUNK}\n            time.sleep(3)\n            os._exit(0)\n"
        "        kids.append(pid)\n    for k in kids:\n        os.waitpid(k, 0)\n" + TAIL
    ),
    "threads allocating": (
        "    import threading\n    kept = []\n"
        f"    ts = [threading.Thread(target=lambda: kept.append({CHUNK})) for _ in range(8)]\n"
        "    [t.start() for t in ts]\n    [t.join() for t in ts]\n" + TAIL
    ),
    "mmap": (
        "    import mmap\n    maps = []\n    for _ in range(8):\n        m = mmap.mmap(-1, 100 << 20)\n"
        "        m[::4096] = b'x' * len(range(0, 100 << 20, 4096))\n        maps.append(m)\n" + TAIL
    ),
    "a child that outlives the parent": (
        "    import os, time\n    if os.fork() == 0:\n        os.setsid()\n        if os.fork() == 0:\n"
        "            for _ in range(8):\n                if os.fork() == 0:\n"
        f"                    b = {CHUNK}\n                    time.sleep(30)\n"
        "        os._exit(0)\n    time.sleep(1.5)\n" + TAIL
    ),
}
TIMEOUT = 5.0


def mechanisms() -> list[str]:
    found = [sandbox_memory.mechanism()]
    return found + (["rlimits"] if os.geteuid() == 0 and "rlimits" not in found else [])


def budget_for(kind: str) -> int:
    return 640 if kind == "rlimits" else 128


def run_bombs(mode: str, kind: str, monkeypatch) -> dict[str, tuple[sandbox.Outcome, float]]:
    monkeypatch.setattr(sandbox_memory, "mechanism", lambda: kind)

    def one(code):
        start = time.monotonic()
        o = codeexec.score_one("humaneval", ADD, code, TIMEOUT, isolation=mode, memory_mb=budget_for(kind))
        return o, time.monotonic() - start

    with ThreadPoolExecutor(2) as pool:  # as `--workers 2`
        return dict(zip(BOMBS, pool.map(one, BOMBS.values())))


def check(results: dict, kind: str) -> None:
    for name, (outcome, seconds) in results.items():
        assert not outcome.passed and outcome.status != "error", (name, outcome)
        assert seconds < TIMEOUT + 5, (name, seconds)
        if kind.startswith("cgroup"):  # the cgroup's own accounting of the whole run
            assert outcome.peak_mib is not None and outcome.peak_mib <= budget_for(kind), (name, outcome)
    if kind.startswith("cgroup"):  # these reach the budget (the others hit RLIMIT_AS first)
        for name in ("fork + allocate", "a child that outlives the parent"):
            assert results[name][0].detail == f"memory: over the {budget_for(kind)} MiB budget", results[name]
    assert results["one big allocation"][0].detail == "exception: MemoryError"


def first_mode() -> str | None:
    return next((m for m in ("bwrap", "namespaces") if sandbox.works(m)), None)


def test_hostile_allocators_fail_within_the_budget(monkeypatch):
    mode = first_mode()
    if mode is None:
        pytest.skip("no isolation works here")
    kind = sandbox_memory.mechanism()
    check(run_bombs(mode, kind, monkeypatch), kind)
    leftovers = [  # every run's cgroup is removed after it
        name
        for parent in (sandbox_memory._parents(kind) if kind.startswith("cgroup") else [])
        for name in os.listdir(parent)
        if name.startswith(f"fedmom-{os.getpid()}-")
    ]
    assert leftovers == []
    budget = budget_for(kind)
    right = codeexec.score_one("humaneval", ADD, "    return a + b\n", isolation=mode, memory_mb=budget)
    assert right.passed  # and an ordinary program still passes within the budget


@pytest.mark.slow
@pytest.mark.parametrize("kind", mechanisms())
@pytest.mark.parametrize("mode", modes())
def test_hostile_allocators_every_isolation_and_mechanism(mode, kind, monkeypatch):
    check(run_bombs(mode, kind, monkeypatch), kind)
    ordinary = "    import threading\n    t = threading.Thread(target=print)\n    t.start()\n    t.join()\n"
    monkeypatch.setattr(sandbox_memory, "mechanism", lambda: kind)
    code = ordinary + "    return a + b\n"
    assert codeexec.score_one("humaneval", ADD, code, isolation=mode, memory_mb=budget_for(kind)).passed


def test_rlimits_fallback_bounds_the_total():
    """Tasks x address space + in-memory folders never exceed the budget, for every budget allowed."""
    least = sandbox_memory.TMPFS_MIB + sandbox_memory.FALLBACK_TASKS * sandbox_memory.FALLBACK_MIN_TASK_MIB
    for mib in (least, 640, 1024, 4096, 4099):
        budget = sandbox_memory.RunBudget(mib, "rlimits")
        address_space, tasks = budget.rlimits()
        assert tasks * address_space + (sandbox_memory.TMPFS_MIB << 20) <= mib << 20
        assert address_space >= sandbox_memory.FALLBACK_MIN_TASK_MIB << 20


@pytest.mark.parametrize(
    "args, message",
    [
        (["--memory-budget", "10"], "--memory-budget must be at least"),
        (["--memory-budget", "-1"], "--memory-budget must be at least"),
        (["--memory-budget", "5000000"], "over 50% of this machine's available memory"),
        (["--memory-budget", "100000000"], "over 50% of this machine's available memory"),
        # 3 programs run at once at most, whatever --workers says (the review's G28 still succeeds)
        (["--workers", "100000", "--memory-budget", str(1 << 20)], "--workers 100000 (3 programs at once) x"),
    ],
)
def test_budget_and_workers_are_checked_together(tmp_path, args, message):
    fake_humaneval(tmp_path / "data", n=3)
    line = '{"task_id": "HumanEval/0", "completion": "    return x\\n"}\n'
    (tmp_path / "s.jsonl").write_text(line * 3)
    proc = eval_cli("--generations", tmp_path / "s.jsonl", "--tasks", "humaneval",
                    "--data-dir", tmp_path / "data", "--out", tmp_path / "out", *args)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error:") and message in proc.stderr
    assert not (tmp_path / "out").exists()


def test_eval_json_records_the_budget_and_mechanism(tmp_path):
    fake_humaneval(tmp_path / "data")
    (tmp_path / "s.jsonl").write_text('{"task_id": "HumanEval/0", "completion": "    return x + 0\\n"}\n')
    proc = eval_cli("--generations", tmp_path / "s.jsonl", "--tasks", "humaneval", "--memory-budget", "700",
                    "--data-dir", tmp_path / "data", "--out", tmp_path / "out")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    entry = json.loads((tmp_path / "out" / "eval.json").read_text())["tasks"]["humaneval"]
    assert entry["memory_budget_mib"] == 700 and entry["memory_limit"] in sandbox_memory.MECHANISMS
    assert entry["memory_limit_detail"] == sandbox_memory.describe(700, entry["memory_limit"])
    if entry["memory_limit"].startswith("cgroup"):
        assert 0 < entry["memory_peak_mib"] <= 700
