"""`fedmom train --engine flower`: the same methods and local training as a Flower app (flwr 1.41).

    pip install "fedmom[flower]"
    fedmom train --method fedmomentum --recipe smoke --engine flower

- ServerApp: a `FedAvg` subclass whose `configure_train` sends each node the global factors, this
  round's base delta in the method's own form (FLoRA's stacked factors and FedMomentum's residual
  factors low-rank, FedEx-LoRA's residual dense) and the run's settings, and whose
  `aggregate_train` hands every client's factors, unaveraged, to the fedmom method (Flower averages
  nothing). Method state, checkpoints and metrics live in the server's `Simulation`, exactly as in the
  sequential engine; the bytes logged are those of the arrays actually put in the messages.
- ClientApp: its node's partition (`partition-id`) trained by the same `Simulation.train_one`;
  the node keeps its own copy of the accumulated base delta in `context.state`.
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
import time
from pathlib import Path

import torch

from fedmom_cli import config as cfgmod
from fedmom_cli.errors import UserError
from fedmom_cli.methods import LoraFactors

INSTALL_HINT = 'the Flower engine needs Flower: pip install "fedmom[flower]" (flwr[simulation]==1.41.0)'
_SIMULATIONS: dict[str, object] = {}  # per Ray worker process: one loaded Simulation per config


class FlowerClientError(UserError):
    """A client failed (or did not reply) in a Flower round."""


def require_flower() -> None:
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise UserError(INSTALL_HINT) from None


def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _array_record(tensors: dict[str, torch.Tensor]):
    from flwr.app import ArrayRecord

    return ArrayRecord(torch_state_dict={k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def _tensors(record) -> dict[str, torch.Tensor]:
    return dict(record.to_torch_state_dict()) if record is not None and len(record) else {}


def delta_arrays(outcome) -> dict[str, torch.Tensor]:
    """A round's base deltas in the form the method allows: low-rank factors, or dense."""
    out = {}
    for m, r in outcome.modules.items():
        if r.delta is None:
            continue
        if r.delta.dense is not None:
            out[f"{m}|dense"] = r.delta.dense
        else:
            out[f"{m}|up"], out[f"{m}|down"] = r.delta.scaling * r.delta.up, r.delta.down
    return out


def dense_deltas(arrays: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, t in arrays.items():
        module, kind = key.rsplit("|", 1)
        if kind == "dense":
            out[module] = t.float()
        elif kind == "up":
            out[module] = t.float() @ arrays[f"{module}|down"].float()
    return out


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
                cfg, data=site_data, synthetic=None, partition=None, clients=1, min_client_size=1, val_rows=0
            )
        _SIMULATIONS[key] = Simulation(cfg, Path(os.devnull))
    return _SIMULATIONS[key]


def client_app():
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg: Message, context) -> Message:
        config = msg.content["config"]
        pid = int(context.node_config["partition-id"])
        if os.environ.get("FEDMOM_FAULT_CLIENT") == str(pid):
            raise RuntimeError(f"injected fault in client {pid}")
        site_data = context.node_config.get("data")
        sim = _client_simulation(str(config["fedmom-config"]), str(site_data) if site_data else None)
        round_idx = int(config["round"])
        # The node's own copy of the backbone: accumulated delta, kept across rounds on the node.
        acc = {} if config["replace-delta"] else _tensors(context.state.array_records.get("delta"))
        for module, d in dense_deltas(_tensors(msg.content.array_records.get("delta"))).items():
            acc[module] = acc[module] + d if module in acc else d
        context.state["delta"] = ArrayRecord(torch_state_dict=acc) if acc else ArrayRecord()
        sim.base.load(sim.modules, acc)
        glob = _tensors(msg.content["global"])
        sim.global_factors = {m: LoraFactors(glob[f"{m}|A"], glob[f"{m}|B"]) for m in sim.modules}
        sampler = sim.samplers[0 if site_data else pid]
        sampler.load(json.loads(str(config["samplers"]))[str(pid)])
        factors, loss, spent = sim.train_one(round_idx, pid, sampler)
        trained = sorted(sim.method.trainable(round_idx))
        up = {f"{m}|{x}": getattr(f, x) for m, f in factors.items() for x in trained}
        reply = RecordDict(
            {
                "factors": _array_record(up),
                "metrics": MetricRecord(
                    {
                        "num-examples": len(sampler.rows),
                        "loss": loss,
                        "partition-id": pid,
                        **spent,
                    }
                ),
                "meta": ConfigRecord({"sampler": json.dumps(sampler.state())}),
            }
        )
        return Message(reply, reply_to=msg)

    return app


# ---- server ----------------------------------------------------------------------------------------


def make_strategy(sim, start_round: int, on_round):
    from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
    from flwr.serverapp.strategy import FedAvg
    from flwr.serverapp.strategy.strategy_utils import sample_nodes

    n = sim.cfg.clients

    class FedmomStrategy(FedAvg):
        def __init__(self) -> None:
            super().__init__(
                fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n
            )
            self.error: str | None = None
            self.pending: dict[str, torch.Tensor] = {}
            self.sent_down = 0

        def configure_train(self, server_round, arrays, config, grid):
            if self.error is not None:
                return []
            t = start_round + server_round - 1
            self.round_start = time.perf_counter()
            resumed = server_round == 1 and start_round > 0  # nodes start bare: send the whole delta
            delta = {f"{m}|dense": d for m, d in sim.base.delta.items()} if resumed else self.pending
            glob = {f"{m}|{x}": getattr(f, x) for m, f in sim.global_factors.items() for x in ("A", "B")}
            self.sent_down = _nbytes(glob) + _nbytes(delta)
            content = RecordDict(
                {
                    "global": _array_record(glob),
                    "delta": _array_record(delta),
                    "config": ConfigRecord(
                        {
                            "round": t,
                            "replace-delta": resumed,
                            "fedmom-config": cfgmod.to_yaml(sim.cfg),
                            "samplers": json.dumps({str(k): s.state() for k, s in enumerate(sim.samplers)}),
                        }
                    ),
                }
            )
            nodes, _ = sample_nodes(grid, n, n)  # waits until all n nodes have connected
            nodes = sorted(nodes)
            return [
                Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node) for node in nodes
            ]

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            if self.error is not None:  # keep the first failure; later rounds send nothing
                return None, None
            failed = [m for m in replies if m.has_error()]
            if failed:
                self.error = (
                    f"client on node {failed[0].metadata.src_node_id} failed: "
                    + (failed[0].error.reason or f"error code {failed[0].error.code}")
                    .strip()
                    .splitlines()[-1]
                )
                return None, None
            if len(replies) != n:
                self.error = f"round {server_round}: {len(replies)} of {n} clients replied"
                return None, None
            t = start_round + server_round - 1
            trained, losses, sizes, sent_up = {}, {}, {}, 0
            seconds = {"client_compute": 0.0, "adapter_swap": 0.0}
            for msg in replies:
                metrics = msg.content["metrics"]
                k = int(metrics["partition-id"])
                up = _tensors(msg.content["factors"])
                sent_up = max(sent_up, _nbytes(up))
                trained[k] = {
                    m: LoraFactors(up.get(f"{m}|A", f.A).float(), up.get(f"{m}|B", f.B).float())
                    for m, f in sim.global_factors.items()
                }
                losses[k] = float(metrics["loss"])
                sizes[k] = int(metrics["num-examples"])
                sim.samplers[k].load(json.loads(str(msg.content["meta"]["sampler"])))
                seconds["client_compute"] += float(metrics["client_compute"])
                seconds["adapter_swap"] += float(metrics["adapter_swap"])
            clients = sorted(trained)
            record = sim.aggregate_round(
                t,
                clients,
                trained,
                losses,
                seconds,
                self.round_start,
                sent=(sent_up, self.sent_down),
                sizes=sizes,
            )
            self.pending = delta_arrays(sim.last_outcome)
            on_round(record)
            return None, MetricRecord({"loss": record["loss"]})

        def summary(self) -> None:
            pass

    return FedmomStrategy()


def run(sim, start_round: int, on_round, grid=None, client_resources: dict | None = None) -> None:
    """The remaining rounds on `grid` (a deployment's ServerApp) or in a local Flower simulation."""
    require_flower()
    strategy = make_strategy(sim, start_round, on_round)

    def start(grid) -> None:
        from flwr.app import ArrayRecord

        strategy.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=sim.cfg.rounds - start_round)

    if grid is not None:
        start(grid)
    else:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray on 127.0.0.1 only
        from flwr.serverapp import ServerApp
        from flwr.simulation import run_simulation

        server = ServerApp()

        @server.main()
        def main(grid, context) -> None:
            start(grid)

        resources = client_resources or {"num_cpus": 1, "num_gpus": 0.0}
        run_simulation(
            server_app=server,
            client_app=client_app(),
            num_supernodes=sim.cfg.clients,
            backend_config={"client_resources": resources},
        )
    if strategy.error is not None:
        raise FlowerClientError(strategy.error)
    if sim.round < sim.cfg.rounds:
        raise FlowerClientError(f"the Flower run stopped after {sim.round} of {sim.cfg.rounds} rounds")
