"""Differential privacy: DP-SGD on the clients (Opacus) and client-level DP on the server.

Sample-level DP (keys `dp_noise_multiplier` or `dp_target_epsilon`, with `dp_max_grad_norm`,
`dp_delta`): every local step of a client is one step of DP-SGD (Abadi et al., 2016) on the LoRA
parameters it trains this round, done by Opacus:

- per-sample gradients by `opacus.GradSampleModule` (hooks on the trainable `nn.Linear` layers
  `lora_A` / `lora_B`: Opacus' own Linear grad sampler; the frozen base model gets no hooks, so
  any architecture works as long as only LoRA is trained). A fresh wrapper per client and round,
  because the trainable factors change with the method and round (FFA-LoRA: B only; RoLoRA:
  alternating), and its hooks are removed afterwards;
- each sample's loss is the mean over its own response tokens (not over the batch's tokens as in
  non-DP training: a loss normalised by the batch's token count would let one sample change every
  other sample's gradient, and the clipping bound would no longer be the sensitivity);
- `opacus.optimizers.DPOptimizer` around the client's fresh AdamW: clips each sample's gradient (all
  trained parameters together) to `dp_max_grad_norm` = C, sums, adds N(0, (sigma C)^2) per
  coordinate from a `torch.Generator` on the parameters' device seeded by (seed, round, client) (so a GPU
  run draws other noise than a CPU run of the same seed), and divides by the expected
  batch size `batch_size` (Opacus' `loss_reduction="mean"` with Poisson sampling);
- batches by Poisson sampling, as the accountant assumes: at every step each of the client's n rows
  joins the batch independently with probability q = batch_size / n (the rule of Opacus'
  `UniformWithReplacementSampler`, drawn from a generator seeded by (seed, round, client)), so batch
  sizes vary around `batch_size`, and an empty batch is a step of pure noise. Micro-batches
  (`grad_accum`) split the drawn batch; their per-sample gradients are concatenated into one step.
- accounting by Opacus' `RDPAccountant` per client: client k's history is (sigma, q_k, steps_k), its
  steps being every local step it has taken. Clients differ in size, so in q_k and epsilon_k;
  metrics.jsonl records each (`epsilon`) and the largest (`epsilon_max`), at `dp_delta`. The steps
  are kept in the checkpoint, so a resumed run's epsilon is recomputed from its whole history.
  With `dp_target_epsilon` the noise is `opacus.accountants.utils.get_noise_multiplier` for each
  client's planned steps (local_steps x the rounds it is sampled in: the client schedule is seeded,
  so known in advance) at its q_k, the largest over clients: every client ends at or below the
  target. The client sampling itself (clients_per_round < clients) is not credited (no amplification
  by client sampling is claimed).

The noise is seeded for reproducibility and generated without Opacus' `secure_mode`: a study tool,
not a deployment (a deployment would use secure_mode and an unseeded generator).

Client-level DP (keys `dp_client_noise_multiplier`, `dp_client_clip`; `dp_delta` for its
accounting), as Flower's `DifferentialPrivacyServerSideFixedClipping`: the server clips each
client's update (the change of the factors it trained, every module together, one L2 norm) to
`dp_client_clip` = C_c, averages uniformly over the m sampled clients, and adds N(0, (z C_c / m)^2) to
each coordinate of the average, from a generator seeded by (seed, round). Only for methods whose
aggregate is the uniform mean of what the clients send (CLIENT_DP_METHODS; docs/methods.md says why
the others are refused). Because those methods average linearly, adding one noise vector xi to every
clipped client's factors before the method's aggregation is the same as adding xi to the average:
that is how it is done here, leaving the methods' files untouched (FedSVD's SVD re-factorisation
then acts on the noisy average: post-processing). Its epsilon (`client_epsilon`) is the RDP
accountant's at q = m / clients, one step per round; the fixed-size client sampling differs from
the Poisson sampling the accountant assumes (as in Flower).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch

from fedmom_cli.errors import UserError

#: methods whose aggregate is the (uniform) mean of the factors the clients train, so a client's
#: whole update can be clipped and the average noised (client-level DP).
CLIENT_DP_METHODS = ("fedit", "fedit_resplit", "ffa_lora", "fedsvd", "rolora")


def generator(*parts, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on `device` seeded from the parts (seed, round, client, purpose). DP-SGD's noise
    generator must be on the parameters' device: Opacus draws with torch.normal(device=the
    parameter's, generator=this one), which refuses a CPU generator for CUDA tensors."""
    seed = zlib.crc32("/".join(map(str, parts)).encode())
    return torch.Generator(device=device).manual_seed(seed)


# ---- accounting ---------------------------------------------------------------------------------
def epsilon(noise: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon of `steps` steps of the subsampled Gaussian mechanism (Opacus' RDP accountant, its
    default orders). Where the best order is the largest one (few steps at a large q) Opacus warns
    that a wider range could give a smaller epsilon: the value is still a valid upper bound, and
    the warning is silenced so that it does not repeat every round. Never below 0."""
    import warnings

    from opacus.accountants import RDPAccountant

    if steps == 0:
        return 0.0
    acc = RDPAccountant()
    acc.history = [(noise, sample_rate, steps)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        # Opacus' RDP-to-(eps, delta) conversion goes below 0 for huge noise and a large delta
        # (-3.25 at sigma 1e6, delta 0.99): no mechanism has a negative epsilon
        return max(0.0, float(acc.get_epsilon(delta)))


def noise_for_target(target: float, delta: float, plans: Sequence[tuple[float, int]]) -> float:
    """The noise multiplier that keeps every (sample rate, steps) plan at or below `target` epsilon:
    Opacus' `get_noise_multiplier` per plan, the largest.

    A target no noise multiplier up to Opacus' MAX_SIGMA (1e6) reaches is one line naming the
    plan, not Opacus' ValueError. (config.py caps the target at MAX_TARGET_EPSILON: Opacus'
    bisection stops within 0.01 of it, which a float near 1e300 cannot resolve: it never ended.)"""
    import warnings

    from opacus.accountants.utils import MAX_SIGMA, get_noise_multiplier

    sigmas = []
    for q, steps in plans:
        if steps == 0:
            continue
        try:
            with warnings.catch_warnings():  # as in epsilon(): a valid bound, the warning repeats
                warnings.filterwarnings("ignore", message="Optimal order is the (largest|smallest) alpha")
                sigmas.append(
                    get_noise_multiplier(
                        target_epsilon=target,
                        target_delta=delta,
                        sample_rate=q,
                        steps=steps,
                        accountant="rdp",
                    )
                )
        except ValueError:  # "The privacy budget is too low."
            raise UserError(
                f"dp_target_epsilon {target} cannot be met: {steps} DP-SGD steps at sample rate "
                f"{q:.4g} and dp_delta {delta} spend more even with noise multiplier {MAX_SIGMA:g}; "
                "raise dp_target_epsilon or dp_delta, or train fewer steps"
            ) from None
    return float(max(sigmas)) if sigmas else 0.0


class Ledger:
    """The run's privacy accounting: per client, the DP-SGD steps taken; per round, client-level."""

    def __init__(self, cfg, sizes: Sequence[int], noise: float | None) -> None:
        self.cfg, self.noise = cfg, noise
        self.sample_rates = [cfg.batch_size / n for n in sizes]
        self.steps = [0] * len(sizes)
        self.client_rounds = 0

    def record_client(self, k: int, steps: int) -> None:
        self.steps[k] += steps

    def record_round(self) -> None:
        if self.cfg.dp_client_noise_multiplier is not None:
            self.client_rounds += 1

    def metrics(self) -> dict:
        """The round's metrics.jsonl keys: cumulative epsilon per client and the largest."""
        out = {}
        delta = self.cfg.dp_delta
        if self.noise is not None:
            eps = [epsilon(self.noise, q, s, delta) for q, s in zip(self.sample_rates, self.steps)]
            out["epsilon"] = {str(k): e for k, e in enumerate(eps)}
            out["epsilon_max"] = max(eps)
            out["dp"] = {
                "noise_multiplier": self.noise,
                "max_grad_norm": self.cfg.dp_max_grad_norm,
                "delta": delta,
                "sample_rates": self.sample_rates,
                "steps": list(self.steps),
                "accountant": "rdp",
            }
        if self.cfg.dp_client_noise_multiplier is not None:
            q = (self.cfg.clients_per_round or self.cfg.clients) / self.cfg.clients
            out["client_epsilon"] = epsilon(self.cfg.dp_client_noise_multiplier, q, self.client_rounds, delta)
        return out

    def state_dict(self) -> dict:
        return {"steps": list(self.steps), "client_rounds": self.client_rounds, "noise": self.noise}

    def load_state_dict(self, state: dict) -> None:
        self.steps = list(state["steps"])
        self.client_rounds = int(state["client_rounds"])


def plan_noise(cfg, sizes: Sequence[int], participation: Sequence[int]) -> float | None:
    """The run's DP-SGD noise multiplier: given, or from `dp_target_epsilon` for the planned steps
    (client k: local_steps x participation[k] rounds, at q_k = batch_size / n_k)."""
    if cfg.dp_noise_multiplier is not None:
        return cfg.dp_noise_multiplier
    if cfg.dp_target_epsilon is None:
        return None
    plans = [(cfg.batch_size / n, cfg.local_steps * p) for n, p in zip(sizes, participation)]
    return noise_for_target(cfg.dp_target_epsilon, cfg.dp_delta, plans)


def check_sizes(cfg, sizes: Sequence[int]) -> None:
    """Poisson sampling needs q = batch_size / n <= 1 on every client."""
    small = [(k, n) for k, n in enumerate(sizes) if n < cfg.batch_size]
    if small:
        k, n = small[0]
        raise UserError(
            f"DP-SGD samples each client's rows with probability batch_size / rows; client {k} has "
            f"{n} rows, fewer than batch_size {cfg.batch_size} (raise min_client_size or lower batch_size)"
        )


# ---- DP-SGD on a client (Opacus) ----------------------------------------------------------------
def poisson_batch(n: int, rate: float, gen: torch.Generator) -> list[int]:
    """Indices 0..n-1 each kept with probability `rate` (Opacus' UniformWithReplacementSampler rule)."""
    return torch.nonzero(torch.rand(n, generator=gen) < rate).flatten().tolist()


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Each row's mean cross-entropy over its own response tokens (0 for a row with none), shape (b,).
    Summed over rows, its gradient's per-sample parts are exactly each row's own loss gradient."""
    targets = labels[:, 1:]
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets, ignore_index=ignore_index, reduction="none"
    )
    tokens = (targets != ignore_index).sum(dim=1)
    return ce.sum(dim=1) / tokens.clamp(min=1)


class DPStep:
    """Opacus' per-sample gradients and DPOptimizer around an optimizer, for one client's round.

    Use: `loss.sum().backward()` over one or more micro-batches of per-sample losses, then
    `step()`; `close()` removes the hooks. `params` are the trainable LoRA parameters of `model`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        params: list[torch.nn.Parameter],
        *,
        noise: float,
        clip: float,
        expected_batch_size: int,
        noise_generator: torch.Generator,
    ) -> None:
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        self.params = params
        self.gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=False)
        self.optimizer = DPOptimizer(
            optimizer,
            noise_multiplier=noise,
            max_grad_norm=clip,
            expected_batch_size=expected_batch_size,
            loss_reduction="mean",
            generator=noise_generator,
        )

    def step(self, batch_size: int) -> None:
        """Clip, noise, scale and step. Micro-batches' per-sample gradients are joined into one
        batch first (Opacus would otherwise take them for separate Poisson batches); an empty batch
        (`batch_size` 0) is a step of noise alone."""
        for p in self.params:
            gs = getattr(p, "grad_sample", None)
            if batch_size == 0 or gs is None:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
            elif isinstance(gs, list):
                p.grad_sample = torch.cat(gs)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def close(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.gsm._close()


# ---- client-level DP (server side, pure tensor maths) -------------------------------------------
def clip_updates(
    finals: Sequence[dict[str, tuple[torch.Tensor, ...]]],
    starts: Sequence[dict[str, tuple[torch.Tensor, ...]]],
    clip: float,
) -> tuple[list[dict[str, tuple[torch.Tensor, ...]]], list[float]]:
    """Each client's update (final - start, every tensor of every module together) scaled to L2
    norm at most `clip`; returns the clipped finals (start + clipped update) and the norms before."""
    out, norms = [], []
    for fin, st in zip(finals, starts):
        deltas = {m: tuple(f.double() - s.double() for f, s in zip(fin[m], st[m])) for m in fin}
        norm = float(torch.sqrt(sum((d**2).sum() for ds in deltas.values() for d in ds)))
        factor = min(1.0, clip / norm) if norm > 0 else 1.0
        out.append(
            {
                m: tuple((s.double() + factor * d).to(f.dtype) for f, s, d in zip(fin[m], st[m], ds))
                for m, ds in deltas.items()
            }
        )
        norms.append(norm)
    return out, norms


def aggregate_noise(
    shapes: dict[str, tuple[torch.Size, ...]], std: float, gen: torch.Generator
) -> dict[str, tuple[torch.Tensor, ...]]:
    """N(0, std^2) per coordinate, float64, in module order then tensor order."""
    return {
        m: tuple(torch.normal(0.0, std, size=tuple(s), generator=gen, dtype=torch.float64) for s in ss)
        for m, ss in shapes.items()
    }
