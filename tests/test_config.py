"""Recipes and settings: every shipped recipe loads; typos and wrong types fail before training."""

from __future__ import annotations

import pytest
import yaml

from fedmom_cli import config as cfgmod
from fedmom_cli.errors import UserError

RECIPES = sorted(
    str(p.relative_to(cfgmod.RECIPES_DIR).with_suffix("")) for p in cfgmod.RECIPES_DIR.rglob("*.yaml")
)


@pytest.mark.parametrize("name", RECIPES)
def test_every_shipped_recipe_loads_and_validates(name):
    cfg = cfgmod.resolve(name, None, {})
    assert cfg.lora_r >= 1 and cfg.rounds >= 1
    assert cfgmod.from_yaml(cfgmod.to_yaml(cfg)) == cfg  # what config.yaml stores reads back equal
    first = (cfgmod.RECIPES_DIR / f"{name}.yaml").read_text().splitlines()[0]
    if name == "mini/math":
        assert (cfg.model, cfg.clients, cfg.beta, cfg.lora_r, cfg.val_rows) == ("smollm2-135m", 5, 0.5, 8, 24)
    assert first.startswith("#")  # each recipe says what it is for


def test_paper_recipes_follow_the_paper():
    for task, rounds in (("math", 50), ("commonsense", 20), ("code", 30)):
        cfg = cfgmod.resolve(None, task, {})
        assert (cfg.task, cfg.rounds, cfg.model) == (task, rounds, "meta-llama/Llama-2-7b-hf")
        assert (cfg.lora_r, cfg.lora_alpha, cfg.lr, cfg.clients, cfg.local_steps, cfg.batch_size) == (
            32,
            64.0,
            3e-4,
            10,
            10,
            16,
        )
        assert (cfg.beta, cfg.tau) == (0.5, 0.9999)


def test_overrides_are_typed_and_win():
    cfg = cfgmod.resolve(
        "smoke",
        "code",
        cfgmod.parse_set(
            ["lr=1e-3", "target_modules=q_proj,k_proj,v_proj", "clients_per_round=2", "use_rslora=true"]
        ),
    )
    assert cfg.task == "code" and cfg.lr == 1e-3 and cfg.clients_per_round == 2 and cfg.use_rslora
    assert cfg.target_modules == ["q_proj", "k_proj", "v_proj"]


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"rounds": "many"}, "expects"),
        ({"rounds": 2.5}, "expects"),
        ({"lr": True}, "expects"),
        ({"precision": "int4"}, "precision must be one of"),
        ({"method": "fedavg"}, "unknown method"),
        ({"clients_per_round": 99}, "clients_per_round"),
        ({"tau": 0.0}, "tau must be in"),
        ({"model": None}, "cannot be null"),
    ],
)
def test_bad_settings_are_user_errors(overrides, match):
    with pytest.raises(UserError, match=match):
        cfgmod.resolve("smoke", None, overrides)


def test_unknown_recipe_keys_are_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("# a typo\nlearning_rate: 0.1\n")
    with pytest.raises(UserError, match="unknown key.*learning_rate"):
        cfgmod.resolve(str(bad), None, {})


@pytest.mark.parametrize(
    "item,want",
    [  # a text key takes --set's text as written; YAML once turned these into other text
        ("system=Answer: briefly", "Answer: briefly"),  # was "{'Answer': 'briefly'}"
        ("system=yes", "yes"),  # was "True"
        ("system=3.10", "3.10"),  # was "3.1"
        ("system=[a, b]", "[a, b]"),  # was "['a', 'b']"
        ("prompt_template=Q: {question}", "Q: {question}"),  # was refused as a placeholder {'Q'}
        ('system="quoted: text"', "quoted: text"),  # YAML's quotes still work
        ("label_field=1", "1"),
        ("system=null", None),
        ("system=", None),
    ],
)
def test_set_on_a_text_key_keeps_the_text(item, want):
    values = cfgmod.parse_set([item, "task=instruct", "synthetic=null", "response_field=a"])
    if "prompt_template" not in item:
        values["prompt_field"] = "q"
    cfg = cfgmod.resolve("smoke", None, values)
    key = item.split("=", 1)[0]
    assert getattr(cfg, key) == want


@pytest.mark.parametrize(
    "value,kind",
    [({"Answer": "briefly"}, "a mapping"), (["a", "b"], "a list"), (True, "a boolean")],
)
def test_a_recipe_text_key_given_yaml_structure_is_refused(tmp_path, value, kind):
    """`system: Answer: briefly` is a YAML error, but `system: yes` and `prompt_template: {q}` are a
    boolean and a mapping: they were stringified ("True", "{'q': None}") instead of refused."""
    with pytest.raises(UserError, match=f"config key 'system' expects text, got {kind}.*quote"):
        cfgmod.resolve(
            "smoke",
            None,
            {
                "task": "instruct",
                "synthetic": None,
                "prompt_field": "q",
                "response_field": "a",
                "system": value,
            },
        )


@pytest.mark.parametrize(
    "overrides, spellings",
    [  # the settings; every (secagg, straggler_policy) spelling an older fedmom may have hashed
        ({}, [(None, None), (False, None)]),  # no deadline: `drop` is not a default spelling
        (
            {"round_deadline": 5.0, "client_speed_sigma": 0.5},
            [(None, None), (False, None), (None, "drop"), (False, "drop")],
        ),
        (
            {"round_deadline": 5.0, "client_speed_sigma": 0.5, "straggler_policy": "partial"},
            [(None, "partial"), (False, "partial")],
        ),
        ({"secagg": True}, [(True, None)]),
    ],
)
def test_each_spelling_of_a_default_reads_back_canonical_and_its_hash_resumes(overrides, spellings):
    import dataclasses

    settings = {"method": "fedit", **{k: str(v) for k, v in overrides.items()}}
    cfg = cfgmod.resolve("smoke", None, settings)
    # hashes of the spellings, made by hand from the dataclass (not through _canonical)
    by_hand = {dataclasses.replace(cfg, secagg=a, straggler_policy=b).hash() for a, b in spellings}
    assert cfgmod.spelled_hashes(cfg) == by_hand
    for a, b in spellings:  # each spelling of config.yaml reads back as the one canonical config
        spelled = dataclasses.replace(cfg, secagg=a, straggler_policy=b)
        assert cfgmod.from_yaml(yaml.safe_dump(dataclasses.asdict(spelled))) == cfg
