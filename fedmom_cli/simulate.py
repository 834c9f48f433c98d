"""`fedmom train`: sequential federated simulation of every client on one device, resumable.

One model in memory. Each round, for each sampled client: load the global factors, make trainable
exactly what the method trains, train with a fresh AdamW, keep a float32 clone of the factors.
Then aggregate with the method, add the base delta to the frozen weights, load the new global
factors, log a metrics line and write a checkpoint atomically.

Determinism: all randomness of a client's round (dropout) is seeded from (seed, round, client) and
the data order from (seed, client, epoch), so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import shutil
import time
import zlib
from pathlib import Path

import torch

from fedmom_cli import privacy, runfolder, targets
from fedmom_cli.client import NonFiniteLoss, Sampler, collate, train_client
from fedmom_cli.client_dp import train_client_dp
from fedmom_cli.config import TrainConfig, method_kwargs
from fedmom_cli.data import load_rows
from fedmom_cli.errors import UserError
from fedmom_cli.methods import LoraFactors, LoraSpec, build_method
from fedmom_cli.model import (
    attach_lora,
    check_model_source,
    get_factors,
    load_base_model,
    load_tokenizer,
    lora_modules,
    set_factors,
    set_trainable,
)
from fedmom_cli.participation import Participation, deadline_of, sample_round
from fedmom_cli.partition import check_partition, partition_for
from fedmom_cli.server import ClientUpdate, RoundRecord, Server, factor_norms, lr_at, summarise  # noqa: F401
from fedmom_cli.tasks import IGNORE_INDEX, encode, task_for

CHECKPOINT = runfolder.CHECKPOINT
# A client whose rows lose their whole response to cutoff_len in more than this share is refused:
# most of its steps would see no trainable token (docs/safety.md).
MAX_CUT_SHARE = 0.5


def site_partition(cfg: TrainConfig) -> dict:
    """partition.json of a deployment whose sites train on their own files: no row indices (the
    server holds no rows), each site's path, rows and fingerprint as it reported them."""
    sites = {int(k): v for k, v in cfg.sites.items()}
    if sorted(sites) != list(range(cfg.clients)):
        raise UserError(f"sites must name partitions 0..{cfg.clients - 1}, got {sorted(sites)}")
    return {
        "task": cfg.task,
        "kind": "sites",
        "clients_n": cfg.clients,
        "sizes": [int(sites[k]["rows"]) for k in range(cfg.clients)],
        "sites": {str(k): sites[k] for k in range(cfg.clients)},
    }


class Simulation:
    def __init__(self, cfg: TrainConfig, run_dir: Path) -> None:
        from accelerate import Accelerator

        check_model_source(cfg)
        cfg = targets.resolve(cfg)  # a no-op after train.run, which resolves before recording
        self.cfg, self.run_dir = cfg, run_dir
        self.task = task_for(cfg)
        self.tokenizer = load_tokenizer(cfg)
        if cfg.sites is not None:  # a deployment's sites, each on its own file: no data here
            self.rows, self.partition, self.encoded, self.cutoff = None, site_partition(cfg), {}, None
        else:
            self.rows = load_rows(
                self.task, Path(cfg.data) if cfg.data else None, cfg.synthetic, seed=cfg.seed
            )
            self.partition = self._partition()
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
        lora = LoraSpec(r=cfg.lora_r, alpha=cfg.lora_alpha, use_rslora=cfg.use_rslora)
        method = build_method(cfg.method, lora, seed=cfg.seed, **method_kwargs(cfg))
        clients = self.partition.get("clients") or [[] for _ in range(cfg.clients)]
        sizes = self.partition.get("sizes") or [len(rows) for rows in clients]
        self.ledger = None
        if cfg.sample_dp or cfg.client_dp:
            if cfg.sample_dp:
                privacy.check_sizes(cfg, sizes)
            participation = [0] * cfg.clients
            for t in range(cfg.rounds):
                for k in self.sampled_clients(t):
                    participation[k] += 1
            noise = privacy.plan_noise(cfg, sizes, participation)
            self.ledger = privacy.Ledger(cfg, sizes, noise)
        self.steps = {"total": 0, "with_trainable_token": 0}  # this process's local steps
        self.validation = self._validation_rows()
        self.server = Server(
            cfg,
            run_dir,
            method,
            self.modules,
            get_factors(self.modules),
            samplers=[Sampler(rows, cfg.seed, k) for k, rows in enumerate(clients)],
            sizes=sizes,
            validate=self.validation_loss,
            ledger=self.ledger,
        )

    @property
    def round(self) -> int:
        """Rounds completed (the server's count)."""
        return self.server.round

    # ---- data -----------------------------------------------------------------------------------
    def _partition(self) -> dict:
        cfg, path = self.cfg, self.cfg.partition
        if path is not None:
            if not Path(path).is_file():
                raise UserError(f"partition file not found: {path}")
            try:
                part = runfolder.read_json(Path(path))
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
        return partition_for(cfg, self.rows)

    def _check_cutoff(self) -> None:
        """cutoff_len must leave response tokens to learn from. Every client row is encoded (once:
        training reuses the encodings) and the share of rows whose response the cutoff removes is
        measured per client; above MAX_CUT_SHARE in any client the run would train on a fraction of
        its data with many empty steps, so it is refused (issue 30: cutoff_len 64 on GSM8K trained
        nothing and reported loss 0.0)."""
        self.encoded = {}
        cut_per_client = []
        for rows in self.partition["clients"]:
            cut = 0
            for i in rows:
                e = self.encoded[i] = encode(
                    self.task, self.rows.rows[i], self.tokenizer, self.cfg.cutoff_len
                )
                cut += not any(x != IGNORE_INDEX for x in e["labels"][1:])
            cut_per_client.append((cut, len(rows)))
        total = sum(n for _, n in cut_per_client)
        shares = [c / n for c, n in cut_per_client]
        worst = max(range(len(shares)), key=shares.__getitem__)
        self.cutoff = {
            "cutoff_len": self.cfg.cutoff_len,
            "rows_without_response": sum(c for c, _ in cut_per_client),
            "rows": total,
            "share": sum(c for c, _ in cut_per_client) / total,
            "max_client_share": shares[worst],
            "threshold": MAX_CUT_SHARE,
        }
        if shares[worst] > MAX_CUT_SHARE:
            c, n = cut_per_client[worst]
            raise UserError(
                f"cutoff_len {self.cfg.cutoff_len} cuts every response token of {c} of client {worst}'s "
                f"{n} rows ({100 * shares[worst]:.0f}%, {100 * self.cutoff['share']:.0f}% of all rows; "
                f"more than {100 * MAX_CUT_SHARE:.0f}% makes the run meaningless); raise cutoff_len"
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
    def participation(self, round_idx: int) -> Participation:
        """Who is sampled in this round and who returns: the pure draw both engines make."""
        cfg = self.cfg
        return sample_round(
            cfg.clients, cfg.clients_per_round, cfg.client_dropout, cfg.seed, round_idx, deadline_of(cfg)
        )

    def sampled_clients(self, round_idx: int) -> list[int]:
        return self.participation(round_idx).sampled

    def train_one(
        self,
        round_idx: int,
        k: int,
        sampler: Sampler | None = None,
        global_factors: dict[str, LoraFactors] | None = None,
        steps: int | None = None,
    ) -> ClientUpdate:
        """Client k's local training from the current global factors (or `global_factors`, those a
        Flower node received).

        `sampler` replaces client k's own (a deployed site that trains on all of its local rows).
        `steps`: fewer than local_steps for a straggler that returns partial work (participation.py).
        """
        steps = self.cfg.local_steps if steps is None else steps
        cfg, server = self.cfg, self.server
        sampler = sampler or server.samplers[k]
        start = time.perf_counter()
        set_factors(self.modules, server.client_start(k, global_factors))
        params = set_trainable(self.modules, server.method.trainable(round_idx))
        torch.manual_seed(zlib.crc32(f"{cfg.seed}/{round_idx}/{k}".encode()))
        swap = time.perf_counter() - start
        if self.ledger is not None and self.ledger.noise is not None:
            stats = self._train_dp(round_idx, k, sampler, params)
        else:
            stats = self._train(round_idx, k, sampler, params, steps)
        self.steps["total"] += steps
        self.steps["with_trainable_token"] += steps - stats.empty_steps
        start = time.perf_counter()
        factors = get_factors(self.modules)
        self._check_finite(round_idx, k, factors)
        if cfg.client_ranks is not None:  # the rank-r_k LoRA the client really trained
            r = cfg.client_ranks[k]
            factors = {m: LoraFactors(f.A[:r].clone(), f.B[:, :r].clone()) for m, f in factors.items()}
        swap += time.perf_counter() - start
        seconds = {"client_compute": stats.compute_seconds, "adapter_swap": swap}
        return ClientUpdate(k, factors, len(sampler.rows), stats.mean_loss, seconds)

    def _check_finite(self, round_idx: int, k: int, factors: dict[str, LoraFactors]) -> None:
        """No loss sees the last local step's update, so a client can return inf / NaN factors
        (DP-SGD noise of std sigma x dp_max_grad_norm = 1e308 did): they would reach the method
        (FedMomentum's SVD raised LinAlgError; FedIT averaged them in). Stop as a diverged loss does."""
        if all(bool(torch.isfinite(f.A).all() and torch.isfinite(f.B).all()) for f in factors.values()):
            return
        hint = "a smaller dp_max_grad_norm or a lower lr" if self.cfg.sample_dp else "a lower lr"
        raise NonFiniteLoss(
            f"round {round_idx} client {k}: its LoRA factors are not finite after local training; "
            f"the run stops here and keeps its last checkpoint (try {hint})"
        )

    def _train(self, round_idx: int, k: int, sampler: Sampler, params, steps: int):
        cfg = self.cfg
        return train_client(
            self.model,
            params,
            self._examples(sampler),
            steps=steps,
            batch_size=cfg.batch_size,
            grad_accum=cfg.grad_accum,
            lr=lr_at(cfg, round_idx),
            weight_decay=cfg.weight_decay,
            max_grad_norm=cfg.max_grad_norm,
            pad_id=self.tokenizer.pad_token_id,
            accelerator=self.accelerator,
            label=f"round {round_idx} client {k}",
        )

    def _train_dp(self, round_idx: int, k: int, sampler: Sampler, params):
        """DP-SGD (client_dp.py) over all of client k's rows, Poisson-sampled; the ledger counts its
        steps (an empty Poisson batch is a step too: it adds noise and is accounted)."""
        cfg = self.cfg
        take = self._examples(Sampler(sampler.rows, cfg.seed, k))
        rows = take(len(sampler.rows))  # every row once, encoded (the order does not matter)
        stats = train_client_dp(
            self.model,
            params,
            rows,
            steps=cfg.local_steps,
            batch_size=cfg.batch_size,
            grad_accum=cfg.grad_accum,
            lr=lr_at(cfg, round_idx),
            weight_decay=cfg.weight_decay,
            noise=self.ledger.noise,
            clip=cfg.dp_max_grad_norm,
            seeds=(cfg.seed, round_idx, k),
            pad_id=self.tokenizer.pad_token_id,
            accelerator=self.accelerator,
            label=f"round {round_idx} client {k}",
        )
        self.ledger.record_client(k, cfg.local_steps)
        return stats

    def train_clients(self, round_idx: int, progress=None) -> list[ClientUpdate]:
        """The round's returning clients trained in turn (a dropped client fails before it trains)."""
        updates, part = [], self.participation(round_idx)
        for k in part.returned:
            updates.append(self.train_one(round_idx, k, steps=part.steps.get(k)))
            if progress is not None:
                progress.client_done(k, updates[-1].loss)
        return updates

    def run_round(self, round_idx: int, progress=None) -> RoundRecord:
        wall = time.perf_counter()
        part = self.participation(round_idx)
        updates = self.train_clients(round_idx, progress)
        return self.server.aggregate(round_idx, updates, wall, participation=part)

    # ---- checkpoints ----------------------------------------------------------------------------
    def load_checkpoint(self) -> dict:
        """Resume from checkpoint.pt (Server.load_checkpoint); the last completed round's record."""
        return self.server.load_checkpoint()

    def _describe_adapter(self, folder: Path, has_delta: bool) -> None:
        """A real model card instead of PEFT's template, and no machine path in the config."""
        from fedmom_cli.export import fix_adapter_config, model_card

        fix_adapter_config(folder, self.cfg)
        result = {"rounds_completed": self.round}
        kind = "adapter-without-delta" if has_delta else "adapter"
        (folder / "README.md").write_text(model_card(self.cfg, result, None, kind))

    # ---- final outputs --------------------------------------------------------------------------
    def save_outputs(self, save_merged: bool) -> None:
        set_factors(self.modules, self.server.global_factors)
        tmp = self.run_dir / ".adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        deltas = self.server.base.delta
        try:
            self.model.save_pretrained(tmp)
            self._describe_adapter(tmp, any(bool(d.abs().max() > 0) for d in deltas.values() if d.numel()))
            runfolder.follow_umask(tmp)  # PEFT's save_file writes the weights 0600
            shutil.rmtree(self.run_dir / runfolder.ADAPTER, ignore_errors=True)
            tmp.rename(self.run_dir / runfolder.ADAPTER)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # a full disk leaves no half adapter behind
        runfolder.write_base_delta(self.run_dir, deltas)
        if hasattr(self.server.method, "client_factors"):  # fedsa_lora: each client's B, for eval --clients
            runfolder.write_client_factors(self.run_dir, self.server.method, self.round)
        if save_merged:
            self.server.base.fold(self.modules)  # a saved model has no side path: delta into the weights
            merged = self.model.merge_and_unload()
            merged.save_pretrained(self.run_dir / runfolder.MERGED)
            self.tokenizer.save_pretrained(self.run_dir / runfolder.MERGED)
            runfolder.follow_umask(self.run_dir / runfolder.MERGED)
