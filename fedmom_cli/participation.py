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

Stragglers' round deadline: not simulated (a client's training time is not drawn or configured);
a client either returns or drops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DROPOUT_STREAM = 1  # the dropout draw's third seed word: a stream apart from the sampling draw


@dataclass(frozen=True)
class Participation:
    sampled: list[int]
    returned: list[int]
    dropped: list[int]


def sample_round(
    clients: int, per_round: int | None, dropout: float | None, seed: int, round_idx: int
) -> Participation:
    """The clients sampled in round `round_idx` and those of them that return (module docstring)."""
    if per_round is None or per_round == clients:
        sampled = list(range(clients))
    else:
        draw = np.random.default_rng([seed, round_idx]).choice(clients, per_round, replace=False)
        sampled = sorted(int(c) for c in draw)
    if not dropout:
        return Participation(sampled, list(sampled), [])
    u = np.random.default_rng([seed, round_idx, DROPOUT_STREAM]).random(clients)
    dropped = [k for k in sampled if u[k] < dropout]
    return Participation(sampled, [k for k in sampled if u[k] >= dropout], dropped)
