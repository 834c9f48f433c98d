"""The ServerApp's strategy: Flower's `FedAvg` message plumbing around fedmom's `Server`.

Flower averages nothing: every reply becomes a `ClientUpdate` and `Server.aggregate` (server.py) does
the round exactly as in the sequential engine. Imports flwr at the top: only `flower/engine.run`
imports this module, after `require_flower`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedmom_cli import config as cfgmod
from fedmom_cli.flower.errors import FlowerClientError
from fedmom_cli.flower.records import array_record, delta_arrays, flatten, nbytes, nest, tensors_of
from fedmom_cli.methods.base import BaseDelta, LoraFactors
from fedmom_cli.participation import Participation, deadline_of, sample_round
from fedmom_cli.server import ClientUpdate, RoundRecord, Server


@dataclass(frozen=True)
class Connection:
    """The run's nodes, found once: partition id -> node id, and what each site trains on."""

    nodes: dict[int, int]
    sites: dict[int, dict]


def connect(grid, cfg, wait: float, answer_within: float | None = None) -> Connection:
    """Wait (at most `wait` s) for `cfg.clients` nodes, then ask each (a QUERY message carrying the
    run's settings, so that a site can load its data) for its partition id and data (site_info),
    waiting at most `answer_within` s (default max(wait, 60)) for the answers: a node answers once
    it has loaded its model and data, which on a busy machine takes minutes."""
    answer_within = max(wait, 60.0) if answer_within is None else answer_within
    n = cfg.clients
    deadline = time.monotonic() + wait
    while len(nodes := list(grid.get_node_ids())) < n:
        if time.monotonic() >= deadline:
            raise FlowerClientError(
                f"only {len(nodes)} of {n} SuperNodes connected after {wait:g} s "
                f"(the run needs one per client; --wait / run config `wait` sets how long to wait)"
            )
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    ask = ConfigRecord({"fedmom-config": cfgmod.to_yaml(cfg)})
    query = [
        Message(content=RecordDict({"config": ask}), message_type=MessageType.QUERY, dst_node_id=node)
        for node in sorted(nodes)
    ]
    found, sites = {}, {}
    for msg in grid.send_and_receive(query, timeout=answer_within):
        node = msg.metadata.src_node_id
        if msg.has_error():
            reason = (msg.error.reason or f"error code {msg.error.code}").strip().splitlines()[-1]
            raise FlowerClientError(f"node {node} did not say what it trains on: {reason}")
        info = json.loads(str(msg.content["site"]["json"]))
        pid = int(info["partition_id"])
        if not 0 <= pid < n:
            raise FlowerClientError(f"node {node} has partition-id {pid}; the run's clients are 0..{n - 1}")
        if pid in found:
            raise FlowerClientError(f"two nodes have partition-id {pid}")
        found[pid], sites[pid] = node, info
    missing = sorted(set(range(n)) - set(found))
    if missing:
        raise FlowerClientError(
            f"no node answered for partition(s) {missing} within {answer_within:g} s (a node loads "
            f"its model and data before it answers; on a busy machine give it longer with --wait / run "
            f"config `wait`)"
        )
    own = [pid for pid, info in sites.items() if info["data"] is not None]
    if own and len(own) != n:
        raise FlowerClientError(
            f"SuperNodes {sorted(own)} train on their own data= files and the others on partitions of "
            f"the run's dataset; give every SuperNode a data= file, or none"
        )
    return Connection(found, sites)


def site_settings(cfg, connection: Connection):
    """The run's settings as the sites train them: where every site gave its own file, `sites`
    records each (path, rows, sha256) and the server has no dataset of its own (data, synthetic
    and partition null), so config.yaml, partition.json and the config hash say what trained."""
    if not connection.sites or connection.sites[0]["data"] is None:
        return cfg
    sites = {
        str(pid): {k: v for k, v in info.items() if k != "partition_id"}
        for pid, info in connection.sites.items()
    }
    return dataclasses.replace(
        cfg,
        sites=dict(sorted(sites.items(), key=lambda kv: int(kv[0]))),
        data=None,
        synthetic=None,
        partition=None,
    )


def received_factors(server: Server, flat: dict) -> dict[str, LoraFactors]:
    """The factors a reply carries (`module|part` arrays), completed with the global factors for
    the parts the client did not train (and so did not send)."""
    parts = nest(flat)
    return {
        m: LoraFactors(parts.get(m, {}).get("A", f.A).float(), parts.get(m, {}).get("B", f.B).float())
        for m, f in server.global_factors.items()
    }


class FedmomStrategy(FedAvg):
    """Each round: the clients `participation.sample_round` draws (the sequential engine's draw),
    each on the node that reported its partition id; a sampled client drawn to drop is told so and
    answers with an error instead of training. The first failed or missing reply of any other
    client stops the run (`error`), since Flower itself would only log it.

    `wait`: seconds to wait for the run's `clients` nodes to connect before the first round; fewer
    after that is an error, not an endless wait (Flower's `sample_nodes` waits forever).
    """

    def __init__(
        self,
        server: Server,
        on_round: Callable[[RoundRecord], None],
        wait: float = 300.0,
        connection: Connection | None = None,
        steps: dict | None = None,
    ) -> None:
        n = server.cfg.clients
        # the run's local steps, counted from the replies (the clients train in other processes)
        self.steps = steps if steps is not None else {"total": 0, "with_trainable_token": 0}
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n)
        self.server, self.on_round, self.n, self.wait = server, on_round, n, wait
        self.start_round = server.round  # > 0 when resumed
        self.error: str | None = None
        self.pending: dict[str, BaseDelta] = {}  # the last round's base deltas, sent with the next
        self.nodes: dict[int, int] = connection.nodes if connection else {}  # partition id -> node
        self.synced: set[int] = set()  # partition ids whose node holds the base delta up to last round
        self.sent_down = 0
        self.round_start = 0.0
        self.part: Participation | None = None

    # ---- a round ----------------------------------------------------------------------------------
    def configure_train(self, server_round, arrays, config, grid):
        if self.error is not None:
            return []
        server, cfg = self.server, self.server.cfg
        t = self.start_round + server_round - 1
        self.round_start = time.perf_counter()
        if not self.nodes:
            try:
                # the simulation's nodes are its own Ray actors: they exist, and a slow answer is
                # a busy machine still loading the model in each of them, so the answer gets longer
                self.nodes = connect(grid, cfg, self.wait, answer_within=max(self.wait, 600.0)).nodes
            except FlowerClientError as exc:  # ends the strategy's loop now (no empty rounds)
                self.error = str(exc)
                raise
        self.part = sample_round(
            cfg.clients, cfg.clients_per_round, cfg.client_dropout, cfg.seed, t, deadline_of(cfg)
        )
        glob = flatten({m: {"A": f.A, "B": f.B} for m, f in server.global_factors.items()})
        settings = {
            "round": t,
            "fedmom-config": cfgmod.to_yaml(cfg),
            "samplers": json.dumps({str(k): s for k, s in server.sampler_states().items()}),
        }
        # A node that did not train last round missed that round's delta: it gets the whole of it.
        incremental = array_record(delta_arrays(self.pending))
        whole = None
        messages, self.sent_down = [], 0
        for k in self.part.sampled:
            behind = k not in self.synced
            if behind and whole is None:
                whole = array_record(delta_arrays(server.base_delta()))
            delta = whole if behind else incremental
            self.sent_down = max(self.sent_down, nbytes(glob) + nbytes(tensors_of(delta)))
            content = RecordDict(
                {
                    "global": array_record(glob),
                    "delta": delta,
                    "config": ConfigRecord(
                        {
                            **settings,
                            "replace-delta": behind,
                            "drop": k in self.part.dropped,
                            "steps": self.part.steps.get(k, cfg.local_steps),  # fewer: a straggler
                        }
                    ),
                }
            )
            messages.append(
                Message(content=content, message_type=MessageType.TRAIN, dst_node_id=self.nodes[k])
            )
        return messages

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        if self.error is not None:  # keep the first failure; later rounds send nothing
            return None, None
        part, pid_of = self.part, {node: k for k, node in self.nodes.items()}
        expected_drops = {self.nodes[k] for k in part.dropped}
        failed = [m for m in replies if m.has_error() and m.metadata.src_node_id not in expected_drops]
        if failed:
            self.error = (
                f"client on node {failed[0].metadata.src_node_id} failed: "
                + (failed[0].error.reason or f"error code {failed[0].error.code}").strip().splitlines()[-1]
            )
            return None, None
        answered = [m for m in replies if not m.has_error()]
        if sorted(pid_of.get(m.metadata.src_node_id, -1) for m in answered) != part.returned:
            self.error = f"round {server_round}: {len(answered)} of {len(part.returned)} clients replied"
            return None, None
        server = self.server
        updates, sent_up = [], 0
        for msg in answered:
            metrics = msg.content["metrics"]
            k = int(metrics["partition-id"])
            up = tensors_of(msg.content["factors"])
            sent_up = max(sent_up, nbytes(up))
            factors = received_factors(server, up)
            server.load_sampler_state(k, json.loads(str(msg.content["meta"]["sampler"])))
            seconds = {key: float(metrics[key]) for key in ("client_compute", "adapter_swap")}
            examples, loss = int(metrics["num-examples"]), float(metrics["loss"])
            loss = None if math.isnan(loss) else loss  # a client whose steps saw no trainable token
            updates.append(ClientUpdate(k, factors, examples, loss, seconds))
            if (error := self.count_steps(metrics, k)) is not None:
                self.error = error
                return None, None
        record = self.finish(server_round, updates, (sent_up, self.sent_down))
        return None, MetricRecord({"loss": float("nan") if record.loss is None else record.loss})

    def count_steps(self, metrics, k: int) -> str | None:
        """Add client `k`'s reply's local steps to the run's tally (result.json `steps`); the run's
        error when the reply has none (a node with an older fedmom than the server's: there is
        no version handshake, so this is where a mixed deployment shows)."""
        if "steps" not in metrics or "steps-with-token" not in metrics:
            return (
                f"client {k}'s reply has no local-step count: its SuperNode runs an older fedmom than "
                f"the server's; every SuperNode needs the server's fedmom version"
            )
        self.steps["total"] += int(metrics["steps"])
        self.steps["with_trainable_token"] += int(metrics["steps-with-token"])
        return None

    def finish(self, server_round: int, updates: list[ClientUpdate], sent: tuple[int, int], secure=False):
        """The round's aggregate (`Server.aggregate`, as the sequential engine), the deltas to send
        with the next round, and the run's round callback. `secure`: see Server.aggregate."""
        part = self.part
        t = self.start_round + server_round - 1
        record = self.server.aggregate(
            t, updates, self.round_start, sent=sent, participation=part, secure=secure
        )
        self.pending = record.deltas
        self.synced = set(part.returned)  # they applied everything up to this round's delta
        self.on_round(record)
        return record

    def summary(self) -> None:
        pass
