"""Which clients take part in a round, and which of them fail to return: one pure function that
both engines call (the sequential loop in simulate.py and the Flower strategy).

    part = sample_round(clients=10, per_round=4, dropout=0.2, seed=0, round_idx=3)
    part.sampled    # the clients asked to train this round, sorted
    part.returned   # those whose update reaches the server (aggregated, weights renormalised)
    part.dropped    # sampled, but failed to return (simulated)

- Sampling: `per_round` of `clients` without replacement from numpy's generator seeded by
  (seed, round); None (or all) samples every client. This is the draw fedmom always made, so runs
  recorded before this module sample the same clients.
- Dropout: each client has its own uniform draw u_k from a second stream seeded by (seed, round,
  DROPOUT_STREAM), drawn for all `clients` so that client k's fate does not depend on who else was
  sampled; a sampled client with u_k < dropout fails to return. Both draws depend only on the run's
  seed and the round, so a resumed run drops exactly the clients an uninterrupted one drops.
- A dropped client is modelled as failing before it sends anything: it does not train (its data
  order does not advance, its compute is not spent) and the server aggregates over the clients that
  returned. Every sampled client may drop: the round then leaves the global model as it was
  (server.py documents what each method does then).

- Stragglers (`round_deadline: D`, `client_speed_sigma: sigma`, `straggler_policy: drop|partial`):
  each client's time per local step in round t is s_k = exp(sigma z_k), z_k ~ N(0, 1) from a third
  stream seeded by (seed, round, STRAGGLER_STREAM), drawn for all `clients` (a nominal client takes
  1 per step, a round of `local_steps` steps takes `local_steps`). The server closes the round at
  D x local_steps: a client finishes n_k = min(local_steps, floor(D x local_steps / s_k)) steps by
  then. On time (n_k = local_steps): it returns as usual. Late: with `drop` (the default, what a
  synchronous server does) it is dropped like a dropout (it trains nothing, its data order does
  not advance: the server discards a late update, so it is modelled as never sent); with `partial`
  (FedProx's tolerance of partial work) it returns the n_k steps it did, or is dropped when
  n_k = 0. A partial client's update is weighted by its rows as any other (FedNova's
  normalisation by steps is not applied). `late` lists the clients the deadline dropped (they are
  in `dropped` too), `steps` the returned clients that did fewer than `local_steps` steps.
  Dropout is drawn first: a client that drops is not also late.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

DROPOUT_STREAM = 1  # the dropout draw's third seed word: a stream apart from the sampling draw
STRAGGLER_STREAM = 2  # the clients' speeds: a third stream


@dataclass(frozen=True)
class Participation:
    sampled: list[int]
    returned: list[int]
    dropped: list[int]
    late: list[int] = field(default_factory=list)  # dropped by the round deadline (also in dropped)
    steps: dict[int, int] = field(default_factory=dict)  # returned with fewer than local_steps steps


def sample_round(
    clients: int,
    per_round: int | None,
    dropout: float | None,
    seed: int,
    round_idx: int,
    deadline: tuple[float, float, str, int] | None = None,
) -> Participation:
    """The clients sampled in round `round_idx` and those of them that return (module docstring).
    `deadline`: (round_deadline D, client_speed_sigma, straggler_policy, local_steps), or None."""
    if per_round is None or per_round == clients:
        sampled = list(range(clients))
    else:
        draw = np.random.default_rng([seed, round_idx]).choice(clients, per_round, replace=False)
        sampled = sorted(int(c) for c in draw)
    dropped: list[int] = []
    if dropout:
        u = np.random.default_rng([seed, round_idx, DROPOUT_STREAM]).random(clients)
        dropped = [k for k in sampled if u[k] < dropout]
    if deadline is None:
        return Participation(sampled, [k for k in sampled if k not in dropped], dropped)
    done = steps_by_deadline(clients, seed, round_idx, *deadline)
    late = [k for k in sampled if k not in dropped and done[k] == 0]
    gone = set(dropped) | set(late)
    returned = [k for k in sampled if k not in gone]
    steps = {k: done[k] for k in returned if done[k] < deadline[3]}
    return Participation(sampled, returned, sorted(gone), late, steps)


def steps_by_deadline(
    clients: int, seed: int, round_idx: int, deadline: float, sigma: float, policy: str, local_steps: int
) -> list[int]:
    """Each client's local steps finished by the round deadline; 0 = late (module docstring).
    With policy `drop`, a client that cannot finish all `local_steps` is late."""
    z = np.random.default_rng([seed, round_idx, STRAGGLER_STREAM]).standard_normal(clients)
    out = []
    for zk in z:
        n = _finished(deadline, sigma * float(zk), local_steps)
        out.append(n if n == local_steps or policy == "partial" else 0)
    return out


def _finished(deadline: float, log_speed: float, local_steps: int) -> int:
    """min(local_steps, floor(D local_steps / exp(log_speed))). Where a float overflows (a speed
    exp(sigma z) past 1e308 or under 1e-308, a budget D x local_steps past 1e308: round_deadline
    1e308 or client_speed_sigma 1000 raised OverflowError / ZeroDivisionError mid-run), the same
    comparison in logs; elsewhere the direct formula, so no finite draw's count changes."""
    try:
        return min(local_steps, math.floor(deadline * local_steps / math.exp(log_speed)))
    except (OverflowError, ZeroDivisionError):
        log_steps = math.log(deadline) + math.log(local_steps) - log_speed
        return local_steps if log_steps >= math.log(local_steps) else math.floor(math.exp(log_steps))


def deadline_of(cfg) -> tuple[float, float, str, int] | None:
    """sample_round's `deadline` argument from a TrainConfig (None without round_deadline)."""
    if cfg.round_deadline is None:
        return None
    return (cfg.round_deadline, cfg.client_speed_sigma, cfg.straggler_policy or "drop", cfg.local_steps)
