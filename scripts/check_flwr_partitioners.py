"""Check fedmom's partitioners against Flower Datasets' own code, case by case.

    python scripts/check_flwr_partitioners.py PATH/TO/flower/datasets [--trials 60]

flwr-datasets cannot be installed beside fedmom (0.6.x requires datasets<5, hence
huggingface-hub<2, while transformers 5.25 requires huggingface-hub>=2.4), so this imports its
partitioner modules straight from a checkout of github.com/adap/flower (the `datasets/` folder,
without running the package's __init__) and runs them on `datasets.Dataset`s of random labels
beside fedmom_cli.partitioners: iid (after the seeded shuffle FederatedDataset applies), natural,
pathological (every class_assignment_mode, shuffle on and off) and shard (four ways of sizing). A
case Flower refuses (ValueError) must be refused by fedmom too (UserError). Exit 0 = every client of
every case identical, 1 = a difference (printed), 2 = usage error. Last result: docs/own_data.md.
"""

# ruff: noqa: B023 - each case's lambdas are called at once, inside the iteration that made them
from __future__ import annotations

import argparse
import os
import sys
import types
from pathlib import Path

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")  # NaturalIdPartitioner's own progress bar


def _import_flower(root: Path):
    base = root / "flwr_datasets"
    if not (base / "partitioner" / "shard_partitioner.py").is_file():
        sys.exit(f"error: {root} is not flower's datasets/ folder (no flwr_datasets/partitioner)")
    sys.path.insert(0, str(root))
    for name, path in (("flwr_datasets", base), ("flwr_datasets.partitioner", base / "partitioner")):
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        sys.modules[name] = module
    from flwr_datasets.partitioner.iid_partitioner import IidPartitioner
    from flwr_datasets.partitioner.natural_id_partitioner import NaturalIdPartitioner
    from flwr_datasets.partitioner.pathological_partitioner import PathologicalPartitioner
    from flwr_datasets.partitioner.shard_partitioner import ShardPartitioner

    return IidPartitioner, NaturalIdPartitioner, PathologicalPartitioner, ShardPartitioner


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("flower_datasets", type=Path, help="the datasets/ folder of a flower checkout")
    parser.add_argument("--trials", type=int, default=60)
    args = parser.parse_args()
    iid_p, natural_p, patho_p, shard_p = _import_flower(args.flower_datasets)
    import datasets

    from fedmom_cli import partitioners as fp
    from fedmom_cli.errors import UserError

    datasets.disable_progress_bars()
    counts = {"identical": 0, "both refuse": 0}
    bad = []

    def compare(what, flower, ours):
        try:
            want = flower()
        except ValueError:
            try:
                ours()
            except UserError:
                counts["both refuse"] += 1
                return
            bad.append(f"{what}: Flower refuses, fedmom does not")
            return
        try:
            got = ours()
        except UserError as exc:
            bad.append(f"{what}: fedmom refuses ({exc}), Flower does not")
            return
        if [list(map(int, w)) for w in want] != [list(map(int, g)) for g in got]:
            bad.append(f"{what}: clients differ")
        else:
            counts["identical"] += 1

    def parts(partitioner, ds, n):
        partitioner.dataset = ds
        return [list(partitioner.load_partition(i)["i"]) for i in range(n)]

    for trial in range(args.trials):
        rng = np.random.default_rng(trial)
        n, n_labels, k = int(rng.integers(30, 200)), int(rng.integers(2, 8)), int(rng.integers(2, 7))
        labels = [f"L{int(x)}" for x in rng.integers(0, n_labels, n)]
        ds = datasets.Dataset.from_dict({"i": list(range(n)), "y": labels})
        seed = int(rng.integers(0, 1000))
        perm = np.random.default_rng(seed).permutation(n)
        compare(
            f"trial {trial} iid",
            lambda: [sorted(p) for p in parts(iid_p(k), ds.select(perm), k)],
            lambda: fp.iid(n, k, seed),
        )

        def flower_natural():
            p = natural_p("y")
            p.dataset = ds
            return [list(p.load_partition(i)["i"]) for i in range(p.num_partitions)]

        compare(f"trial {trial} natural", flower_natural, lambda: fp.natural(labels)[0])
        for mode in ("random", "deterministic", "first-deterministic"):
            for shuffle in (True, False):
                c = int(rng.integers(1, 4))
                compare(
                    f"trial {trial} pathological {mode} shuffle={shuffle} k={c}",
                    lambda: parts(patho_p(k, "y", c, mode, shuffle, seed), ds, k),
                    lambda: fp.pathological(labels, k, seed, c, mode, shuffle),
                )
        sizings = (
            {"num_shards_per_partition": 2},
            {"shard_size": 5},
            {"shard_size": 5, "keep_incomplete_shard": True},
            {"num_shards_per_partition": 2, "shard_size": 3},
        )
        for kw in sizings:
            for shuffle in (True, False):
                compare(
                    f"trial {trial} shard {kw} shuffle={shuffle}",
                    lambda: parts(shard_p(k, "y", shuffle=shuffle, seed=seed, **kw), ds, k),
                    lambda: fp.shard(labels, k, seed, shuffle=shuffle, **kw),
                )
    for line in bad:
        print(line)
    print(
        f"{counts['identical']} cases identical, {counts['both refuse']} refused by both, {len(bad)} differ"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
