"""A new method with one option is its own class plus one registry line: nothing else changes.

The method is defined here, registered for the test only (monkeypatch), and trained one round on the
tiny model through the ordinary config (`method_options`), Simulation and Server.
"""

from __future__ import annotations

import pytest
import torch
from test_train import SMOKE

from fedmom_cli import config as cfgmod
from fedmom_cli.errors import UserError
from fedmom_cli.methods import METHODS, LoraFactors, RoundResult, display_name, frozen_factors
from fedmom_cli.methods.base import ModuleResult


class ShrunkAverage:
    """Toy: FedAvg of B, times `shrink`; A stays the global one (so clients need not train it)."""

    name = "shrunk_average"
    display_name = "Shrunk average"

    def __init__(self, lora, shrink: float = 1.0) -> None:
        if not 0 <= shrink <= 1:
            raise ValueError(f"shrink must be in [0, 1], got {shrink}")
        self.lora, self.shrink = lora, shrink

    def trainable(self, round_idx: int) -> frozenset[str]:
        return frozenset({"B"})

    def aggregate(self, clients, weights, round_idx: int) -> RoundResult:
        total = sum(weights)
        modules = {}
        for name, factors in clients.items():
            B = sum(w / total * f.B for w, f in zip(weights, factors)) * self.shrink
            modules[name] = ModuleResult(LoraFactors(factors[0].A, B))
        numel = sum(f[0].B.numel() for f in clients.values())
        return RoundResult(modules, numel_up=numel, numel_down=numel, bytes_per_number=4)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(METHODS, "shrunk_average", ShrunkAverage)  # the one registry line


def config(**options):
    return cfgmod.resolve("smoke", "math", {"method": "shrunk_average", **SMOKE, "method_options": options})


def test_a_toy_method_with_one_option_trains_one_round(registered, tmp_path):
    from fedmom_cli.simulate import Simulation

    sim = Simulation(config(shrink=0.5), tmp_path)
    A0 = {m: f.A.clone() for m, f in sim.server.global_factors.items()}
    record = sim.run_round(0)
    w = torch.tensor(record.weights, dtype=torch.float64)
    for m, g in sim.server.global_factors.items():  # the option reached the method: half the average
        want = 0.5 * sum(wi * u.factors[m].B.double() for wi, u in zip(w, record.updates))
        assert torch.allclose(g.B.double(), want, rtol=1e-5, atol=1e-8) and want.abs().max() > 0
        assert torch.equal(g.A, A0[m])  # never trained, as `trainable` says
    assert record.to_json()["bytes_up_per_client"] > 0 and record.loss > 0
    assert display_name("shrunk_average") == "Shrunk average"
    assert frozen_factors("shrunk_average") == {"A"}


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"shrink": 2.0}, "shrink must be in"),  # the method's own check
        ({"tau": 0.5}, "does not take option"),  # another method's option
        ({"shrinkk": 1}, "does not take"),  # a typo
    ],
)
def test_its_options_are_checked_when_the_config_is_read(registered, options, fragment):
    with pytest.raises(UserError, match=fragment):
        config(**options)


def test_method_options_reach_a_registered_method_and_stay_out_of_old_hashes():
    plain = cfgmod.resolve("smoke", "math", {"method": "fedmomentum"})
    assert "method_options" not in cfgmod.to_yaml(plain)  # recorded runs keep their hash
    tuned = cfgmod.resolve("smoke", "math", {"method": "fedmomentum", "method_options": "{tau: 0.5}"})
    assert cfgmod.method_kwargs(tuned)["tau"] == 0.5 and tuned.hash() != plain.hash()
    assert cfgmod.from_yaml(cfgmod.to_yaml(tuned)) == tuned
    with pytest.raises(UserError, match="tau must be in"):
        cfgmod.resolve("smoke", "math", {"method": "fedmomentum", "method_options": {"tau": 2}})


def test_report_rows_name_the_paper_methods_as_the_methods_do():
    # report/ imports no torch, so it cannot read `display_name` from the classes; its NAMES are the
    # paper's row labels (keys of data/paper_tables.json). Where the paper uses a method's own name,
    # the two must agree (the ablations are "w/o balance" / "w/o residual" in the paper's tables).
    from fedmom_cli.report.tables import MAIN, NAMES

    for method in MAIN[1:]:
        assert NAMES[method] == display_name(method)
