"""One sweep cell in its own process (`fedmom sweep --jobs N`, fedmom_cli/sweep_jobs.py): reads the
cell's job as JSON on stdin (its run folder is also its one argument, so `ps` shows which cell runs),
trains it (resuming) and evaluates it with the same calls `--jobs 1` makes in-process. Exit 0 when
done, 2 with one `error:` line for a user error."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path


def main() -> int:
    spec = json.loads(sys.stdin.read())
    import torch

    threads = int(os.environ.get("FEDMOM_THREADS", "0"))
    if threads > 0:
        torch.set_num_threads(threads)
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    from fedmom_cli import config as cfgmod
    from fedmom_cli import train as tr
    from fedmom_cli.errors import UserError
    from fedmom_cli.evaluation import evaluate as ev
    from fedmom_cli.progress import quiet_if_asked

    quiet_if_asked()  # `fedmom sweep --no-progress` reaches its workers through the environment

    try:
        cfg = cfgmod.from_yaml(spec["config"])
        run_dir = Path(spec["run_dir"])
        tr.run(tr.TrainOptions(cfg, out=run_dir, resume=True, progress=False, report_to=spec["report_to"]))
        if spec["evaluate"]:
            data_dir = Path(spec["data_dir"]) if spec["data_dir"] else None
            ev.run(
                ev.EvalOptions(
                    run_dir=run_dir,
                    tasks=spec["eval_tasks"],
                    data_dir=data_dir,
                    cache=Path(spec["cache"]),
                    **spec["eval_options"],
                )
            )
    except UserError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
