"""The registry of aggregation methods: one name, one file, one class behind `base.Method`.

    METHODS["fedmomentum"](LoraSpec(r=32, alpha=64), tau=0.9999)

A method's options are its constructor's keyword arguments (checked by `build_method`; a run sets
them with `method_options` in its config, the older top-level `tau` and `svd` still work) and its
display name is the class attribute `display_name`: a new method is its own file plus one line here.

The FedMomentum ablations of the paper's Tables 5-7 are registered under their own names so that
run folders, recipes and report rows can name them; they are the same class with one switch off.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from fedmom_cli.errors import UserError
from fedmom_cli.methods.base import LoraFactors, LoraSpec, Method, RoundResult
from fedmom_cli.methods.fedex_lora import FedExLoRA
from fedmom_cli.methods.fedit import FedIT
from fedmom_cli.methods.fedmomentum import FedMomentum
from fedmom_cli.methods.fedsa_lora import FedSALoRA
from fedmom_cli.methods.fedsvd import FedSVD
from fedmom_cli.methods.ffa_lora import FFALoRA
from fedmom_cli.methods.flexlora import FlexLoRA
from fedmom_cli.methods.flora import FLoRA
from fedmom_cli.methods.hetlora import HetLoRA
from fedmom_cli.methods.rolora import RoLoRA


def _ablation(cls, display_name: str, **switches):
    """The method with switches fixed, under its own name (a partial: the options stay checkable)."""
    made = functools.partial(cls, **switches)
    made.display_name = display_name
    return made


METHODS: dict[str, Callable[..., Method]] = {
    "fedit": FedIT,
    "flora": FLoRA,
    "ffa_lora": FFALoRA,
    "rolora": RoLoRA,
    "fedex_lora": FedExLoRA,
    "fedmomentum": FedMomentum,
    "fedmomentum_no_balance": _ablation(FedMomentum, "FedMomentum w/o balanced split", balance=False),
    "fedmomentum_no_residual": _ablation(FedMomentum, "FedMomentum w/o residual", residual=False),
    # The factorial ablation of FedMomentum's two mechanisms: FedIT's average, re-split like FedMomentum
    "fedit_resplit": _ablation(FedIT, "FedIT + SVD re-split", resplit=True),
    # Beyond the paper (issue 14): heterogeneous-rank and selective-aggregation methods.
    "flexlora": FlexLoRA,
    "hetlora": HetLoRA,
    "fedsa_lora": FedSALoRA,
    "fedsvd": FedSVD,
}


def method_options(name: str) -> set[str]:
    """The keyword options a registered method accepts (besides the LoRA spec)."""
    params = inspect.signature(METHODS[name]).parameters
    return {p for p in params if p != "lora"}


def display_name(name: str) -> str:
    """How tables, model cards and figures name a registered method (its class's `display_name`)."""
    return getattr(METHODS[name], "display_name", name)


def frozen_factors(name: str, round_idx: int = 0, **options: Any) -> frozenset[str]:
    """The factors a method's clients do not train in `round_idx` (they must share them)."""
    method = build_method(name, LoraSpec(r=1, alpha=1.0), **options)
    return frozenset({"A", "B"}) - method.trainable(round_idx)


def build_method(name: str, lora: LoraSpec, seed: int = 0, **options: Any) -> Method:
    """Instantiate a registered method.

    `seed` goes to the methods that draw random numbers; any other option that is not None must be
    one the method takes, so that e.g. `--tau` with `fedit` is an error rather than ignored.
    """
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    given = {k: v for k, v in options.items() if v is not None}
    if "seed" in method_options(name):
        given["seed"] = seed
    unknown = set(given) - method_options(name)
    if unknown:
        raise UserError(f"method {name} does not take option(s): {', '.join(sorted(unknown))}")
    try:
        return METHODS[name](lora, **given)
    except ValueError as exc:
        raise UserError(f"{name}: {exc}") from None


__all__ = [
    "METHODS",
    "LoraFactors",
    "LoraSpec",
    "Method",
    "RoundResult",
    "build_method",
    "display_name",
    "frozen_factors",
    "method_options",
]
