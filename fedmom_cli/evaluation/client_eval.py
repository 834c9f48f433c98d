"""`fedmom eval RUN --clients all|K,...`: evaluate FedSA-LoRA's per-client models and their mean.

FedSA-LoRA (fedmom_cli/methods/fedsa_lora.py) shares A and keeps each client's B: client k's model
is (A, B_k), and the run's adapter/ holds the "mean model" (A, B_mean), which plain `fedmom eval`
evaluates (unchanged, the default). Every client's latest B_k lives in the method's state
(checkpoint.pt while the run trains; `fedmom train` deletes the checkpoint when the run finishes), so
a finished fedsa_lora run also writes RUN/client_factors.safetensors (`save_client_factors`, called
from `Simulation.save_outputs`): the shared A, the mean B and each client's B, keys
`global_A.<module>`, `mean_B.<module>`, `local_B.<k>.<module>`, the round in the metadata; the
method's state is rebuilt from it exactly (`load_state`). `--clients` evaluates, for each listed
client k, the run's model with its LoRA factors set to `FedSALoRA.client_factors(k)` = (A, B_k)
(the same base model and base delta), on the same tasks, protocol and limit as the global
evaluation of that call, and records in eval.json (the existing keys are kept as they were):

    "clients": {
      "round": R,                              # the round whose state was evaluated
      "per_client": {"<k>": {"<task>": {...the same entry as tasks/<task>..., "seen": bool}}},
      "mean": {"<task>": {"metric", "metric_key", "value", "clients", "values"}}
    }

`mean.value` is the unweighted mean of the per-client values over every client that eval.json holds
for that task (the "mean of per-client models"; the "mean model" (A, B_mean) is tasks/<task>). A
client that never trained (possible with clients_per_round) has no B_k of its own: it is evaluated
with the mean B, as it would start its next round, and marked `"seen": false`. Per-document records
go to eval_samples/clients/<k>/<task>.jsonl.

How: for each client, the ordinary evaluation (`evaluate._evaluate_and_write`, unchanged) runs with
`EvalOptions.client = k` (`evaluate._load_model` then calls `apply_client`) into a temporary folder
`RUN/.eval_client_<k>.tmp` (a name `--force` and the run-folder checks treat as temporary), whose
eval.json and samples are then moved into place; the model is loaded once per client. Other methods
have one global model and are refused (`--clients` needs a fedsa_lora run).
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

from fedmom_cli import runfolder
from fedmom_cli.errors import UserError


def parse_clients(text: str | None) -> list[int] | str | None:
    """--clients: None, 'all', or a comma-separated list of client indices (checked later)."""
    if text is None:
        return None
    text = text.strip()
    if text == "all":
        return "all"
    try:
        ids = [int(x) for x in text.split(",")]
    except ValueError:
        raise UserError(f"--clients expects 'all' or client indices like 0,2,5, got {text!r}") from None
    return ids


CLIENT_FILE = runfolder.CLIENT_FACTORS
load_state = runfolder.read_client_factors


def resolve(run_dir: Path | None, cfg, clients) -> list[int]:
    """The client indices to evaluate; every check before anything is written."""
    if run_dir is None:
        raise UserError("--clients needs RUN_DIR (a fedsa_lora run), not --model")
    if cfg.method != "fedsa_lora":
        raise UserError(
            f"--clients needs a fedsa_lora run (its clients keep their own B); "
            f"{cfg.method} has one global model"
        )
    ids = list(range(cfg.clients)) if clients == "all" else list(clients)
    if not ids or len(set(ids)) != len(ids):
        raise UserError(f"--clients lists a client twice or none: {ids}")
    if any(k < 0 or k >= cfg.clients for k in ids):
        raise UserError(
            f"--clients must be in 0..{cfg.clients - 1} (the run has {cfg.clients} clients), got {ids}"
        )
    load_state(run_dir)
    return ids


def client_model(run_dir: Path, client: int):
    """Client `client`'s factors {module: LoraFactors} and whether it has a B of its own."""
    from fedmom_cli.methods import LoraSpec
    from fedmom_cli.methods.fedsa_lora import FedSALoRA

    _, state = load_state(run_dir)
    method = FedSALoRA(LoraSpec(r=1, alpha=1.0))  # the spec plays no part in client_factors
    method.load_state_dict(state)
    return method.client_factors(client), client in method.local_B


def apply_client(model, run_dir: Path, client: int) -> None:
    """Set the loaded PeftModel's LoRA factors to client `client`'s (A, B_k)."""
    from fedmom_cli.model import lora_modules, set_factors

    factors, _ = client_model(run_dir, client)
    modules = lora_modules(model)
    if set(modules) != set(factors):
        raise UserError(f"--clients: {CLIENT_FILE}'s modules do not match {run_dir / 'adapter'}")
    set_factors(modules, factors)


def evaluate_clients(
    evaluate_one, opts, cfg, out: Path, local, planned, code_tasks, isolation, result: dict
) -> dict:
    """Evaluate every client in `opts.clients` and add them to out/eval.json; returns `result` with
    this call's `clients` section. `evaluate_one` is `evaluate._evaluate_and_write`, passed in so
    that this module never imports evaluate (which imports it)."""
    import dataclasses

    round_, _ = load_state(out)
    done: dict[str, dict] = {}
    for k in opts.clients:
        tmp = out / f".eval_client_{k}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            one = evaluate_one(
                dataclasses.replace(opts, client=k, clients=None),
                cfg,
                tmp,
                local,
                planned,
                None,
                code_tasks,
                isolation,
            )
            _, seen = client_model(out, k)
            done[str(k)] = {  # lm-eval's own files of a client's model are not kept (tmp goes)
                name: {**{k_: v for k_, v in entry.items() if k_ != "lm_eval_files"}, "seen": seen}
                for name, entry in one["tasks"].items()
            }
            dest = out / "eval_samples" / "clients" / str(k)
            dest.mkdir(parents=True, exist_ok=True)
            for f in (tmp / "eval_samples").glob("*.jsonl"):
                f.replace(dest / f.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    saved = json.loads((out / "eval.json").read_text())
    old = saved.get("clients") if isinstance(saved.get("clients"), dict) else {}
    per_client = {c: dict(t) for c, t in (old.get("per_client") or {}).items()}
    for c, tasks in done.items():
        per_client.setdefault(c, {}).update(tasks)
    mean = {}
    for name in sorted({n for tasks in per_client.values() for n in tasks}):
        holders = sorted((c for c in per_client if name in per_client[c]), key=int)
        values = [per_client[c][name]["value"] for c in holders]
        first = per_client[holders[0]][name]
        mean[name] = {
            "metric": first["metric"],
            "metric_key": first.get("metric_key", first["metric"]),
            "value": statistics.fmean(values),
            "clients": [int(c) for c in holders],
            "values": values,
        }
    saved["clients"] = {"round": round_, "per_client": per_client, "mean": mean}
    runfolder.atomic_write_json(out / "eval.json", saved)
    this_call = {n: m for n, m in mean.items() if any(n in t for t in done.values())}
    return {**result, "clients": {"round": round_, "per_client": done, "mean": this_call}}
