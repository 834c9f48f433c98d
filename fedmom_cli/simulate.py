"""`fedmom train`: sequential federated simulation of every client on one device, resumable.

One model in memory. Each round, for each sampled client: load the global factors, make trainable
exactly what the method trains, train with a fresh AdamW, keep a float32 clone of the factors.
Then aggregate with the method, add the base delta to the frozen weights, load the new global
factors, log a metrics line and write a checkpoint atomically.

Determinism: all randomness of a client's round (dropout) is seeded from (seed, round, client) and
the data order from (seed, client, epoch), so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import math
import random
import shutil
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from fedmom_cli import results
from fedmom_cli.adapters import delta_key
from fedmom_cli.client import Sampler, collate, train_client
from fedmom_cli.config import TrainConfig
from fedmom_cli.data import load_rows
from fedmom_cli.errors import UserError
from fedmom_cli.methods import LoraFactors, LoraSpec, build_method, method_options
from fedmom_cli.model import (
    BaseWeights,
    attach_lora,
    check_model_source,
    get_factors,
    load_base_model,
    load_tokenizer,
    lora_modules,
    set_factors,
    set_trainable,
    uses_separate_path,
)
from fedmom_cli.partition import check_partition, make_partition
from fedmom_cli.tasks import IGNORE_INDEX, encode, get_task

CHECKPOINT = "checkpoint.pt"
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


class Simulation:
    def __init__(self, cfg: TrainConfig, run_dir: Path) -> None:
        from accelerate import Accelerator

        self.cfg, self.run_dir = cfg, run_dir
        check_model_source(cfg)
        self.task = get_task(cfg.task)
        self.rows = load_rows(self.task, Path(cfg.data) if cfg.data else None, cfg.synthetic, seed=cfg.seed)
        self.partition = self._partition()
        self.tokenizer = load_tokenizer(cfg)
        self._check_cutoff()
        use_cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
        mixed = {"bf16": "bf16", "fp16": "fp16"}.get(cfg.precision, "no") if not use_cpu else "no"
        self.accelerator = Accelerator(cpu=use_cpu, mixed_precision=mixed)
        model = attach_lora(load_base_model(cfg, self.tokenizer), cfg)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
        self.model = model.to(self.accelerator.device)
        self.modules = lora_modules(self.model)
        self.base = BaseWeights(self.modules, separate=uses_separate_path(cfg))
        self.global_factors = get_factors(self.modules)
        options = {k: getattr(cfg, k) for k in ("tau", "svd") if k in method_options(cfg.method)}
        lora = LoraSpec(r=cfg.lora_r, alpha=cfg.lora_alpha, use_rslora=cfg.use_rslora)
        self.method = build_method(cfg.method, lora, seed=cfg.seed, **options)
        self.samplers = [Sampler(rows, cfg.seed, k) for k, rows in enumerate(self.partition["clients"])]
        self.encoded: dict[int, dict] = {}
        self.validation = self._validation_rows()
        self.round = 0

    # ---- data -----------------------------------------------------------------------------------
    def _partition(self) -> dict:
        cfg, path = self.cfg, self.cfg.partition
        if path is not None:
            if not Path(path).is_file():
                raise UserError(f"partition file not found: {path}")
            try:
                part = results.read_json(Path(path))
            except (OSError, ValueError) as exc:
                raise UserError(f"partition {path} cannot be read: {str(exc).splitlines()[0]}") from None
            check_partition(part, path, len(self.rows.rows), cfg.clients, cfg.min_client_size)
            fp = self.rows.fingerprint()
            if part["dataset"]["sha256"] != fp["sha256"]:
                raise UserError(
                    f"partition {path} was made for another dataset ({part['dataset']['source']}, "
                    f"{part['dataset']['rows']} rows), not {fp['source']} ({fp['rows']} rows)"
                )
            return part
        return make_partition(cfg.task, self.rows, cfg.clients, cfg.beta, cfg.seed, cfg.min_client_size)

    def _check_cutoff(self, sample: int = 32) -> None:
        """cutoff_len must leave response tokens to learn from (else the loss is 0 and nothing trains)."""
        rows = self.rows.rows[:sample]
        encoded = [encode(self.task, r, self.tokenizer, self.cfg.cutoff_len) for r in rows]
        if not any(any(x != IGNORE_INDEX for x in e["labels"][1:]) for e in encoded):
            raise UserError(
                f"cutoff_len {self.cfg.cutoff_len} cuts every response of the first {len(rows)} rows "
                f"(the prompts alone fill it); raise cutoff_len"
            )

    def _validation_rows(self) -> list[dict]:
        """The first val_rows held-out rows, encoded once (the same rows every round and method)."""
        cfg = self.cfg
        if cfg.val_rows <= 0:
            return []
        if cfg.val_data is not None:
            rows = load_rows(self.task, Path(cfg.val_data)).rows
        elif cfg.synthetic is not None:
            rows = self.task.synthetic(cfg.val_rows, 10_000 + cfg.seed)  # another stream than training
        else:
            raise UserError("val_rows > 0 needs val_data (a held-out file in the task's schema)")
        return [encode(self.task, r, self.tokenizer, cfg.cutoff_len) for r in rows[: cfg.val_rows]]

    @torch.no_grad()
    def validation_loss(self) -> float | None:
        """Mean loss per response token of the current global model on the held-out rows."""
        if not self.validation:
            return None
        total, tokens = 0.0, 0
        size = self.cfg.val_batch_size
        for i in range(0, len(self.validation), size):
            batch = collate(
                self.validation[i : i + size], self.tokenizer.pad_token_id, self.accelerator.device
            )
            with self.accelerator.autocast():
                logits = self.model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).logits
            labels = batch["labels"][:, 1:]
            total += float(
                torch.nn.functional.cross_entropy(
                    logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                    labels.reshape(-1),
                    ignore_index=IGNORE_INDEX,
                    reduction="sum",
                )
            )
            tokens += int((labels != IGNORE_INDEX).sum())
        return total / max(tokens, 1)

    def _examples(self, sampler: Sampler):
        def take(n: int) -> list[dict]:
            out = []
            for i in sampler.take(n):
                if i not in self.encoded:
                    self.encoded[i] = encode(
                        self.task, self.rows.rows[i], self.tokenizer, self.cfg.cutoff_len
                    )
                out.append(self.encoded[i])
            return out

        return take

    # ---- one round ------------------------------------------------------------------------------
    def sampled_clients(self, round_idx: int) -> list[int]:
        n, k = self.cfg.clients, self.cfg.clients_per_round
        if k is None or k == n:
            return list(range(n))
        return sorted(
            int(c) for c in np.random.default_rng([self.cfg.seed, round_idx]).choice(n, k, replace=False)
        )

    def train_one(self, round_idx: int, k: int, sampler: Sampler | None = None) -> tuple[dict, float, dict]:
        """Client k's local training from the current global factors: its factors, mean loss, timings.

        `sampler` replaces client k's own (a deployed site that trains on all of its local rows).
        """
        cfg = self.cfg
        start = time.perf_counter()
        set_factors(self.modules, self.client_start(k))
        params = set_trainable(self.modules, self.method.trainable(round_idx))
        torch.manual_seed(zlib.crc32(f"{cfg.seed}/{round_idx}/{k}".encode()))
        swap = time.perf_counter() - start
        stats = train_client(
            self.model,
            params,
            self._examples(sampler or self.samplers[k]),
            steps=cfg.local_steps,
            batch_size=cfg.batch_size,
            grad_accum=cfg.grad_accum,
            lr=lr_at(cfg, round_idx),
            weight_decay=cfg.weight_decay,
            max_grad_norm=cfg.max_grad_norm,
            pad_id=self.tokenizer.pad_token_id,
            accelerator=self.accelerator,
            label=f"round {round_idx} client {k}",
        )
        start = time.perf_counter()
        factors = get_factors(self.modules)
        if cfg.client_ranks is not None:  # the rank-r_k LoRA the client really trained
            r = cfg.client_ranks[k]
            factors = {m: LoraFactors(f.A[:r].clone(), f.B[:, :r].clone()) for m, f in factors.items()}
        swap += time.perf_counter() - start
        return factors, stats.mean_loss, {"client_compute": stats.compute_seconds, "adapter_swap": swap}

    def client_start(self, k: int) -> dict[str, LoraFactors]:
        """Client k's factors at the start of its round: the global ones, except that
        - with client_ranks, a rank-r_k client gets the first r_k components (HetLoRA's truncation;
          FedMomentum's and FlexLoRA's factors are ordered by singular value, so this is the best
          rank-r_k part) and zeros beyond: zero rows of A and columns of B get zero gradients and
          stay zero under AdamW, so the rank-r model is exactly a rank-r_k LoRA with the same scaling;
        - a method with per-client state (fedsa_lora) gives client k its own B."""
        factors = self.global_factors
        if hasattr(self.method, "client_factors") and self.round > 0:
            factors = {
                m: LoraFactors(f.A, f.B.to(f.A.device)) for m, f in self.method.client_factors(k).items()
            }
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

    def train_clients(self, round_idx: int, progress=None) -> tuple[list[int], dict, dict, dict]:
        clients = self.sampled_clients(round_idx)
        trained: dict[int, dict[str, LoraFactors]] = {}
        losses: dict[int, float] = {}
        seconds = {"client_compute": 0.0, "adapter_swap": 0.0}
        for k in clients:
            trained[k], losses[k], spent = self.train_one(round_idx, k)
            for key, value in spent.items():
                seconds[key] += value
            if progress is not None:
                progress.client_done(k, losses[k])
        return clients, trained, losses, seconds

    def run_round(self, round_idx: int, progress=None) -> dict:
        wall = time.perf_counter()
        clients, trained, losses, seconds = self.train_clients(round_idx, progress)
        return self.aggregate_round(round_idx, clients, trained, losses, seconds, wall)

    def aggregate_round(
        self, round_idx, clients, trained, losses, seconds, wall, sent=None, sizes=None
    ) -> dict:
        """Aggregate the clients' factors, apply the base delta, log and checkpoint the round.

        `sent` = (bytes up, bytes down) per client as actually transmitted by an engine that
        transmits (Flower); the sequential engine reports the method's Appendix C accounting.
        """
        # Sample counts: the partition's, or what each (deployed) client reported of its own data.
        sizes = [sizes[k] if sizes else len(self.partition["clients"][k]) for k in clients]
        weights = sizes if self.cfg.client_weights == "samples" else [1.0] * len(clients)
        self.last_round = {"clients": clients, "trained": trained, "weights": weights}  # for inspection
        start = time.perf_counter()
        extra = {"client_ids": clients} if hasattr(self.method, "client_factors") else {}
        outcome = self.method.aggregate(
            {m: [trained[k][m] for k in clients] for m in self.modules}, weights, round_idx, **extra
        )
        seconds["aggregation"] = time.perf_counter() - start
        start = time.perf_counter()
        self.last_outcome = outcome  # the round's deltas in their own (low-rank or dense) form
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
        val_loss = self.validation_loss()
        seconds["validation"] = time.perf_counter() - start
        record = {
            "round": round_idx,
            "lr": lr_at(self.cfg, round_idx),
            "loss": float(np.average([losses[k] for k in clients], weights=weights)),
            "client_loss": {str(k): losses[k] for k in clients},
            "val_loss": val_loss,
            "clients": clients,
            "weights": [w / sum(weights) for w in weights],
            "aggregation_seconds": seconds["aggregation"],
            "update_seconds": seconds["update"],
            "bytes_up_per_client": sent[0] if sent else outcome.bytes_up,
            "bytes_down_per_client": sent[1] if sent else outcome.bytes_down,
            "stats": summarise(stats),
            "module_stats": stats,
            "factor_norms": factor_norms(self.global_factors),
            "seconds": seconds,
        }
        start = time.perf_counter()
        self.save_checkpoint(record)
        seconds["checkpoint"] = time.perf_counter() - start
        seconds["round"] = time.perf_counter() - wall
        return record

    # ---- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self, record: dict) -> None:
        results.atomic_torch_save(
            self.run_dir / CHECKPOINT,
            {
                "round": self.round,
                "config_hash": self.cfg.hash(),
                "global": {m: (f.A.cpu(), f.B.cpu()) for m, f in self.global_factors.items()},
                "delta": self.base.delta,
                "method_state": self.method.state_dict(),
                "samplers": [s.state() for s in self.samplers],
                "record": record,
                "rng": {
                    "torch": torch.get_rng_state(),
                    "numpy": np.random.get_state(),
                    "python": random.getstate(),
                },
            },
        )

    def load_checkpoint(self) -> dict:
        path = self.run_dir / CHECKPOINT
        try:
            ckpt = torch.load(path, weights_only=False)
            if not isinstance(ckpt, dict) or not CHECKPOINT_KEYS <= set(ckpt):
                raise ValueError("not a fedmom checkpoint")
        except Exception as exc:  # noqa: BLE001 - truncated, garbage or foreign: the user's file
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0].split(". ")[0][:160]
            raise UserError(
                f"{path} cannot be read ({reason}); it was left as it is; --force starts over"
            ) from None
        if ckpt["config_hash"] != self.cfg.hash():
            raise UserError("the checkpoint was made with other settings; use --force to start over")
        device = self.accelerator.device
        self.global_factors = {
            m: LoraFactors(A.to(device), B.to(device)) for m, (A, B) in ckpt["global"].items()
        }
        set_factors(self.modules, self.global_factors)
        self.base.delta = ckpt["delta"]
        self.base.apply(self.modules)
        self.method.load_state_dict(ckpt["method_state"])
        for s, state in zip(self.samplers, ckpt["samplers"]):
            s.load(state)
        torch.set_rng_state(ckpt["rng"]["torch"])
        np.random.set_state(ckpt["rng"]["numpy"])
        random.setstate(ckpt["rng"]["python"])
        self.round = ckpt["round"]
        return ckpt["record"]

    def _describe_adapter(self, folder: Path, has_delta: bool) -> None:
        """A real model card instead of PEFT's template, and no machine path in the config."""
        from fedmom_cli.export import fix_adapter_config, model_card

        fix_adapter_config(folder, self.cfg)
        result = {"rounds_completed": self.round}
        kind = "adapter-without-delta" if has_delta else "adapter"
        (folder / "README.md").write_text(model_card(self.cfg, result, None, kind))

    # ---- final outputs --------------------------------------------------------------------------
    def save_outputs(self, save_merged: bool) -> None:
        set_factors(self.modules, self.global_factors)
        tmp = self.run_dir / ".adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(tmp)
        deltas = {delta_key(m): d.contiguous() for m, d in self.base.delta.items()}
        self._describe_adapter(tmp, any(bool(d.abs().max() > 0) for d in deltas.values() if d.numel()))
        shutil.rmtree(self.run_dir / "adapter", ignore_errors=True)
        tmp.rename(self.run_dir / "adapter")
        save_file(deltas, self.run_dir / ".base_delta.tmp", metadata={"format": "pt"})
        (self.run_dir / ".base_delta.tmp").replace(self.run_dir / "base_delta.safetensors")
        if hasattr(self.method, "client_factors"):  # fedsa_lora: each client's own B, for eval --clients
            from fedmom_cli.client_eval import save_client_factors

            save_client_factors(self.run_dir, self.method, self.round)
        if save_merged:
            self.base.fold(self.modules)  # a saved model has no side path: the delta goes into the weights
            merged = self.model.merge_and_unload()
            merged.save_pretrained(self.run_dir / "merged")
            self.tokenizer.save_pretrained(self.run_dir / "merged")
