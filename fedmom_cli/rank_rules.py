"""`client_ranks` as a rule: expand {cycle: [...]} or {spread: [low, high]} to one rank per client.

A recipe (or `--set`) may give `client_ranks` as an explicit list, one rank per client, or as one of
two rules, expanded here once the number of clients is known:

    client_ranks: {cycle: [4, 8, 16]}   client k gets ranks[k % len(ranks)]
                                         (6 clients: 4, 8, 16, 4, 8, 16)
    client_ranks: {spread: [4, 16]}     evenly from low to high, rounded half up:
                                         r_k = floor(low + (high - low) * k / (n - 1) + 1/2)
                                         (5 clients: 4, 7, 10, 13, 16; one client: low)

The run folder records the resolved list (config.yaml's `client_ranks`), never the rule, so the
config hash depends only on the ranks the clients train with: a rule and the list it expands to are
the same run. Each resolved rank is then checked like a list (1..lora_r, the method supports
heterogeneous ranks) by `fedmom_cli.config`.
"""

from __future__ import annotations

from fedmom_cli.errors import UserError

RULES = ("cycle", "spread")
FORMS = "a list of ranks, {cycle: [r, ...]} or {spread: [low, high]}"


def _ints(name: str, value) -> list[int]:
    if not isinstance(value, list) or not value or not all(type(v) is int for v in value):
        raise UserError(f"client_ranks: {name} expects a non-empty list of integers, got {value!r}")
    return value


def expand(rule: dict, clients: int) -> list[int]:
    """The rule's list of `clients` ranks (UserError for a malformed rule)."""
    if not isinstance(rule, dict) or len(rule) != 1 or next(iter(rule)) not in RULES:
        raise UserError(f"client_ranks must be {FORMS}, got {rule!r}")
    ((name, value),) = rule.items()
    ranks = _ints(name, value)
    if name == "cycle":
        return [ranks[k % len(ranks)] for k in range(clients)]
    if len(ranks) != 2:
        raise UserError(f"client_ranks: spread expects [low, high], got {value!r}")
    low, high = ranks
    if low > high:
        raise UserError(f"client_ranks: spread expects low <= high, got {value!r}")
    if clients == 1:
        return [low]
    span, steps = high - low, clients - 1  # integer arithmetic: no float rounding at the halves
    return [low + (2 * span * k + steps) // (2 * steps) for k in range(clients)]
