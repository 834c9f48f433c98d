"""fedmom_cli.api (issue 26, point 5): the Python entry point, and the code the CLI runs."""

from __future__ import annotations

import dataclasses

import pytest
from helpers import run_main

from fedmom_cli import api
from fedmom_cli import config as cfgmod
from fedmom_cli import train as tr
from fedmom_cli.errors import UserError


def test_a_recipe_a_dict_and_a_trainconfig_resolve_as_the_command_line_does():
    expected = cfgmod.resolve("smoke", None, {"method": "fedit", "rounds": 2})  # `--recipe smoke --set ...`
    assert api.resolve_config("smoke", method="fedit", rounds=2) == expected
    assert api.resolve_config({"recipe": "smoke", "method": "fedit", "rounds": 2}) == expected
    as_code = dataclasses.replace(expected, lora_alpha=8)  # an int where the field is a float
    assert api.resolve_config(as_code).hash() == expected.hash()
    # no recipe: the task's paper recipe, as `fedmom train --task commonsense`
    assert api.resolve_config({"task": "commonsense"}) == cfgmod.resolve(None, "commonsense", {})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"recipe": "smoke", "lr": -1}, "lr must be > 0"),
        ({"recipe": "smoke", "lr_rate": 1}, "unknown setting.s. lr_rate"),
        ({"recipe": "no_such_recipe"}, "no_such_recipe"),
        (dataclasses.replace(cfgmod.resolve("smoke", None, {}), method="fedavg"), "unknown method 'fedavg'"),
        (dataclasses.replace(cfgmod.resolve("smoke", None, {}), rounds="five"), "config key 'rounds'"),
    ],
)
def test_bad_settings_are_the_commands_one_line_errors(config, message, tmp_path):
    with pytest.raises(UserError, match=message):
        api.train(config, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_unknown_evaluate_option_is_a_type_error(tmp_path):
    with pytest.raises(TypeError, match="unknown option"):
        api.evaluate(tmp_path, taskz="gsm8k")


def test_train_returns_the_run_and_a_finished_one_is_returned_as_is(tmp_path, capsys):
    run = api.train("smoke", method="fedit", rounds=2, local_steps=2, val_rows=4, out=tmp_path / "r")
    assert run.status == "finished" and run.path == tmp_path / "r"
    assert run.config == cfgmod.from_yaml((tmp_path / "r" / "config.yaml").read_text())
    assert run.config.target_modules == ["q_proj", "v_proj"]  # `auto`, resolved for the tiny Llama
    assert [m["round"] for m in run.metrics()] == [0, 1]
    assert run.final_loss == run.metrics()[-1]["loss"]
    assert run.summary().startswith("finished: fedit on math, 2 rounds, ")
    opened = api.Run.open(run.path)
    assert (opened.config, opened.result) == (run.config, run.result)
    capsys.readouterr()
    again = api.train("smoke", method="fedit", rounds=2, local_steps=2, val_rows=4, out=tmp_path / "r")
    assert "is already finished" in capsys.readouterr().out and again.result == run.result


def test_the_cli_is_a_layer_over_the_api(monkeypatch, capsys, tmp_path):
    """`fedmom train`, `eval` and `report` call api.train / evaluate / report with what they parsed
    and print what these return: nothing is computed on the command line's side."""
    calls = {}

    class FakeRun:
        def summary(self):
            return "summary from api.train"

    def fake_train(config, **options):
        calls["train"] = (config, options)
        return FakeRun()

    def fake_evaluate(run, **options):
        calls["evaluate"] = (run, options)
        return {
            "tasks": {
                "t": {"metric": "acc", "value": 0.5, "stderr": None, "n": 2, "shots": 0, "protocol": "p"}
            }
        }

    def fake_report(root, out=None, **options):
        calls["report"] = (root, out, options)
        return "report from api.report\n"

    monkeypatch.setattr(api, "train", fake_train)
    monkeypatch.setattr(api, "evaluate", fake_evaluate)
    monkeypatch.setattr(api, "report", fake_report)
    code, out, err = run_main(
        monkeypatch,
        capsys,
        "train",
        "--recipe",
        "smoke",
        "--method",
        "fedit",
        "--set",
        "rounds=3",
        "--out",
        "x",
    )
    assert code == 0 and "summary from api.train" in err
    config, options = calls["train"]
    assert config == {"recipe": "smoke", "method": "fedit", "rounds": 3}
    assert str(options["out"]) == "x" and options["report_to"] is None
    code, out, _ = run_main(monkeypatch, capsys, "eval", "somerun", "--tasks", "a,b", "--limit", "2")
    assert code == 0 and out == "t: acc = 0.5000 (n=2, 0-shot, p)\n"
    assert str(calls["evaluate"][0]) == "somerun" and calls["evaluate"][1]["tasks"] == ["a", "b"]
    code, out, _ = run_main(monkeypatch, capsys, "report", tmp_path, "--no-figures")
    assert code == 0 and out == "report from api.report\n" and calls["report"][2]["figures"] is False


def test_train_through_the_api_is_the_commands_run(tmp_path, monkeypatch, capsys):
    """The same settings through `fedmom train` and api.train: the same config.yaml and losses."""
    settings = ["--set", "rounds=2", "--set", "local_steps=2"]
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "train",
        "--recipe",
        "smoke",
        "--method",
        "fedmomentum",
        *settings,
        "--out",
        tmp_path / "cli",
        "--no-progress",
    )
    assert code == 0, err
    run = api.train("smoke", method="fedmomentum", rounds=2, local_steps=2, out=tmp_path / "api")
    assert (tmp_path / "cli" / "config.yaml").read_bytes() == (run.path / "config.yaml").read_bytes()
    assert [m["loss"] for m in api.Run.open(tmp_path / "cli").metrics()] == [m["loss"] for m in run.metrics()]
    assert tr.out_dir(tr.TrainOptions(run.config)).as_posix() == "results/math/fedmomentum/seed0"


@pytest.mark.parametrize(
    "settings,shown",
    [
        ({}, "final loss 6."),
        # every sampled client dropped in the last round: it said "no step had a trainable token"
        ({"client_dropout": 0.99}, "final loss none (no client returned in the last round)"),
    ],
)
def test_summary_says_why_there_is_no_final_loss(tmp_path, settings, shown):
    base = {"clients": 2, "rounds": 2, "synthetic": 40, "min_client_size": 8, "local_steps": 1}
    run = api.train("smoke", out=tmp_path / "run", **base, **settings)
    assert shown in run.summary()
