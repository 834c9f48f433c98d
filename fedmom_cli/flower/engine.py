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
- Messages: a flat ArrayRecord per message, keys `<module>|<part>` (`flatten` / `nest`), parts
  A, B (factors) and dense or up, down (`BaseDelta.to_arrays`).
- Flower swallows ClientApp exceptions: failed or missing replies stop the run with the client's
  error. In simulation Ray stays on 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before Ray starts).
- Determinism: client seeds and data order are the sequential engine's, so the final adapter and
  base delta agree with it to float tolerance (Ray actors compute with 1 thread).
- Fault injection for testing failure handling: FEDMOM_FAULT_CLIENT=<partition-id> makes that
  client raise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from fedmom_cli import config as cfgmod
from fedmom_cli.errors import UserError
from fedmom_cli.methods.base import BaseDelta, LoraFactors

INSTALL_HINT = 'the Flower engine needs Flower: pip install "fedmom[flower]" (flwr[simulation]==1.41.0)'
_SIMULATIONS: dict[str, object] = {}  # per Ray worker process: one loaded Simulation per config


class FlowerClientError(UserError):
    """A client failed (or did not reply) in a Flower round."""


def require_flower() -> None:
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise UserError(INSTALL_HINT) from None


def nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def array_record(tensors: dict[str, torch.Tensor]):
    from flwr.app import ArrayRecord

    return ArrayRecord(torch_state_dict={k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def tensors_of(record) -> dict[str, torch.Tensor]:
    return dict(record.to_torch_state_dict()) if record is not None and len(record) else {}


def flatten(nested: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """{module: {part: tensor}} -> {"module|part": tensor}, the keys of a message's ArrayRecord."""
    return {f"{m}|{part}": t for m, parts in nested.items() for part, t in parts.items()}


def nest(flat: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in flat.items():
        module, part = key.rsplit("|", 1)
        out.setdefault(module, {})[part] = t
    return out


def delta_arrays(deltas: dict[str, BaseDelta]) -> dict[str, torch.Tensor]:
    """A round's base deltas in the form the method allows: low-rank factors, or dense."""
    return flatten({m: d.to_arrays() for m, d in deltas.items()})


def dense_deltas(arrays: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        m: BaseDelta.from_arrays({k: t.float() for k, t in parts.items()}).to_dense()
        for m, parts in nest(arrays).items()
    }


# ---- client ----------------------------------------------------------------------------------------


def _client_simulation(cfg_yaml: str, site_data: str | None):
    """The node's model and data, loaded once per worker process.

    With `site_data` (a deployed site's own file, from its node config) the node trains on all of
    its rows; otherwise on partition `partition-id` of the run's dataset.
    """
    import dataclasses

    from fedmom_cli.simulate import Simulation

    key = f"{cfg_yaml}\n{site_data}"
    if key not in _SIMULATIONS:
        cfg = cfgmod.from_yaml(cfg_yaml)
        if site_data is not None:
            cfg = dataclasses.replace(
                cfg,
                data=site_data,
                synthetic=None,
                partition=None,
                clients=1,
                min_client_size=1,
                val_rows=0,
                partitioner=None,  # a site's file is its one client, whatever split the run names
                label_field=None,
                client_field=None,
                partitioner_options=None,
            )
        _SIMULATIONS[key] = Simulation(cfg, Path(os.devnull))
    return _SIMULATIONS[key]


def client_app():
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg: Message, context) -> Message:
        from fedmom_cli.progress import quiet_if_asked

        quiet_if_asked()  # --no-progress reaches the clients' processes through the environment
        config = msg.content["config"]
        pid = int(context.node_config["partition-id"])
        if os.environ.get("FEDMOM_FAULT_CLIENT") == str(pid):
            raise RuntimeError(f"injected fault in client {pid}")
        site_data = context.node_config.get("data")
        sim = _client_simulation(str(config["fedmom-config"]), str(site_data) if site_data else None)
        server = sim.server  # the node's own mirror of the server's state
        round_idx = int(config["round"])
        # The node's own copy of the backbone: accumulated delta, kept across rounds on the node.
        acc = {} if config["replace-delta"] else tensors_of(context.state.array_records.get("delta"))
        for module, d in dense_deltas(tensors_of(msg.content.array_records.get("delta"))).items():
            acc[module] = acc[module] + d if module in acc else d
        context.state["delta"] = ArrayRecord(torch_state_dict=acc) if acc else ArrayRecord()
        server.load_base_delta(acc)
        glob = nest(tensors_of(msg.content["global"]))
        start = {m: LoraFactors(glob[m]["A"], glob[m]["B"]) for m in sim.modules}
        k = 0 if site_data else pid
        server.load_sampler_state(k, json.loads(str(config["samplers"]))[str(pid)])
        sampler = server.samplers[k]
        update = sim.train_one(round_idx, pid, sampler, global_factors=start)
        trained = sorted(server.method.trainable(round_idx))
        up = flatten({m: {x: getattr(f, x) for x in trained} for m, f in update.factors.items()})
        reply = RecordDict(
            {
                "factors": array_record(up),
                "metrics": MetricRecord(
                    {
                        "num-examples": update.examples,
                        "loss": float("nan") if update.loss is None else update.loss,  # None: no token
                        "partition-id": pid,
                        **update.seconds,
                    }
                ),
                "meta": ConfigRecord({"sampler": json.dumps(sampler.state())}),
            }
        )
        return Message(reply, reply_to=msg)

    return app


# ---- server ----------------------------------------------------------------------------------------


def run(server, on_round, grid=None, client_resources: dict | None = None) -> None:
    """The remaining rounds of `server` (a server.Server) on `grid` (a deployment's ServerApp) or in
    a local Flower simulation; `on_round(record)` after each."""
    require_flower()
    from fedmom_cli.flower.strategy import FedmomStrategy
    from fedmom_cli.progress import quiet_if_asked

    quiet_if_asked()  # Flower is imported now: its coloured log prefix off too with --no-progress

    strategy = FedmomStrategy(server, on_round)
    rounds = server.cfg.rounds - server.round

    def start(grid) -> None:
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
