"""The server side of a federated run, one object for both engines (sequential and Flower).

`Server` holds what a federated server holds: the global factors, the frozen base weights with the
accumulated base delta, the aggregation method and its state, the clients' samplers and data sizes.
An engine trains clients however it likes and hands their results in as `ClientUpdate`s (Flower's
`FitRes` in fedmom's terms); `aggregate(round, updates)` returns a `RoundRecord`:

    updates = [ClientUpdate(k, factors, examples, loss, seconds) for k in clients]
    record = server.aggregate(t, updates, wall=start)   # aggregate, apply, validate, checkpoint
    record.to_json()                                     # the metrics.jsonl line
    record.deltas                                        # this round's base deltas, method's own form

`state_dict()` / `load_state_dict()` are the checkpoint's content (checkpoint.pt keeps the same
keys: round, config_hash, global, delta, method_state, samplers, + record and rng). The engines never
read each other's attributes: the sequential loop (simulate.py) and the Flower strategy
(flower/engine.py) both call this object only.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from fedmom_cli import config as cfgmod
from fedmom_cli import diagnostics, runfolder
from fedmom_cli.config import TrainConfig
from fedmom_cli.errors import UserError
from fedmom_cli.methods.base import BaseDelta, LoraFactors
from fedmom_cli.model import BaseWeights, set_factors, uses_separate_path
from fedmom_cli.participation import Participation

CHECKPOINT_KEYS = {"round", "config_hash", "global", "delta", "method_state", "samplers", "record", "rng"}


def lr_at(cfg: TrainConfig, round_idx: int) -> float:
    if cfg.lr_schedule == "cosine":  # OpenFedLLM's schedule across rounds
        return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * round_idx / cfg.rounds))
    return cfg.lr


def summarise(stats: dict[str, dict]) -> dict:
    """Mean (and max) over modules of every numeric per-module statistic."""
    out = {}
    keys = {k for s in stats.values() for k, v in s.items() if isinstance(v, (int, float))}
    for k in sorted(keys):
        values = [s[k] for s in stats.values() if isinstance(s.get(k), (int, float))]
        out[f"{k}_mean"] = float(np.mean(values))
        out[f"{k}_max"] = float(np.max(values))
    return out


def factor_norms(factors: dict[str, LoraFactors]) -> dict:
    """Scale of the global factors the clients start from: mean over modules of the mean row norm
    of A (r, in) and of the mean column norm of B (out, r). With a fresh AdamW per round, the size
    of a step on W = B A grows with these norms, so methods that re-split the factors (FedMomentum's
    balanced split) change the effective step size; the report can show it."""
    a = [f.A.float().norm(dim=1).mean().item() for f in factors.values()]
    b = [f.B.float().norm(dim=0).mean().item() for f in factors.values()]
    return {"A_row_norm_mean": float(np.mean(a)), "B_col_norm_mean": float(np.mean(b))}


@dataclass(frozen=True)
class ClientUpdate:
    """One client's result of a round: what it sends the server."""

    client: int
    factors: dict[str, LoraFactors]  # every LoRA module; factors it did not train are the global ones
    examples: int  # its number of training rows (the aggregation weight with client_weights=samples)
    loss: float | None  # mean training loss of its local steps that had a trainable token, or None
    seconds: dict[str, float] = field(default_factory=dict)  # client_compute, adapter_swap


@dataclass
class RoundRecord:
    """A round as the server saw it. The fields up to `seconds` are the metrics.jsonl line, in order;
    `updates` and `deltas` stay in memory (tests and engines read them, no file holds them)."""

    round: int
    lr: float
    loss: float
    client_loss: dict[str, float]
    val_loss: float | None
    clients: list[int]
    weights: list[float]  # normalised aggregation weights, over the clients that returned
    aggregation_seconds: float
    update_seconds: float
    bytes_up_per_client: int
    bytes_down_per_client: int
    stats: dict
    module_stats: dict
    factor_norms: dict
    seconds: dict
    sampled: list[int] = field(default_factory=list)  # asked to train; `clients` are those that returned
    dropped: list[int] = field(default_factory=list)  # sampled but failed to return
    late: list[int] = field(default_factory=list)  # of those, dropped by the round deadline
    steps: dict[str, int] = field(default_factory=dict)  # stragglers' partial steps, by client
    privacy: dict = field(default_factory=dict)  # DP runs: epsilon, epsilon_max, dp, client_epsilon
    updates: list[ClientUpdate] = field(default_factory=list, repr=False)
    deltas: dict[str, BaseDelta] = field(default_factory=dict, repr=False)  # the method's own form

    def to_json(self) -> dict:
        """The metrics.jsonl line; a DP run's privacy keys (privacy.Ledger.metrics) at top level."""
        skip = ("updates", "deltas", "privacy")
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        for key in ("late", "steps"):  # only in runs with a round deadline: earlier lines unchanged
            if not out[key]:
                del out[key]
        return {**out, **self.privacy}


class Server:
    """Global state of a run and the one place a round is aggregated (see the module docstring).

    `modules` are the live model's LoRA modules: the server keeps them at the global factors and the
    base weights at original + accumulated delta, so `validate()` (the held-out loss of the global
    model) and the final adapter see the global model.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: Path,
        method,
        modules: dict,
        global_factors: dict[str, LoraFactors],
        samplers: Sequence,
        sizes: Sequence[int],
        validate: Callable[[], float | None] = lambda: None,
        ledger=None,
    ) -> None:
        self.cfg, self.run_dir, self.method, self.modules = cfg, Path(run_dir), method, modules
        self.base = BaseWeights(modules, separate=uses_separate_path(cfg))
        self.global_factors = global_factors
        self.samplers = list(samplers)
        self.sizes = list(sizes)  # each client's rows in the run's partition
        self.validate = validate
        self.ledger = ledger  # privacy.Ledger when a DP key is set
        self.round = 0  # rounds completed

    # ---- what clients receive -------------------------------------------------------------------
    def client_start(
        self, k: int, global_factors: dict[str, LoraFactors] | None = None
    ) -> dict[str, LoraFactors]:
        """Client k's factors at the start of its round: the global ones, except that
        - with client_ranks, a rank-r_k client gets the first r_k components (HetLoRA's truncation;
          FedMomentum's and FlexLoRA's factors are ordered by singular value, so this is the best
          rank-r_k part) and zeros beyond: zero rows of A and columns of B get zero gradients and
          stay zero under AdamW, so the rank-r model is exactly a rank-r_k LoRA with the same scaling;
        - a method with per-client state (fedsa_lora) gives client k its own B."""
        factors = self.global_factors if global_factors is None else global_factors
        own = self.method.client_factors(k) if hasattr(self.method, "client_factors") else {}
        if own:  # empty until the method has aggregated a round
            factors = {m: LoraFactors(f.A, f.B.to(f.A.device)) for m, f in own.items()}
        if self.cfg.client_ranks is None:
            return factors
        r = self.cfg.client_ranks[k]
        out = {}
        for m, f in factors.items():
            A, B = f.A.clone(), f.B.clone()
            A[r:] = 0
            B[:, r:] = 0
            out[m] = LoraFactors(A, B)
        return out

    def base_delta(self) -> dict[str, BaseDelta]:
        """The accumulated base delta, dense, per module (what a node starting bare needs)."""
        return {m: BaseDelta(dense=d) for m, d in self.base.delta.items()}

    def load_base_delta(self, delta: dict[str, torch.Tensor]) -> None:
        """Replace the accumulated base delta and set the weights from it (a Flower node's own copy)."""
        self.base.load(self.modules, delta)

    def sampler_states(self) -> dict[int, dict]:
        return {k: s.state() for k, s in enumerate(self.samplers)}

    def load_sampler_state(self, k: int, state: dict) -> None:
        self.samplers[k].load(state)

    # ---- one round ------------------------------------------------------------------------------
    def aggregate(
        self,
        round_idx: int,
        updates: Sequence[ClientUpdate],
        wall: float,
        sent: tuple[int, int] | None = None,
        participation: Participation | None = None,
        secure: bool = False,
    ) -> RoundRecord:
        """Aggregate the clients' factors, apply the base delta, validate, log and checkpoint the round.

        `wall`: perf_counter() when the round started. `sent` = (bytes up, bytes down) per client as
        actually transmitted by an engine that transmits (Flower); otherwise the method's Appendix C
        accounting. `participation`: who was sampled and who dropped (participation.py); `updates`
        are the clients that returned, and the method sees only them, weights renormalised over them.
        No update at all (every sampled client dropped): `_unchanged`.
        `secure`: the updates came through secure aggregation, every client's factors are the
        clients' weighted mean (flower/secagg.py): the per-client diagnostics are not measured.
        """
        updates = sorted(updates, key=lambda u: u.client)
        clients = [u.client for u in updates]
        part = participation or Participation(clients, clients, [])
        if not updates:
            return self._unchanged(round_idx, wall, sent, part)
        seconds = {"client_compute": 0.0, "adapter_swap": 0.0}
        for u in updates:
            for key, value in u.seconds.items():
                seconds[key] += value
        sizes = [u.examples for u in updates]
        weights = sizes if self.cfg.client_weights == "samples" else [1.0] * len(clients)
        finals = {m: [u.factors[m] for u in updates] for m in self.modules}
        dp_stats, dp_noise = {}, None
        if self.cfg.client_dp:  # clip each update now; the noise goes on the average (below)
            finals, dp_noise, dp_stats = self._client_dp(round_idx, clients, finals)
        start = time.perf_counter()  # what each client started from, before the method moves on
        measured = [] if secure else diagnostics.pick_modules(list(self.modules), self.cfg.diagnostic_modules)
        diag_modules, diag = {}, {}
        if measured:
            starts_by_client = [self.client_start(k) for k in clients]
            diag_modules, diag = diagnostics.round_diagnostics(
                {m: finals[m] for m in measured},
                {m: [s[m] for s in starts_by_client] for m in measured},
                weights,
            )
            if len(measured) < len(self.modules):
                diag["diagnostic_modules"] = len(measured)  # pooled over these only
        seconds["diagnostics"] = time.perf_counter() - start
        start = time.perf_counter()
        extra = {"client_ids": clients} if hasattr(self.method, "client_factors") else {}
        if dp_noise is not None:  # the methods average linearly: noise on each = noise on the mean
            finals = {
                m: [LoraFactors(*(x + n.to(x) for x, n in zip((f.A, f.B), dp_noise[m]))) for f in fs]
                for m, fs in finals.items()
            }
        outcome = self.method.aggregate(finals, weights, round_idx, **extra)
        seconds["aggregation"] = time.perf_counter() - start
        for m, values in diag_modules.items():
            outcome.modules[m].stats.update(values)
        start = time.perf_counter()
        with_delta = [m for m, r in outcome.modules.items() if r.delta is not None]
        dtype = self.modules[next(iter(self.modules))].base_layer.weight.dtype
        measuring = 0.0  # a diagnostic, not part of the update: kept out of update_seconds
        for m in with_delta:
            dense = outcome.modules[m].delta.to_dense()
            t0 = time.perf_counter()
            lost = self.base.rounding_loss(m, dense, dtype)  # bf16/fp16 weights may not show it all
            measuring += time.perf_counter() - t0
            if lost is not None:
                outcome.modules[m].stats["delta_lost_to_rounding"] = lost
            self.base.add(m, dense)
        self.base.apply(self.modules, with_delta)
        self.global_factors = {
            m: LoraFactors(r.factors.A.float(), r.factors.B.float()) for m, r in outcome.modules.items()
        }
        set_factors(self.modules, self.global_factors)
        seconds["update"] = time.perf_counter() - start - measuring
        self.round = round_idx + 1
        stats = {m: r.stats for m, r in outcome.modules.items()}
        start = time.perf_counter()
        val_loss = self.validate()
        seconds["validation"] = time.perf_counter() - start
        losses = {u.client: u.loss for u in updates}
        privacy_metrics = {}
        if self.ledger is not None:
            self.ledger.record_round()
            privacy_metrics = self.ledger.metrics()
            if dp_stats:
                privacy_metrics.setdefault("dp", {}).update(dp_stats)
        record = RoundRecord(
            round=round_idx,
            lr=lr_at(self.cfg, round_idx),
            loss=_mean_loss([losses[k] for k in clients], weights),
            client_loss={str(k): losses[k] for k in clients},
            val_loss=val_loss,
            clients=clients,
            weights=[w / sum(weights) for w in weights],
            aggregation_seconds=seconds["aggregation"],
            update_seconds=seconds["update"],
            bytes_up_per_client=sent[0] if sent else outcome.bytes_up,
            bytes_down_per_client=sent[1] if sent else outcome.bytes_down,
            stats={**summarise(stats), **diag},
            module_stats=stats,
            factor_norms=factor_norms(self.global_factors),
            seconds=seconds,
            sampled=part.sampled,
            dropped=part.dropped,
            late=part.late,
            steps={str(k): n for k, n in part.steps.items()},
            privacy=privacy_metrics,
            updates=list(updates),
            deltas={m: outcome.modules[m].delta for m in with_delta},
        )
        return self._close(record, wall)

    def _close(self, record: RoundRecord, wall: float) -> RoundRecord:
        start = time.perf_counter()
        self.save_checkpoint(record.to_json())
        record.seconds["checkpoint"] = time.perf_counter() - start
        record.seconds["round"] = time.perf_counter() - wall
        return record

    def _unchanged(
        self, round_idx: int, wall: float, sent: tuple[int, int] | None, part: Participation
    ) -> RoundRecord:
        """A round in which no sampled client returned: the method is not called, so the global
        factors, the base weights and the method's state stay as they were (FedSA-LoRA's clients
        keep their B; RoLoRA's alternation follows the round index, so the next round trains the
        other factor all the same). The round counts (the learning-rate schedule and the seeds
        follow the round index); its record has no loss, no clients and no weights."""
        self.round = round_idx + 1
        start = time.perf_counter()
        val_loss = self.validate()
        record = RoundRecord(
            round=round_idx,
            lr=lr_at(self.cfg, round_idx),
            loss=None,
            client_loss={},
            val_loss=val_loss,
            clients=[],
            weights=[],
            aggregation_seconds=0.0,
            update_seconds=0.0,
            bytes_up_per_client=0,
            bytes_down_per_client=sent[1] if sent else 0,
            stats={},
            module_stats={},
            factor_norms=factor_norms(self.global_factors),
            seconds={"validation": time.perf_counter() - start},
            sampled=part.sampled,
            dropped=part.dropped,
            late=part.late,
            steps={str(k): n for k, n in part.steps.items()},
            privacy=self.ledger.metrics() if self.ledger is not None else {},  # nothing new spent
        )
        return self._close(record, wall)

    def _client_dp(self, round_idx: int, clients: list[int], finals: dict) -> tuple[dict, dict, dict]:
        """Client-level DP (privacy.py): each client's update of the factors it trained, all modules
        together, clipped to dp_client_clip; the noise N(0, (z C / m)^2) for the average, seeded by
        (seed, round). Returns the clipped finals, the noise per module (A, B) and statistics."""
        from fedmom_cli import privacy

        cfg = self.cfg
        trained = self.method.trainable(round_idx)
        keep = [x in trained for x in ("A", "B")]
        starts = [self.client_start(k) for k in clients]
        mods = list(finals)
        fin = [
            {m: tuple(t for t, on in zip((finals[m][i].A, finals[m][i].B), keep) if on) for m in mods}
            for i in range(len(clients))
        ]
        st = [{m: tuple(t for t, on in zip((s[m].A, s[m].B), keep) if on) for m in mods} for s in starts]
        clipped, norms = privacy.clip_updates(fin, st, cfg.dp_client_clip)
        out = {m: [] for m in mods}
        for i in range(len(clients)):
            for m in mods:
                parts = iter(clipped[i][m])
                f = finals[m][i]
                out[m].append(LoraFactors(*(next(parts) if on else t for t, on in zip((f.A, f.B), keep))))
        std = cfg.dp_client_noise_multiplier * cfg.dp_client_clip / len(clients)
        gen = privacy.generator(cfg.seed, round_idx, "client-dp")
        shapes = {
            m: tuple(
                t.shape if on else torch.Size([0]) for t, on in zip((finals[m][0].A, finals[m][0].B), keep)
            )
            for m in mods
        }
        noise = privacy.aggregate_noise(shapes, std, gen)
        noise = {m: tuple(n if on else torch.zeros(()) for n, on in zip(noise[m], keep)) for m in mods}
        stats = {"client_update_norms": norms, "client_clip": cfg.dp_client_clip, "client_noise_std": std}
        return out, noise, stats

    # ---- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything a resumed run needs of the server, CPU tensors (checkpoint.pt's first keys)."""
        return {
            "round": self.round,
            "config_hash": self.cfg.hash(),
            "global": {m: (f.A.cpu(), f.B.cpu()) for m, f in self.global_factors.items()},
            "delta": self.base.delta,
            "method_state": self.method.state_dict(),
            "samplers": [s.state() for s in self.samplers],
            **({"privacy": self.ledger.state_dict()} if self.ledger is not None else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["config_hash"] not in cfgmod.spelled_hashes(self.cfg):  # a default spelled out too
            raise UserError("the checkpoint was made with other settings; use --force to start over")
        device = next(iter(self.modules.values())).base_layer.weight.device
        self.global_factors = {
            m: LoraFactors(A.to(device), B.to(device)) for m, (A, B) in state["global"].items()
        }
        set_factors(self.modules, self.global_factors)
        self.base.delta = state["delta"]
        self.base.apply(self.modules)
        self.method.load_state_dict(state["method_state"])
        for s, sampler_state in zip(self.samplers, state["samplers"]):
            s.load(sampler_state)
        if self.ledger is not None:  # the accountant's history: epsilon is recomputed from it
            self.ledger.load_state_dict(state["privacy"])
        self.round = state["round"]

    def save_checkpoint(self, record: dict) -> None:
        """checkpoint.pt, atomically: the server's state, the round's record and the RNG states."""
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        runfolder.atomic_torch_save(
            self.run_dir / runfolder.CHECKPOINT, {**self.state_dict(), "record": record, "rng": rng}
        )

    def load_checkpoint(self) -> dict:
        """Restore the server and the RNG states from checkpoint.pt; the last round's record."""
        path = self.run_dir / runfolder.CHECKPOINT
        try:
            ckpt = torch.load(path, weights_only=False)
            if not isinstance(ckpt, dict) or not CHECKPOINT_KEYS <= set(ckpt):
                raise ValueError("not a fedmom checkpoint")
        except Exception as exc:  # noqa: BLE001 - truncated, garbage or foreign: the user's file
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0].split(". ")[0][:160]
            raise UserError(
                f"{path} cannot be read ({reason}); it was left as it is; --force starts over"
            ) from None
        self.load_state_dict(ckpt)
        torch.set_rng_state(ckpt["rng"]["torch"])
        np.random.set_state(ckpt["rng"]["numpy"])
        random.setstate(ckpt["rng"]["python"])
        return ckpt["record"]


def _mean_loss(losses: list[float | None], weights: list[float]) -> float | None:
    """The weighted mean over clients that computed a loss; None when none did (no 0.0 made up)."""
    pairs = [(x, w) for x, w in zip(losses, weights) if x is not None]
    if not pairs:
        return None
    return float(np.average([x for x, _ in pairs], weights=[w for _, w in pairs]))
