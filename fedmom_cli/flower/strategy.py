"""The ServerApp's strategy: Flower's `FedAvg` message plumbing around fedmom's `Server`.

Flower averages nothing: every reply becomes a `ClientUpdate` and `Server.aggregate` (server.py) does
the round exactly as in the sequential engine. Imports flwr at the top: only `flower/engine.run`
imports this module, after `require_flower`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable

from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from fedmom_cli import config as cfgmod
from fedmom_cli.flower.records import array_record, delta_arrays, flatten, nbytes, nest, tensors_of
from fedmom_cli.methods.base import BaseDelta, LoraFactors
from fedmom_cli.server import ClientUpdate, RoundRecord, Server


class FedmomStrategy(FedAvg):
    """All `server.cfg.clients` nodes train every round; the first failed or missing reply stops the
    run (`error`), since Flower itself would only log it."""

    def __init__(self, server: Server, on_round: Callable[[RoundRecord], None]) -> None:
        n = server.cfg.clients
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n)
        self.server, self.on_round, self.n = server, on_round, n
        self.start_round = server.round  # > 0 when resumed
        self.error: str | None = None
        self.pending: dict[str, BaseDelta] = {}  # the last round's base deltas, sent with the next
        self.sent_down = 0
        self.round_start = 0.0

    def configure_train(self, server_round, arrays, config, grid):
        if self.error is not None:
            return []
        server = self.server
        t = self.start_round + server_round - 1
        self.round_start = time.perf_counter()
        resumed = server_round == 1 and self.start_round > 0  # nodes start bare: send the whole delta
        delta = delta_arrays(server.base_delta() if resumed else self.pending)
        glob = flatten({m: {"A": f.A, "B": f.B} for m, f in server.global_factors.items()})
        self.sent_down = nbytes(glob) + nbytes(delta)
        content = RecordDict(
            {
                "global": array_record(glob),
                "delta": array_record(delta),
                "config": ConfigRecord(
                    {
                        "round": t,
                        "replace-delta": resumed,
                        "fedmom-config": cfgmod.to_yaml(server.cfg),
                        "samplers": json.dumps({str(k): s for k, s in server.sampler_states().items()}),
                    }
                ),
            }
        )
        nodes, _ = sample_nodes(grid, self.n, self.n)  # waits until all n nodes have connected
        train = MessageType.TRAIN
        return [Message(content=content, message_type=train, dst_node_id=node) for node in sorted(nodes)]

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        if self.error is not None:  # keep the first failure; later rounds send nothing
            return None, None
        failed = [m for m in replies if m.has_error()]
        if failed:
            self.error = (
                f"client on node {failed[0].metadata.src_node_id} failed: "
                + (failed[0].error.reason or f"error code {failed[0].error.code}").strip().splitlines()[-1]
            )
            return None, None
        if len(replies) != self.n:
            self.error = f"round {server_round}: {len(replies)} of {self.n} clients replied"
            return None, None
        server = self.server
        updates, sent_up = [], 0
        for msg in replies:
            metrics = msg.content["metrics"]
            k = int(metrics["partition-id"])
            up = tensors_of(msg.content["factors"])
            sent_up = max(sent_up, nbytes(up))
            parts = nest(up)
            factors = {  # what the client did not train (and so did not send) is the global factor
                m: LoraFactors(parts.get(m, {}).get("A", f.A).float(), parts.get(m, {}).get("B", f.B).float())
                for m, f in server.global_factors.items()
            }
            server.load_sampler_state(k, json.loads(str(msg.content["meta"]["sampler"])))
            seconds = {key: float(metrics[key]) for key in ("client_compute", "adapter_swap")}
            examples, loss = int(metrics["num-examples"]), float(metrics["loss"])
            loss = None if math.isnan(loss) else loss  # a client whose steps saw no trainable token
            updates.append(ClientUpdate(k, factors, examples, loss, seconds))
        t = self.start_round + server_round - 1
        record = server.aggregate(t, updates, self.round_start, sent=(sent_up, self.sent_down))
        self.pending = record.deltas
        self.on_round(record)
        return None, MetricRecord({"loss": float("nan") if record.loss is None else record.loss})

    def summary(self) -> None:
        pass
