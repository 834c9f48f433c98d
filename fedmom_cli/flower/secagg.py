"""`fedmom train --engine flower --secagg`: Flower's SecAgg+ between the clients and fedmom's server.

Flower's SecAgg+ (`SecAggPlusWorkflow` on the server, `secaggplus_mod` on the clients, flwr 1.41)
is written for Flower's legacy strategy API: the workflow runs inside `DefaultWorkflow` with a
`LegacyContext`, asks a legacy `Strategy` for each client's `FitIns`, and hands the strategy's
`aggregate_fit` one `FitRes` per client whose parameters are all the same vector: the clients'
weighted mean (weight `num_examples`), unmasked from the masked sum. fedmom's own Flower engine
(strategy.py) speaks the newer Message API, so this module adapts in both directions:

- Server: `LegacyStrategy.configure_fit` takes the messages `FedmomStrategy.configure_train` would
  send (the same clients, global factors, base delta and settings) and carries each as a `FitIns`:
  the arrays in `parameters`, their names in the config key `keys`. `aggregate_fit` gives every
  client's `ClientUpdate` the mean factors (the only factors the server sees) with the client's own
  example count, loss and sampler state (plaintext metrics, as in any Flower run), and calls
  `FedmomStrategy.finish`: `Server.aggregate` as in the other engines, with `secure=True` (no
  per-client diagnostics). For the methods that run under SecAgg+ (secagg_rules.py) the server
  needs nothing but weighted means, so the aggregate of n copies of the mean is the aggregate of the
  n clients, up to SecAgg+'s quantization (below).
- Client: `client_mod` hands SecAgg+ messages to `secaggplus_mod` and everything else through; the
  node's train handler (engine.py) reads a legacy `FitIns` (`unpack_fitins`), trains exactly as in
  the plain engine and answers a `FitRes` (`fitres_message`) with the trained factors in a fixed
  order (the sorted `module|part` names), weight `num_examples` = the client's rows (1 for
  `client_weights: uniform`), which secaggplus_mod masks before anything leaves the node.

Quantization (what SecAgg+ changes, and the bound the tests check): each client multiplies its
vector by its weight ratio w_k = num_examples / max_weight (rounded to a multiple of 1/2**22; fedmom
sets max_weight to the largest client's rows, so every w_k is in (0, 1]), clips to +-CLIP and rounds
stochastically to 2**22 levels over [-CLIP, CLIP]: each entry moves by less than one step
q = 2 CLIP / 2**22 (3.8e-6 for CLIP 8). The server divides the sum by sum_k w_k, so each entry of the
mean is within n q / sum_k w_k of the exact weighted mean of the clients' vectors (with the rounded
weights). A client whose factors leave [-CLIP, CLIP] would be clipped silently by secaggplus_mod:
the client reports its largest |entry| and the run fails instead (`max-abs` below).
The rounding draws from numpy's global generator, unseeded: a SecAgg+ run is not bit-reproducible
(it is within the bound of the plain run, which is).

Communication: `CountingGrid` counts the payload bytes (arrays, config and metric values) of every
message to and from each node in each round, SecAgg+'s four stages included (keys, encrypted shares,
masked vectors as int arrays, unmasking shares); metrics.jsonl's bytes_up/down_per_client are the
largest client's. The plain Flower engine counts only the arrays it sends.

Clients per round (config.py refuses the others): at least 2 (SecAggPlusWorkflow cancels a round
of one: "The number of samples should be greater than 1", and the run would stop after its Ray
start with "stopped after 0 of N rounds"), at most secagg_rules.MAX_CLIENTS = 1023 (each client adds
up to 2**22 per entry to a sum taken modulo 2**32: 1024 equal clients' weights wrap to 0).

Not wired: client_dropout (SecAgg+ can recover a dropped client's masks, but fedmom's dropout is an
error reply before the masked stage), heterogeneous ranks (one vector shape), any DP (client-level
DP clips each update at the server). config.py refuses them.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from fedmom_cli.flower.secagg_rules import CLIP, MODULUS, QUANTIZATION
from fedmom_cli.server import ClientUpdate


def quantization_bound(n: int, ratios: list[float]) -> float:
    """The largest error of an entry of the unmasked mean: n steps over the sum of weight ratios."""
    return n * (2 * CLIP / QUANTIZATION) / sum(ratios)


# ---- client ----------------------------------------------------------------------------------------


def client_mod(msg, ctxt, call_next):
    """secaggplus_mod for SecAgg+'s messages; every other message (the plain engine's, QUERY) as is."""
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def is_fitins(msg) -> bool:
    return "fitins.config" in msg.content.config_records


def unpack_fitins(msg) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(settings, global factor arrays, base delta arrays) of a legacy FitIns from `LegacyStrategy`."""
    from flwr.common import parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    config = dict(fitins.config)
    parts: dict[str, dict[str, torch.Tensor]] = {"global": {}, "delta": {}}
    for (kind, key), array in zip(json.loads(str(config["keys"])), parameters_to_ndarrays(fitins.parameters)):
        parts[kind][key] = torch.from_numpy(np.array(array, copy=True))
    return config, parts["global"], parts["delta"]


def fitres_message(msg, up: dict[str, torch.Tensor], weight: int, metrics: dict):
    """The reply secaggplus_mod masks: the trained factors in sorted-name order, `weight` for the
    weighted mean, and the client's largest |entry| (the server fails the run above CLIP)."""
    from flwr.app import Message
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat

    arrays = [up[k].detach().cpu().float().numpy() for k in sorted(up)]
    top = max((float(np.abs(a).max()) for a in arrays if a.size), default=0.0)
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), weight, {**metrics, "max-abs": top})
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)


# ---- server ----------------------------------------------------------------------------------------


def payload_bytes(content) -> int:
    """The bytes a message carries: array data, and config / metric values (bytes and strings by
    length, numbers as 8), without Flower's framing."""
    total = sum(len(a.data) for rec in content.array_records.values() for a in rec.values())
    for rec in list(content.config_records.values()) + list(content.metric_records.values()):
        for value in rec.values():
            for v in value if isinstance(value, list) else [value]:
                total += len(v) if isinstance(v, bytes) else len(v.encode()) if isinstance(v, str) else 8
    return total


class CountingGrid:
    """A grid that counts each node's bytes down (messages sent to it) and up (its replies)."""

    def __init__(self, grid) -> None:
        self._grid = grid
        self.down: dict[int, int] = {}
        self.up: dict[int, int] = {}

    def reset(self) -> None:
        self.down, self.up = {}, {}

    def send_and_receive(self, messages, *args, **kwargs):
        messages = list(messages)
        for m in messages:
            node = m.metadata.dst_node_id
            self.down[node] = self.down.get(node, 0) + payload_bytes(m.content)
        replies = list(self._grid.send_and_receive(messages, *args, **kwargs))
        for r in replies:
            if not r.has_error():
                node = r.metadata.src_node_id
                self.up[node] = self.up.get(node, 0) + payload_bytes(r.content)
        return replies

    def __getattr__(self, name):
        return getattr(self._grid, name)


def _proxies(client_manager, nodes: list[int], wait: float) -> dict:
    """node id -> Flower's ClientProxy, waiting (at most `wait` s) for the client manager's thread
    to register every node the round sends to."""
    import time

    deadline = time.monotonic() + wait
    while True:
        proxies = {p.node_id: p for p in client_manager.all().values()}
        if set(nodes) <= set(proxies) or time.monotonic() >= deadline:
            return proxies
        time.sleep(0.2)


def _first_reason(failures: list) -> str:
    """': <the last line of the first failed client's error>' (SecAgg+ keeps each failed reply as
    Exception(msg.error)), so that a client's own message (its factors not finite: a lower lr) is
    not lost as it was ('got 2 of 3 clients (1 failed)'); '' when there is none."""
    for exc in failures:
        error = exc.args[0] if isinstance(exc, Exception) and exc.args else exc
        reason = str(getattr(error, "reason", "") or "").strip()
        if reason:
            return ": " + reason.splitlines()[-1]
    return ""


def legacy_strategy(core, grid: CountingGrid):
    """A Flower legacy `Strategy` over `core` (a FedmomStrategy): see the module docstring."""
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import Strategy

    from fedmom_cli.flower.records import tensors_of
    from fedmom_cli.flower.strategy import received_factors

    class LegacyStrategy(Strategy):
        def initialize_parameters(self, client_manager):
            return ndarrays_to_parameters([])  # the global factors travel in each round's FitIns

        def configure_fit(self, server_round, parameters, client_manager):
            from flwr.common import FitIns

            messages = core.configure_train(server_round, None, None, grid)
            grid.reset()  # the round's bytes: not the first round's QUERY for the partition ids
            proxies = _proxies(client_manager, [m.metadata.dst_node_id for m in messages], core.wait)
            out = []
            for msg in messages:
                config, keys, arrays = dict(msg.content["config"]), [], []
                for kind in ("global", "delta"):
                    for key, t in tensors_of(msg.content.array_records.get(kind)).items():
                        keys.append([kind, key])
                        arrays.append(t.detach().cpu().float().numpy())
                config["keys"] = json.dumps(keys)
                node = msg.metadata.dst_node_id
                if node not in proxies:
                    core.error = f"node {node} is not registered with Flower's client manager"
                    return []
                out.append((proxies[node], FitIns(ndarrays_to_parameters(arrays), config)))
            return out

        def aggregate_fit(self, server_round, results, failures):
            if core.error is not None:
                return None, {}
            if failures or len(results) != len(core.part.returned):
                core.error = (
                    f"round {server_round}: secure aggregation got {len(results)} of "
                    f"{len(core.part.returned)} clients ({len(failures)} failed{_first_reason(failures)})"
                )
                return None, {}
            server = core.server
            t = core.start_round + server_round - 1
            trained = sorted(server.method.trainable(t))
            names = sorted(f"{m}|{x}" for m in server.global_factors for x in trained)
            mean_arrays = parameters_to_ndarrays(results[0][1].parameters)
            mean = {k: torch.from_numpy(np.array(a, copy=True)) for k, a in zip(names, mean_arrays)}
            factors = received_factors(server, mean)
            updates = []
            for _, res in results:
                m = res.metrics
                if float(m["max-abs"]) > CLIP:
                    core.error = (
                        f"client {int(m['partition-id'])}'s factors reach |x| = {float(m['max-abs']):.3g}, "
                        f"outside SecAgg+'s clipping range +-{CLIP:g} (it would clip them silently)"
                    )
                    return None, {}
                k = int(m["partition-id"])
                server.load_sampler_state(k, json.loads(str(m["sampler"])))
                seconds = {key: float(m[key]) for key in ("client_compute", "adapter_swap")}
                loss = float(m["loss"])
                loss = None if np.isnan(loss) else loss
                updates.append(ClientUpdate(k, factors, int(m["num-examples"]), loss, seconds))
                if (error := core.count_steps(m, k)) is not None:
                    core.error = error
                    return None, {}
            sent = (max(grid.up.values(), default=0), max(grid.down.values(), default=0))
            core.finish(server_round, updates, sent, secure=True)
            return None, {}

        def configure_evaluate(self, server_round, parameters, client_manager):
            return []

        def aggregate_evaluate(self, server_round, results, failures):
            return None, {}

        def evaluate(self, server_round, parameters):
            return None

    return LegacyStrategy()


def start(core, grid, rounds: int, max_weight: float) -> None:
    """`rounds` rounds of `core` (a FedmomStrategy) under SecAgg+ on `grid`."""
    from flwr.app import Context, RecordDict
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    counting = CountingGrid(grid)
    context = LegacyContext(
        Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
        config=ServerConfig(num_rounds=rounds),
        strategy=legacy_strategy(core, counting),
    )
    workflow = DefaultWorkflow(
        fit_workflow=SecAggPlusWorkflow(
            num_shares=1.0,  # every sampled client holds a share of every other's key
            reconstruction_threshold=0.5,
            max_weight=max_weight,
            clipping_range=CLIP,
            quantization_range=QUANTIZATION,
            modulus_range=MODULUS,
        )
    )
    workflow(counting, context)
