"""`fedmom train --engine flower`: the same methods and local training as a Flower app (flwr 1.41).

    pip install "fedmom[flower]"
    fedmom train --method fedmomentum --recipe smoke --engine flower

- ServerApp: `FedmomStrategy` (flower/strategy.py), a `FedAvg` subclass that receives fedmom's
  `Server` (server.py): `configure_train` sends each node the global factors, this round's base
  delta in the method's own form (`BaseDelta.to_arrays`: FLoRA's stacked factors and FedMomentum's
  residual factors low-rank, FedEx-LoRA's residual dense) and the run's settings;
  `aggregate_train` turns the replies into `ClientUpdate`s and calls `Server.aggregate`, the same
  call the sequential engine makes (Flower averages nothing). Method state, checkpoints and metrics
  live in the Server; the bytes logged are those of the arrays actually put in the messages.
- ClientApp: its node's partition (`partition-id`) trained by the same `Simulation.train_one`;
  the node keeps its own copy of the accumulated base delta in `context.state`.
- Messages: a flat ArrayRecord per message, keys `<module>|<part>` (`records.flatten` / `records.nest`), parts
  A, B (factors) and dense or up, down (`BaseDelta.to_arrays`).
- Nodes: before the first round the strategy waits (at most `wait` s) for one node per client and
  asks each with a QUERY for its partition id and data (`site_info`); each round it sends TRAIN
  only to the sampled clients' nodes (participation.py), and a client drawn to drop answers with an
  error (code DROPPED) instead of training.
- Flower swallows ClientApp exceptions: any other failed or missing reply stops the run with the
  client's error. In simulation Ray stays on 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before
  Ray starts).
- Determinism: client seeds and data order are the sequential engine's, so the final adapter and
  base delta agree with it to float tolerance (Ray actors compute with 1 thread).
- Fault injection for testing failure handling: FEDMOM_FAULT_CLIENT=<partition-id> makes that
  client raise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fedmom_cli import config as cfgmod
from fedmom_cli.errors import UserError
from fedmom_cli.flower.errors import FlowerClientError  # noqa: F401 (app.py imports it here)
from fedmom_cli.flower.records import array_record, dense_deltas, flatten, nest, tensors_of
from fedmom_cli.methods.base import LoraFactors

DROPPED = 5017  # the error code of a client's reply when it was drawn to drop (client_dropout)
INSTALL_HINT = 'the Flower engine needs Flower: pip install "fedmom[flower]" (flwr[simulation]==1.41.0)'
_SIMULATIONS: dict[str, object] = {}  # per Ray worker process: one loaded Simulation per config


def require_flower() -> None:
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise UserError(INSTALL_HINT) from None


# ---- client ----------------------------------------------------------------------------------------


def _client_simulation(cfg_yaml: str, site_data: str | None):
    """The node's model and data, loaded once per worker process.

    With `site_data` (a deployed site's own file, from its node config) the node trains on all of
    its rows; otherwise on partition `partition-id` of the run's dataset.
    """
    import dataclasses

    from fedmom_cli.simulate import Simulation

    cfg = cfgmod.from_yaml(cfg_yaml)
    if site_data is not None:  # the same settings whether or not the server has recorded the sites
        cfg = dataclasses.replace(
            cfg,
            data=site_data,
            synthetic=None,
            partition=None,
            clients=1,
            min_client_size=1,
            val_rows=0,
            sites=None,
            partitioner=None,  # a site's file is its one client, whatever split the run names
            label_field=None,
            client_field=None,
            partitioner_options=None,
        )
    key = cfgmod.to_yaml(cfg)
    if key not in _SIMULATIONS:
        _SIMULATIONS[key] = Simulation(cfg, Path(os.devnull))
    return _SIMULATIONS[key]


def site_info(sim, pid: int, site_data: str | None) -> dict:
    """What a node trains on: its partition id and, for a site's own file, the path the site gave,
    its rows and their fingerprint (data.Rows.fingerprint: sha256 of the rows' canonical JSON);
    without one, the rows of partition `pid` of the run's dataset."""
    if site_data is None:
        return {"partition_id": pid, "data": None, "rows": len(sim.partition["clients"][pid])}
    fp = sim.rows.fingerprint()
    return {"partition_id": pid, "data": site_data, "rows": fp["rows"], "sha256": fp["sha256"]}


def _train_node(context, pid: int, config, glob: dict, delta: dict):
    """Train this node's client for one round from the global factors `glob` and the round's base
    delta arrays `delta` (added to the node's own accumulated copy, or replacing it when the config
    says `replace-delta`): (ClientUpdate, the trained factors by `module|part`, its sampler, the
    round's local steps {"total", "with_trainable_token"}: the server's result.json counts them)."""
    from flwr.app import ArrayRecord

    site_data = context.node_config.get("data")
    sim = _client_simulation(str(config["fedmom-config"]), str(site_data) if site_data else None)
    server = sim.server  # the node's own mirror of the server's state
    round_idx = int(config["round"])
    # The node's own copy of the backbone: accumulated delta, kept across rounds on the node.
    acc = {} if config["replace-delta"] else tensors_of(context.state.array_records.get("delta"))
    for module, d in dense_deltas(delta).items():
        acc[module] = acc[module] + d if module in acc else d
    context.state["delta"] = ArrayRecord(torch_state_dict=acc) if acc else ArrayRecord()
    server.load_base_delta(acc)
    nested = nest(glob)
    start = {m: LoraFactors(nested[m]["A"], nested[m]["B"]) for m in sim.modules}
    k = 0 if site_data else pid
    server.load_sampler_state(k, json.loads(str(config["samplers"]))[str(pid)])
    sampler = server.samplers[k]
    steps = int(config["steps"]) if "steps" in config else None
    before = dict(sim.steps)
    update = sim.train_one(round_idx, pid, sampler, global_factors=start, steps=steps)
    trained = sorted(server.method.trainable(round_idx))
    up = flatten({m: {x: getattr(f, x) for x in trained} for m, f in update.factors.items()})
    return update, up, sampler, {key: sim.steps[key] - before[key] for key in before}


def client_app():
    from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.query()
    def query(msg: Message, context) -> Message:
        """The node's partition id and what it trains on (the server records it)."""
        from fedmom_cli.progress import quiet_if_asked

        quiet_if_asked()
        pid = int(context.node_config["partition-id"])
        site_data = context.node_config.get("data")
        sim = _client_simulation(
            str(msg.content["config"]["fedmom-config"]), str(site_data) if site_data else None
        )
        info = site_info(sim, pid, str(site_data) if site_data else None)
        return Message(RecordDict({"site": ConfigRecord({"json": json.dumps(info)})}), reply_to=msg)

    from fedmom_cli.flower import secagg

    @app.train(mods=[secagg.client_mod])
    def train(msg: Message, context) -> Message:
        from fedmom_cli.progress import quiet_if_asked

        quiet_if_asked()  # --no-progress reaches the clients' processes through the environment
        pid = int(context.node_config["partition-id"])
        if secagg.is_fitins(msg):  # under SecAgg+: a legacy FitIns, answered with a FitRes to mask
            config, glob, delta = secagg.unpack_fitins(msg)
        else:
            config = msg.content["config"]
            glob = tensors_of(msg.content["global"])
            delta = tensors_of(msg.content.array_records.get("delta"))
        if config["drop"]:  # drawn to fail this round (client_dropout): it answers with an error
            return Message(Error(code=DROPPED, reason=f"client {pid} dropped (client_dropout)"), reply_to=msg)
        if os.environ.get("FEDMOM_FAULT_CLIENT") == str(pid):
            raise RuntimeError(f"injected fault in client {pid}")
        update, up, sampler, steps = _train_node(context, pid, config, glob, delta)
        metrics = {
            "num-examples": update.examples,
            "steps": steps["total"],
            "steps-with-token": steps["with_trainable_token"],
            "loss": float("nan") if update.loss is None else update.loss,  # None: no token
            "partition-id": pid,
            **update.seconds,
        }
        if secagg.is_fitins(msg):
            cfg = cfgmod.from_yaml(str(config["fedmom-config"]))
            weight = update.examples if cfg.client_weights == "samples" else 1
            return secagg.fitres_message(msg, up, weight, {**metrics, "sampler": json.dumps(sampler.state())})
        reply = RecordDict(
            {
                "factors": array_record(up),
                "metrics": MetricRecord(metrics),
                "meta": ConfigRecord({"sampler": json.dumps(sampler.state())}),
            }
        )
        return Message(reply, reply_to=msg)

    return app


# ---- server ----------------------------------------------------------------------------------------


def _max_weight(server, connection) -> float:
    """SecAgg+'s max_weight: the largest client's rows (its aggregation weight), 1 for uniform."""
    if server.cfg.client_weights != "samples":
        return 1.0
    if connection is not None and connection.sites:
        return float(max(int(info["rows"]) for info in connection.sites.values()))
    return float(max(len(s.rows) for s in server.samplers))


def run(
    server,
    on_round,
    grid=None,
    client_resources: dict | None = None,
    wait: float = 300.0,
    connection=None,
    steps: dict | None = None,
) -> None:
    """The remaining rounds of `server` (a server.Server) on `grid` (a deployment's ServerApp) or in
    a local Flower simulation; `on_round(record)` after each. `wait`: seconds to wait for the nodes
    (strategy.connect); `connection`: the nodes a deployment's ServerApp already found, or the
    error that finding them raised (then the run fails with it). `steps`: the run's local-step
    tally ({"total", "with_trainable_token"}), to which each reply's steps are added before
    `on_round`, as the sequential engine counts its own."""
    require_flower()
    from fedmom_cli.flower.strategy import FedmomStrategy
    from fedmom_cli.progress import quiet_if_asked

    quiet_if_asked()  # Flower is imported now: its coloured log prefix off too with --no-progress

    if isinstance(connection, BaseException):  # the deployment's nodes never all connected
        raise FlowerClientError(str(connection))
    strategy = FedmomStrategy(server, on_round, wait=wait, connection=connection, steps=steps)
    rounds = server.cfg.rounds - server.round

    def start(grid) -> None:
        if server.cfg.secagg:  # Flower's SecAgg+ workflow around the same strategy (secagg.py)
            from fedmom_cli.flower import secagg

            secagg.start(strategy, grid, rounds, max_weight=_max_weight(server, connection))
            return
        from flwr.app import ArrayRecord

        strategy.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=rounds)

    if grid is not None:
        start(grid)
    else:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray on 127.0.0.1 only
        from flwr.serverapp import ServerApp
        from flwr.simulation import run_simulation

        app = ServerApp()

        @app.main()
        def main(grid, context) -> None:
            start(grid)

        resources = client_resources or {"num_cpus": 1, "num_gpus": 0.0}
        run_simulation(
            server_app=app,
            client_app=client_app(),
            num_supernodes=server.cfg.clients,
            backend_config={"client_resources": resources},
        )
    if strategy.error is not None:
        raise FlowerClientError(strategy.error)
    if server.round < server.cfg.rounds:
        raise FlowerClientError(f"the Flower run stopped after {server.round} of {server.cfg.rounds} rounds")
