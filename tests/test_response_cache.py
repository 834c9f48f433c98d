"""`fedmom eval --cache`: a rerun after a crash answers finished requests from lm-eval's own response
store, and a store is never shared by two models (fingerprint)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fedmom_cli import runfolder
from fedmom_cli.errors import UserError
from fedmom_cli.evaluation import evaluate as ev
from fedmom_cli.evaluation import response_cache


def _generations(run: Path) -> list[str]:
    lines = (run / "eval_samples" / "synthetic_math.jsonl").read_text().splitlines()
    return [json.loads(line)["generation"] for line in lines]


def test_a_crash_in_scoring_loses_no_generation(smoke_run, tmp_path, monkeypatch):
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.models.huggingface import HFLM

    cache = tmp_path / "cache"
    reference = ev.run(ev.EvalOptions(run_dir=smoke_run, limit=6))["tasks"]["synthetic_math"]
    wanted = _generations(smoke_run)

    def broken_scoring(self, doc, results):
        raise RuntimeError("scorer bug")

    with monkeypatch.context() as m:  # generation finishes, then scoring fails: nothing written
        m.setattr(ConfigurableTask, "process_results", broken_scoring)
        with pytest.raises(RuntimeError, match="scorer bug"):
            ev.run(ev.EvalOptions(run_dir=smoke_run, limit=6, force=True, cache=cache))
    (db,) = cache.glob("responses-*_rank0.db")

    def no_generation(self, requests, disable_tqdm=False):
        raise AssertionError(f"generated {len(requests)} request(s) again")

    with monkeypatch.context() as m:  # the rerun may not generate anything: all answered from db
        m.setattr(HFLM, "generate_until", no_generation)
        again = ev.run(ev.EvalOptions(run_dir=smoke_run, limit=6, force=True, cache=cache))
    task = again["tasks"]["synthetic_math"]
    assert task["value"] == reference["value"] and task["n"] == reference["n"] == 6
    assert task["response_cache"] == {"file": db.name.removesuffix("_rank0.db"), "entries_before": 6}
    assert "response_cache" not in reference  # without --cache nothing is said about a cache
    assert _generations(smoke_run) == wanted  # the very texts a fresh evaluation produced
    assert list(cache.iterdir()) == [db]  # the same configuration: the same file

    with monkeypatch.context() as m:  # another batch size is another configuration: generates
        m.setattr(HFLM, "generate_until", no_generation)
        with pytest.raises(AssertionError, match="generated 6 request"):
            ev.run(ev.EvalOptions(run_dir=smoke_run, limit=6, force=True, cache=cache, batch_size=3))


def test_fingerprint_changes_with_everything_that_decides_a_response(smoke_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)

    def key(model="tiny", dtype="float32", device="cpu", **options):
        opts = ev.EvalOptions(**{"run_dir": run, "batch_size": 8, **options})
        return response_cache.fingerprint(opts, model, dtype, device)

    base = key()
    assert key() == base  # deterministic
    changed = {
        "dtype": key(dtype="bfloat16"),
        "device": key(device="cuda"),
        "batch": key(batch_size=16),
        "model": key(model="other"),
        "no adapter": key(run_dir=None),
    }
    (run / runfolder.CLIENT_FACTORS).write_bytes(b"client factors")
    changed["client"] = key(client=0)
    (run / runfolder.CLIENT_FACTORS).write_bytes(b"other client factors")
    changed["client factors"] = key(client=0)
    config = run / runfolder.CONFIG
    config.write_text(config.read_text() + "# edited\n")
    changed["config"] = key()
    delta = run / runfolder.BASE_DELTA
    if delta.is_file():
        delta.write_bytes(delta.read_bytes() + b" ")
        changed["base delta"] = key()
    weights = next((run / runfolder.ADAPTER).glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + bytes([weights.read_bytes()[-1] ^ 1]))
    changed["adapter"] = key()  # a retrained run never reuses the old run's answers
    assert base not in changed.values() and len(set(changed.values())) == len(changed), changed


@pytest.mark.parametrize(
    "where, message",
    [
        ("afile", "is a file, not a folder"),  # the cache itself is a file
        ("afile/sub", "is a file, not a folder"),  # a folder that would lie under a file
        ("RUN/cache", "lies inside"),  # inside the folder the evaluation writes
        ("RUN", "lies inside"),
    ],
)
def test_a_bad_cache_is_refused_before_any_write(smoke_run, tmp_path, where, message):
    (tmp_path / "afile").write_text("mine")
    target = Path(str(tmp_path / where).replace(str(tmp_path / "RUN"), str(smoke_run)))
    before = sorted(str(p) for p in [*smoke_run.rglob("*"), *tmp_path.rglob("*")])
    with pytest.raises(UserError, match=message):
        ev.run(ev.EvalOptions(run_dir=smoke_run, limit=2, force=True, cache=target))
    assert (tmp_path / "afile").read_text() == "mine"
    assert sorted(str(p) for p in [*smoke_run.rglob("*"), *tmp_path.rglob("*")]) == before
