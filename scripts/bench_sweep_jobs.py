"""Speed-up of `fedmom sweep --jobs 2` over `--jobs 1` on a slice of the CPU miniature.

    python scripts/bench_sweep_jobs.py --data ../shared/data/gsm8k [--cells 4] [--rounds 2]

Builds a recipe from `mini/math` (SmolLM2-135M, GSM8K, 5 clients, 2 local steps) whose grid holds
`--cells` cells (FedIT, FedEx-LoRA, FedMomentum, FedIT + re-split, ... one seed each), then runs the
same sweep twice into fresh roots under a temporary folder:
  - `--jobs 1`: the cells one after another in one process, torch on every usable core;
  - `--jobs 2`: two cells at once, each its own process with (cores // 2) threads;
and prints the wall time of each, the speed-up, and the largest difference between the two runs'
per-round validation losses (the thread count changes the order of float sums, so they agree to
float noise, not bit for bit). Needs the prepared model (`fedmom models get smollm2-135m`). Run it
on an otherwise idle machine: the point is the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

METHODS = ["fedit", "fedex_lora", "fedmomentum", "fedit_resplit", "flora", "ffa_lora"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with gsm8k train.jsonl / test.jsonl")
    parser.add_argument("--cells", type=int, default=4, help="cells in the slice (default 4)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per cell (default 2)")
    args = parser.parse_args()
    if not 2 <= args.cells <= len(METHODS):
        parser.error(f"--cells must be 2..{len(METHODS)}")
    train, test = (args.data / "train.jsonl").resolve(), (args.data / "test.jsonl").resolve()
    if not train.is_file() or not test.is_file():
        parser.error(f"{args.data} lacks train.jsonl / test.jsonl")
    from fedmom_cli import config as cfgmod

    recipe = yaml.safe_load((cfgmod.RECIPES_DIR / "mini" / "math.yaml").read_text())
    recipe.update(rounds=args.rounds, data=str(train), val_data=str(test))
    recipe["sweep"] = {"grid": {"method": METHODS[: args.cells], "seed": [0]}, "eval_tasks": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "slice.yaml"
        path.write_text(yaml.safe_dump(recipe))
        walls = {}
        for jobs in (1, 2):
            root = Path(tmp) / f"jobs{jobs}"
            cmd = [
                sys.executable,
                "-m",
                "fedmom_cli",
                "sweep",
                str(path),
                "--out",
                str(root),
                "--no-progress",
            ]
            start = time.perf_counter()
            done = subprocess.run(cmd + ["--jobs", str(jobs)], capture_output=True, text=True)
            walls[jobs] = time.perf_counter() - start
            if done.returncode != 0:
                print(done.stderr[-2000:], file=sys.stderr)
                return 1
        worst = 0.0
        for method in METHODS[: args.cells]:
            curves = []
            for jobs in (1, 2):
                lines = (Path(tmp) / f"jobs{jobs}" / "math" / method / "seed0" / "metrics.jsonl").read_text()
                curves.append([json.loads(x)["val_loss"] for x in lines.splitlines()])
            worst = max(worst, max(abs(a - b) for a, b in zip(*curves)))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"{args.cells} miniature cells x {args.rounds} rounds, {cores} usable cores:\n"
        f"  --jobs 1 (one process, {cores} threads): {walls[1]:.0f} s\n"
        f"  --jobs 2 (two processes, {max(1, cores // 2)} thread(s) each): {walls[2]:.0f} s\n"
        f"  speed-up {walls[1] / walls[2]:.2f}x; largest validation-loss difference {worst:.2e}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
