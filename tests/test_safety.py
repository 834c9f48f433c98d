"""Issue 12: every user mistake is one `error:` line, exit 2, and the file system left as it was.

One table of bad inputs per command. Each case runs `fedmom ARGS` in this process inside a copy of
a prepared folder (`world`: user files, data files, partition files, adapters, a finished run, an
unfinished run, recipes), and compares a snapshot of that whole tree (paths, kinds, bytes) before
and after. The concurrency test runs two real processes.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import run_main, snapshot
from safetensors.torch import load_file, save_file

from fedmom_cli import config as cfgmod
from fedmom_cli import runfolder, safety
from fedmom_cli.partition import make_partition
from fedmom_cli.simulate import Simulation
from fedmom_cli.tasks import TASKS

TINY = {"method": "fedit", "clients": 3, "rounds": 3, "local_steps": 1, "synthetic": 120, "lr": 1e-2}
FAST = " ".join(f"--set {k}={v}" for k, v in TINY.items())


def tiny_config(**overrides) -> cfgmod.TrainConfig:
    return cfgmod.resolve("smoke", "math", {"method": "fedit", **TINY, **overrides})


# ---- the prepared folder -------------------------------------------------------------------------
def _write_jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _run_folder(folder: Path, cfg: cfgmod.TrainConfig, rounds_done: int, finished: bool) -> None:
    """A run folder exactly as `fedmom train` leaves it after `rounds_done` rounds."""
    folder.mkdir(parents=True)
    sim = Simulation(cfg, folder)
    cfg = sim.cfg  # target_modules resolved (auto -> names), as train.run records them
    (folder / "config.yaml").write_text(cfgmod.to_yaml(cfg))
    runfolder.atomic_write_json(folder / "partition.json", sim.partition, indent=None)
    records = [sim.run_round(t).to_json() for t in range(rounds_done)]
    runfolder.write_metrics(folder / "metrics.jsonl", records)
    status = "finished" if finished else "running"
    if finished:
        sim.save_outputs(False)
        (folder / "checkpoint.pt").unlink()
    result = {"status": status, "method": cfg.method, "task": cfg.task, "seed": cfg.seed}
    result.update(rounds=cfg.rounds, rounds_completed=rounds_done, config_hash=cfg.hash())
    runfolder.atomic_write_json(folder / "result.json", result)


def _adapters(root: Path) -> None:
    from test_aggregate_cli import save_client

    for i in range(2):
        save_client(root / f"c{i}", seed=i)

    def variant(name: str, config=None, tensors=None, raw: bytes | None = None) -> None:
        folder = root / name
        shutil.copytree(root / "c0", folder)
        if config is not None:
            text = config if isinstance(config, str) else json.dumps(config)
            (folder / "adapter_config.json").write_text(text)
        if tensors is not None:
            save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})
        if raw is not None:
            (folder / "adapter_model.safetensors").write_bytes(raw)

    good = json.loads((root / "c0" / "adapter_config.json").read_text())
    weights = load_file(root / "c0" / "adapter_model.safetensors")
    first_a = next(k for k in weights if k.endswith("lora_A.weight"))
    blob = (root / "c0" / "adapter_model.safetensors").read_bytes()
    variant("a_trunc", raw=blob[: len(blob) // 2])
    variant("a_empty", raw=b"")
    variant("a_garbage", raw=b"\x00garbage" * 10)
    variant("a_cfglist", config=[good])
    variant("a_cfgjson", config="{not json")
    variant("a_rstr", config={**good, "r": "4"})
    variant("a_r0", config={**good, "r": 0})
    variant("a_rfloat", config={**good, "r": 4.5})
    variant("a_noalpha", config={k: v for k, v in good.items() if k != "lora_alpha"})
    variant("a_alphaneg", config={**good, "lora_alpha": -8})
    variant("a_rank", config={**good, "r": 8})  # tensors are rank 4
    variant("a_notlora", config={**good, "peft_type": "PREFIX_TUNING"})
    variant("a_nan", tensors={**weights, first_a: weights[first_a] * float("nan")})
    variant("a_inf", tensors={**weights, first_a: weights[first_a] * float("inf")})
    variant("a_int32", tensors={k: v.to(torch.int32) for k, v in weights.items()})
    variant("a_noB", tensors={k: v for k, v in weights.items() if "lora_B" not in k})
    variant("a_nofactors", tensors={"other.weight": torch.zeros(2, 2)})
    variant("a_3d", tensors={**weights, first_a: weights[first_a][None]})
    # the review's A12-A19, AH01-AH15: adapters that disagree with c0, or are malformed in themselves
    save_client(root / "a_r8", seed=5, r=8)
    save_client(root / "a_r8_kv", seed=6, r=8, modules=("k_proj", "v_proj"))  # AH03: k, v against q, k
    variant("a_alpha32", config={**good, "lora_alpha": 32})
    variant("a_qonly", config={**good, "target_modules": ["q_proj"]},
            tensors={k: v for k, v in weights.items() if "q_proj" in k})  # fmt: skip
    half = {k: v[:, : v.shape[1] // 2] if "lora_A" in k else v[: v.shape[0] // 2] for k, v in weights.items()}
    variant("a_shape", tensors={k: v.contiguous() for k, v in half.items()})
    variant(
        "a_inconsistent", tensors={k: v[:2].contiguous() if "lora_A" in k else v for k, v in weights.items()}
    )
    variant("a_onlyB", tensors={k: v for k, v in weights.items() if "lora_B" in k})
    variant("a_1d", tensors={**weights, first_a: weights[first_a].flatten()})
    variant("a_extramod", config={**good, "target_modules": sorted({*good["target_modules"], "v_proj"})})
    (root / "a_nocfg").mkdir()
    shutil.copy(root / "c0" / "adapter_model.safetensors", root / "a_nocfg")
    (root / "a_noweights").mkdir()
    shutil.copy(root / "c0" / "adapter_config.json", root / "a_noweights")


def _partitions(root: Path) -> None:
    cfg = tiny_config()
    from fedmom_cli.data import load_rows

    rows = load_rows(TASKS["math"], None, cfg.synthetic, seed=0)
    part = make_partition("math", rows, 3, 0.5, 0, 4)
    runfolder.atomic_write_json(root / "part.json", part)

    def variant(name: str, clients=None, **changes) -> None:
        data = {**part, **changes}
        if clients is not None:
            data["clients"] = clients
        (root / name).write_text(json.dumps(data))

    c = part["clients"]
    variant("part_neg.json", [c[0][:-1] + [-1], c[1], c[2]])
    variant("part_oob.json", [c[0] + [10**6], c[1], c[2]])
    variant("part_empty.json", [[], c[1] + c[0], c[2]])
    variant("part_small.json", [c[0][:1], c[1] + c[0][1:], c[2]])
    variant("part_dup.json", [c[0], c[1] + c[0][:1], c[2]])
    variant("part_str.json", [[str(i) for i in c[0]], c[1], c[2]])
    variant("part_float.json", [[float(i) for i in c[0]], c[1], c[2]])
    variant("part_two.json", [c[0] + c[1], c[2]])
    variant("part_notlist.json", {"0": c[0]})
    variant("part_nodataset.json", dataset=None)
    (root / "part_list.json").write_text(json.dumps(c))
    (root / "part_trunc.json").write_text(json.dumps(part)[:200])
    (root / "part_empty_file.json").write_text("")
    other = load_rows(TASKS["math"], None, 120, seed=1)
    runfolder.atomic_write_json(root / "part_other.json", make_partition("math", other, 3, 0.5, 0, 4))


def _data(root: Path) -> None:
    good = TASKS["math"].synthetic(60, 0)
    _write_jsonl(root / "rows.jsonl", good)
    _write_jsonl(root / "badtypes.jsonl", [{**good[0], "query": 5}] + good[1:])
    _write_jsonl(root / "nullresp.jsonl", good[:5] + [{**good[5], "response": None}])
    _write_jsonl(root / "listquery.jsonl", [{**good[0], "query": ["a"]}])
    _write_jsonl(root / "wrongfields.jsonl", [{"foo": "bar"}])
    _write_jsonl(root / "scalars.jsonl", [1, 2, 3])
    (root / "empty.jsonl").write_text("")
    (root / "garbage.jsonl").write_text("this is not json\n")
    (root / "half.jsonl").write_text(json.dumps(good[0]) + "\n" + json.dumps(good[1])[:20] + "\n")
    (root / "dict.json").write_text(json.dumps({"a": 1}))
    (root / "ints.json").write_text("[1, 2, 3]")  # review P07
    (root / "garbage.parquet").write_bytes(b"PAR1 but garbage")  # P09
    (root / "qdir").mkdir()  # Q11: a folder already holding smoke.yaml
    (root / "qdir" / "smoke.yaml").write_text("# mine\n")
    (root / "data.txt").write_text("query,response\nq,r\n")  # CSV is read since issue 26
    (root / "binary.jsonl").write_bytes(b"\xff\xfe\x00\x01")
    code = TASKS["code"].synthetic(5, 0)
    _write_jsonl(root / "badcode.jsonl", [{**code[0], "messages": "hello"}] + code[1:])
    _write_jsonl(root / "badcode2.jsonl", [{"messages": [{"role": "user", "content": 5}]}])


def _recipes(root: Path) -> None:
    base = "model: tiny\nprecision: fp32\nsynthetic: 60\ncutoff_len: 128\nlora_r: 4\nlora_alpha: 8\n"
    base += "clients: 3\nmin_client_size: 4\nrounds: 1\nlocal_steps: 1\nbatch_size: 4\n"
    sweeps = {
        "sw_gridnull": "sweep:\n  grid: null\n",
        "sw_gridlist": "sweep:\n  grid: [fedit]\n",
        "sw_gridstr": "sweep:\n  grid: fedit\n",
        "sw_methodstr": "sweep:\n  grid:\n    method: fedit\n",
        "sw_methodempty": "sweep:\n  grid:\n    method: []\n",
        "sw_methodnum": "sweep:\n  grid:\n    method: [1]\n",
        "sw_seedstr": "sweep:\n  grid:\n    seed: [a]\n",
        "sw_seedbool": "sweep:\n  grid:\n    seed: [true]\n",
        "sw_settingsdict": "sweep:\n  grid:\n    settings: {lr: 0.1}\n",
        "sw_settingskey": "sweep:\n  grid:\n    settings: [{learning_rate: 0.1}]\n",
        "sw_unknown": "sweep:\n  grid:\n    method: [fedit]\n  evals: []\n",
        "sw_gridkey": "sweep:\n  grid:\n    methods: [fedit]\n",
        "sw_evaltasks": "sweep:\n  grid:\n    method: [fedit]\n  eval_tasks: 5\n",
        "sw_pretrained": "sweep:\n  grid:\n    method: [fedit]\n  pretrained: maybe\n",
        "sw_out": "sweep:\n  grid:\n    method: [fedit]\n  out: [a]\n",
        "sw_nosweep": "",
        "sw_sweepnull": "sweep: null\n",
        "sw_badvalue": "sweep:\n  grid:\n    method: [fedavg]\n",
        "sw_badsetting": "sweep:\n  grid:\n    settings: [{lr: -1}]\n",
        "sw_evaltypo": "sweep:\n  grid:\n    method: [fedit]\n  eval_tasks: [nosuchtask]\n",
        "sw_evalsynth": "sweep:\n  grid:\n    method: [fedit]\n  eval_tasks: [synthetic_maths]\n",
        "sw_evalnodata": "sweep:\n  grid:\n    method: [fedit]\n  eval_tasks: [humaneval]\n",
    }
    for name, text in sweeps.items():
        (root / f"{name}.yaml").write_text(f"# test recipe\n{base}{text}")
    (root / "sw_notmapping.yaml").write_text("- a\n- b\n")
    (root / "sw_badyaml.yaml").write_text("sweep: [unclosed\n")
    (root / "sw_unknownkey.yaml").write_text(
        f"{base}learning_rate: 1\nsweep:\n  grid:\n    method: [fedit]\n"
    )
    (root / "sw_good.yaml").write_text(f"# test recipe\n{base}sweep:\n  grid:\n    method: [fedit]\n")
    for name, text in {  # recipe files of the review (T07, T08, CR19-CR22, RT07, CR33)
        "t_wrongtype": base.replace("lora_r: 4", "lora_r: abc"),
        "t_negrounds": base.replace("rounds: 1", "rounds: -1"),
        "cr_zero": f"{base}client_ranks: [0, 1, 2]\n",
        "cr_spreadneg": f"{base}client_ranks: {{spread: [-4, 4]}}\n",
        "cr_typo": f"{base}client_rank: [1, 2, 4]\n",
        "cr_bool": f"{base}client_ranks: [true, 2, 4]\n",
        "rt_bogus": f"{base}report_to: bogus\n",
        "cr_sweep": f"{base}sweep:\n  grid:\n    settings: [{{client_ranks: [0, 9, 9]}}]\n",
    }.items():
        (root / f"{name}.yaml").write_text(text)


def _reports(root: Path, run: Path) -> None:
    cases = {
        "rep_badyaml": ("config.yaml", "a: [unclosed\n"),
        "rep_cfglist": ("config.yaml", "- 1\n- 2\n"),
        "rep_badresult": ("result.json", "{nope"),
        "rep_resultlist": ("result.json", "[1, 2]"),
        "rep_badmetrics": ("metrics.jsonl", None),
        "rep_metricslist": ("metrics.jsonl", "[1, 2]\n"),
        "rep_badeval": ("eval.json", "{"),
        "rep_evallist": ("eval.json", "[]"),
        "rep_evaltasks": ("eval.json", json.dumps({"tasks": [1, 2], "adapter": True})),
        "rep_binary": ("result.json", b"\xff\xfe\x00"),
    }
    for name, (file, content) in cases.items():
        folder = root / name / "math" / "fedit" / "seed0"
        shutil.copytree(run, folder)
        if content is None:
            lines = (folder / file).read_text().splitlines()
            content = lines[0] + "\ngarbage line\n"
        if isinstance(content, bytes):
            (folder / file).write_bytes(content)
        else:
            (folder / file).write_text(content)
    pre = root / "rep_badpre" / "pretrained"
    pre.mkdir(parents=True)
    (pre / "eval.json").write_text("{broken")
    (root / "rep_none").mkdir()
    (root / "rep_none" / "notes.txt").write_text("no runs here")
    shutil.copytree(run, root / "rep_ok" / "math" / "fedit" / "seed0")
    (root / "rep_ok" / "report.md").write_text("my own notes, not a fedmom report\n")
    (root / "rep_ok" / "other.csv").write_text("a,b\n1,2\n")


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    (root / "userdir" / "notes").mkdir(parents=True)
    (root / "userdir" / "thesis.tex").write_text("precious")
    (root / "userdir" / "notes" / "a.txt").write_text("more")
    (root / "afile").write_text("x")
    (root / "emptydir").mkdir()
    _data(root)
    _partitions(root)
    _adapters(root)
    _recipes(root)
    _run_folder(root / "run_done", tiny_config(rounds=1), 1, finished=True)
    _run_folder(root / "run_part", tiny_config(), 2, finished=False)
    run_foreign = root / "run_foreign"
    shutil.copytree(root / "run_done", run_foreign)
    (run_foreign / "thesis.tex").write_text("precious too")
    _reports(root, root / "run_done")
    for name, content in {"garbage": b"garbage", "empty": b"", "trunc": None, "json": b"{}"}.items():
        folder = root / f"ckpt_{name}"
        shutil.copytree(root / "run_part", folder)
        data = (folder / "checkpoint.pt").read_bytes()
        (folder / "checkpoint.pt").write_bytes(data[: len(data) // 2] if content is None else content)
    for name in ("metrics_garbage", "metrics_missing", "metrics_gap", "result_garbage"):
        shutil.copytree(root / "run_part", root / name)
    (root / "metrics_garbage" / "metrics.jsonl").write_text('{"round": 0}\nnot json\n')
    (root / "metrics_missing" / "metrics.jsonl").unlink()
    first = (root / "metrics_gap" / "metrics.jsonl").read_text().splitlines()[1]
    (root / "metrics_gap" / "metrics.jsonl").write_text(first + "\n")
    (root / "result_garbage" / "result.json").write_text("{oops")
    # The sweep conflict: a finished run with other settings in a cell's folder.
    cell = root / "sweepres" / "math" / "fedit" / "seed0"
    shutil.copytree(root / "run_done", cell)
    usercell = root / "sweepuser" / "math" / "fedit" / "seed0"
    usercell.mkdir(parents=True)
    (usercell / "thesis.tex").write_text("precious")
    (root / "sweeprep" / "math").mkdir(parents=True)
    (root / "sweeprep" / "report.md").write_text("my notes\n")
    (root / "bench_user.json").write_text('{"mine": true}')
    _aggregate_done(root)
    _evaluations(root)
    _review(root)
    _review_runs(root)
    return root


LONG = "x" * 300  # one name longer than the file system's 255 bytes (ENAMETOOLONG)
DEEP = "/".join(["d" * 200] * 25)  # every name fits, the path does not (4096 bytes)


def _review(root: Path) -> None:
    """Fixtures of the outside review's second pass (issue 30): damaged run folders for eval and
    export, damaged response caches, code problems lacking fields, a source for data convert, a
    dangling link, a bf16 client adapter."""
    run = root / "run_done"

    def damaged(name: str, file: str, content: bytes | None) -> Path:
        folder = root / name
        shutil.copytree(run, folder)
        if content is None:
            (folder / file).unlink()
        else:
            (folder / file).write_bytes(content)
        return folder

    blob = (run / "adapter" / "adapter_model.safetensors").read_bytes()
    damaged("ev_badcfg", "config.yaml", b"method: [unclosed\n")
    damaged("ev_cfglist", "config.yaml", b"- 1\n- 2\n")
    damaged("ev_trunc", "adapter/adapter_model.safetensors", blob[: len(blob) // 2])
    damaged("ev_nodelta", "base_delta.safetensors", None)
    damaged("ev_deltatrunc", "base_delta.safetensors", b"\x08\x00\x00")
    module = next(k for k in load_file(run / "adapter" / "adapter_model.safetensors") if "lora_A" in k)
    key = module.replace(".lora_A.weight", ".weight")
    folder = damaged("ev_deltashape", "base_delta.safetensors", None)
    save_file({key: torch.zeros(3, 3)}, folder / "base_delta.safetensors", metadata={"format": "pt"})
    # Response caches this evaluation would use (their file name is the fingerprint of run_done).
    from fedmom_cli.evaluation import evaluate as ev
    from fedmom_cli.evaluation import response_cache

    opts = ev.EvalOptions(run_dir=run, limit=2, force=True)
    db = f"responses-{response_cache.fingerprint(opts, 'tiny', 'float32', 'cpu')}_rank0.db"
    for name in ("cache_corrupt", "cache_empty", "cache_dir", "cache_link"):
        (root / name).mkdir()
    (root / "cache_corrupt" / db).write_bytes(b"this is not a database" * 10)
    (root / "cache_empty" / db).write_bytes(b"")
    (root / "cache_dir" / db).mkdir()
    os.symlink("../userdir/thesis.tex", root / "cache_link" / db)
    # HumanEval rows without `test`, without `task_id` (G41, G42).
    import gzip

    rows = [
        json.loads(line) for line in gzip.open(root / "gen_data" / "humaneval" / "HumanEval.jsonl.gz", "rt")
    ]
    (root / "gd_corrupt" / "humaneval").mkdir(parents=True)  # G40
    (root / "gd_corrupt" / "humaneval" / "HumanEval.jsonl.gz").write_bytes(b"not gzip at all")
    for name, field in (("gd_notest", "test"), ("gd_noid", "task_id")):
        (root / name / "humaneval").mkdir(parents=True)
        with gzip.open(root / name / "humaneval" / "HumanEval.jsonl.gz", "wt") as f:
            f.writelines(json.dumps({k: v for k, v in r.items() if k != field}) + "\n" for r in rows)
    # data convert's source: LLM-Adapters' ARC-Easy.json
    arc = {
        "instruction": "Please choose the correct answer to the question: Q?\n\nAnswer1: a Answer2: b\n\n"
        "Answer format: answer1/answer2",
        "input": "",
        "output": "the correct answer is answer2",
        "answer": "answer2",
    }
    (root / "conv").mkdir()
    (root / "conv" / "ARC-Easy.json").write_text(json.dumps([arc, arc]))
    os.symlink("outside/recipe.yaml", root / "dangling.yaml")  # recipes copy must not write through it
    os.symlink("afile", root / "filelink.yaml")
    gens = {  # --generations files the review tried (G01-G37)
        "g_malformed": b'{"task_id": "HumanEval/0", "completion": "x"}\n{bad\n',
        "g_wrongid": b'{"task_id": "HumanEval/999", "completion": "x"}\n',
        "g_empty": b"",
        "g_blank": b"\n\n   \n",
        "g_nonstr": b'{"task_id": "HumanEval/0", "completion": 5}\n',
        "g_intid": b'{"task_id": 0, "completion": "x"}\n',
        "g_nocompl": b'{"task_id": "HumanEval/0"}\n',
        "g_array": b"[1, 2]\n",
        "g_junk": b"\xff\xfe\x00junk\n",
        "g_bom": '\ufeff{"task_id": "HumanEval/0", "completion": "x"}\n'.encode(),
        "g_mbppid": b'{"task_id": "Mbpp/11", "completion": "x"}\n',
        "g_nullid": b'{"task_id": null, "completion": "x"}\n',
        "g_string": b'"just a string"\n',
        "g_spaceid": b'{"task_id": "HumanEval/0 ", "completion": "x"}\n',  # G47
    }
    for name, content in gens.items():
        (root / f"{name}.jsonl").write_bytes(content)
    for name, content in {
        "conv_garbled": b"{not json",
        "conv_zero": b"",
        "conv_emptylist": b"[]",
        "conv_object": b"{}",
        "conv_binary": b"\xff\xfe\x00",
        "conv_schema": json.dumps([{"question": "q"}]).encode(),
        "conv_intanswer": json.dumps([{**arc, "answer": 2}]).encode(),
    }.items():
        (root / name).mkdir()
        (root / name / "ARC-Easy.json").write_bytes(content)
    # more of the review's fixtures: links (M07, X34, K10), a run holding an export (F12), a user's
    # eval.json in a run (E21), a config.yaml linked to /etc/passwd (M14), data convert sources
    os.symlink("userdir", root / "link_user")
    os.symlink("run_done", root / "link_run")
    shutil.copytree(run, root / "run_withexp")
    (root / "run_withexp" / "exp").mkdir()
    (root / "run_withexp" / "exp" / "serve.py").write_text("print('mine')\n")
    damaged("ev_usereval", "eval.json", b'{"mine": true}')
    passwd = root / "rep_passwd" / "math" / "fedit" / "seed0"
    shutil.copytree(run, passwd)
    (passwd / "config.yaml").unlink()
    os.symlink("/etc/passwd", passwd / "config.yaml")
    wino = {
        "instruction": "Please choose the correct answer to fill in the blank to complete the given "
        "sentence: No blank here.\n\nOption1: a Option2: b Answer format: option1/option2",
        "input": "",
        "output": "the correct answer is option1",
        "answer": "option1",
    }
    for name, files in {
        "conv_onebad": {"ARC-Easy.json": json.dumps([arc] * 5 + [{**arc, "instruction": "Q?"}])},
        "conv_wino": {"winogrande.json": json.dumps([wino])},
        "conv_boolq": {"boolq.json": json.dumps([arc])},
        "conv_isdir": {},
    }.items():
        (root / name).mkdir()
        for file, text in files.items():
            (root / name / file).write_text(text)
    (root / "conv_isdir" / "ARC-Easy.json").mkdir()
    weights = load_file(root / "c1" / "adapter_model.safetensors")
    shutil.copytree(root / "c1", root / "a_bf16")
    save_file(
        {k: v.to(torch.bfloat16) for k, v in weights.items()},
        root / "a_bf16" / "adapter_model.safetensors",
        metadata={"format": "pt"},
    )


def _review_runs(root: Path) -> None:
    """The review's last cases (issue 30's floor): finished runs of other methods for export and
    eval --clients, a converted folder, report roots with a symlink loop or a run's eval.json that an
    older fedmom let `eval --model` / `eval --generations` write (F10, F11), a user's eval.json."""
    from fedmom_cli.evaluation import convert

    _run_folder(root / "run_fm1", tiny_config(method="fedmomentum", rounds=1), 1, True)  # empty delta
    hetero = tiny_config(method="fedmomentum", rounds=2, client_ranks=[2, 4, 4])
    _run_folder(root / "run_fmh", hetero, 2, True)  # a non-zero base delta
    _run_folder(root / "run_fedsa", tiny_config(method="fedsa_lora", rounds=1), 1, True)
    _run_folder(root / "run_flora", tiny_config(method="flora", rounds=1), 1, True)
    other = root / "run_othermethod"  # X33: result.json names another method than config.yaml
    shutil.copytree(root / "run_done", other)
    result = json.loads((other / "result.json").read_text())
    (other / "result.json").write_text(json.dumps({**result, "method": "flora"}))
    convert.run(root / "conv", root / "conv_out")
    loop = root / "rep_loop" / "math" / "fedit" / "seed0"
    shutil.copytree(root / "run_done", loop)
    os.symlink("..", root / "rep_loop" / "math" / "loop")  # rep_loop/math/loop/loop/... forever
    for name, source in (("rep_prerun", "model_eval"), ("rep_genrun", "gen_done")):
        folder = root / name / "math" / "fedit" / "seed0"
        shutil.copytree(root / "run_done", folder)
        shutil.copy(root / source / "eval.json", folder / "eval.json")
    (root / "conv_user" / "arc_easy").mkdir(parents=True)  # F17: the user's files at convert's names
    (root / "conv_user" / "arc_easy" / "test.jsonl").write_text("mine\n")
    (root / "conv_useryaml" / "arc_easy").mkdir(parents=True)
    (root / "conv_useryaml" / "arc_easy" / "arc_easy.yaml").write_text("task: mine\n")
    (root / "g44").mkdir()
    (root / "g44" / "eval.json").write_text('{"mine": true}')


def _evaluations(root: Path) -> None:
    """Given generations (HumanEval and MBPP toys), their scored folder, a model's eval folder, and a
    user's folder holding a file named eval.json."""
    from test_sandbox import fake_humaneval

    from fedmom_cli.evaluation import codeexec

    rows = fake_humaneval(root / "gen_data")
    _write_jsonl(
        root / "gen.jsonl", [{"task_id": r["task_id"], "completion": r["canonical_solution"]} for r in rows]
    )
    mbpp = {
        "task_id": 11,
        "text": "Double x.",
        "code": "def dbl(x):\n    return 2 * x",
        "test_list": ["assert dbl(3) == 6"],
    }
    (root / "gen_data" / "mbpp").mkdir()
    _write_jsonl(root / "gen_data" / "mbpp" / "mbpp.jsonl", [mbpp])
    _write_jsonl(root / "gen_mbpp.jsonl", [{"task_id": 11, "completion": mbpp["code"]}])
    codeexec.run_generations(
        codeexec.GenerationsOptions(
            root / "gen.jsonl", ["humaneval"], root / "gen_done", root / "gen_data", allow_unsandboxed=True
        )
    )
    (root / "model_eval").mkdir()
    model_eval = {"model": "tiny", "adapter": False, "method": "pretrained", "tasks": {"synthetic_math": {}}}
    (root / "model_eval" / "eval.json").write_text(json.dumps(model_eval))
    (root / "user_eval").mkdir()
    (root / "user_eval" / "eval.json").write_text('{"mine": true}')


def _aggregate_done(root: Path) -> None:
    """A `fedmom aggregate` output folder (fedsa_lora: it has clients/ too)."""
    from fedmom_cli import aggregate

    aggregate.run(aggregate.AggregateOptions("fedsa_lora", [root / "c0", root / "c1"], root / "agg_done"))


@pytest.fixture
def world(template, tmp_path, monkeypatch) -> Path:
    root = tmp_path / "w"
    shutil.copytree(template, root, symlinks=True)
    monkeypatch.chdir(root)
    return root


def check_case(world: Path, monkeypatch, capsys, command: str, args: str, fragment: str) -> None:
    before = snapshot(world)
    code, out, err = run_main(monkeypatch, capsys, *shlex.split(f"{command} {args}"))
    assert code == 2, (code, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert fragment in err, err
    after = snapshot(world)
    assert after.keys() == before.keys(), set(after) ^ set(before)
    changed = [k for k in before if before[k] != after[k]]
    assert not changed, changed


# ---- train ---------------------------------------------------------------------------------------
NO_CUDA = not torch.cuda.is_available()
TRAIN = [
    # config values
    ("--set max_grad_norm=-1", "max_grad_norm must be > 0 or null"),
    ("--set max_grad_norm=0", "max_grad_norm must be > 0 or null"),
    ("--set max_grad_norm=.nan", "max_grad_norm must be > 0 or null"),
    ("--set cutoff_len=1", "cutoff_len must be >= 16"),
    ("--set cutoff_len=0", "cutoff_len must be >= 1"),
    ("--set cutoff_len=16", "cuts every response"),
    ("--set lora_alpha=-8", "lora_alpha must be > 0"),
    ("--set lora_alpha=0", "lora_alpha must be > 0"),
    ("--seed -1", "seed must be >= 0"),
    ("--set seed=-3", "seed must be >= 0"),
    ("--set val_batch_size=0", "val_batch_size must be >= 1"),
    ("--set val_rows=-1", "val_rows must be >= 0"),
    ("--set weight_decay=-1", "weight_decay must be >= 0"),
    ("--set weight_decay=.inf", "weight_decay must be a finite number"),
    ("--set lora_dropout=1", "lora_dropout must be in [0, 1)"),
    ("--set lora_dropout=-0.1", "lora_dropout must be in [0, 1)"),
    ("--set min_lr=-1", "min_lr must be in [0, lr="),
    ("--set min_lr=1", "min_lr must be in [0, lr="),
    ("--set beta=0", "beta must be > 0"),
    ("--set beta=-1", "beta must be > 0"),
    ("--set min_client_size=0", "min_client_size must be >= 1"),
    ("--set min_client_size=0 --set beta=0.01 --clients 10", "min_client_size must be >= 1"),
    ("--set synthetic=0", "synthetic must be >= 1 or null"),
    ("--synthetic -5", "synthetic must be >= 1 or null"),
    ("--set target_modules=", "cannot be null"),
    ("--set target_modules=,", "target_modules must be a non-empty list"),
    # target modules PEFT would accept while training fewer than config.yaml says (issue 30: M28, M31)
    pytest.param("--set target_modules=q_proj,v_porj", "target_modules: 'v_porj' matches no", id="M31"),
    pytest.param("--set target_modules=q_proj,v_prój", "target_modules: 'v_prój' matches no", id="M28"),
    ("--set target_modules=qproj", "'qproj' matches no module"),
    ("--set target_modules=layers.0.self_attn.q_proj", "matches in layers [0] but not in [1"),
    ("--out run_done --force --set target_modules=q_proj,v_porj", "'v_porj' matches no module"),
    ("--lr 0", "lr must be > 0"),
    ("--lr -1", "lr must be > 0"),
    ("--set lr=.nan", "lr must be > 0"),
    ("--rounds 0", "rounds must be >= 1"),
    ("--clients 0", "clients must be >= 1"),
    ("--local-steps 0", "local_steps must be >= 1"),
    ("--batch-size 0", "batch_size must be >= 1"),
    ("--set grad_accum=0", "grad_accum must be >= 1"),
    ("--set grad_accum=3", "not divisible"),
    ("--set lora_r=0", "lora_r must be >= 1"),
    ("--set tau=0", "tau must be in (0, 1]"),
    ("--set tau=2", "tau must be in (0, 1]"),
    ("--set clients_per_round=0", "clients_per_round must be in 1..3"),
    ("--set clients_per_round=9", "clients_per_round must be in 1..3"),
    ("--set precision=fp8", "precision must be one of"),
    ("--set lr_schedule=linear", "lr_schedule must be one of"),
    ("--set svd=foo", "svd must be one of"),
    ("--set client_weights=foo", "client_weights must be one of"),
    ("--method fedavg", "unknown method 'fedavg'"),
    ("--set task=physics", "unknown task 'physics'"),
    ("--set rounds=two", "config key 'rounds' expects"),
    ("--set rounds=1.5", "config key 'rounds' expects"),
    ("--set use_rslora=maybe", "config key 'use_rslora' expects"),
    ("--set nokey=1", "--set expects KEY=VALUE with a known key"),
    ("--set lr", "--set expects KEY=VALUE"),
    ("--engine magic", "--engine must be sequential or flower"),
    # devices
    ("--device tpu", "device must be auto, cpu, cuda, cuda:N or mps"),
    ("--device bogus", "device must be auto, cpu, cuda, cuda:N or mps"),
    ("--device cuda:x", "device must be auto, cpu, cuda, cuda:N or mps"),
    pytest.param(
        "--device cuda", "CUDA is not available", marks=pytest.mark.skipif(not NO_CUDA, reason="GPU")
    ),
    pytest.param("--device cuda:3", "CUDA", marks=pytest.mark.skipif(not NO_CUDA, reason="GPU")),
    # data files
    ("--set synthetic=null --data /nope.jsonl", "data file not found"),
    ("--set synthetic=null --data userdir", "data file not found"),
    ("--set synthetic=null --data badtypes.jsonl", "row 0 has `query` of type int"),
    ("--set synthetic=null --data nullresp.jsonl", "row 5 has `response` of type NoneType"),
    ("--set synthetic=null --data listquery.jsonl", "row 0 has `query` of type list"),
    ("--set synthetic=null --data wrongfields.jsonl", "a row lacks the fields"),
    ("--set synthetic=null --data scalars.jsonl", "expected a list of JSON objects"),
    ("--set synthetic=null --data empty.jsonl", "no rows"),
    ("--set synthetic=null --data garbage.jsonl", "cannot read data file"),
    ("--set synthetic=null --data half.jsonl", "cannot read data file"),
    ("--set synthetic=null --data binary.jsonl", "cannot read data file"),
    ("--set synthetic=null --data dict.json", "expected a list of JSON objects"),
    ("--set synthetic=null --data data.txt", "unsupported data format"),
    ("--data rows.jsonl", "give either --data or --synthetic"),
    ("--set task=code --set synthetic=null --data badcode.jsonl", "`messages` that is not a list"),
    ("--set task=code --set synthetic=null --data badcode2.jsonl", "`messages` that is not a list"),
    ("--set synthetic=null --data rows.jsonl --set val_rows=4", "val_rows > 0 needs val_data"),
    ("--set val_rows=2 --set val_data=/nope.jsonl", "data file not found"),
    # partition files
    ("--partition /nope.json", "partition file not found"),
    ("--partition part_neg.json", "client 0 has row index -1"),
    ("--partition part_oob.json", "client 0 has row index 1000000"),
    ("--partition part_empty.json", "client 0 has 0 rows"),
    ("--partition part_small.json", "client 0 has 1 rows, fewer than min_client_size 4"),
    ("--partition part_dup.json", "client 1 repeats a row index"),
    ("--partition part_str.json", "client 0 is not a list of row indices"),
    ("--partition part_float.json", "client 0 is not a list of row indices"),
    ("--partition part_two.json", "has 2 clients, config says 3"),
    ("--partition part_notlist.json", "not a `fedmom partition` file"),
    ("--partition part_nodataset.json", "no dataset fingerprint"),
    ("--partition part_list.json", "not a `fedmom partition` file"),
    ("--partition part_trunc.json", "cannot be read"),
    ("--partition part_empty_file.json", "cannot be read"),
    ("--partition part_other.json", "was made for another dataset"),
    ("--partition userdir", "partition file not found"),
    # --out and --force
    ("--out afile", "is a file, not a folder"),
    ("--out afile/run", "afile is a file, not a folder"),
    ("--out userdir", "not a fedmom run folder"),
    ("--out userdir --force", "not a fedmom run folder (it holds notes, thesis.tex)"),
    ("--out userdir --force --set synthetic=null --data /nope.jsonl", "not a fedmom run folder"),
    ("--out . --force", "is the current folder or contains it"),
    ("--out . --force --set synthetic=null --data /nope.jsonl", "is the current folder"),
    ("--out userdir/.. --force", "is the current folder or contains it"),
    ("--out run_foreign --force", "(it holds thesis.tex)"),
    ("--out run_done --lr 0.5", "holds a finished run with other settings"),
    ("--out run_done --force --set synthetic=null --data /nope.jsonl", "data file not found"),
    ("--out run_done --force --set synthetic=null --data badtypes.jsonl", "of type int"),
    ("--out run_done --force --partition part_neg.json", "row index -1"),
    ("--out run_done --force --set cutoff_len=16", "cuts every response"),
    ("--out run_done --force --device tpu", "device must be"),
    # resume
    ("--out run_part", "holds an unfinished run; --resume continues it"),
    ("--out run_part --resume --lr 0.5", "holds an unfinished run with other settings"),
    ("--out ckpt_garbage --resume", "checkpoint.pt cannot be read"),
    ("--out ckpt_empty --resume", "checkpoint.pt cannot be read"),
    ("--out ckpt_trunc --resume", "checkpoint.pt cannot be read"),
    ("--out ckpt_json --resume", "checkpoint.pt cannot be read"),
    ("--out metrics_garbage --resume", "metrics.jsonl: line 2 is not JSON"),
    ("--out metrics_missing --resume", "lacks some of rounds 0..0"),
    ("--out metrics_gap --resume", "lacks some of rounds 0..0"),
    ("--out result_garbage --resume", "result.json is not valid JSON"),
    # recipes and tasks
    ("--recipe nonsense", "recipe 'nonsense' not found"),
    ("--recipe sw_badyaml.yaml", "cannot read recipe"),
    ("--recipe sw_notmapping.yaml", "must be a mapping of settings"),
    ("--recipe sw_unknownkey.yaml", "unknown key(s) learning_rate"),
    ("--task physics", "unknown task 'physics'"),
    ("--model /no/such/model", "model"),
]


@pytest.mark.parametrize("args,fragment", TRAIN)
def test_train_bad_input(world, monkeypatch, capsys, args, fragment):
    recipe = "" if "--recipe" in args or "--task" in args else "--recipe smoke"
    out = "" if "--out" in args else "--out newrun"
    # a row's own --rounds/--lr/... replaces FAST's --set of that key (both would disagree: issue 30)
    fast = " ".join(
        f"--set {k}={v}" for k, v in TINY.items() if f"--{k.replace('_', '-')} " not in f"{args} "
    )
    check_case(world, monkeypatch, capsys, "train", f"{recipe} {fast} --no-progress {out} {args}", fragment)


# ---- partition -----------------------------------------------------------------------------------
PARTITION = [
    ("--task physics --synthetic 100", "unknown task 'physics'"),
    ("--task math --synthetic 100 --clients 0", "--clients must be >= 1"),
    ("--task math --synthetic 100 --clients -1", "--clients must be >= 1"),
    ("--task math --synthetic 5", "more clients (10) than rows (5)"),
    ("--task math --synthetic 100 --beta 0", "--beta must be > 0"),
    ("--task math --synthetic 100 --beta -1", "--beta must be > 0"),
    ("--task math --synthetic 100 --min-size 0", "--min-size must be >= 1"),
    ("--task math --synthetic 100 --min-size 0 --beta 0.01", "--min-size must be >= 1"),
    ("--task math --synthetic 100 --min-size -1", "--min-size must be >= 1"),
    ("--task math --synthetic 100 --min-size 11", "need 110 rows"),
    ("--task math --synthetic 100 --beta 0.001 --min-size 9", "no Dirichlet"),
    ("--task math --synthetic 100 --by type --iid", "--by and --iid exclude each other"),
    ("--task math --synthetic 100 --by colour", "--by colour: 100 of 100 rows lack that field"),
    ("--task math --synthetic 0", "--synthetic must be a positive number"),
    ("--task math --synthetic -3", "--synthetic must be a positive number"),
    ("--task math --data /nope.jsonl", "data file not found"),
    ("--task math --data garbage.jsonl", "cannot read data file"),
    ("--task math --data badtypes.jsonl --clients 3 --min-size 1", "of type int"),
    ("--task math --data wrongfields.jsonl", "a row lacks the fields"),
    ("--task math --data empty.jsonl", "no rows"),
    ("--task math --data data.txt", "unsupported data format"),
    ("--task math --data rows.jsonl --synthetic 100", "give either --data or --synthetic"),
    ("--task math --synthetic 100 --out-of-place", "No such option"),
]
PARTITION_OUT = [
    ("--out afile", "already exists (use --force"),
    ("--out afile --force", "is not a `fedmom partition` file"),
    ("--out run_done/result.json --force", "is not a `fedmom partition` file"),
    ("--out part.json", "already exists (use --force"),
    ("--out userdir", "is a folder, not a file"),
    ("--out userdir --force", "is a folder, not a file"),
    ("--out afile/p.json", "afile is a file, not a folder"),
    ("--out afile/deeper/p.json", "afile is a file, not a folder"),
]


@pytest.mark.parametrize("args,fragment", PARTITION + PARTITION_OUT)
def test_partition_bad_input(world, monkeypatch, capsys, args, fragment):
    extra = "" if "--out" in args else "--out new.json"
    task = "" if "--task" in args else "--task math --synthetic 100"
    check_case(world, monkeypatch, capsys, "partition", f"{task} {args} {extra}", fragment)


# ---- aggregate -----------------------------------------------------------------------------------
AGGREGATE = [
    ("a_trunc", "cannot read a_trunc/adapter_model.safetensors"),
    ("a_empty", "cannot read a_empty/adapter_model.safetensors"),
    ("a_garbage", "cannot read a_garbage/adapter_model.safetensors"),
    ("a_cfglist", "expected a JSON object, got list"),
    ("a_cfgjson", "cannot read a_cfgjson/adapter_config.json"),
    ("a_rstr", "r must be a positive number, got '4'"),
    ("a_r0", "r must be a positive number, got 0"),
    ("a_rfloat", "r must be an integer"),
    ("a_noalpha", "lacks lora_alpha"),
    ("a_alphaneg", "lora_alpha must be a positive number"),
    ("a_rank", "says r=8"),
    ("a_notlora", "not a LoRA adapter config"),
    ("a_nan", "holds NaN or infinite values"),
    ("a_inf", "holds NaN or infinite values"),
    ("a_int32", "is int32"),
    ("a_noB", "has lora_A but no lora_B"),
    ("a_nofactors", "no LoRA factors"),
    ("a_3d", "2-D floating-point"),
    ("a_nocfg", "adapter_config.json is missing"),
    ("a_noweights", "adapter_model.safetensors is missing"),
    ("nope", "adapter folder not found"),
    ("afile", "adapter folder not found"),
]
AGGREGATE_OPTIONS = [
    ("-m fedit c0 c1 --weights a,b", "--weights must be comma-separated numbers"),
    ("-m fedit c0 c1 --weights 1", "got 1 weights for 2 clients"),
    ("-m fedit c0 c1 --weights 1,-1", "weights must be finite and non-negative"),
    ("-m fedit c0 c1 --weights 0,0", "weights must not all be zero"),
    ("-m fedit c0 c1 --weights nan,1", "weights must be finite"),
    ("-m fedit c0 c1 --round -1", "--round must be >= 0"),
    ("-m fedavg c0 c1", "unknown method 'fedavg'"),
    ("-m fedmomentum c0 c1 --tau 2", "tau"),
    ("-m fedit c0 c1 --tau 0.5", "does not take option"),
    ("-m fedit c0 c1 --out afile", "is a file, not a folder"),
    ("-m fedit c0 c1 --out afile/sub", "afile is a file, not a folder"),
    ("-m fedit c0 c1 --out userdir", "already exists and is not empty"),
    ("-m fedit c0 c1 --out userdir --force", "is not a `fedmom aggregate` output folder"),
    ("-m fedit c0 c1 --out run_done --force", "is not a `fedmom aggregate` output folder"),
    ("-m fedit c0 c1 --out . --force", "is the current folder"),
    ("-m fedit c0 a_nan --out agg --force", "holds NaN"),
    ("-m fedit c0 a_nan --out run_done --force", "is not a `fedmom aggregate` output folder"),
    ("-m fedit c0 c1 --svd fast", "Invalid value for '--svd'"),
]


@pytest.mark.parametrize("bad,fragment", AGGREGATE)
def test_aggregate_bad_adapter(world, monkeypatch, capsys, bad, fragment):
    check_case(world, monkeypatch, capsys, "aggregate", f"-m fedmomentum c0 {bad} --out agg", fragment)


@pytest.mark.parametrize("args,fragment", AGGREGATE_OPTIONS)
def test_aggregate_bad_options(world, monkeypatch, capsys, args, fragment):
    out = "" if "--out" in args else "--out agg"
    check_case(world, monkeypatch, capsys, "aggregate", f"{args} {out}", fragment)


# ---- report --------------------------------------------------------------------------------------
REPORT = [
    ("nope", "results folder not found"),
    ("afile", "results folder not found"),
    ("emptydir", "no fedmom run folders"),
    ("rep_none", "no fedmom run folders"),
    ("run_done --spread iqr", "--spread must be stderr or std"),
    ("run_done --format xlsx", "--format must be md, csv or json"),
    ("run_done --out afile", "exists and is not a fedmom report"),
    ("run_done --out run_done/result.json", "refusing to write a report over a run file"),
    ("run_done --out run_done/config.yaml", "refusing to write a report over a run file"),
    ("run_done --out userdir", "is a folder, not a file"),
    ("run_done --out afile/r.md", "afile is a file, not a folder"),
    ("run_done --out userdir/thesis.tex", "exists and is not a fedmom report"),
    ("rep_ok", "rep_ok/report.md exists and is not a fedmom report"),
    (
        "rep_ok --out rep_ok/other.md --format csv --no-figures",
        "other.csv exists and is not a fedmom report csv",
    ),
    pytest.param("rep_badyaml", "cannot read rep_badyaml/math/fedit/seed0/config.yaml", id="R03"),
    pytest.param("rep_cfglist", "config.yaml does not hold a dict", id="R05"),
    ("rep_badresult", "cannot read rep_badresult/math/fedit/seed0/result.json"),
    pytest.param("rep_resultlist", "result.json does not hold a dict", id="R07"),
    pytest.param("rep_badmetrics", "metrics.jsonl: line 2 is not JSON", id="R04"),
    ("rep_metricslist", "metrics.jsonl: line 1 is not a round record"),
    ("rep_badeval", "cannot read rep_badeval/math/fedit/seed0/eval.json"),
    ("rep_evallist", "eval.json does not hold a dict"),
    pytest.param("rep_evaltasks", "has an unexpected shape", id="R06"),
    ("rep_binary", "cannot read rep_binary/math/fedit/seed0/result.json"),
    ("rep_badpre", "cannot read rep_badpre/pretrained/eval.json"),
]


@pytest.mark.parametrize("args,fragment", REPORT)
def test_report_bad_input(world, monkeypatch, capsys, args, fragment):
    check_case(world, monkeypatch, capsys, "report", args, fragment)


def test_report_regenerates_its_own_report_in_place(world, monkeypatch, capsys):
    for _ in range(2):  # the second run replaces the first report: same kind, derived output
        code, _, err = run_main(monkeypatch, capsys, "report", "run_done", "--no-figures", "--format", "csv")
        assert code == 0, err
    assert (world / "run_done" / "report.md").read_text().startswith("# fedmom report")
    assert (world / "run_done" / "report.csv").is_file()


def test_report_out_may_name_the_long_form_file(world, monkeypatch, capsys):
    """`--format csv --out x.csv` writes x.csv (long form) and its markdown beside it as x.md."""
    code, _, err = run_main(
        monkeypatch, capsys, "report", "run_done", "--no-figures", "--format", "csv", "--out", "x.csv"
    )
    assert code == 0, err
    assert (world / "x.md").read_text().startswith("# fedmom report")
    assert (world / "x.csv").read_text().startswith("table,setting,row,column")


# ---- sweep ---------------------------------------------------------------------------------------
SWEEP = [
    ("sw_gridnull.yaml", "must be a mapping (method, seed, settings)"),
    ("sw_gridlist.yaml", "must be a mapping (method, seed, settings)"),
    ("sw_gridstr.yaml", "must be a mapping (method, seed, settings)"),
    ("sw_methodstr.yaml", "`grid: method:` must be a non-empty list of strs"),
    ("sw_methodempty.yaml", "`grid: method:` must be a non-empty list"),
    ("sw_methodnum.yaml", "`grid: method:` must be a non-empty list"),
    ("sw_seedstr.yaml", "`grid: seed:` must be a non-empty list of ints"),
    ("sw_seedbool.yaml", "`grid: seed:` must be a non-empty list of ints"),
    ("sw_settingsdict.yaml", "`grid: settings:` must be a non-empty list of dicts"),
    ("sw_settingskey.yaml", "unknown key(s) learning_rate"),
    ("sw_unknown.yaml", "unknown sweep key(s) evals"),
    ("sw_gridkey.yaml", "unknown sweep key(s) methods"),
    ("sw_evaltasks.yaml", "`eval_tasks:` must be a list"),
    ("sw_pretrained.yaml", "`pretrained:` must be true or false"),
    ("sw_out.yaml", "`out:` must be a folder path"),
    ("sw_nosweep.yaml", "has no `sweep: grid:` section"),
    ("sw_sweepnull.yaml", "has no `sweep: grid:` section"),
    ("sw_notmapping.yaml", "must be a mapping of settings"),
    ("sw_badyaml.yaml", "cannot read recipe"),
    ("sw_unknownkey.yaml", "unknown key(s) learning_rate"),
    ("sw_badvalue.yaml", "unknown method 'fedavg'"),
    ("sw_badsetting.yaml", "lr must be > 0"),
    ("nonsense", "recipe 'nonsense' not found"),
    ("math", "has no `sweep: grid:` section"),
    ("sw_good.yaml --out afile", "is a file, not a folder"),
    ("sw_good.yaml --out afile/res", "afile is a file, not a folder"),
    ("sw_good.yaml --out res --only colour=red", "--only colour=...: unknown key"),
    ("sw_good.yaml --out res --only method=fedavg", "no cell of the grid matches"),
    ("sw_good.yaml --out res --only method", "--only expects KEY=VALUE"),
    ("sw_good.yaml --out res --set nokey=1", "--set expects KEY=VALUE with a known key"),
    ("sw_good.yaml --out res --set lr=-1", "lr must be > 0"),
    ("sw_good.yaml --out res --set device=cuda:7", "device 'cuda:7'"),
    ("sw_good.yaml --out res --set device=tpu", "device must be auto, cpu"),
    ("sw_good.yaml --out sweepres", "conflict with what their folders hold"),
    ("sw_good.yaml --out sweepuser", "not a fedmom run folder"),
    ("sw_good.yaml --out sweeprep", "report.md exists and is not a fedmom report"),
    # evaluation tasks and data, before any cell trains (issue 30: S16, S17)
    pytest.param("sw_evaltypo.yaml", "nosuchtask", id="S16"),
    ("sw_evalsynth.yaml", "unknown eval task 'synthetic_maths'"),
    ("sw_evalnodata.yaml", "humaneval needs local data: pass --data-dir"),
    ("sw_good.yaml --data-dir /nope", "--data-dir /nope is not a folder"),
    pytest.param(
        "smoke --out sw --only method=fedit --set rounds=1 --data-dir /nope",
        "/nope is not a folder",
        id="S17",
    ),
    ("sw_evalnodata.yaml --data-dir /nope", "--data-dir /nope is not a folder"),
]


@pytest.mark.parametrize("args,fragment", SWEEP)
def test_sweep_bad_input(world, monkeypatch, capsys, args, fragment):
    out = "" if "--out" in args else "--out res"
    check_case(world, monkeypatch, capsys, "sweep", f"{args} {out} --no-progress", fragment)


def test_sweep_conflict_dry_run_shows_differences_and_real_sweep_trains_nothing(world, monkeypatch, capsys):
    before = snapshot(world)
    code, out, err = run_main(monkeypatch, capsys, "sweep", "sw_good.yaml", "--out", "sweepres", "--dry-run")
    assert code == 0 and "conflict" in err
    line = next(x for x in err.splitlines() if "conflict:" in x)
    assert "rounds: 1 there" not in line and "synthetic: 120 there, 60 now" in line  # the differing settings
    assert "partition: None there" in line
    code, _, err = run_main(
        monkeypatch, capsys, "sweep", "sw_good.yaml", "--out", "sweepres", "--no-progress"
    )
    assert code == 2 and err.startswith("error: 1 cell(s) conflict with what their folders hold")
    assert "nothing trained" in err and " done" not in err
    assert snapshot(world) == before


# ---- bench ---------------------------------------------------------------------------------------
BENCH = [
    ("aggregate --clients 0", "--clients must be >= 1"),
    ("aggregate --clients -2", "--clients must be >= 1"),
    ("aggregate --rank 0", "--rank must be >= 1"),
    ("aggregate --layers 0", "--layers must be >= 1"),
    ("aggregate --repeat 0", "--repeat must be >= 1"),
    ("aggregate --shapes 4096", "--shapes must look like"),
    ("aggregate --shapes 0x4", "--shapes must look like"),
    ("aggregate --shapes axb", "--shapes must look like"),
    ("aggregate --shapes ''", "--shapes must look like"),
    ("aggregate --json afile", "--json afile already exists (use --force"),
    ("aggregate --json afile --force", "is not a `fedmom bench aggregate` JSON file"),
    ("aggregate --json bench_user.json --force", "is not a `fedmom bench aggregate` JSON file"),
    ("aggregate --json userdir", "is a folder, not a file"),
    ("aggregate --json afile/b.json", "afile is a file, not a folder"),
    ("aggregate --json run_done/result.json --force", "is not a `fedmom bench aggregate`"),
    ("train --json afile", "--json afile already exists (use --force"),
    ("train --json afile --force", "is not a `fedmom bench train` JSON file"),
    ("train --json userdir", "is a folder, not a file"),
    ("train --json afile/b.json", "afile is a file, not a folder"),
    ("train --rounds 0", "--rounds must be >= 1"),
    ("train --methods fedavg", "unknown method 'fedavg'"),
    ("train --methods ''", "--methods must name at least one method"),
    ("train --methods fedit,", "--methods must name at least one method"),
    ("train --recipe nonsense", "recipe 'nonsense' not found"),
    ("train --set nokey=1", "--set expects KEY=VALUE"),
    ("train --task physics", "unknown task 'physics'"),
    ("train --set lr=-1", "lr must be > 0"),
    ("aggregate --clients x", "Invalid value for '--clients'"),
]


@pytest.mark.parametrize("args,fragment", BENCH)
def test_bench_bad_input(world, monkeypatch, capsys, args, fragment):
    check_case(world, monkeypatch, capsys, "bench", args, fragment)


# ---- eval (its internals belong to issue 16: only what fails before any write) -------------------
EVAL = [
    ("", "give RUN_DIR, or --model with --out"),
    ("nope", "is not a finished fedmom run folder"),
    ("userdir", "is not a finished fedmom run folder"),
    ("afile", "is not a finished fedmom run folder"),
    ("run_done --protocol magic", "--protocol must be lm-eval or train-format"),
    ("--model tiny", "give RUN_DIR, or --model with --out"),
    ("run_done --limit x", "Invalid value for '--limit'"),
    # issue 30: options of --generations' sandbox were silently ignored when evaluating a model
    ("run_done --workers 4", "--workers: only with --generations"),
    ("run_done --timeout 3 --memory-budget 512", "--timeout, --memory-budget: only with --generations"),
    ("--model tiny --out o --memory-budget 512", "--memory-budget: only with --generations"),
]


@pytest.mark.parametrize("args,fragment", EVAL)
def test_eval_bad_input(world, monkeypatch, capsys, args, fragment):
    check_case(world, monkeypatch, capsys, "eval", args, fragment)


# `eval --model --out` and `eval --generations --out` follow every writer's rules (issue 30): never a
# run folder (a run's eval.json holds only its model's results: Z04), never a folder of the user's
# (Z03, G18, G44), an eval.json of the same kind accumulates and a task in it needs --force (G19),
# --out is checked before any program runs (G33, G34), the timeout is bounded (G23-G25).
EVAL_OUT = [
    pytest.param(
        "--model tiny --tasks synthetic_math --limit 1 --out run_done", "is a fedmom run folder", id="Z04"
    ),
    ("--model tiny --tasks synthetic_math --limit 1 --out run_part", "is a fedmom run folder"),
    pytest.param(
        "--model tiny --tasks synthetic_math --limit 1 --out userdir", "not a fedmom evaluation", id="Z03"
    ),
    ("--model tiny --tasks synthetic_math --limit 1 --out .", "not a fedmom evaluation folder"),
    ("--model tiny --tasks synthetic_math --limit 1 --out gen_done", "holds results of another model"),
    ("--model tiny --tasks synthetic_math --limit 1 --out afile", "is a file, not a folder"),
]
GEN = "--tasks humaneval --data-dir gen_data --generations gen.jsonl --allow-unsandboxed-code"
GENERATIONS_OUT = [
    ("--out run_done", "is a fedmom run folder", "G19"),  # it took no lock and wrote into a run
    ("--out run_done --force", "is a fedmom run folder"),
    ("--out userdir", "not a fedmom evaluation folder (it holds notes, thesis.tex)"),
    ("--out userdir --force", "not a fedmom evaluation folder"),
    ("--out .", "not a fedmom evaluation folder"),
    ("--out user_eval", "is not a fedmom eval.json", "G18"),
    ("--out model_eval", "holds evaluations of a model (tiny)"),
    ("--out model_eval --force", "holds evaluations of a model (tiny)"),
    ("--out gen_done", "already holds humaneval; pass --force to replace"),
    ("--out afile", "is a file, not a folder", "G20"),
    ("--out afile/o", "afile is a file, not a folder", "G34"),
    ("--out o --timeout nan", "--timeout must be in (0, 3600]", "G23"),
    ("--out o --timeout inf", "--timeout must be in (0, 3600]", "G24"),
    ("--out o --timeout 1e300", "--timeout must be in (0, 3600]", "G25"),
    ("--out o --timeout 0", "--timeout must be in (0, 3600]", "G21"),
    # issue 30: a memory budget per program, and workers x budget within half of MemAvailable
    ("--out o --memory-budget 10", "--memory-budget must be at least"),
    ("--out o --memory-budget 5000000", "over 50% of this machine's available memory"),
    ("--out o --memory-budget 99999999", "over 50% of this machine's available memory"),
]


@pytest.mark.parametrize(
    "args,fragment",
    EVAL_OUT + [pytest.param(f"{GEN} {r[0]}", r[1], id=(r[2:] or [None])[0]) for r in GENERATIONS_OUT],
)  # a row's third element: the review's id
def test_eval_out_bad(world, monkeypatch, capsys, args, fragment):
    check_case(world, monkeypatch, capsys, "eval", args, fragment)


def test_generations_accumulate_replace_with_force_and_take_the_lock(world, monkeypatch, capsys):
    eval_json = world / "gen_done" / "eval.json"
    first = json.loads(eval_json.read_text())["tasks"]["humaneval"]
    mbpp = "--tasks mbpp --data-dir gen_data --generations gen_mbpp.jsonl --allow-unsandboxed-code"
    code, _, err = run_main(monkeypatch, capsys, "eval", *shlex.split(mbpp), "--out", "gen_done")
    assert code == 0, err
    tasks = json.loads(eval_json.read_text())["tasks"]
    assert set(tasks) == {"humaneval", "mbpp"} and tasks["humaneval"] == first  # accumulated
    assert tasks["mbpp"]["value"] == 1.0
    with safety.RunLock(world / "gen_done"):
        check_case(world, monkeypatch, capsys, "eval", f"{GEN} --out gen_done --force", f"pid {os.getpid()}")
    (world / "wrong.jsonl").write_text('{"task_id": "HumanEval/0", "completion": "    return 0\\n"}\n')
    args = GEN.replace("gen.jsonl", "wrong.jsonl")
    code, _, err = run_main(monkeypatch, capsys, "eval", *shlex.split(args), "--out", "gen_done", "--force")
    assert code == 0, err
    tasks = json.loads(eval_json.read_text())["tasks"]
    assert tasks["humaneval"]["value"] == 0.0 and tasks["mbpp"]["value"] == 1.0  # replaced, kept


# Given generations the review scored successfully (issue 30's "documented success"): odd but valid
# files score every line; an odd completion is a failed case, never an error of the command.
X0 = '{"task_id": "HumanEval/0", "completion": "    return x + 0\\n"}'  # right
GENERATIONS_OK = [
    ("G03", X0 + "\n" + X0.replace("x + 0", "x + 5") + "\n", "", 2, 0.5),  # a task twice: pass@k
    ("G13", X0 + "\r\n" + X0.replace("/0", "/1").replace("x + 0", "x + 1") + "\r\n", "", 2, 1.0),
    ("G28", X0 + "\n", "--workers 100000", 1, 1.0),  # one program at a time: within the memory budget
    ("G38", X0[:-1] + ', "model": "m", "extra": [1, 2]}\n', "", 1, 1.0),
    ("G39", "\n" * 2000 + X0 + "\n", "", 1, 1.0),
    ("G45", X0.replace("x + 0", "x + 0  # \\ud800") + "\n", "", 1, 0.0),  # lone surrogate: fails to run
    ("G46", X0.replace("x + 0", "x + 0\\u0000") + "\n", "", 1, 0.0),  # NUL byte: fails to run
    # a 30 MB line is read and scored; its program is over the sandbox's 16 MiB file size: a failed case
    ("G05", X0.replace("x + 0", "x + 0  # " + "y" * 30_000_000) + "\n", "", 1, 0.0),
]


@pytest.mark.parametrize(
    "text,extra,completions,value", [pytest.param(*r[1:], id=r[0]) for r in GENERATIONS_OK]
)  # noqa: E501
def test_review_generations_that_succeed(world, monkeypatch, capsys, text, extra, completions, value):
    (world / "g.jsonl").write_text(text)
    args = GEN.replace("gen.jsonl", "g.jsonl")
    code, out, err = run_main(monkeypatch, capsys, "eval", *shlex.split(f"{args} --out o {extra}"))
    assert code == 0, err
    entry = json.loads((world / "o" / "eval.json").read_text())["tasks"]["humaneval"]
    assert entry["completions"] == completions and entry["value"] == value, entry


# Sweep dry runs the review found fine (SO06, SO12, F14, M29): they plan, print and write nothing.
SWEEP_DRY_OK = [
    ("SO06", "smoke --dry-run --only lora_r=4 --out sw", "cell(s) to train"),  # smoke's lora_r is 4
    ("SO12", "smoke --dry-run --only 'method = fedit' --out sw", "1 cell(s) to train"),
    ("F14", "smoke --dry-run --only method=fedit --only seed=0 --out sw", "1 cell(s) to train"),
    ("M29", "smoke --dry-run --out 'sw ü x'", "cell(s) to train"),
]


@pytest.mark.parametrize("args,shown", [pytest.param(*r[1:], id=r[0]) for r in SWEEP_DRY_OK])
def test_review_sweep_dry_runs_plan_and_write_nothing(world, monkeypatch, capsys, args, shown):
    before = snapshot(world)
    code, out, err = run_main(monkeypatch, capsys, "sweep", *shlex.split(args))
    assert code == 0 and shown in err, (out, err)  # the plan goes to stderr
    assert snapshot(world) == before


# Commands the review ran successfully (its "documented success"): exit 0, the output made, and every
# file that was there before still there, byte for byte.
REVIEW_OK = [
    ("Q07", "recipes", "copy smoke userdir", "userdir/smoke.yaml"),
    ("Q12", "recipes", "copy mini/math x.yaml", "x.yaml"),
    ("AH21", "aggregate", "-m fedmomentum --heterogeneous a_r8 --out o", "o/adapter/adapter_config.json"),
    (
        "AH22",
        "aggregate",
        "-m fedmomentum --heterogeneous a_r8 a_r8 --out o",
        "o/adapter/adapter_config.json",
    ),
    (
        "AH17",
        "aggregate",
        "-m fedmomentum --heterogeneous c0 a_r8 c1 --out o",
        "o/adapter/adapter_config.json",
    ),
    (
        "AH08",
        "aggregate",
        "-m fedmomentum --heterogeneous --rank 16 c0 a_r8 --out o",
        "o/adapter/adapter_config.json",
    ),
    # export: other methods, an existing empty folder, bf16, a result.json naming another method
    ("X02", "export", "run_fedsa --out exp", "exp/model.safetensors"),
    ("X10", "export", "run_fm1 --out exp --adapter-only", "exp/adapter_model.safetensors"),  # delta empty
    ("X24", "export", "run_done --out exp --adapter-only", "exp/adapter_model.safetensors"),
    ("X26", "export", "run_done --out emptydir", "emptydir/model.safetensors"),
    ("X27", "export", "run_done --out exp --precision bf16", "exp/model.safetensors"),
    ("X31", "export", "run_fmh --out exp", "exp/model.safetensors"),  # client ranks 2, 4, 4
    ("X33", "export", "run_othermethod --out exp", "exp/model.safetensors"),
    # data convert into a user's folder, or into its own source folder: the user's files stay
    ("C16", "data", "convert conv --out userdir", "userdir/arc_easy/test.jsonl"),
    ("C23", "data", "convert conv --out conv", "conv/arc_easy/test.jsonl"),
    ("K09", "eval", "run_done --limit 1 --cache c", "run_done/eval.json"),
    ("M13", "report", "rep_loop --no-figures", "rep_loop/report.md"),  # no hang on the loop
]
SHOWN = {"M13": "1 run folder(s), 1 finished"}  # the made file says so: the looped run counted once


@pytest.mark.parametrize("case,command,args,made", [pytest.param(*r, id=r[0]) for r in REVIEW_OK])
def test_review_successes_keep_every_file(world, monkeypatch, capsys, case, command, args, made):
    before = snapshot(world)
    code, out, err = run_main(monkeypatch, capsys, command, *shlex.split(args))
    assert code == 0, (out, err)
    assert (world / made).is_file()
    assert case not in SHOWN or SHOWN[case] in (world / made).read_text()
    after = snapshot(world)
    assert {k: v for k, v in after.items() if k in before} == before


# FIFOs and devices where a file is expected (review M15-M20): refused at once, never read. An
# alarm turns a blocked open or read into a failure (a BaseException: no handler of fedmom's
# turns it into an `error:` line).
SPECIAL_FILES = [
    ("M15", "partition", "--task math --data fifo.jsonl --clients 3 --out p.json", "data file not found"),
    ("M16", "train", "--recipe smoke --rounds 1 --data fifo.jsonl --set synthetic=null --out r", "not found"),
    ("M17", "train", "--recipe fifo.yaml --out r", "not found"),
    ("M18", "partition", "--task math --data zero.jsonl --clients 3 --out p.json", "data file not found"),
    ("M19", "eval", "--tasks humaneval --data-dir gd --generations fifo.jsonl --out o", "is not a file"),
    ("M20", "data", "convert src --out o", "holds none of"),
]


class Blocked(BaseException):
    pass


@pytest.mark.parametrize("command,args,fragment", [pytest.param(*r[1:], id=r[0]) for r in SPECIAL_FILES])
def test_special_files_are_refused_without_blocking(tmp_path, monkeypatch, capsys, command, args, fragment):
    import signal

    from test_sandbox import fake_humaneval

    monkeypatch.chdir(tmp_path)
    (tmp_path / "src").mkdir()
    for fifo in ("fifo.jsonl", "fifo.yaml", "src/ARC-Easy.json"):
        os.mkfifo(fifo)
    os.symlink("/dev/zero", "zero.jsonl")
    fake_humaneval(tmp_path / "gd")
    before = sorted(map(str, tmp_path.rglob("*")))  # names only: reading a FIFO would block here

    def blocked(*_):
        raise Blocked(f"{command} {args} blocked on a special file")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(120)
    try:
        code, out, err = run_main(monkeypatch, capsys, command, *shlex.split(args))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and fragment in err, (out, err)
    assert sorted(map(str, tmp_path.rglob("*"))) == before


# ---- usage errors: typer's box reduced to one line -----------------------------------------------
USAGE = [
    ("train --bogus", "No such option"),
    ("train --rounds x", "Invalid value for '--rounds'"),
    ("train --seed", "requires an argument"),
    ("aggregate -m fedit", "Missing argument"),
    ("aggregate c0 --out agg", "Missing option '--method'"),
    ("partition --out p.json", "Missing option '--task'"),
    ("report", "Missing argument 'RESULTS_DIR'"),
    ("sweep", "Missing argument 'RECIPE'"),
    ("models get", "Missing argument 'NAME'"),
    ("nope", "No such command 'nope'"),
    ("bench nope", "No such command 'nope'"),
    ("train --progress=maybe", "progress"),
]


@pytest.mark.parametrize("args,fragment", USAGE)
def test_usage_errors_are_one_line(world, monkeypatch, capsys, args, fragment):
    check_case(world, monkeypatch, capsys, "", args, fragment)


# ---- read-only --out, for each command (root ignores permissions: skipped as root) ---------------
READ_ONLY = [
    ("partition", "--task math --synthetic 100 --out ro/p.json"),
    ("train", f"--recipe smoke {FAST} --out ro/run"),
    ("aggregate", "-m fedit c0 c1 --out ro/agg"),
    ("report", "run_done --out ro/report.md"),
    ("sweep", "sw_good.yaml --out ro/res"),
    ("bench", "aggregate --json ro/b.json"),
]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores permissions")
@pytest.mark.parametrize("command,args", READ_ONLY)
def test_read_only_out(world, monkeypatch, capsys, command, args):
    (world / "ro").mkdir()
    (world / "ro").chmod(0o555)
    try:
        check_case(world, monkeypatch, capsys, command, args, "permission denied")
    finally:
        (world / "ro").chmod(0o755)


def test_check_out_names_an_unwritable_folder(tmp_path, monkeypatch):
    """The permission branch, as root too: os.access says no."""
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    with pytest.raises(Exception, match="cannot write in .* \\(permission denied\\)"):
        safety.check_out(tmp_path / "x", "dir")


# ---- the outside review's second pass (issue 30) -------------------------------------------------
# One row per case of ../shared/notes/outside_review_cases.jsonl that was a traceback, a silent
# accept, a write on error or a lost file and is not covered by a table above; the id is the
# review's. Each asserts exit 2, one `error:` line and the whole tree unchanged.
T = "--recipe smoke --no-progress --out r"
REVIEW = [
    # train: an option and a --set of the same key disagree (the option won silently)
    ("F03", "train", f"{T} --rounds 1 --set rounds=2", "--rounds 1 and --set rounds=2 disagree"),
    ("SG07", "train", f"{T} --rounds 1 --set rounds=1e3", "config key 'rounds' expects"),
    ("SG08", "train", f"{T} --rounds 1 --set rounds=True", "config key 'rounds' expects"),
    ("F03b", "train", f"{T} --lr 0.1 --set lr=-1", "--lr 0.1 and --set lr=-1 disagree"),
    (
        "SG05",
        "train",
        f"{T} --set 'client_ranks=!!python/object/apply:os.system [\"touch pwned\"]'",
        "YAML tags",
    ),
    ("SG05b", "train", f"{T} --set 'lr=!!python/object/apply:os.system [\"touch pwned\"]'", "YAML tags"),
    ("CR31", "train", f"{T} --set lora_r=128", "rank 128 (lora_r or client_ranks) is larger than"),
    (
        "CR04",
        "train",
        f"{T} --set lora_r=128 --set clients=3 --set 'client_ranks=[64, 100, 128]'",
        "rank 128",
    ),
    ("SG31", "train", f"{T} --method fedit --set svd=randomized", "method fedit does not take svd"),
    ("SG31b", "train", f"{T} --method fedit --set tau=0.5", "method fedit does not take tau"),
    ("M03", "train", f"--recipe smoke --no-progress --out {LONG}", "longer than the file system allows"),
    ("M02", "train", f"--recipe smoke --no-progress --out {DEEP}", "the path is longer than"),
    # partition
    (
        "P19",
        "partition",
        "--task math --synthetic 100 --clients 3 --min-size 1 --seed -1 --out p.json",
        "--seed",
    ),
    (
        "Z07",
        "partition",
        "--task math --synthetic 100 --clients 3 --min-size 1 --seed=-1 --out p.json",
        "--seed",
    ),
    ("M04", "partition", f"--task math --synthetic 100 --clients 3 --min-size 1 --out {LONG}", "longer than"),
    # bench: a rank no module of the shapes can hold
    (
        "B08",
        "bench",
        "aggregate --shapes 8x8 --rank 64 --clients 2 --layers 1 --no-dense --repeat 1",
        "--rank 64",
    ),
    ("B08b", "bench", "aggregate --full-model --rank 5000 --layers 1 --repeat 1", "--rank 5000 is larger"),
    ("B06b", "bench", f"aggregate --shapes 8x8 --rank 2 --json {LONG}.json", "longer than"),
    # aggregate
    (
        "AH07",
        "aggregate",
        "-m fedmomentum --heterogeneous --rank 1000 c0 c1 --out o",
        "--rank 1000 is larger",
    ),
    ("A21", "aggregate", "-m fedit c0 a_bf16 --out o", "disagree on the dtype"),
    ("AH19", "aggregate", "-m fedmomentum --heterogeneous a_bf16 c0 --out o", "disagree on the dtype"),
    ("M-agg", "aggregate", f"-m fedit c0 c1 --out {LONG}", "longer than"),
    # sweep
    (
        "SO07",
        "sweep",
        "sw_good.yaml --dry-run --only method=fedit --only method=flora --out sw",
        "given twice",
    ),
    # eval on a damaged run: one line, and eval_data/ (or a lock) is not written first
    ("E04", "eval", "ev_badcfg --limit 1", "ev_badcfg/config.yaml cannot be read"),
    ("E04b", "eval", "ev_cfglist --limit 1", "ev_cfglist/config.yaml cannot be read"),
    ("E06", "eval", "ev_trunc --limit 1", "cannot read ev_trunc/adapter/adapter_model.safetensors"),
    ("E07", "eval", "ev_deltashape --limit 1", "a base delta of another model"),
    ("E08", "eval", "ev_nodelta --limit 1", "is not a readable safetensors file"),
    ("E05", "eval", "ev_deltatrunc --limit 1", "is not a readable safetensors file"),
    ("E16", "eval", "run_done --limit 1 --device bogus", "device must be auto, cpu"),
    ("K04", "eval", "run_done --limit 2 --cache cache_corrupt --force", "is not an SQLite database"),
    ("K12", "eval", "run_done --limit 2 --cache cache_empty --force", "is empty, so it is not"),
    ("K11", "eval", "run_done --limit 2 --cache cache_dir --force", "is not a file"),
    ("F13", "eval", "run_done --limit 2 --cache cache_link --force", "is a symbolic link"),
    ("M-eval", "eval", f"--model tiny --tasks synthetic_math --limit 1 --out {LONG}", "longer than"),
    # eval --generations: options it would ignore, problems lacking fields, a name too long
    ("K07", "eval", f"{GEN} --out o --cache c", "--cache would be ignored"),
    ("L09", "eval", f"{GEN} --out o --clients all", "--clients would be ignored"),
    (
        "G48",
        "eval",
        f"{GEN} --out o --limit 1 --precision bogus --shots 5",
        "--limit, --shots, --precision would",
    ),
    ("G48b", "eval", f"{GEN} --out o --device cpu", "--device would be ignored"),
    ("G41", "eval", f"{GEN.replace('gen_data', 'gd_notest')} --out o", "row 1 lacks test"),
    ("G42", "eval", f"{GEN.replace('gen_data', 'gd_noid')} --out o", "row 1 lacks task_id"),
    ("M06", "eval", f"{GEN} --out {LONG}", "longer than the file system allows"),
    # export
    ("X20", "export", "ev_trunc --out exp", "cannot read ev_trunc/adapter/adapter_model.safetensors"),
    ("X04", "export", "run_done --out run_done/exp", "lies inside the run folder"),
    ("X04b", "export", "run_done --out run_done", "lies inside the run folder"),
    ("M05", "export", f"run_done --out {LONG}", "longer than the file system allows"),
    # recipes copy
    ("Q15", "recipes", "copy smoke dangling.yaml", "is a symbolic link"),
    ("Q-long", "recipes", f"copy smoke {LONG}.yaml", "longer than"),
    # data convert
    ("C10", "data", "convert conv --out afile", "is a file, not a folder"),
    ("C14", "data", "convert conv --out afile/o", "afile is a file, not a folder"),
    ("C13", "data", "convert conv --out o --sets ''", "--sets names no set"),
    ("C13b", "data", "convert conv --out o --sets ,", "--sets names no set"),
    ("M26", "data", f"convert conv --out {LONG}", "longer than"),
    # report
    ("M30", "report", f"run_done --no-figures --out {LONG}.md", "longer than"),
]


# Cases of the review that were already one clean line: kept as rows so that a regression fails.
REVIEW_CLEAN = [
    ("X01", "export", "run_part --out exp", "is not a finished fedmom run folder"),
    ("X03", "export", "agg_done --out exp", "is not a finished fedmom run folder"),
    ("X06", "export", "run_done --out userdir", "already exists and is not empty"),
    ("X07", "export", "run_done --out userdir --force", "is not a `fedmom export` folder"),
    ("X08", "export", "run_done --out exp --precision bogus", "--precision must be fp32, bf16 or fp16"),
    ("X09", "export", "run_done --out exp --precision fp8", "--precision must be fp32, bf16 or fp16"),
    ("X12", "export", "run_done --out exp --adapter-only --with-base-delta --drop-base-delta", "contradict"),
    ("X13", "export", "run_done --out exp --drop-base-delta", "only applies with --adapter-only"),
    ("X14", "export", "run_done --out exp --with-base-delta", "only applies with --adapter-only"),
    ("X15", "export", "run_done --out afile", "is a file, not a folder"),
    ("X16", "export", "run_done --out afile/exp", "afile is a file, not a folder"),
    ("X18", "export", "run_done --out .", "is the current folder or contains it"),
    ("X19", "export", "/nope/run --out exp", "is not a finished fedmom run folder"),
    ("X21", "export", "ev_nodelta --out exp", "base_delta.safetensors is missing"),
    ("X22", "export", "ev_badcfg --out exp", "unreadable config.yaml"),
    ("X25", "export", "run_done --out run_done/adapter --force", "lies inside the run folder"),
    ("X28", "export", "run_done --out ''", "is the current folder or contains it"),
    ("X30", "export", "run_done --out /dev/null", "is a file, not a folder"),
    ("Z09", "export", "run_done --out run_part --force", "is not a `fedmom export` folder"),
    ("Q01", "recipes", "show nosuch", "no shipped recipe 'nosuch'"),
    ("Q02", "recipes", "show ../../../../../../etc/passwd", "no shipped recipe"),
    ("Q03", "recipes", "show /etc/passwd", "no shipped recipe"),
    ("Q04", "recipes", "show ''", "no shipped recipe ''"),
    ("Q05", "recipes", "copy nosuch x.yaml", "no shipped recipe 'nosuch'"),
    ("Q06", "recipes", "copy smoke afile", "afile already exists; recipes copy never overwrites"),
    ("Q08", "recipes", "copy smoke nodir/x.yaml", "folder nodir does not exist"),
    ("Q10", "recipes", "copy smoke afile/x.yaml", "folder afile does not exist"),
    ("Q13", "recipes", "copy ../recipes/smoke x.yaml", "no shipped recipe"),
    ("Q14", "recipes", "copy smoke /dev/null", "/dev/null already exists"),
    ("Q16", "recipes", "copy smoke filelink.yaml", "filelink.yaml is a symbolic link"),
    ("Q17", "recipes", "show mini", "no shipped recipe 'mini'"),
    ("C01", "data", "convert /nope --out o", "/nope is not a folder"),
    ("C02", "data", "convert afile --out o", "afile is not a folder"),
    ("C03", "data", "convert emptydir --out o", "emptydir holds none of ARC-Easy.json"),
    ("C04", "data", "convert conv_garbled --out o", "not valid JSON (JSONDecodeError)"),
    ("C05", "data", "convert conv_zero --out o", "not valid JSON (JSONDecodeError)"),
    ("C06", "data", "convert conv_emptylist --out o", "expected a non-empty JSON list of rows"),
    ("C07", "data", "convert conv_schema --out o", "row 0 cannot be mapped to lm-eval's schema"),
    ("C11", "data", "convert conv --out o --sets nosuch", "unknown set 'nosuch'"),
    ("C12", "data", "convert conv --out o --sets boolq", "boolq: cannot convert"),
    ("C18", "data", "convert conv_binary --out o", "not valid JSON (UnicodeDecodeError)"),
    ("C20", "data", "convert conv_object --out o", "expected a non-empty JSON list of rows"),
    ("C21", "data", "convert conv_intanswer --out o", "no string 'answer'"),
    ("C24", "data", "convert conv --out o --sets piqa", "piqa.json not found"),
    ("M01", "models", "get gpt5", "unknown model 'gpt5'"),
    ("Z10", "models", "get nosuch --force", "unknown model 'nosuch'"),
    ("M02m", "models", "get", "Missing argument 'NAME'"),
    # partition
    ("P02", "partition", "--task math --data empty.jsonl --clients 3 --out p.json", "no rows"),
    ("P13", "partition", "--task poetry --synthetic 100 --out p.json", "unknown task 'poetry'"),
    (
        "P22",
        "partition",
        "--task math --synthetic 100 --clients 2 --by nosuch --out p.json",
        "lack that field",
    ),
    (
        "P23",
        "partition",
        "--task math --synthetic 10 --clients 100 --out p.json",
        "more clients (100) than rows",
    ),
    # train
    ("T01", "train", f"{T} --method fedsgd", "unknown method 'fedsgd'"),
    ("T02", "train", "--task poetry --recipe smoke --no-progress --out r", "unknown task 'poetry'"),
    ("T03", "train", "--recipe nosuch --no-progress --out r", "recipe 'nosuch' not found"),
    ("T10", "train", f"{T} --rounds 1 --set lora_r=abc", "config key 'lora_r' expects"),
    ("T15", "train", f"{T} --rounds 1 --set lr=.inf", "lr must be a finite number"),
    ("T16", "train", f"{T} --rounds 1 --set target_modules=nosuch_proj", "'nosuch_proj' matches no module"),
    ("T28", "train", f"{T} --rounds 1 --data empty.jsonl --set synthetic=null", "no rows"),
    ("CR01", "train", f"{T} --set 'client_ranks=[-1, 2, 4]'", "client_ranks must be in 1..lora_r=4"),
    ("CR02", "train", f"{T} --set 'client_ranks=[0, 2, 4]'", "client_ranks must be in 1..lora_r=4"),
    ("CR03", "train", f"{T} --set 'client_ranks=[1, 2, 8]'", "client_ranks must be in 1..lora_r=4"),
    ("CR05", "train", f"{T} --set 'client_ranks=[1, 2]'", "client_ranks has 2 entries for 3 clients"),
    ("CR06", "train", f"{T} --set 'client_ranks=[1, 2, 3, 4]'", "client_ranks has 4 entries for 3 clients"),
    ("CR07", "train", f"{T} --set 'client_ranks={{ramp: [1, 4]}}'", "client_ranks must be a list of ranks"),
    ("CR08", "train", f"{T} --set 'client_ranks={{spread: [4]}}'", "spread expects [low, high]"),
    ("CR09", "train", f"{T} --set 'client_ranks={{spread: [4, 1]}}'", "spread expects low <= high"),
    ("CR10", "train", f"{T} --set 'client_ranks={{cycle: []}}'", "cycle expects a non-empty list"),
    ("CR11", "train", f"{T} --set 'client_ranks={{cycle: [1.5, 2]}}'", "cycle expects a non-empty list"),
    ("CR12", "train", f"{T} --set client_ranks=abc", "config key 'client_ranks' expects"),
    ("CR13", "train", f"{T} --set client_ranks=true", "config key 'client_ranks' expects"),
    ("CR14", "train", f"{T} --set client_ranks=4", "config key 'client_ranks' expects"),
    ("CR15", "train", f"{T} --set \"client_ranks=[1, '2', 4]\"", "config key 'client_ranks' expects"),
    (
        "CR17",
        "train",
        f"{T} --method fedsa_lora --set 'client_ranks=[1, 2, 4]'",
        "does not support heterogeneous",
    ),
    (
        "CR18",
        "train",
        f"{T} --method ffa_lora --set 'client_ranks=[1, 2, 2]'",
        "the largest client rank must",
    ),
    (
        "CR24",
        "train",
        f"{T} --set 'client_ranks={{spread: [1, 1000000000]}}'",
        "client_ranks must be in 1..lora_r",
    ),
    ("CR27", "train", f"{T} --clients 5 --set 'client_ranks=[1, 2, 4]'", "client_ranks has 3 entries for 5"),
    ("CR29", "train", f"{T} --set 'client_ranks=[1, 2, 4.0]'", "config key 'client_ranks' expects"),
    ("CR32", "train", f"{T} --method rolora --set 'client_ranks=[1, 2, 2]'", "the largest client rank must"),
    ("SG04", "train", f"{T} --set 'lora_r=[1,2'", "config key 'lora_r' expects"),
    ("SG06", "train", f"{T} --set lr=1e400", "lr must be a finite number"),
    ("SG10", "train", f"{T} --set lora_r=4=5", "config key 'lora_r' expects"),
    ("SG11", "train", f"{T} --set 'lr=0.1\nrounds: 0'", "config key 'lr' expects"),
    ("SG14", "train", f"{T} --set delta_path=bogus", "delta_path must be merged or separate"),
    ("SG17", "train", f"{T} --set lora_alpha=.nan", "lora_alpha must be a finite number"),
    ("SG21", "train", f"{T} --set clients=1e2", "config key 'clients' expects"),
    ("SG22", "train", f"{T} --set cutoff_len=1e9", "config key 'cutoff_len' expects"),
    (
        "SG32",
        "train",
        f"{T} --set gradient_checkpointing=maybe",
        "config key 'gradient_checkpointing' expects",
    ),
    ("SG33", "train", f"{T} --set 'method_options=[1, 2]'", "config key 'method_options' expects"),
    ("SG36", "train", f"{T} --set clients_per_round=1.5", "config key 'clients_per_round' expects"),
    ("RT01", "train", f"{T} --report-to bogus", "--report-to must be one of none, tensorboard"),
    ("RT03", "train", f"{T} --report-to tensorboard,wandb", "--report-to must be one of"),
    ("RT09", "train", f"{T} --report-to TENSORBOARD", "--report-to must be one of"),
    # sweep
    ("S01", "sweep", "nosuch --dry-run", "recipe 'nosuch' not found"),
    ("SO04", "sweep", "sw_good.yaml --dry-run --only =fedit --out sw", "--only =...: unknown key"),
    (
        "SO09",
        "sweep",
        "sw_good.yaml --dry-run --only METHOD=fedit --out sw",
        "--only METHOD=...: unknown key",
    ),
    ("RT06", "sweep", "sw_good.yaml --out sw --report-to bogus --no-progress", "--report-to must be one of"),
    # aggregate
    ("A22", "aggregate", "-m fedit --weights 1,2 c0 c1 a_trunc --out o", "cannot read a_trunc"),
    ("A31", "aggregate", "-m fedsgd c0 c1 --out o", "unknown method 'fedsgd'"),
    (
        "AH09",
        "aggregate",
        "-m fedmomentum --heterogeneous --alpha 0 c0 c1 --out o",
        "--alpha must be a positive",
    ),
    (
        "AH10",
        "aggregate",
        "-m fedmomentum --heterogeneous --alpha=-8 c0 c1 --out o",
        "--alpha must be a positive",
    ),
    (
        "AH11",
        "aggregate",
        "-m fedmomentum --heterogeneous --alpha nan c0 c1 --out o",
        "--alpha must be a positive",
    ),
    ("AH12", "aggregate", "-m fedmomentum --rank 4 c0 c1 --out o", "add --heterogeneous"),
    (
        "AH16",
        "aggregate",
        "-m fedmomentum --heterogeneous --weights 1,2,3 c0 c1 --out o",
        "got 3 weights for 2",
    ),
    (
        "AH18",
        "aggregate",
        "-m fedmomentum --heterogeneous --alpha inf c0 c1 --out o",
        "--alpha must be a positive",
    ),
    ("AH20", "aggregate", "-m fedit --alpha 16 c0 c1 --out o", "add --heterogeneous"),
    # bench
    ("B09", "bench", "train --methods bogus --rounds 1", "unknown method 'bogus'"),
    ("B11", "bench", "train --recipe nosuch --methods fedit --rounds 1", "recipe 'nosuch' not found"),
    # push: the repository id, before anything is exported
    ("H04", "push", "run_done --repo 'not a repo'", "--repo must look like OWNER/NAME"),
    ("H05", "push", "run_done --repo a/b/c", "--repo must look like OWNER/NAME"),
    ("H06", "push", "run_done --repo ''", "--repo must look like OWNER/NAME"),
    ("H07", "push", "run_done --repo ../x", "--repo must look like OWNER/NAME"),
    # eval on a run
    ("E12", "eval", "run_done --limit 0", "--limit must be at least 1"),
    ("E13", "eval", "run_done --limit -1", "--limit must be at least 1"),
    ("E14", "eval", "run_done --limit 1 --batch-size 0", "--batch-size must be at least 1"),
    ("E15", "eval", "run_done --limit 1 --shots -1", "--shots must be 0 or more"),
    ("E20", "eval", "--model tiny --task poetry --out pre", "unknown task 'poetry'"),
    ("E22", "eval", "run_done --tasks ' , '", "--tasks lists a task twice or an empty name"),
    ("E23", "eval", "run_done --limit 1 --shots 3", "--shots needs --protocol lm-eval"),
    ("E25", "eval", "run_done --tasks humaneval --data-dir emptydir", "not found under --data-dir"),
    ("K01", "eval", "run_done --limit 1 --cache run_done/cache", "lies inside run_done"),
    ("K02", "eval", "run_done --limit 1 --cache run_done", "lies inside run_done"),
    ("K08", "eval", "--model tiny --tasks synthetic_math --limit 1 --out o --cache o/c", "lies inside o"),
    ("L02", "eval", "run_done --limit 1 --clients 0", "--clients needs a fedsa_lora run"),
    ("L03", "eval", "run_done --limit 1 --clients abc", "--clients expects 'all' or client indices"),
    ("L07", "eval", "run_done --limit 1 --clients ''", "--clients expects 'all' or client indices"),
    (
        "L08",
        "eval",
        "--model tiny --out o --tasks synthetic_math --limit 1 --clients 0",
        "--clients needs RUN_DIR",
    ),
    # eval --generations
    ("G01", "eval", f"{GEN.replace('gen.jsonl', 'g_malformed.jsonl')} --out o", "line 2 is not JSON"),
    ("G02", "eval", f"{GEN.replace('gen.jsonl', 'g_wrongid.jsonl')} --out o", "is not a humaneval task"),
    ("G04", "eval", f"{GEN.replace('gen.jsonl', 'g_empty.jsonl')} --out o", "holds no completions"),
    ("G06", "eval", f"{GEN.replace('gen.jsonl', 'g_blank.jsonl')} --out o", "holds no completions"),
    ("G07", "eval", f"{GEN.replace('gen.jsonl', 'g_nonstr.jsonl')} --out o", "needs an object with task_id"),
    (
        "G08",
        "eval",
        f"{GEN.replace('gen.jsonl', 'g_intid.jsonl')} --out o",
        "task_id 0 is not a humaneval task",
    ),
    ("G09", "eval", f"{GEN.replace('gen.jsonl', 'g_nocompl.jsonl')} --out o", "needs an object with task_id"),
    ("G10", "eval", f"{GEN.replace('gen.jsonl', 'g_array.jsonl')} --out o", "needs an object with task_id"),
    ("G11", "eval", f"{GEN.replace('gen.jsonl', 'g_junk.jsonl')} --out o", "cannot read g_junk.jsonl"),
    ("G12", "eval", f"{GEN.replace('gen.jsonl', 'g_bom.jsonl')} --out o", "line 1 is not JSON"),
    ("G14", "eval", f"{GEN.replace('humaneval', 'humaneval,mbpp', 1)} --out o", "scores one task at a time"),
    ("G15", "eval", f"{GEN.replace('humaneval', 'gsm8k', 1)} --out o", "scores one task at a time"),
    ("G16", "eval", f"{GEN.replace('--data-dir gen_data', '')} --out o", "humaneval needs its problems"),
    ("G17", "eval", GEN, "--generations needs --out DIR"),
    ("G22", "eval", f"{GEN} --out o --timeout=-1", "--timeout must be in (0, 3600]"),
    ("G26", "eval", f"{GEN} --out o --workers 0", "--workers at least 1"),
    ("G27", "eval", f"{GEN} --out o --workers=-5", "--workers at least 1"),
    ("G31", "eval", f"{GEN} run_done --out o", "give no RUN_DIR and no --model"),
    ("G32", "eval", f"{GEN} --model tiny --out o", "give no RUN_DIR and no --model"),
    (
        "G35",
        "eval",
        f"{GEN.replace('gen.jsonl', 'g_mbppid.jsonl')} --out o",
        "'Mbpp/11' is not a humaneval task",
    ),
    ("G36", "eval", f"{GEN.replace('gen.jsonl', 'g_nullid.jsonl')} --out o", "None is not a humaneval task"),
    ("G37", "eval", f"{GEN.replace('gen.jsonl', 'g_string.jsonl')} --out o", "needs an object with task_id"),
]


# The review's clean cases not yet named by id above (issue 30: its 547 cases are the floor), on this
# file's fixtures; several repeat a row of the tables above, which did not name the review's id.
P = "--task math --out p.json"
NOSYN = "--set synthetic=null"
AG = "--method fedit"
REVIEW_IDS = [
    ("T04", "train", "--recipe sw_unknownkey.yaml --no-progress --out r", "unknown key(s) learning_rate"),
    ("T05", "train", "--recipe sw_badyaml.yaml --no-progress --out r", "cannot read recipe"),
    ("T06", "train", "--recipe sw_notmapping.yaml --no-progress --out r", "must be a mapping of settings"),
    ("T09", "train", f"{T} --rounds 1 --set learning_rate=1", "with a known key, got 'learning_rate=1'"),
    ("T11", "train", f"{T} --rounds 1 --set lora_r=0", "lora_r must be >= 1"),
    ("T13", "train", f"{T} --rounds 1 --set lora_dropout=1.5", "lora_dropout must be in [0, 1)"),
    ("T14", "train", f"{T} --rounds 1 --set lr=-1", "lr must be > 0"),
    ("T17", "train", f"{T} --rounds 1 --set target_modules=", "'target_modules' cannot be null"),
    ("T18", "train", f"{T} --rounds 1 --set precision=fp8", "precision must be one of"),
    ("T19", "train", f"{T} --rounds 1 --device tpu", "device must be auto, cpu, cuda"),
    ("T22", "train", f"{T} --rounds 0", "rounds must be >= 1"),
    ("T23", "train", f"{T} --rounds 1 --clients 0", "clients must be >= 1"),
    ("T24", "train", f"{T} --rounds 1 --batch-size 0", "batch_size must be >= 1"),
    ("T25", "train", f"{T} --rounds 1 --local-steps -1", "local_steps must be >= 1"),
    ("T26", "train", f"{T} --rounds 1 --lr 0", "lr must be > 0"),
    ("T27", "train", f"{T} --rounds 1 --data /nope.jsonl --set synthetic=null", "data file not found"),
    (
        "T29",
        "train",
        f"{T} --rounds 1 --data wrongfields.jsonl --set synthetic=null",
        "a row lacks the fields",
    ),
    ("T30", "train", f"{T} --rounds 1 --data badtypes.jsonl --set synthetic=null", "of type int"),
    ("T31", "train", f"{T} --rounds 1 --task code --data badcode.jsonl --set synthetic=null", "messages"),
    ("T32", "train", f"{T} --rounds 1 --task code --data badcode2.jsonl --set synthetic=null", "messages"),
    ("T33", "train", f"{T} --rounds 1 --partition /nope.json", "partition file not found"),
    ("T34", "train", f"{T} --rounds 1 --partition part_trunc.json", "cannot be read"),
    ("T35", "train", f"{T} --rounds 1 --partition part_nodataset.json", "no dataset fingerprint"),
    ("T36", "train", f"{T} --rounds 1 --partition part_oob.json", "outside"),
    ("T37", "train", f"{T} --rounds 1 --partition part_empty.json", "has 0 rows"),
    ("T38", "train", f"{T} --rounds 1 --partition part_neg.json", "row index -1"),
    ("T39", "train", f"{T} --rounds 1 --partition part_str.json", "is not a list of row indices"),
    ("T40", "train", f"{T} --rounds 1 --partition part_list.json", "no list of clients"),
    ("T41", "train", f"{T} --rounds 1 --partition part.json --clients 5", "has 3 clients, config says 5"),
    ("T42", "train", "--recipe smoke --rounds 1 --no-progress --out afile", "is a file, not a folder"),
    (
        "T43",
        "train",
        "--recipe smoke --rounds 1 --no-progress --force --out afile",
        "is a file, not a folder",
    ),
    ("T44", "train", "--recipe smoke --rounds 1 --no-progress --out userdir", "is not a fedmom run folder"),
    (
        "T45",
        "train",
        "--recipe smoke --rounds 1 --no-progress --force --data /nope.jsonl --set synthetic=null --out userdir",  # noqa: E501
        "--force only replaces a fedmom run folder",
    ),
    (
        "T46",
        "train",
        "--recipe smoke --no-progress --force --data /nope.jsonl --set synthetic=null --out run_done",
        "data file not found",
    ),
    ("T47", "train", "--recipe smoke --rounds 1 --no-progress --force --out .", "is the current folder"),
    ("T48", "train", "--recipe smoke --lr 0.5 --no-progress --out run_done", "with other settings"),
    ("T50", "train", f"{T} --rounds 1 --set clients_per_round=0", "clients_per_round must be in 1..3"),
    ("T51", "train", f"{T} --rounds 1 --set grad_accum=3", "is not divisible by grad_accum 3"),
    (
        "T53",
        "train",
        f"{T} --rounds 1 --set val_rows=4 --set val_batch_size=0",
        "val_batch_size must be >= 1",
    ),
    ("T54", "train", f"{T} --rounds 1 --set beta=-1", "beta must be > 0"),
    ("T57", "train", f"{T} --rounds 1 --set tau=0", "tau must be in (0, 1]"),
    ("T58", "train", f"{T} --rounds 1 --engine bogus", "--engine must be sequential or flower"),
    ("T59", "train", f"{T} --rounds 1 --model /nonexistent/model", "cannot load model '/nonexistent/model'"),
    ("T60", "train", f"{T} --rounds 1 --set tokenizer=/nonexistent/tok", "cannot load tokenizer"),
    ("T61", "train", f"{T} --rounds 1 --set svd=foo", "svd must be one of"),
    (
        "T62",
        "train",
        f"{T} --rounds 1 --set min_client_size=0 --set beta=0.01 --clients 10",
        "min_client_size must be >= 1",
    ),
    ("T63", "train", "--recipe smoke --rounds abc --out r", "Invalid value for '--rounds'"),
    ("T64", "train", f"{T} --rounds 1 --set lora_r=2.5", "config key 'lora_r' expects"),
    ("T65", "train", f"{T} --rounds 2 --set lr_schedule=cosine --set min_lr=-5", "min_lr must be in [0"),
    ("P01", "partition", f"{P} --data /nope.jsonl --clients 3", "data file not found"),
    ("P03", "partition", f"{P} --data part_empty_file.json --clients 3", "no rows"),
    ("P04", "partition", f"{P} --data part_trunc.json --clients 3", "cannot read data file"),
    ("P05", "partition", f"{P} --data half.jsonl --clients 1 --min-size 1", "cannot read data file"),
    ("P06", "partition", f"{P} --data dict.json --clients 3", "expected a list of JSON objects"),
    ("P08", "partition", f"{P} --data wrongfields.jsonl --clients 3", "a row lacks the fields"),
    (
        "P10",
        "partition",
        f"{P} --data data.txt --clients 3",
        "unsupported data format '.txt'",
    ),  # CSV is read since issue 26
    ("P11", "partition", f"{P} --data emptydir --clients 3", "data file not found"),
    ("P12", "partition", f"{P} --data binary.jsonl --clients 3", "cannot read data file"),
    ("P14", "partition", f"{P} --synthetic 100 --clients 0", "--clients must be >= 1"),
    ("P15", "partition", f"{P} --synthetic 100 --clients -3", "--clients must be >= 1"),
    ("P16", "partition", f"{P} --synthetic 100 --clients 3 --beta -1", "--beta must be > 0"),
    ("P17", "partition", f"{P} --synthetic 100 --clients 3 --beta inf", "no Dirichlet(inf) draw"),
    ("P18", "partition", f"{P} --synthetic 100 --clients 3 --min-size -1", "--min-size must be >= 1"),
    ("P20", "partition", f"{P} --synthetic 0", "--synthetic must be a positive number"),
    ("P21", "partition", f"{P} --synthetic -5", "--synthetic must be a positive number"),
    ("P24", "partition", f"{P} --synthetic 10 --data rows.jsonl", "give either --data or --synthetic"),
    (
        "P25",
        "partition",
        "--task math --synthetic 100 --clients 3 --min-size 1 --out part.json",
        "already exists",
    ),
    (
        "P26",
        "partition",
        "--task math --synthetic 100 --clients 3 --min-size 1 --force --out emptydir",
        "is a folder, not a file",
    ),
    (
        "P28",
        "partition",
        "--task math --synthetic 100 --clients 3 --min-size 1 --out afile/p.json",
        "afile is a file, not a folder",
    ),
    ("P29", "partition", f"{P} --synthetic 100 --clients abc", "Invalid value for '--clients'"),
    (
        "P30",
        "partition",
        f"{P} --synthetic 100 --clients 10 --beta 0.01 --min-size 0",
        "--min-size must be >= 1",
    ),
    ("A01", "aggregate", f"{AG} /nope c1 --out o", "adapter folder not found: /nope"),
    ("A02", "aggregate", f"{AG} emptydir c1 --out o", "adapter_config.json is missing"),
    ("A03", "aggregate", f"{AG} a_trunc c1 --out o", "cannot read"),
    ("A04", "aggregate", f"{AG} a_garbage c1 --out o", "cannot read"),
    ("A05", "aggregate", f"{AG} a_empty c1 --out o", "cannot read"),
    ("A06", "aggregate", f"{AG} a_cfgjson c1 --out o", "cannot read"),
    ("A07", "aggregate", f"{AG} a_cfglist c1 --out o", "expected a JSON object, got list"),
    ("A08", "aggregate", f"{AG} a_rstr c1 --out o", "r must be a positive number"),
    ("A09", "aggregate", f"{AG} a_noalpha a_noalpha --out o", "lacks lora_alpha"),
    ("A10", "aggregate", "--method fedmomentum a_r0 a_r0 --out o", "r must be a positive number, got 0"),
    ("A11", "aggregate", "--method fedmomentum a_rank a_rank --out o", "but adapter_config.json"),
    ("A17", "aggregate", "--method fedmomentum a_nan c1 --out o", "holds NaN or infinite values"),
    ("A20", "aggregate", "--method fedmomentum a_int32 a_int32 --out o", "LoRA factors are 2-D"),
    ("A23", "aggregate", f"{AG} --weights -1,1 c0 c1 --out o", "weights must be finite and non-negative"),
    ("A24", "aggregate", f"{AG} --weights 0,0 c0 c1 --out o", "weights must not all be zero"),
    ("A25", "aggregate", f"{AG} --weights a,b c0 c1 --out o", "--weights must be comma-separated numbers"),
    ("A26", "aggregate", f"{AG} --weights nan,1 c0 c1 --out o", "weights must be finite and non-negative"),
    ("A27", "aggregate", "--method fedmomentum --tau 0 c0 c1 --out o", "tau must be in (0, 1]"),
    ("A28", "aggregate", "--method fedmomentum --tau 2 c0 c1 --out o", "tau must be in (0, 1]"),
    ("A29", "aggregate", f"{AG} --tau 0.9 c0 c1 --out o", "does not take option(s): tau"),
    ("A30", "aggregate", "--method rolora --round -1 c0 c1 --out o", "--round must be >= 0"),
    ("A32", "aggregate", f"{AG} c0 c1 --out afile", "is a file, not a folder"),
    ("A33", "aggregate", f"{AG} c0 c1 --out userdir", "already exists and is not empty"),
    ("A35", "aggregate", "--method ffa_lora c0 c1 --out o", "A is frozen this round"),
    ("A36", "aggregate", f"{AG} --svd randomized c0 c1 --out o", "does not take option(s): svd"),
    ("A37", "aggregate", "--method flora --no-balance c0 c1 --out o", "does not take option(s): balance"),
    ("A38", "aggregate", f"{AG} --weights inf,1 c0 c1 --out o", "weights must be finite and non-negative"),
    ("E01", "eval", "/nope/run", "is not a finished fedmom run folder"),
    ("E03", "eval", "run_part --limit 1", "is not a finished fedmom run folder"),
    ("E11", "eval", "run_done --tasks gsm8k --data-dir /nope", "--data-dir /nope is not a folder"),
    ("E19", "eval", "--model /nonexistent/m --out pre", "cannot load model '/nonexistent/m'"),
    ("R01", "report", "/nope", "results folder not found"),
    ("R02", "report", "emptydir", "no fedmom run folders"),
    ("R12", "report", "afile", "results folder not found"),
    ("S02", "sweep", "math --dry-run", "has no `sweep: grid:` section"),
    ("S04", "sweep", "sw_gridnull.yaml --dry-run", "must be a mapping"),
    ("S05", "sweep", "sw_gridlist.yaml --dry-run", "must be a mapping"),
    ("S06", "sweep", "sw_unknown.yaml --dry-run", "unknown sweep key(s) evals"),
    ("S09", "sweep", "sw_methodstr.yaml --dry-run", "`grid: method:` must be a non-empty list"),
    ("S10", "sweep", "smoke --dry-run --only method", "--only expects KEY=VALUE"),
    ("S11", "sweep", "smoke --dry-run --only colour=red", "unknown key"),
    ("S12", "sweep", "smoke --dry-run --only method=nosuch", "no cell of the grid matches"),
    ("S13", "sweep", "smoke --dry-run --set nosuch=1", "with a known key"),
    ("S14", "sweep", "smoke --dry-run --set lora_r=0", "lora_r must be >= 1"),
    ("S15", "sweep", "smoke --out afile --only method=fedit --set rounds=1 --no-progress", "is a file"),
    (
        "B01",
        "bench",
        "aggregate --clients 0 --shapes 64x64 --layers 1 --no-dense --repeat 1",
        "--clients must",
    ),
    ("B02", "bench", "aggregate --rank 0 --shapes 64x64 --layers 1 --no-dense --repeat 1", "--rank must be"),
    ("B03", "bench", "aggregate --shapes big --no-dense", "--shapes must look like"),
    ("B04", "bench", "aggregate --shapes 0x0 --no-dense", "--shapes must look like"),
    ("B05", "bench", "aggregate --repeat 0 --shapes 64x64 --layers 1 --no-dense", "--repeat must be >= 1"),
    ("B07", "bench", "aggregate --layers -1 --shapes 64x64 --no-dense --repeat 1", "--layers must be >= 1"),
    ("B10", "bench", "train --methods fedit --rounds 0", "--rounds must be >= 1"),
    ("B12", "bench", "train --methods fedit --rounds 1 --set nosuch=1", "with a known key"),
    (
        "B13",
        "bench",
        "aggregate --shapes 64x64 --layers 1 --no-dense --repeat 1 --clients 2 --rank 2 --json bench_user.json",  # noqa: E501
        "already exists",
    ),
    ("SG01", "train", f"{T} --rounds 1 --set =", "--set expects KEY=VALUE"),
    ("SG02", "train", f"{T} --rounds 1 --set ==", "--set expects KEY=VALUE"),
    ("SG03", "train", f"{T} --rounds 1 --set lora_r", "--set expects KEY=VALUE"),
    ("SG09", "train", f"{T} --rounds 1 --set 'target_modules=[]'", "target_modules must be a non-empty list"),
    ("SG12", "train", f"{T} --rounds 1 --set precision=null", "'precision' cannot be null"),
    ("SG13", "train", f"{T} --rounds 1 --set 'method_options={{tau: 5}}'", "tau must be in (0, 1]"),
    ("SG15", "train", f"{T} --rounds 1 --set 'sweep={{grid: {{}}}}'", "with a known key"),
    ("SG16", "train", f"{T} --rounds 1 --set seed=-1", "seed must be >= 0"),
    ("SG19", "train", f"{T} --rounds 1 --set data=/etc/passwd {NOSYN}", "unsupported data format"),
    ("SG20", "train", f"{T} --rounds 1 --set tau=.nan", "tau must be in (0, 1]"),
    ("SG23", "train", f"{T} --rounds 1 --set val_rows=-1", "val_rows must be >= 0"),
    ("SG27", "train", f"{T} --rounds 1 --set LORA_R=4", "with a known key"),
    ("SG28", "train", f"{T} --rounds 1 --set report_to=bogus", "with a known key"),
    ("SG29", "train", f"{T} --rounds 1 --set client_weights=bogus", "client_weights must be one of"),
    ("SG30", "train", f"{T} --rounds 1 --set lr_schedule=bogus", "lr_schedule must be one of"),
    ("SG34", "train", f"{T} --rounds 1 --set 'method_options={{bogus: 1}}'", "does not take option(s)"),
    ("SG35", "train", f"{T} --rounds 1 --set val_data=/nope.jsonl --set val_rows=4", "data file not found"),
    ("SG37", "train", f"{T} --rounds 1 --set tokenizer=/etc", "cannot load tokenizer '/etc'"),
    (
        "CR16",
        "train",
        f"{T} --rounds 1 --set 'client_ranks={{cycle: [1, 2], spread: [1, 2]}}'",
        "client_ranks must be a list of ranks",
    ),
    ("CR23", "train", f"{T} --rounds 1 --set 'client_ranks={{spread: [1, 1e9]}}'", "spread expects"),
    ("CR26", "train", f"{T} --rounds 1 --clients 0 --set 'client_ranks={{spread: [1, 4]}}'", "clients must"),
    ("CR28", "train", f"{T} --rounds 1 --set 'client_ranks={{cycle: {{spread: [1, 2]}}}}'", "cycle expects"),
    ("CR30", "train", f"{T} --rounds 1 --set 'client_ranks={{spread: [true, 4]}}'", "spread expects"),
    ("RT10", "train", f"{T} --rounds 1 --report-to bogus --engine flower", "--report-to must be one of"),
    ("F01", "train", "--recipe smoke --no-progress --set rounds=1e3 --out r", "config key 'rounds' expects"),
    ("F02", "train", "--recipe smoke --no-progress --set rounds=True --out r", "config key 'rounds' expects"),
    ("SO02", "sweep", "smoke --dry-run --only seed=abc --out sw", "no cell of the grid matches"),
    ("SO03", "sweep", "smoke --dry-run --only method= --out sw", "no cell of the grid matches"),
    ("SO05", "sweep", "smoke --dry-run --only seed=7 --out sw", "no cell of the grid matches"),
    ("SO08", "sweep", "smoke --dry-run --only method=fedit,flora --out sw", "no cell of the grid matches"),
    ("SO10", "sweep", "smoke --dry-run --only seed=0.0 --out sw", "no cell of the grid matches"),
    ("SO11", "sweep", "smoke --dry-run --only method=FedIT --out sw", "no cell of the grid matches"),
    ("Z05", "eval", "run_done --limit 1 --tasks synthetic_math,synthetic_math", "lists a task twice"),
    ("Z08", "aggregate", f"{AG} c0 c1 --out run_done --force", "is not a `fedmom aggregate` output folder"),
    ("K03", "eval", "run_done --limit 1 --cache afile", "--cache afile is a file, not a folder"),
    ("K06", "eval", "run_done --limit 1 --cache afile/c", "afile is a file, not a folder"),
    ("L01", "eval", "run_done --limit 1 --clients all", "--clients needs a fedsa_lora run"),
    ("AH05", "aggregate", "-m fedmomentum --heterogeneous --rank 0 c0 c1 --out o", "--rank must be >= 1"),
    ("AH06", "aggregate", "-m fedmomentum --heterogeneous --rank=-1 c0 c1 --out o", "--rank must be >= 1"),
    ("R08", "report", "sweepres --format xml", "--format must be md, csv or json"),
    ("R09", "report", "sweepres --spread foo", "--spread must be stderr or std"),
    ("R10", "report", "sweepres --out userdir/thesis.tex --no-figures", "exists and is not a fedmom report"),
    ("R11", "report", "sweepres --out emptydir --no-figures", "is a folder, not a file"),
    (
        "R14",
        "report",
        "sweepres --out sweepres/math/fedit/seed0/result.json --no-figures",
        "refusing to write a report over a run file",
    ),
    ("R15", "report", "sweepres --out afile --format csv --no-figures", "exists and is not a fedmom report"),
    ("T12", "train", f"{T} --rounds 1 --set lora_alpha=-8", "lora_alpha must be > 0"),
    ("T21", "train", f"{T} --rounds 1 --seed -1", "seed must be >= 0"),
    ("T52", "train", f"{T} --rounds 1 --set cutoff_len=1", "cutoff_len must be >= 16"),
    ("T55", "train", f"{T} --rounds 1 --set weight_decay=-1", "weight_decay must be >= 0"),
    ("T56", "train", f"{T} --rounds 1 --set max_grad_norm=-1", "max_grad_norm must be > 0 or null"),
    ("SG18", "train", f"{T} --rounds 1 --set model=/etc", "cannot load"),
    ("S03", "sweep", "sw_nosweep.yaml --dry-run", "has no `sweep: grid:` section"),
    ("S07", "sweep", "sw_badvalue.yaml --dry-run", "unknown method 'fedavg'"),
    ("S08", "sweep", "sw_settingskey.yaml --dry-run", "unknown key(s) learning_rate"),
    ("SO01", "sweep", "smoke --dry-run --only colour=red --out sw", "--only colour=...: unknown key"),
    ("E02", "eval", "afile", "is not a finished fedmom run folder"),
    ("E17", "eval", "run_done --limit 1 --protocol bogus", "--protocol must be lm-eval or train-format"),
    ("E18", "eval", "--model tiny", "give RUN_DIR, or --model with --out"),
    ("G43", "eval", f"{GEN.replace('humaneval', 'mbpp').replace('gen_data', 'gd_notest')} --out o", "found"),
    ("G49", "eval", f"{GEN.replace('humaneval', chr(39) * 2)} --out o", "scores one task at a time"),
    ("H01", "push", "run_done --repo me/x", "cannot push to the Hugging Face Hub offline"),
    ("H08", "push", "run_done --repo me/..", "--repo must look like OWNER/NAME"),
    ("H09", "push", "run_part --repo me/x", "is not a finished fedmom run folder"),
    ("H10", "push", "/nope --repo me/x", "is not a finished fedmom run folder"),
    ("H12", "push", f"run_done --repo me/{'x' * 200}", "--repo must look like OWNER/NAME"),
    ("H13", "push", "run_done --repo me/x.git", "--repo must look like OWNER/NAME"),
    ("T07", "train", "--recipe t_wrongtype.yaml --no-progress --out r", "config key 'lora_r' expects"),
    ("T08", "train", "--recipe t_negrounds.yaml --no-progress --out r", "rounds must be >= 1"),
    ("CR19", "train", "--recipe cr_zero.yaml --no-progress --out r", "client_ranks must be in 1..lora_r=4"),
    ("CR20", "train", "--recipe cr_spreadneg.yaml --no-progress --out r", "client_ranks must be in 1.."),
    ("CR21", "train", "--recipe cr_typo.yaml --no-progress --out r", "unknown key(s) client_rank"),
    ("CR22", "train", "--recipe cr_bool.yaml --no-progress --out r", "config key 'client_ranks' expects"),
    ("RT07", "train", "--recipe rt_bogus.yaml --no-progress --out r", "--report-to must be one of"),
    ("CR33", "sweep", "cr_sweep.yaml --dry-run --out sw", "client_ranks must be in 1..lora_r=4"),
    ("A12", "aggregate", f"{AG} c0 a_r8 --out o", "adapters disagree on rank r"),
    ("A13", "aggregate", f"{AG} c0 a_alpha32 --out o", "adapters disagree on lora_alpha"),
    ("A14", "aggregate", f"{AG} c0 a_qonly --out o", "adapters disagree on target_modules"),
    ("A15", "aggregate", f"{AG} c0 a_shape --out o", "adapters disagree on the shape"),
    ("A16", "aggregate", f"{AG} a_inconsistent a_inconsistent --out o", "has A (2, "),
    ("A18", "aggregate", f"{AG} a_onlyB a_onlyB --out o", "no LoRA factors"),
    ("A19", "aggregate", f"{AG} a_1d a_1d --out o", "of 1 dims"),
    ("AH01", "aggregate", "-m fedmomentum --heterogeneous c0 a_qonly --out o", "disagree on target_modules"),
    ("AH02", "aggregate", "-m fedmomentum --heterogeneous c0 a_shape --out o", "disagree on the shape"),
    ("AH04", "aggregate", "-m fedmomentum --heterogeneous a_rank a_r8 --out o", "says r=8"),
    ("AH13", "aggregate", "-m fedsvd --heterogeneous c0 a_r8 --out o", "factor shapes differ"),
    ("AH14", "aggregate", "-m fedsa_lora --heterogeneous c0 a_r8 --out o", "factor shapes differ"),
    ("AH15", "aggregate", "-m ffa_lora --heterogeneous c0 a_r8 --out o", "A is frozen"),
    ("X05", "export", "run_done --out run_done", "lies inside the run folder"),
    ("X29", "export", "sweepres/math/fedit/seed0 --out sweepres --force", "is not a `fedmom export` folder"),
    ("X34", "export", "run_done --out link_user --force", "is a symbolic link"),
    ("K10", "eval", "run_done --limit 1 --cache link_run", "lies inside"),
    (
        "Z02",
        "train",
        "--recipe smoke --rounds 1 --no-progress --force --out rep_ok",
        "not a fedmom run folder",
    ),
    ("F12", "train", "--recipe smoke --rounds 1 --no-progress --force --out run_withexp", "it holds exp"),
    ("M07", "train", "--recipe smoke --rounds 1 --no-progress --out link_user", "link_user"),
    ("M14", "report", "rep_passwd --no-figures", "does not hold a dict"),
    ("E21", "eval", "ev_usereval --limit 1", "is not a fedmom eval.json"),
    ("C08", "data", "convert conv_onebad --out o", "row 5 cannot be mapped"),
    ("C17", "data", "convert conv_wino --out o", "the sentence has no blank"),
    ("C19", "data", "convert conv_isdir --out o", "holds none of"),
    ("C22", "data", "convert conv_boolq --out o", "holds none of"),
    ("P07", "partition", f"{P} --data ints.json --clients 3", "expected a list of JSON objects"),
    ("P09", "partition", f"{P} --data garbage.parquet --clients 3", "cannot read data file"),
    *([("T20", "train", f"{T} --rounds 1 --device cuda", "CUDA is not available")] if NO_CUDA else []),
    ("B14", "bench", "train --methods fedit --rounds 1 --json bench_user.json", "already exists"),
    ("H11", "push", "run_done --repo me/x --adapter-only", "cannot push to the Hugging Face Hub offline"),
    ("Q11", "recipes", "copy smoke qdir", "qdir/smoke.yaml already exists"),
    ("G40", "eval", f"{GEN.replace('gen_data', 'gd_corrupt')} --out o", "cannot read"),
    ("G47", "eval", f"{GEN.replace('gen.jsonl', 'g_spaceid.jsonl')} --out o", "is not a humaneval task"),
    ("M32", "aggregate", f"{AG} a_extramod c1 --out o", "target_modules"),
    (
        "Z06",
        "report",
        "sweepres --out sweepres/math/fedit/seed0/config.yaml --no-figures",
        "refusing to write a report over a run file",
    ),
    # the last of the review's cases (issue 30's floor)
    ("E09", "eval", "run_done --limit 1 --tasks squad", "unknown eval task 'squad'"),
    ("E10", "eval", "run_done --limit 1 --tasks gsm8k", "needs the Hub"),
    ("G29", "eval", f"{GEN.replace('gen.jsonl', 'gen_data')} --out o", "gen_data is not a file"),
    ("G30", "eval", f"{GEN.replace('gen.jsonl', '/nope.jsonl')} --out o", "/nope.jsonl is not a file"),
    ("AH03", "aggregate", "-m fedmomentum --heterogeneous c0 a_r8_kv --out o", "disagree on target_modules"),
    ("L12", "eval", "run_fmh --limit 1 --clients all", "--clients needs a fedsa_lora run"),
    ("X11", "export", "run_flora --out exp --adapter-only", "base_delta.safetensors is not zero"),
    ("F04", "export", "run_fmh --out exp --adapter-only", "base_delta.safetensors is not zero"),
    # --report-to '' was read as none (the review's RT04); an empty name is refused, as in a sweep
    ("RT04", "train", f"{T} --rounds 1 --report-to ''", "--report-to must be one of none, tensorboard"),
    ("RT04b", "sweep", "sw_good.yaml --out sw --report-to ''", "--report-to must be one of"),
    ("C09", "data", "convert conv --out conv_out", "exists; pass --force to overwrite it"),
    ("F17", "data", "convert conv --out conv_user --force", "`fedmom data convert` did not write it"),
    ("F17b", "data", "convert conv --out conv_useryaml --force", "`fedmom data convert` did not write it"),
    # a run's eval.json of another model, as an older fedmom wrote it: never shown as the method's
    ("F10", "report", "rep_prerun --no-figures", "holds an evaluation of pretrained, not of this run"),
    ("F11", "report", "rep_genrun --no-figures", "holds an evaluation of generations, not of this"),
]


@pytest.mark.parametrize(
    "command,args,fragment", [pytest.param(*r[1:], id=r[0]) for r in REVIEW + REVIEW_CLEAN + REVIEW_IDS]
)
def test_review_case(world, monkeypatch, capsys, command, args, fragment):
    check_case(world, monkeypatch, capsys, command, args, fragment)


# A read-only folder, as root too: os.access says no for that folder only (E24, Q09, C15, G33).
RO_IDS = {"partition": "P27", "train": "T49", "aggregate": "A34", "report": "R13"}  # the review's ids
READ_ONLY_ANYONE = [
    ("E24", "eval", "run_done --limit 1", "run_done"),
    ("Q09", "recipes", "copy smoke ro/x.yaml", "ro"),
    ("C15", "data", "convert conv --out ro/o", "ro"),
    ("G33", "eval", f"{GEN} --out ro/o", "ro"),
    ("M-model", "eval", "--model tiny --tasks synthetic_math --limit 1 --out ro/o", "ro"),
    *[(RO_IDS.get(c, f"ro-{c}"), c, a, "ro") for c, a in READ_ONLY],
    ("X17", "export", "run_done --out ro/exp", "ro"),
    ("K05", "eval", "run_done --limit 1 --cache ro/c", "ro"),
    ("M09", "train", f"--recipe smoke {FAST} --no-progress --out run_part --resume", "run_part"),
    ("M11", "report", "sweepres --no-figures", "sweepres"),  # its report.md would go there
    ("M12", "train", "--recipe smoke --rounds 2 --set local_steps=1 --no-progress", "."),  # default --out
]


@pytest.mark.parametrize("command,args,folder", [pytest.param(*r[1:], id=r[0]) for r in READ_ONLY_ANYONE])
def test_read_only_folder_is_one_line(world, monkeypatch, capsys, command, args, folder):
    (world / "ro").mkdir(exist_ok=True)
    real, ro = os.access, (world / folder).resolve()

    def access(p, mode, **k):  # writing in `ro` is denied; reading it is not
        return real(p, mode, **k) and not (mode & os.W_OK and Path(p).resolve() == ro)

    monkeypatch.setattr(os, "access", access)
    check_case(world, monkeypatch, capsys, command, args, "permission denied")


@pytest.mark.parametrize("args", [pytest.param("run_done --out exp", id="M10")])
def test_export_of_a_read_only_run(world, monkeypatch, capsys, args):
    """Export only reads the run: a run folder nobody may write in exports as usual."""
    real, ro = os.access, (world / "run_done").resolve()
    monkeypatch.setattr(
        os, "access", lambda p, m, **k: real(p, m, **k) and not (m & os.W_OK and Path(p).resolve() == ro)
    )
    before = snapshot(world / "run_done")
    code, out, err = run_main(monkeypatch, capsys, "export", *shlex.split(args))
    assert code == 0, err
    assert (world / "exp" / "model.safetensors").is_file() and snapshot(world / "run_done") == before


# eval --generations --out . in a folder holding the user's eval.json (G44): refused, run from there
@pytest.mark.parametrize(
    "cwd,args,fragment", [pytest.param("g44", "--out .", "is not a fedmom eval.json", id="G44")]
)
def test_eval_out_dot_in_a_users_folder(world, monkeypatch, capsys, cwd, args, fragment):
    monkeypatch.chdir(world / cwd)
    gen = "--tasks humaneval --data-dir ../gen_data --generations ../gen.jsonl --allow-unsandboxed-code"
    check_case(world, monkeypatch, capsys, "eval", f"{gen} {args}", fragment)
    assert (world / cwd / "eval.json").read_text() == '{"mine": true}'


# A writer while another process holds the folder's lock (F16: eval --generations --out RUN while
# `train` writes it): one line, nothing written (the lock is this process's, taken first).
LOCKED = [("F16", "eval", f"{GEN} --out run_done", "run_done", "run_done")]


@pytest.mark.parametrize("command,args,folder,fragment", [pytest.param(*r[1:], id=r[0]) for r in LOCKED])
def test_a_locked_folder_is_refused(world, monkeypatch, capsys, command, args, folder, fragment):
    with safety.RunLock(world / folder):
        check_case(world, monkeypatch, capsys, command, args, fragment)


# Successful trains of the review (its "documented success"): exit 0, the setting recorded as given
# (a row's key and value in config.yaml), and every file that was there before kept.
TR = "--recipe smoke --rounds 1 --set local_steps=1 --no-progress --out r"
TRAIN_OK = [
    ("CR25", f"{TR} --set 'client_ranks={{cycle: [4, 4, 4, 4, 4]}}'", "client_ranks", [4, 4, 4]),
    ("SG24", f"{TR} --set local_steps=2.0", "local_steps", 2),  # integral: read as 2
    ("SG25", f"{TR} --set target_modules=q_proj,,v_proj", "adapter", ["q_proj", "v_proj"]),
    ("F15", f"{TR} --set target_modules=q_proj,,v_proj", "target_modules", ["q_proj", "v_proj"]),
    ("SG26", f"{TR} --set ' lora_r=2'", "lora_r", 2),  # the key stripped (smoke's lora_r is 4)
    ("SG38", f"{TR} --set lr=1e-30", "lr", 1e-30),
    ("RT08", f"{TR} --report-to tensorboard", "tensorboard", True),
]


@pytest.mark.parametrize("args,key,value", [pytest.param(*r[1:], id=r[0]) for r in TRAIN_OK])
def test_review_trains_that_succeed(world, monkeypatch, capsys, args, key, value):
    before = snapshot(world)
    code, out, err = run_main(monkeypatch, capsys, "train", *shlex.split(args))
    assert code == 0, err
    assert json.loads((world / "r" / "result.json").read_text())["status"] == "finished"
    if key == "adapter":  # what PEFT itself was given
        got = sorted(
            json.loads((world / "r" / "adapter" / "adapter_config.json").read_text())["target_modules"]
        )
    elif key == "tensorboard":  # --report-to is not a setting: its event files are the record
        got = (world / "r" / "tensorboard").is_dir()
    else:
        got = getattr(cfgmod.from_yaml((world / "r" / "config.yaml").read_text()), key)
    assert got == value and type(got) is type(value), got
    after = snapshot(world)
    assert {k: v for k, v in after.items() if k in before} == before


@pytest.mark.parametrize("link", [pytest.param("link_run", id="M08")])
def test_force_through_a_link_to_a_finished_run(world, monkeypatch, capsys, link):
    """`train --force --out LINK` retrains the run the link names; the link stays a link."""
    args = f"--recipe smoke --rounds 2 --set local_steps=1 --no-progress --force --out {link}"
    code, _, err = run_main(monkeypatch, capsys, "train", *shlex.split(args))
    assert code == 0, err
    assert os.readlink(world / "link_run") == "run_done"
    result = json.loads((world / "run_done" / "result.json").read_text())
    assert result["status"] == "finished" and result["rounds_completed"] == 2


# --report-to a tracker whose package is missing (RT02, RT05; installed here, so hidden): one line.
@pytest.mark.parametrize("tracker", [pytest.param("wandb", id="RT02"), pytest.param("mlflow", id="RT05")])
def test_report_to_a_missing_tracker_is_one_line(world, monkeypatch, capsys, tracker):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == tracker else real(name, *a)
    )
    check_case(
        world, monkeypatch, capsys, "train", f"{TR} --report-to {tracker}", f"needs the `{tracker}` package"
    )


# `fedmom push` with the Hub unreachable (here it always is; huggingface_hub is pointed at a closed
# local port so that the refusal is quick) and each way of being offline: one line, nothing written.
PUSH = [
    ("H02", {"HF_HUB_OFFLINE": "1"}, "me/x", "HF_HUB_OFFLINE is set"),
    ("H03", {"HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_fake"}, "me/x", "HF_HUB_OFFLINE is set"),
    ("F05", {}, "me/x", "no Hugging Face token"),
    ("F06", {"HF_TOKEN": "hf_fake"}, "me/x", "cannot reach the Hugging Face Hub"),
    ("F07", {"HF_TOKEN": "hf_fake"}, "me/..", "--repo must look like OWNER/NAME"),
    ("F08", {"HF_TOKEN": "hf_fake"}, "me/" + "x" * 200, "--repo must look like OWNER/NAME"),
    ("F09", {"HF_DATASETS_OFFLINE": "1"}, "me/x", "HF_DATASETS_OFFLINE is set"),
]


@pytest.mark.parametrize("env,repo,fragment", [pytest.param(*r[1:], id=r[0]) for r in PUSH])
def test_push_offline_or_unreachable_is_one_line(world, tmp_path, monkeypatch, capsys, env, repo, fragment):
    from huggingface_hub import constants

    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))  # no login here
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused
    check_case(world, monkeypatch, capsys, "push", f"run_done --repo {repo}", fragment)


# A full disk on every writer: one line, nothing left behind (no .tmp, no half-made folder).
# ENOSPC is raised where the data reaches the disk (fsync) or where it is renamed into place.
DISK_FULL = [
    ("M24", "partition", "--task math --synthetic 100 --clients 3 --min-size 1 --out new/p.json", "fsync"),
    ("M26", "data", "convert conv --out o", "fsync"),
    ("M26b", "data", "convert conv --out o", "replace"),
    ("M23", "eval", f"{GEN} --out o", "replace"),
    ("M25", "eval", "run_done --limit 1", "replace"),
    ("M25b", "eval", "--model tiny --tasks synthetic_math --limit 1 --out o", "replace"),
    (
        "B-json",
        "bench",
        "aggregate --shapes 8x8 --rank 2 --clients 2 --layers 1 --no-dense --repeat 1 --json b/b.json",
        "fsync",
    ),
    ("M-report", "report", "run_done --no-figures --out rep.md", "fsync"),
    ("M22", "export", "run_done --out exp --adapter-only", "replace"),
    ("M-agg", "aggregate", "-m fedit c0 c1 --out o", "replace"),
]


@pytest.mark.parametrize("command,args,where", [pytest.param(*r[1:], id=r[0]) for r in DISK_FULL])
def test_a_full_disk_is_one_line_and_leaves_nothing(world, monkeypatch, capsys, command, args, where):
    import errno

    real = getattr(os, where)

    def full(*a, **k):
        if where == "replace" and ".fedmom.lock" in str(a[0]):
            return real(*a, **k)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, where, full)
    before = snapshot(world)
    code, out, err = run_main(monkeypatch, capsys, *shlex.split(f"{command} {args}"))
    assert code == 2, (code, out, err)
    lines = err.splitlines()  # bench, eval and train may log progress on stderr before they write
    assert lines[-1].startswith("error: ") and "no space left on the device" in lines[-1], err
    assert sum(x.startswith("error:") for x in lines) == 1, err
    monkeypatch.undo()
    assert snapshot(world) == before


@pytest.mark.parametrize(
    "where,out",
    [
        ("fsync", "full"),
        pytest.param("torch.save", "full", id="M21"),
        pytest.param("torch.save", "run_part --resume", id="M27"),  # rounds 1-2 done, resumed
        ("fsync", "run_part --resume"),
    ],
)
def test_train_on_a_full_disk_is_one_line_and_leaves_no_temporary_file(
    world, monkeypatch, capsys, where, out
):
    """Train keeps what it wrote (a checkpoint to --resume from) but no `.tmp`."""
    folder = world / out.split()[0]
    checkpoint = (folder / "checkpoint.pt").read_bytes() if (folder / "checkpoint.pt").exists() else None
    import errno

    if where == "fsync":

        def full(*a, **k):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "fsync", full)
    else:  # torch's zip writer reports a full disk this way

        def full(obj, f, *a, **k):
            Path(f).write_bytes(b"half")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

        monkeypatch.setattr(torch, "save", full)
    args = f"--recipe smoke {FAST} --no-progress --out {out}"
    code, stdout, err = run_main(monkeypatch, capsys, "train", *shlex.split(args))
    lines = err.splitlines()  # the rounds it trained, then one line
    assert code == 2 and lines[-1].startswith("error: cannot write"), (stdout, err)
    assert "no space left on the device" in lines[-1] and sum(x.startswith("error:") for x in lines) == 1
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
    if checkpoint is not None:  # the resumed run's checkpoint is intact: --resume again later
        assert (folder / "checkpoint.pt").read_bytes() == checkpoint


def test_bench_json_makes_its_folder(world, monkeypatch, capsys):
    """B06: `--json DIR/b.json` under a folder that does not exist was a traceback."""
    args = (
        "aggregate --shapes 8x8 --rank 2 --clients 2 --layers 1 --no-dense --repeat 1 --json nope/dir/b.json"
    )
    code, _, err = run_main(monkeypatch, capsys, "bench", *shlex.split(args))
    assert code == 0, err
    assert json.loads((world / "nope" / "dir" / "b.json").read_text())["rows"]


def test_only_given_twice_with_one_value_is_fine(world, monkeypatch, capsys):
    args = "sw_good.yaml --dry-run --only method=fedit --only method=fedit --out sw"
    code, _, err = run_main(monkeypatch, capsys, "sweep", *shlex.split(args))
    assert code == 0, err


# ---- --force and user folders --------------------------------------------------------------------
def test_force_on_a_user_folder_keeps_every_file(world, monkeypatch, capsys):
    before = snapshot(world / "userdir")
    for extra in ([], ["--set", "synthetic=null", "--data", "/nope.jsonl"]):  # without / with a later error
        code, _, err = run_main(
            monkeypatch, capsys, "train", "--recipe", "smoke", "--force", "--out", "userdir", *extra
        )
        assert code == 2 and "not a fedmom run folder" in err and err.count("\n") == 1
        assert snapshot(world / "userdir") == before
    assert (world / "userdir" / "thesis.tex").read_text() == "precious"


def test_force_replaces_a_run_folder_only_after_validation(world, monkeypatch, capsys):
    (world / "run_done" / ".fedmom.lock").write_text("")
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "train",
        "--recipe",
        "smoke",
        *shlex.split(FAST),
        "--set",
        "rounds=1",
        "--set",
        "local_steps=2",
        "--force",
        "--out",
        "run_done",
        "--no-progress",
    )
    assert code == 0, err
    cfg = cfgmod.from_yaml((world / "run_done" / "config.yaml").read_text())
    assert (
        cfg.local_steps == 2
        and json.loads((world / "run_done" / "result.json").read_text())["status"] == "finished"
    )


# ---- --force never deletes a file fedmom did not write (issue 30) -----------------------------
# Hidden names that merely look temporary are the user's: only `.<fedmom name>.tmp` is fedmom's.
# Rows: (command, folder, the user's file put into a copy of it). Z01, F18, F19 of the outside review.
HIDDEN = [".notes.markdown", ".env.template", ".draft.tmp", ".thesis.abcdefgh", ".backup.tmp"]
FORCE_IDS = {("train", ".notes.markdown"): "Z01", ("train", ".thesis.abcdefgh"): "F18"}
FORCE_IDS[("aggregate", ".backup.tmp")] = "F19"  # the review's ids
FORCE_KEEPS = [
    *[pytest.param("train", "run_done", name, id=FORCE_IDS.get(("train", name))) for name in HIDDEN],
    ("train", "run_done", "adapter/notes.txt"),
    ("train", "run_done", "eval_samples/mine.txt"),
    ("train", "run_done", "eval_samples/clients/0/mine.txt"),  # eval --clients' own layout, a user file in it
    ("train", "run_done", "eval_samples/clients/x.jsonl"),
    ("train", "run_done", "lm_eval/mine.txt"),  # fedmom eval's lm-eval files: only lm-eval's names
    ("train", "run_done", "lm_eval/results_final.yaml"),
    *[pytest.param("aggregate", "agg_done", n, id=FORCE_IDS.get(("aggregate", n))) for n in HIDDEN],
    ("aggregate", "agg_done", "adapter/notes.txt"),
    ("aggregate", "agg_done", "clients/0/serve.py"),
    ("aggregate", "agg_done", "clients/extra.txt"),
]


@pytest.mark.parametrize("command,folder,name", FORCE_KEEPS)
def test_force_refuses_a_folder_holding_a_hidden_or_nested_user_file(
    world, monkeypatch, capsys, command, folder, name
):
    path = world / folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("mine")
    args = {
        "train": f"--recipe smoke {FAST} --no-progress --force --out {folder}",
        "aggregate": f"-m fedsa_lora c0 c1 --force --out {folder}",
    }[command]
    check_case(world, monkeypatch, capsys, command, args, f"(it holds {name})")
    assert path.read_text() == "mine"


def test_force_still_replaces_fedmoms_own_folders_and_temporary_files(world, monkeypatch, capsys):
    (world / "run_done" / ".result.json.tmp").write_text("left by a crash")  # fedmom's own temp name
    (world / "run_done" / ".adapter.tmp").mkdir()
    (world / "run_done" / "lm_eval").mkdir()  # fedmom eval's copy of lm-eval's own output files
    (world / "run_done" / "lm_eval" / "results_2026-12-07T16-52-10.575829.json").write_text("{}")
    code, _, err = run_main(
        monkeypatch, capsys, "train", "--recipe", "smoke", *shlex.split(FAST), "--no-progress",
        "--force", "--out", "run_done",
    )  # fmt: skip
    assert code == 0, err
    assert not (world / "run_done" / ".result.json.tmp").exists()
    assert not (world / "run_done" / ".adapter.tmp").exists()
    assert not (world / "run_done" / "lm_eval").exists()
    assert safety.is_aggregate_folder(world / "agg_done")  # clients/ is the aggregate's own
    code, _, err = run_main(
        monkeypatch, capsys, "aggregate", "-m", "fedit", "c0", "c1", "--force", "--out", "agg_done"
    )
    assert code == 0, err
    assert json.loads((world / "agg_done" / "aggregation.json").read_text())["method"] == "fedit"


# ---- no run that "finishes" having learned nothing (issue 30) -----------------------------------
def test_a_cutoff_that_removes_most_responses_is_refused_before_anything_is_written(
    world, monkeypatch, capsys, gsm8k_train
):
    """The reviewer's case: real GSM8K rows at cutoff_len 64 (the prompts fill it)."""
    args = f"--recipe smoke {FAST} --set synthetic=null --data {gsm8k_train} --set cutoff_len=64 --out g"
    check_case(world, monkeypatch, capsys, "train", args, "more than 50% makes the run meaningless")


def test_steps_without_a_trainable_token_have_no_loss_and_are_counted(world, monkeypatch, capsys):
    rows = TASKS["math"].synthetic(40, 0)
    long = "word " * 300  # prompts past the cutoff: their response is cut away entirely
    _write_jsonl(
        world / "mixed.jsonl",
        [{**r, "query": long + r["query"]} if i % 5 == 0 else r for i, r in enumerate(rows)],
    )
    code, _, err = run_main(
        monkeypatch, capsys, "train", "--recipe", "smoke", *shlex.split(FAST), "--set", "synthetic=null",
        "--data", "mixed.jsonl", "--set", "batch_size=1", "--set", "local_steps=6", "--set", "clients=2",
        "--set", "min_client_size=4", "--set", "beta=1000", "--no-progress", "--out", "mixed",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads((world / "mixed" / "result.json").read_text())
    assert result["cutoff"]["rows_without_response"] == 8 and result["cutoff"]["rows"] == 40
    steps = result["steps"]
    assert steps["total"] == 3 * 2 * 6 and 0 < steps["with_trainable_token"] < steps["total"]
    for record in runfolder.read_metrics(world / "mixed" / "metrics.jsonl"):
        assert record["loss"] is None or record["loss"] > 0  # never a made-up 0.0
        assert all(v is None or v > 0 for v in record["client_loss"].values())


# ---- determinism of what a run records (issue 30) ------------------------------------------------
def test_adapter_config_lists_target_modules_sorted(world, monkeypatch, capsys):
    modules = "v_proj,q_proj,o_proj,k_proj"
    code, _, err = run_main(
        monkeypatch, capsys, "train", "--recipe", "smoke", *shlex.split(FAST), "--set", "rounds=1",
        "--set", f"target_modules={modules}", "--no-progress", "--out", "tm",
    )  # fmt: skip
    assert code == 0, err
    saved = json.loads((world / "tm" / "adapter" / "adapter_config.json").read_text())["target_modules"]
    assert saved == sorted(modules.split(","))


def test_a_failed_resume_is_not_counted(world, monkeypatch, capsys):
    from fedmom_cli.errors import UserError

    args = [
        "train",
        "--recipe",
        "smoke",
        *shlex.split(FAST),
        "--no-progress",
        "--out",
        "run_part",
        "--resume",
    ]

    def fail(self, *a, **k):
        raise UserError("the round failed")

    with monkeypatch.context() as m:
        m.setattr(Simulation, "run_round", fail)
        code, _, err = run_main(monkeypatch, capsys, *args)
    assert code == 2 and "the round failed" in err
    result = json.loads((world / "run_part" / "result.json").read_text())
    assert result["status"] == "failed" and result["resumed"] == 0
    code, _, err = run_main(monkeypatch, capsys, *args)  # now it trains: one resume
    assert code == 0, err
    result = json.loads((world / "run_part" / "result.json").read_text())
    assert result["status"] == "finished" and result["resumed"] == 1


# ---- locks ---------------------------------------------------------------------------------------
def test_a_held_lock_is_named_and_nothing_is_written(world, monkeypatch, capsys):
    with safety.RunLock(world / "run_part"):
        check_case(
            world,
            monkeypatch,
            capsys,
            "train",
            f"--recipe smoke {FAST} --out run_part --resume --no-progress",
            f"pid {os.getpid()}",
        )
    # Released: the same command now resumes and finishes.
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "train",
        "--recipe",
        "smoke",
        *shlex.split(FAST),
        "--out",
        "run_part",
        "--resume",
        "--no-progress",
    )
    assert code == 0, err
    assert [r["round"] for r in runfolder.read_metrics(world / "run_part" / "metrics.jsonl")] == [0, 1, 2]


@pytest.mark.slow  # two real processes and a full training run: ~40 s on a busy 2-core machine
def test_two_trains_on_one_folder_one_finishes_the_other_exits_2_at_once(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    base = [
        sys.executable,
        "-m",
        "fedmom_cli",
        "train",
        "--recipe",
        "smoke",
        "--method",
        "fedit",
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "rounds=6",
        "--set",
        "local_steps=4",
    ]
    first = subprocess.Popen(base + ["--lr", "0.01"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "result.json").is_file():
        time.sleep(0.02)
    assert first.poll() is None, "the first run ended before the second started"
    start = time.perf_counter()
    second = subprocess.run(base + ["--lr", "0.02"], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    still_running = first.poll() is None
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 2 and second.stderr.count("\n") == 1
    assert f"is being written by pid {first.pid}" in second.stderr
    assert still_running, "the second command waited for the first"
    print(f"second writer refused after {seconds:.2f} s (process start included)")
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "finished" and result["rounds_completed"] == 6
    assert cfgmod.from_yaml((out / "config.yaml").read_text()).lr == 0.01


# ---- clients that would never advance ------------------------------------------------------------
def test_sampler_refuses_an_empty_client():
    from fedmom_cli.client import Sampler
    from fedmom_cli.errors import UserError

    with pytest.raises(UserError, match="client 4 has no rows"):
        Sampler([], 0, 4).take(3)
    assert Sampler([7], 0, 0).take(3) == [7, 7, 7]  # one row cycles: progress every call


def test_no_partition_ever_has_an_empty_client():
    from fedmom_cli.partition import split_rows

    for seed in range(20):  # 92% of first draws leave a client empty here; min_size 0 redraws them
        split = split_rows(50, 10, 0.5, seed, 0)
        assert min(len(c) for c in split.clients) >= 1 and sum(map(len, split.clients)) == 50


def test_sweep_recipes_never_write_under_the_committed_examples():
    examples = (Path(__file__).resolve().parents[1] / "results" / "examples").resolve()
    for path in cfgmod.RECIPES_DIR.rglob("*.yaml"):
        spec = yaml.safe_load(path.read_text()) or {}
        out = Path((spec.get("sweep") or {}).get("out") or "results")
        assert examples not in (cfgmod.RECIPES_DIR.parent / out).resolve().parents
        assert (cfgmod.RECIPES_DIR.parent / out).resolve() != examples


def test_a_report_above_the_examples_leaves_them_out(tmp_path):
    from fedmom_cli.report import tables as report

    root = tmp_path / "results"
    shutil.copytree(Path(__file__).resolve().parents[1] / "results" / "examples", root / "examples")
    assert report.collect(root) == ([], [])
    runs, _ = report.collect(root / "examples" / "mini")  # on request: every example run
    folders = {p.parent for p in (root / "examples" / "mini").rglob("result.json")}
    assert len(runs) == len(folders) >= 16  # the eight variants, two seeds or more
    methods = {p.parent.name for p in folders}  # every variant the example root holds
    assert {0, 1} <= {r.config["seed"] for r in runs} and {r.config["method"] for r in runs} == methods
    assert methods >= {"fedit", "fedex_lora", "fedmomentum", "fedit_resplit"}
