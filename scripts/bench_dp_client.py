"""Cost of one client's local round with and without DP-SGD on the mini/drift cell (SmolLM2-135M,
GSM8K, 10 steps of batch 4), in wall and process CPU seconds, both in one process after one start-up.

    python -m fedmom_cli models get smollm2-135m
    python scripts/bench_dp_client.py --data ../shared/data/gsm8k [--clients 0 2] [--out dpcost.json]

Calls `Simulation._train` (fixed batches) and `Simulation._train_dp` (Poisson batches, Opacus'
per-sample clipping and noise, sigma 1.0, C 1.0) on the same model and client; each twice, in the
order plain, DP, plain, DP. Figures: docs/miniature.md#differential-privacy-cost-of-a-cell.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from fedmom_cli import config as cfgmod
from fedmom_cli.model import set_factors, set_trainable
from fedmom_cli.simulate import Simulation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder holding gsm8k train.jsonl and test.jsonl")
    parser.add_argument("--clients", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--out", default="dpcost.json")
    args = parser.parse_args()
    out = {}
    t0, c0 = time.perf_counter(), time.process_time()
    overrides = {
        "method": "fedit",
        "rounds": 1,
        "data": f"{args.data}/train.jsonl",
        "val_data": f"{args.data}/test.jsonl",
        "dp_noise_multiplier": 1.0,
        "dp_max_grad_norm": 1.0,
        "dp_delta": 1e-5,
    }
    cfg = cfgmod.resolve("mini/drift", None, overrides)
    sim = Simulation(cfg, Path(tempfile.mkdtemp()))
    out["startup"] = (time.perf_counter() - t0, time.process_time() - c0)
    print("threads", torch.get_num_threads(), "startup (wall, cpu)", out["startup"], flush=True)
    for k in args.clients:
        for mode in ("plain", "dp", "plain2", "dp2"):
            set_factors(sim.modules, sim.server.client_start(k))
            params = set_trainable(sim.modules, sim.server.method.trainable(0))
            t0, c0 = time.perf_counter(), time.process_time()
            train = sim._train if mode.startswith("plain") else sim._train_dp
            stats = train(0, k, sim.server.samplers[k], params)
            out[f"client{k}_{mode}"] = (time.perf_counter() - t0, time.process_time() - c0, stats.mean_loss)
            print(k, mode, "(wall, cpu, loss)", out[f"client{k}_{mode}"], flush=True)
            Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
