"""The host's memory while `fedmom eval --generations` scores memory bombs (docs/sandbox.md).

    python scripts/memory_bombs.py --data-dir ../shared/data [--budget 512] [--workers 2]

Writes one HumanEval/0 completion per bomb (each tries 8 x 400 MB: fork, threads, mmap, a child
that outlives the parent, or one 3 GiB allocation; every page written), runs `fedmom eval
--generations` on them with `--memory-budget BUDGET --workers WORKERS` in a temporary folder, and
samples the host's used memory (MemTotal - MemAvailable, /proc/meminfo) every 20 ms from 1 s before
to the end. Prints the baseline (median before the start), the highest value during the run, the
rise, and workers x budget, the bound the rise should stay under (other processes on a shared
machine move it too), then each bomb's result and the largest per-program peak by the mechanism's
own accounting (eval.json's memory_peak_mib: the cgroup's; none under the rlimits fallback).

Safety: it refuses to start where fedmom's mechanism does not bound the total ("per-process"), and
kills the evaluation if the host's used memory rises by more than twice workers x budget.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHUNK = "bytearray(400 << 20)"  # zero-filled: every page is written
TAIL = "    return True\n"  # a wrong answer for HumanEval/0, in case a bomb does nothing
BOMBS = {
    "fork 8 x 400 MB": (
        "    import os, time\n    for _ in range(8):\n        if os.fork() == 0:\n"
        f"            b = {CHUNK}\n            time.sleep(5)\n            os._exit(0)\n"
        "    for _ in range(8):\n        os.wait()\n" + TAIL
    ),
    "threads 8 x 400 MB": (
        "    import threading\n    kept = []\n"
        f"    ts = [threading.Thread(target=lambda: kept.append({CHUNK})) for _ in range(8)]\n"
        "    [t.start() for t in ts]\n    [t.join() for t in ts]\n" + TAIL
    ),
    "mmap 8 x 400 MB": (
        "    import mmap\n    maps = []\n    for _ in range(8):\n        m = mmap.mmap(-1, 400 << 20)\n"
        "        m[::4096] = b'x' * len(range(0, 400 << 20, 4096))\n        maps.append(m)\n" + TAIL
    ),
    "outliving child 8 x 400 MB": (
        "    import os, time\n    if os.fork() == 0:\n        os.setsid()\n        for _ in range(8):\n"
        f"            if os.fork() == 0:\n                b = {CHUNK}\n                time.sleep(30)\n"
        "        os._exit(0)\n    time.sleep(3)\n" + TAIL
    ),
    "one 3 GiB allocation": f"    b = bytearray(3 << 30)\n{TAIL}",
}


def used_mib() -> int:
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":", 1)
            info[key] = int(value.split()[0])
    return (info["MemTotal"] - info["MemAvailable"]) >> 10


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--budget", type=int, default=512, help="--memory-budget, MiB per program")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from fedmom_cli.evaluation import sandbox_memory

    kind = sandbox_memory.mechanism()
    if kind == "per-process":
        print(f"refused: here ({kind}) the total is not bounded; run as root", file=sys.stderr)
        return 2
    limit = 2 * args.workers * args.budget
    with tempfile.TemporaryDirectory() as tmp:
        samples = Path(tmp) / "bombs.jsonl"
        samples.write_text(
            "".join(json.dumps({"task_id": "HumanEval/0", "completion": c}) + "\n" for c in BOMBS.values())
        )
        cmd = [sys.executable, "-m", "fedmom_cli", "eval", "--generations", str(samples)]
        cmd += ["--tasks", "humaneval", "--data-dir", str(args.data_dir.resolve()), "--out", f"{tmp}/o"]
        cmd += ["--memory-budget", str(args.budget), "--workers", str(args.workers), "--timeout", "10"]
        before = []
        end = time.monotonic() + 1
        while time.monotonic() < end:
            before.append(used_mib())
            time.sleep(0.02)
        base = statistics.median(before)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        during = []

        def watch():
            while proc.poll() is None:
                during.append(used_mib())
                if during[-1] - base > limit:  # the budget did not hold: stop before the host suffers
                    proc.send_signal(signal.SIGKILL)
                time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        started = time.monotonic()
        watcher.start()
        out, err = proc.communicate()
        watcher.join()
        seconds = time.monotonic() - started
        if proc.returncode != 0:
            print(f"fedmom eval failed (exit {proc.returncode}): {err.strip()}", file=sys.stderr)
            return 1
        entry = json.loads(Path(f"{tmp}/o/eval.json").read_text())["tasks"]["humaneval"]
        rows = [json.loads(x) for x in Path(f"{tmp}/o/eval_samples/humaneval.jsonl").read_text().splitlines()]
    top = max(during, default=base)
    print(f"mechanism: {entry['memory_limit_detail']}")
    print(f"{len(BOMBS)} bombs, --workers {args.workers}, --memory-budget {args.budget} MiB, {seconds:.1f} s")
    print(f"host used memory: {base:.0f} MiB before, {top} MiB at most during, rise {top - base:.0f} MiB")
    print(f"bound: workers x budget = {args.workers * args.budget} MiB")
    print(f"largest program peak (mechanism's accounting): {entry['memory_peak_mib']} MiB")
    for name, row in zip(BOMBS, rows):
        print(f"  {name}: {'PASSED' if row['passed'] else row['result'][:70]}")
    return 0 if top - base <= args.workers * args.budget and not any(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
