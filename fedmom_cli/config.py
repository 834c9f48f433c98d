"""Training configuration: one frozen dataclass, filled from recipes (YAML) and the command line.

Resolution order, later wins: the dataclass defaults (the paper's Section 4.1 setup), `recipes/
defaults.yaml`, the recipe (`--recipe NAME|PATH`, or the paper's recipe for `--task`), then
`--set KEY=VALUE` and the named command-line options. Unknown keys and values of the wrong type
are errors before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fedmom_cli.errors import UserError
from fedmom_cli.instruct import KEYS as MAPPING_KEYS

# Recipes ship inside the package (package data), so a wheel or a site install has every one;
# the repository's top-level recipes/ is a link to this folder.
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


@dataclass(frozen=True)
class TrainConfig:
    # what is trained
    method: str = "fedmomentum"
    task: str = "math"
    seed: int = 0
    # model (a Hub id, a local folder, or "tiny": a small random Llama + fedmom's tokenizer)
    model: str = "meta-llama/Llama-2-7b-hf"
    tokenizer: str | None = None  # defaults to the model's
    precision: str = "bf16"  # weights' dtype: fp32 | bf16 | fp16; bf16/fp16 also autocast on GPU
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    gradient_checkpointing: bool = False
    # LoRA (the paper: r = 32, alpha = 64; it does not name target modules). target_modules: names,
    # or `auto` (PEFT's default for the architecture: q_proj, v_proj on LLaMA) or `all-linear`,
    # resolved to names before a run is recorded (fedmom_cli/targets.py)
    lora_r: int = 32
    lora_alpha: float = 64.0
    lora_dropout: float = 0.05
    use_rslora: bool = False
    target_modules: list[str] = field(default_factory=lambda: ["auto"])
    # data
    data: str | None = None  # local JSON / JSONL / parquet; None = the task's Hub dataset
    synthetic: int | None = None  # use N synthetic rows instead (smoke runs, tests)
    cutoff_len: int = 512
    # validation loss of the global model after every round (0 rows = off); val_data None = held-out
    # synthetic rows for synthetic runs, else required
    val_data: str | None = None
    val_rows: int = 0
    val_batch_size: int = 8
    # federation (the paper: 10 clients, Dirichlet 0.5, all clients every round)
    partition: str | None = None  # a `fedmom partition` file; None = made here and saved in the run
    clients: int = 10
    beta: float = 0.5
    min_client_size: int = 16
    clients_per_round: int | None = None  # None = all
    # a sampled client fails to return with this probability, drawn from (seed, round): the round
    # aggregates the clients that returned (fedmom_cli/participation.py); None = none drop
    client_dropout: float | None = None
    # stragglers: the round closes at round_deadline x a nominal client's round time; each client's
    # speed is drawn per round (lognormal, client_speed_sigma); a late client is dropped or, with
    # straggler_policy partial, returns the steps it finished (participation.py); None = no deadline
    round_deadline: float | None = None
    client_speed_sigma: float | None = None
    straggler_policy: str | None = None  # drop (default) | partial
    # a Flower deployment whose sites train on their own files: {partition id: {data: the path the
    # site gave, rows, sha256 (data.Rows.fingerprint)}}, as the sites reported them; set by the
    # ServerApp (flower/strategy.py: site_settings), not by hand; data/synthetic/partition are null
    sites: dict[str, Any] | None = None
    client_weights: str = "samples"  # samples | uniform
    # Flower's SecAgg+ (--engine flower --secagg): the server sees only the clients' weighted sum,
    # for the methods whose server needs nothing else (flower/secagg_rules.py); None = off
    secagg: bool | None = None
    rounds: int = 50
    # local training (the paper: 10 steps of batch 16, AdamW lr 3e-4, a fresh optimizer per round)
    local_steps: int = 10
    batch_size: int = 16
    grad_accum: int = 1  # micro-batches per step (batch_size must divide evenly)
    lr: float = 3e-4
    lr_schedule: str = "constant"  # constant | cosine (across rounds, constant within a round)
    min_lr: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float | None = None
    # method options: `method_options` holds any option of the chosen method (its constructor's
    # keyword arguments, checked by methods.build_method); tau and svd are the older top-level
    # spellings of fedmomentum's two options, kept because every recorded run folder has them
    tau: float = 0.9999
    svd: str = "exact"
    method_options: dict[str, Any] | None = None
    # heterogeneous client ranks: client k trains a rank-client_ranks[k] LoRA with the same scaling
    # lora_alpha / lora_r (see fedmom_cli/hetero.py and docs/methods.md); lora_r is the global rank.
    # A recipe may give a rule instead, {cycle: [...]} or {spread: [low, high]} (fedmom_cli/rank_rules.py)
    client_ranks: list[int] | None = None
    # how the accumulated base delta reaches the forward pass: merged (cast into the weights) or
    # separate (a frozen side path x @ D^T, exact in bf16/fp16); unset: separate unless fp32
    # (fedmom_cli/model.py, docs/miniature.md)
    delta_path: str | None = None
    # per-round aggregation diagnostics (fedmom_cli/diagnostics.py): unset = every LoRA module, 0 =
    # none, N = N modules evenly spaced over the model (the same every round). Never changes training;
    # on a 7B model all 224 modules cost minutes of CPU per round, a few cost about a second
    diagnostic_modules: int | None = None
    # differential privacy (fedmom_cli/privacy.py, docs/usage.md#differential-privacy): DP-SGD on the
    # clients with dp_noise_multiplier (or dp_target_epsilon), dp_max_grad_norm and dp_delta;
    # client-level DP on the server with dp_client_noise_multiplier and dp_client_clip
    dp_noise_multiplier: float | None = None
    dp_target_epsilon: float | None = None
    dp_max_grad_norm: float | None = None
    dp_delta: float | None = None
    dp_client_noise_multiplier: float | None = None
    dp_client_clip: float | None = None

    @property
    def sample_dp(self) -> bool:
        """DP-SGD on the clients."""
        return self.dp_noise_multiplier is not None or self.dp_target_epsilon is not None

    @property
    def client_dp(self) -> bool:
        """Client-level DP on the server."""
        return self.dp_client_noise_multiplier is not None

    # task instruct's field mapping (fedmom_cli/instruct.py): prompt/response columns and an optional
    # prompt_template ({column} placeholders; unset: the Alpaca template), or chat rows in
    # messages_field rendered with chat_template (unset/auto: the tokenizer's own; none; a Jinja file)
    prompt_field: str | None = None
    response_field: str | None = None
    input_field: str | None = None
    system: str | None = None
    prompt_template: str | None = None
    messages_field: str | None = None
    chat_template: str | None = None
    # client split (fedmom_cli/partition.py): unset = the paper's Dirichlet (beta, min_client_size);
    # iid, natural (one client per value of client_field), pathological and shard follow Flower
    # Datasets, with its option names in partitioner_options; label_field: the column of labels
    partitioner: str | None = None
    label_field: str | None = None
    client_field: str | None = None
    partitioner_options: dict[str, Any] | None = None

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(as_dict(self), sort_keys=True).encode()).hexdigest()[:16]


#: Keys added after runs were recorded: left out of hashes and config.yaml while unset, so that
#: existing run folders keep their hash (and resume) unchanged.
DP_KEYS = (
    "dp_noise_multiplier",
    "dp_target_epsilon",
    "dp_max_grad_norm",
    "dp_delta",
    "dp_client_noise_multiplier",
    "dp_client_clip",
)
LATER_KEYS = (
    "client_ranks",
    "method_options",
    "delta_path",
    "diagnostic_modules",
    "client_dropout",
    "round_deadline",
    "client_speed_sigma",
    "straggler_policy",
    "sites",
    "secagg",
    *DP_KEYS,
    # issue 26: task instruct's field mapping and the client split's partitioner
    *MAPPING_KEYS,
    "partitioner",
    "label_field",
    "client_field",
    "partitioner_options",
)
LEGACY_METHOD_KEYS = ("tau", "svd")  # top-level keys that are options of a method


def as_dict(cfg: TrainConfig) -> dict:
    data = dataclasses.asdict(cfg)
    for key in LATER_KEYS:
        if data.get(key) is None:
            data.pop(key, None)
    return data


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
CHOICES = {
    "precision": ("fp32", "bf16", "fp16"),
    "client_weights": ("samples", "uniform"),
    "lr_schedule": ("constant", "cosine"),
}


def _coerce(key: str, value):
    """Check/convert one value to the field's declared type."""
    hint = typing.get_type_hints(TrainConfig)[key]
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ()
    optional = type(None) in args
    base = next(a for a in args if a is not type(None)) if args else hint
    if value is None:
        if optional:
            return None
        raise UserError(f"config key {key!r} cannot be null")
    origin = typing.get_origin(base)
    try:
        if origin is dict:
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise ValueError
            return value
        if origin is list and typing.get_args(base) == (int,):
            if isinstance(value, str):
                value = [yaml.safe_load(v) for v in value.strip("[]").split(",") if v.strip()]
            if not isinstance(value, list) or not all(type(v) is int for v in value):
                raise ValueError
            return value
        if origin is list:
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError
            return value
        if base is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            if not isinstance(value, bool):
                raise ValueError
            return value
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if isinstance(value, (dict, list, bool)):  # `system: yes`, `prompt_template: {q}` in YAML
            kind = {dict: "a mapping", list: "a list", bool: "a boolean"}[type(value)]
            raise UserError(
                f"config key {key!r} expects text, got {kind} ({value!r}): YAML read the value as "
                "structure; quote it"
            )
        return str(value)
    except (TypeError, ValueError, OverflowError, yaml.YAMLError):  # float(10**400): OverflowError
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:40] + "..."
        raise UserError(f"config key {key!r} expects {hint}, got {shown}") from None


# Settings with two spellings: (key, its spelled-out default, when that value is the default). The
# default is recorded as None (the key left out of config.yaml and the hash); `secagg: false` is
# --no-secagg, and `straggler_policy: drop` with a deadline is the default policy
# (participation.deadline_of).
SPELLED_DEFAULTS = (
    ("secagg", False, lambda cfg: True),
    ("straggler_policy", "drop", lambda cfg: cfg.round_deadline is not None),
)


def _canonical(cfg: TrainConfig) -> TrainConfig:
    """One spelling per setting (SPELLED_DEFAULTS): a spelled-out default trains, hashes and records
    as leaving the key out, so a folder recorded with either spelling reads back as the same settings."""
    for key, spelled, applies in SPELLED_DEFAULTS:
        if getattr(cfg, key) == spelled and applies(cfg):
            cfg = dataclasses.replace(cfg, **{key: None})
    return cfg


def spelled_hashes(cfg: TrainConfig) -> set[str]:
    """cfg.hash() and the hashes of the same settings with SPELLED_DEFAULTS spelled out, as an older
    fedmom hashed them into a checkpoint.pt: a run it checkpointed with any spelling resumes
    (Server.load_state_dict)."""
    keys = [key for key, _, _ in SPELLED_DEFAULTS]
    choices = [
        [None, spelled] if getattr(cfg, key) is None and applies(cfg) else [getattr(cfg, key)]
        for key, spelled, applies in SPELLED_DEFAULTS
    ]
    return {
        dataclasses.replace(cfg, **dict(zip(keys, values))).hash() for values in itertools.product(*choices)
    }


def _check(cfg: TrainConfig) -> TrainConfig:
    from fedmom_cli.instruct import check_mapping
    from fedmom_cli.methods import METHODS
    from fedmom_cli.partitioners import check_names
    from fedmom_cli.tasks import TASK_NAMES

    cfg = _canonical(cfg)
    if cfg.method not in METHODS:
        raise UserError(f"unknown method {cfg.method!r}; choose one of: {', '.join(METHODS)}")
    if cfg.task not in TASK_NAMES:
        raise UserError(f"unknown task {cfg.task!r}; choose one of: {', '.join(TASK_NAMES)}")
    check_mapping(cfg)
    check_names(cfg.partitioner, cfg.label_field, cfg.client_field, cfg.partitioner_options)
    for key, choices in CHOICES.items():
        if getattr(cfg, key) not in choices:
            raise UserError(f"{key} must be one of {', '.join(choices)}, got {getattr(cfg, key)!r}")
    if cfg.delta_path not in (None, "merged", "separate"):
        raise UserError(
            f"delta_path must be merged or separate (unset: by precision), got {cfg.delta_path!r}"
        )
    positive = ("lora_r", "clients", "rounds", "local_steps", "batch_size", "grad_accum", "cutoff_len")
    for key in positive:
        if getattr(cfg, key) < 1:
            raise UserError(f"{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.batch_size % cfg.grad_accum:
        raise UserError(f"batch_size {cfg.batch_size} is not divisible by grad_accum {cfg.grad_accum}")
    if not cfg.lr > 0:
        raise UserError(f"lr must be > 0, got {cfg.lr}")
    if cfg.diagnostic_modules is not None and cfg.diagnostic_modules < 0:
        raise UserError(
            f"diagnostic_modules must be >= 0 (0: none; unset: all), got {cfg.diagnostic_modules}"
        )
    if cfg.clients_per_round is not None and not 1 <= cfg.clients_per_round <= cfg.clients:
        raise UserError(f"clients_per_round must be in 1..{cfg.clients}, got {cfg.clients_per_round}")
    _check_ranges(cfg)
    _check_privacy(cfg)
    _check_stragglers(cfg)
    _check_secagg(cfg)
    _check_method_options(cfg)
    if cfg.client_ranks is not None:
        _check_client_ranks(cfg, METHODS)
    return cfg


def check(cfg: TrainConfig) -> TrainConfig:
    """A TrainConfig built in code (fedmom_cli.api), checked as a recipe's settings are."""
    values = {name: _coerce(name, getattr(cfg, name)) for name in FIELDS}  # lora_alpha=64 -> 64.0
    return _check(TrainConfig(**values))


MIN_CUTOFF_LEN = 16  # below this no task's prompt leaves room for one response token


def _check_ranges(cfg: TrainConfig) -> None:
    """Values that parse but make no sense (each once gave a wrong result or a hang)."""
    import math
    import re

    def bad(key: str, rule: str) -> UserError:
        return UserError(f"{key} must be {rule}, got {getattr(cfg, key)!r}")

    for key in ("lr", "lora_alpha", "min_lr", "weight_decay", "lora_dropout", "beta"):
        if not math.isfinite(getattr(cfg, key)):
            raise bad(key, "a finite number")
    if cfg.max_grad_norm is not None and not (math.isfinite(cfg.max_grad_norm) and cfg.max_grad_norm > 0):
        raise bad("max_grad_norm", "> 0 or null (a negative norm flips the gradient)")
    if cfg.cutoff_len < MIN_CUTOFF_LEN:
        raise bad("cutoff_len", f">= {MIN_CUTOFF_LEN} (shorter leaves no response token to learn)")
    checks = [
        ("lora_alpha", cfg.lora_alpha > 0, "> 0"),
        ("seed", cfg.seed >= 0, ">= 0"),
        ("val_batch_size", cfg.val_batch_size >= 1, ">= 1"),
        ("val_rows", cfg.val_rows >= 0, ">= 0"),
        ("weight_decay", cfg.weight_decay >= 0, ">= 0"),
        ("lora_dropout", 0 <= cfg.lora_dropout < 1, "in [0, 1)"),
        ("min_lr", 0 <= cfg.min_lr <= cfg.lr, f"in [0, lr={cfg.lr}]"),
        ("beta", cfg.beta > 0, "> 0"),
        ("min_client_size", cfg.min_client_size >= 1, ">= 1 (an empty client cannot train)"),
        (
            "client_dropout",
            cfg.client_dropout is None or 0 <= cfg.client_dropout < 1,
            "in [0, 1) or null (1 would drop every client of every round)",
        ),
        ("synthetic", cfg.synthetic is None or cfg.synthetic >= 1, ">= 1 or null"),
        (
            "target_modules",
            bool(cfg.target_modules)
            and (len(cfg.target_modules) == 1 or not {"auto", "all-linear"} & set(cfg.target_modules)),
            "a non-empty list of module names, auto or all-linear",
        ),
        (
            "device",
            bool(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", cfg.device)),
            "auto, cpu, cuda, cuda:N or mps",
        ),
    ]
    for key, ok, rule in checks:
        if not ok:
            raise bad(key, rule)


#: The largest dp_target_epsilon: past it a guarantee means nothing, and Opacus' search for the noise
#: (bisection to within 0.01 of the target) did not end for 1e300 (float spacing there is ~1e284).
MAX_TARGET_EPSILON = 1e4
#: The noise multipliers accepted: Opacus' RDP accountant hung or divided by zero below ~1e-150 and
#: overflowed above ~1e155; 0.001 already spends an epsilon of 1e6 in two steps, and 1e6 is the
#: largest noise Opacus' own search (get_noise_multiplier's MAX_SIGMA) tries.
NOISE_RANGE = (1e-3, 1e6)


def _check_privacy(cfg: TrainConfig) -> None:
    """The DP keys (fedmom_cli/privacy.py): ranges, the keys each level needs, what DP excludes."""
    import math

    from fedmom_cli.privacy import CLIENT_DP_METHODS

    def bad(key: str, rule: str) -> UserError:
        return UserError(f"{key} must be {rule}, got {getattr(cfg, key)!r}")

    for key, rule in (
        ("dp_noise_multiplier", "> 0 (no noise is no privacy: leave the DP keys out)"),
        ("dp_target_epsilon", "> 0"),
        ("dp_max_grad_norm", "> 0"),
        ("dp_client_noise_multiplier", "> 0 (no noise is no privacy: leave the DP keys out)"),
        ("dp_client_clip", "> 0"),
    ):
        value = getattr(cfg, key)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise bad(key, rule)
    for key in ("dp_noise_multiplier", "dp_client_noise_multiplier"):
        value = getattr(cfg, key)
        if value is not None and not NOISE_RANGE[0] <= value <= NOISE_RANGE[1]:
            raise bad(
                key,
                f"in [{NOISE_RANGE[0]:g}, {NOISE_RANGE[1]:g}] (the RDP accountant's epsilon cannot be "
                "computed far outside; below it there is no privacy to speak of)",
            )
    if cfg.dp_target_epsilon is not None and cfg.dp_target_epsilon > MAX_TARGET_EPSILON:
        raise bad(
            "dp_target_epsilon",
            f"at most {MAX_TARGET_EPSILON:g} (a larger epsilon promises nothing; for little noise "
            "set dp_noise_multiplier)",
        )
    if cfg.dp_delta is not None and not (math.isfinite(cfg.dp_delta) and 0 < cfg.dp_delta < 1):
        raise bad("dp_delta", "in (0, 1) (usually below 1 / the number of rows)")
    if cfg.dp_noise_multiplier is not None and cfg.dp_target_epsilon is not None:
        raise UserError("give dp_noise_multiplier or dp_target_epsilon, not both (the target sets the noise)")
    if cfg.sample_dp:
        if cfg.dp_max_grad_norm is None or cfg.dp_delta is None:
            raise UserError(
                "DP-SGD (dp_noise_multiplier / dp_target_epsilon) needs dp_max_grad_norm and dp_delta"
            )
        if cfg.max_grad_norm is not None:
            raise UserError(
                "max_grad_norm clips the batch's gradient; with DP-SGD each sample's is clipped to "
                "dp_max_grad_norm: leave max_grad_norm out"
            )
        if cfg.gradient_checkpointing:
            raise UserError(
                "DP-SGD's per-sample gradients (Opacus hooks) do not work with gradient_checkpointing"
            )
        if cfg.precision == "fp16":
            raise UserError("DP-SGD does not run with precision fp16 (loss scaling); use bf16 or fp32")
        if cfg.client_ranks is not None:  # the noise would fill the zero rows a rank-r_k client keeps
            raise UserError("DP-SGD does not take heterogeneous client_ranks")
    elif cfg.dp_max_grad_norm is not None:
        raise UserError(
            "dp_max_grad_norm is set but DP-SGD is off (set dp_noise_multiplier or dp_target_epsilon)"
        )
    if (cfg.dp_client_noise_multiplier is None) != (cfg.dp_client_clip is None):
        raise UserError("client-level DP needs both dp_client_noise_multiplier and dp_client_clip")
    if cfg.client_dp:
        if cfg.method not in CLIENT_DP_METHODS:
            raise UserError(
                f"client-level DP clips a client's whole update and noises the average: {cfg.method}'s "
                f"aggregate is not a mean of the clients' factors (only {', '.join(CLIENT_DP_METHODS)}; "
                "docs/methods.md#differential-privacy); use DP-SGD (dp_noise_multiplier) instead"
            )
        if cfg.dp_delta is None:
            raise UserError("client-level DP needs dp_delta (for its epsilon)")
        if cfg.client_weights != "uniform":
            raise UserError(
                "client-level DP averages uniformly (weights by sample counts break its C / m "
                "sensitivity and reveal client sizes): set client_weights: uniform"
            )
        if cfg.client_ranks is not None:
            raise UserError("client-level DP does not take heterogeneous client_ranks")
    if cfg.dp_delta is not None and not (cfg.sample_dp or cfg.client_dp):
        raise UserError(
            "dp_delta is set but no DP is on (set dp_noise_multiplier, dp_target_epsilon or "
            "dp_client_noise_multiplier)"
        )


def _check_stragglers(cfg: TrainConfig) -> None:
    """round_deadline and client_speed_sigma together; the policy only with them; not a deadline
    that no client can ever meet (without spread every client has the same speed in every round)."""
    import math

    if (cfg.round_deadline is None) != (cfg.client_speed_sigma is None):
        raise UserError("stragglers need both round_deadline and client_speed_sigma (participation.py)")
    if cfg.straggler_policy is not None and cfg.round_deadline is None:
        raise UserError("straggler_policy is set but round_deadline is not")
    if cfg.round_deadline is None:
        return
    if not (math.isfinite(cfg.round_deadline) and cfg.round_deadline > 0):
        raise UserError(f"round_deadline must be > 0 (in nominal rounds, e.g. 1.5), got {cfg.round_deadline}")
    if not (math.isfinite(cfg.client_speed_sigma) and cfg.client_speed_sigma >= 0):
        raise UserError(f"client_speed_sigma must be >= 0, got {cfg.client_speed_sigma}")
    if cfg.straggler_policy not in (None, "drop", "partial"):
        raise UserError(f"straggler_policy must be drop or partial, got {cfg.straggler_policy!r}")
    if cfg.client_speed_sigma == 0:  # every client has speed 1 in every round: one count for all
        from fedmom_cli.participation import deadline_of, steps_by_deadline

        if steps_by_deadline(1, cfg.seed, 0, *deadline_of(cfg)) == [0]:
            raise UserError(
                f"round_deadline {cfg.round_deadline} with client_speed_sigma 0 leaves every client late "
                "in every round (nothing would train): the deadline must allow all local_steps "
                "(>= 1), or one step with straggler_policy partial (>= 1 / local_steps)"
            )
    if cfg.sample_dp:
        raise UserError(
            "DP-SGD's accountant plans local_steps steps a round; stragglers (round_deadline) change "
            "them: not supported together"
        )
    if cfg.secagg:
        raise UserError("secagg does not take round_deadline (a late client drops: not wired in SecAgg+)")


def _check_secagg(cfg: TrainConfig) -> None:
    """Secure aggregation: a method whose server needs only weighted means, 2 to 1023 clients a
    round (flower/secagg.py says why), every sampled client returning (SecAgg+ would recover a
    dropped client's masks, but fedmom's dropout is a client that answers an error before the masked
    stage: not wired), one rank, no server-side DP."""
    if not cfg.secagg:
        return
    from fedmom_cli.flower.secagg_rules import MAX_CLIENTS, refusal

    if (reason := refusal(cfg.method)) is not None:
        raise UserError(reason)
    per_round = cfg.clients_per_round or cfg.clients
    if per_round < 2:  # SecAggPlusWorkflow cancels such a round (its sum is the one client's vector)
        raise UserError(
            f"secagg needs at least 2 clients in every round (SecAgg+ refuses a round of one: its sum "
            f"would be that client's update), got {per_round}"
        )
    if per_round > MAX_CLIENTS:
        raise UserError(
            f"secagg takes at most {MAX_CLIENTS} clients a round: SecAgg+'s masked sum is taken modulo "
            f"2**32 and each client adds up to 2**22, so more would wrap around; got {per_round}"
        )
    if cfg.client_dropout:
        raise UserError("secagg does not take client_dropout (fedmom's dropouts are not wired into SecAgg+)")
    if cfg.client_ranks is not None:
        raise UserError(
            "secagg does not take heterogeneous client_ranks (the masked vectors must have one shape)"
        )
    if cfg.client_dp or cfg.sample_dp:
        raise UserError(
            "secagg does not take the dp_* keys: client-level DP clips each client's update at the "
            "server, which secure aggregation hides, and DP-SGD runs with --engine sequential only"
        )
    if cfg.diagnostic_modules not in (None, 0):
        raise UserError("secagg hides each client's factors: the per-client diagnostics cannot be measured")


def _check_client_ranks(cfg: TrainConfig, methods: dict) -> None:
    ranks = cfg.client_ranks
    if len(ranks) != cfg.clients:
        raise UserError(f"client_ranks has {len(ranks)} entries for {cfg.clients} clients")
    if any(r < 1 or r > cfg.lora_r for r in ranks):
        raise UserError(f"client_ranks must be in 1..lora_r={cfg.lora_r}, got {ranks}")
    method = methods[cfg.method]
    if not hasattr(getattr(method, "func", method), "heterogeneous"):
        raise UserError(f"method {cfg.method} does not support heterogeneous client ranks")
    from fedmom_cli.methods import frozen_factors

    options = method_kwargs(cfg)
    shares = frozen_factors(cfg.method, 0, **options) | frozen_factors(cfg.method, 1, **options)
    if shares and max(ranks) != cfg.lora_r:
        raise UserError(
            f"{cfg.method} shares a frozen factor of rank lora_r={cfg.lora_r}: the largest client rank "
            f"must equal it, got {max(ranks)}"
        )


def method_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """The options this run passes to its method: the top-level legacy keys the method takes, then
    `method_options` (which wins)."""
    from fedmom_cli.methods import method_options

    takes = method_options(cfg.method)
    legacy = {k: getattr(cfg, k) for k in LEGACY_METHOD_KEYS if k in takes}
    return {**legacy, **(cfg.method_options or {})}


def _check_method_options(cfg: TrainConfig) -> None:
    """Options are checked once, by the method's own constructor (methods.build_method): the run's
    options on its method, and each legacy top-level key on a registered method that takes it (so
    `tau: 2` is refused whatever the method, as it always was)."""
    from fedmom_cli.methods import METHODS, LoraSpec, build_method, method_options

    lora = LoraSpec(r=cfg.lora_r, alpha=cfg.lora_alpha, use_rslora=cfg.use_rslora)
    for key in LEGACY_METHOD_KEYS:
        owner = next(name for name in METHODS if key in method_options(name))
        build_method(owner, lora, **{key: getattr(cfg, key)})
        value = getattr(cfg, key)
        if value != FIELDS[key].default and key not in method_options(cfg.method):
            # `--set svd=randomized` with fedit trained exactly as without it (issue 30: SG31)
            takes = [name for name in METHODS if key in method_options(name)]
            raise UserError(
                f"{key}={value}: method {cfg.method} does not take {key} (only {', '.join(takes)}); "
                "leave it out"
            )
    build_method(cfg.method, lora, seed=cfg.seed, **method_kwargs(cfg))


def recipe_path(name: str) -> Path:
    """A recipe file: a path, or a name under recipes/ (`smoke` -> recipes/smoke.yaml)."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    for candidate in (RECIPES_DIR / f"{name}.yaml", Path.cwd() / "recipes" / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []
    raise UserError(f"recipe {name!r} not found (known: {', '.join(known) or 'none'})")


def read_recipe(path: Path) -> dict:
    """The whole recipe mapping, including its optional `sweep:` section."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read recipe {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"recipe {path} must be a mapping of settings")
    return data


def recipe_report_to(name: str | None) -> str:
    """A recipe's `report_to` (experiment tracking backend), default none."""
    value = read_recipe(recipe_path(name)).get("report_to", "none") if name else "none"
    return str(value) if value is not None else "none"


def read_yaml(path: Path) -> dict:
    """A recipe's training settings (its `sweep:` section, used by `fedmom sweep`, and the run-level
    `report_to`, which is no setting of the run, are left out)."""
    data = {k: v for k, v in read_recipe(path).items() if k not in ("sweep", "report_to")}
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise UserError(f"recipe {path}: unknown key(s) {', '.join(unknown)}")
    return data


def _is_text(key: str) -> bool:
    """Whether the field holds text (str or str | None)."""
    hint = typing.get_type_hints(TrainConfig)[key]
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ()
    return hint is str or set(args) == {str, type(None)}


def parse_set(items: list[str]) -> dict:
    """['lr=1e-4', 'target_modules=q_proj,v_proj'] -> dict; values parsed as YAML scalars, but a
    text key's value that YAML reads as something else (a mapping, a boolean, a number) is kept as
    written (`--set system=Answer: yes` is that text); null and YAML-quoted text still work."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in FIELDS:
            raise UserError(f"--set expects KEY=VALUE with a known key, got {item!r}")
        try:
            parsed = yaml.safe_load(value) if value.strip() else None
            # a text key takes the text as written: YAML would read "Answer: briefly" as a mapping,
            # "yes" as a boolean and "3.10" as 3.1, and they were stringified into other text
            out[key.strip()] = (
                value if _is_text(key.strip()) and not isinstance(parsed, (str, type(None))) else parsed
            )
        except yaml.constructor.ConstructorError:  # a tag (!!python/object/...): never constructed
            raise UserError(f"--set {key.strip()}: YAML tags are not accepted, got {value!r}") from None
        except yaml.YAMLError:  # not a YAML scalar (e.g. ",", "[a"): the text itself, typed later
            out[key.strip()] = value
    return out


def merge_options(overrides: dict, given: dict) -> dict:
    """--set overrides plus a command's own options (--rounds, --lr, ...); a setting given both ways
    with different values is an error (the option used to win silently, hiding a bad --set value)."""
    for key in sorted(set(overrides) & set(given)):
        a, b = _coerce(key, overrides[key]), _coerce(key, given[key])
        if a != b:
            flag = "--" + key.replace("_", "-")
            raise UserError(f"{flag} {given[key]} and --set {key}={overrides[key]} disagree; give one")
    return {**overrides, **given}


def resolve(recipe: str | None, task: str | None, overrides: dict) -> TrainConfig:
    """Defaults, then recipes/defaults.yaml, the recipe (or the task's paper recipe), then overrides."""
    values: dict = {}
    defaults = RECIPES_DIR / "defaults.yaml"
    if defaults.is_file():
        values.update(read_yaml(defaults))
    if recipe is None and task is not None:
        from fedmom_cli.tasks import TASK_NAMES

        if task not in TASK_NAMES:  # `--task physics` is an unknown task, not an unknown recipe
            raise UserError(f"unknown task {task!r}; choose one of: {', '.join(TASK_NAMES)}")
    name = recipe or task or "math"
    values.update(read_yaml(recipe_path(name)))
    if task is not None:
        values["task"] = task
    values.update({k: v for k, v in overrides.items()})
    if isinstance(values.get("client_ranks"), dict):  # a rule: the run records the list it expands to
        from fedmom_cli.rank_rules import expand

        clients = _coerce("clients", values.get("clients", FIELDS["clients"].default))
        values["client_ranks"] = expand(values["client_ranks"], clients)
    cfg = TrainConfig(**{k: _coerce(k, v) for k, v in values.items()})
    return _check(cfg)


def to_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(as_dict(cfg), sort_keys=False)


def from_yaml(text: str) -> TrainConfig:
    data = yaml.safe_load(text)
    return _canonical(TrainConfig(**{k: _coerce(k, v) for k, v in data.items() if k in FIELDS}))
