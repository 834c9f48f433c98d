"""Flower App entry points for a deployment: `flwr run` against a SuperLink with one SuperNode per site.

pyproject.toml of the Flower App (see the README's "Scaling out"):

    [tool.flwr.app.components]
    serverapp = "fedmom_cli.flower.app:serverapp"
    clientapp = "fedmom_cli.flower.app:clientapp"
    [tool.flwr.app.config]
    recipe = "smoke"          # any fedmom recipe (name or path on the server)
    method = "fedmomentum"
    out = "results/flower/fedmomentum"
    set = ""                  # fedmom settings, "key=value;key=value"
    wait = 300                # seconds to wait for one SuperNode per client, then the run fails

Each SuperNode runs with `--node-config "partition-id=K num-partitions=N"` (train partition K of the
run's dataset) and optionally `data="/site/rows.jsonl"` (train on the site's own file instead).
The ServerApp writes the same run folder as `fedmom train`, resuming an interrupted run.

Ending: fewer SuperNodes than clients after `wait` seconds fails the run (result.json `failed`,
its `error` says how many connected); `flwr stop` leaves it `interrupted`, never `running`: in
Flower 1.41 the SuperLink refuses the ServerApp's next call and Flower ends the process itself
(SIGINT to its own handler, then SystemExit; or RunNotRunningException), which train.run records
as an interruption; a SIGTERM from elsewhere (the process's supervisor) is one too (`_interrupt`).
A failure is logged as one `error: ...` line before Flower's own
report of the ServerApp's exception.
"""

from __future__ import annotations

import signal
import threading
from logging import ERROR
from pathlib import Path

from flwr.common.logger import log
from flwr.serverapp import ServerApp

from fedmom_cli import config as cfgmod
from fedmom_cli.errors import UserError
from fedmom_cli.flower.engine import client_app

clientapp = client_app()
serverapp = ServerApp()


@serverapp.main()
def main(grid, context) -> None:
    from fedmom_cli import train as tr

    rc = context.run_config
    sets = [item for item in str(rc.get("set", "")).split(";") if item.strip()]
    overrides = {**cfgmod.parse_set(sets), "method": str(rc.get("method", "fedmomentum"))}
    cfg = cfgmod.resolve(str(rc.get("recipe", "smoke")), rc.get("task"), overrides)
    out = Path(str(rc.get("out", f"results/flower/{cfg.method}")))
    wait = float(rc.get("wait", 300))
    if threading.current_thread() is threading.main_thread():  # flwr stop: interrupted, not running
        signal.signal(signal.SIGTERM, _interrupt)
    from fedmom_cli.flower.engine import FlowerClientError
    from fedmom_cli.flower.strategy import connect, site_settings

    try:  # the nodes first: the sites' data are part of the run's settings
        connection = connect(grid, cfg, wait)
        cfg = site_settings(cfg, connection)
    except FlowerClientError as exc:
        connection = exc  # the run fails with it, recorded in result.json
    try:
        tr.run(
            tr.TrainOptions(
                cfg,
                out=out,
                resume=True,
                engine="flower",
                grid=grid,
                progress=False,
                wait=wait,
                connection=connection,
            )
        )
    except UserError as exc:
        log(ERROR, "error: %s", exc)
        raise RunFailed(str(exc)) from None


class RunFailed(Exception):
    """The run failed; its result.json says why (the message, once, without fedmom's traceback)."""


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
