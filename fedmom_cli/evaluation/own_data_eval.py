"""`fedmom eval RUN --data FILE`: the run's model on your own held-out rows.

    fedmom eval RUN --data heldout.jsonl                                   # loss and perplexity
    fedmom eval RUN --data heldout.jsonl --metric exact_match --answer-regex '#### (\\S+)'
    fedmom eval RUN --data heldout.jsonl --metric contains --max-new-tokens 32
    fedmom eval RUN --data heldout.jsonl --field response_field=reply     # another column name

Rows are read and formatted exactly as training reads them (data.load_rows, tasks.encode): the
run's own field mapping for a `task: instruct` run (docs/own_data.md), the task's schema for a
paper task; `--field KEY=VALUE` (a key of instruct.KEYS) overrides the mapping key by key, and on a
paper-task run (or with `--model`) makes the file an instruct one with those keys over Alpaca's
default columns. Every row is checked before anything is written (one line naming the row).

Metrics (task name `data.<file stem>.<metric>` in eval.json, the stem's characters other than
letters, digits, `_` and `-` replaced by `_`):
- `loss` (the default): the training loss, response tokens only (prompt masked, EOS appended, cut
  at the run's cutoff_len), summed over every response token of every row and divided by their
  number: the mean over tokens, as the run's `val loss` (simulate.validation_loss) is. Perplexity
  is exp(that mean). Its standard error treats tokens as clustered by row (a row's tokens are not
  independent): the ratio estimator's, SE = sqrt(n/(n-1) * sum_i (s_i - L c_i)^2) / sum_i c_i for
  row i's loss sum s_i and token count c_i, L the mean; perplexity's by the delta method,
  exp(L) * SE. A row whose response the cutoff removes entirely is left out and counted.
- `exact_match`: greedy generation (no sampling, at most --max-new-tokens, default 256, stopping
  at EOS) from the training prompt; the answer is the first match of --answer-regex R in the
  generation (its first capture group, or the whole match when R has none; no match: wrong), and
  the reference is the same extraction from the row's response (the whole response when R does
  not match it). Both are compared stripped of surrounding white space, as equal strings; without
  R the whole generation and the whole response are compared.
- `contains`: the same generation; right when the row's response (stripped) occurs in it.
The standard error of a 0/1 score is lm-eval's: the sample standard deviation over rows / sqrt(n).
Generation runs one row at a time (no padding: a row's tokens are exactly the training prompt's).
"""

from __future__ import annotations

import dataclasses
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from fedmom_cli.errors import UserError

METRICS = ("loss", "exact_match", "contains")
DEFAULT_MAX_NEW_TOKENS = 256
PROTOCOL = "own-data"
STDERR_LOSS = (
    "ratio estimator over rows (tokens clustered by row): sqrt(n/(n-1) sum (s_i - L c_i)^2) / sum c_i"
)
STDERR_SCORE = "sample standard deviation of the 0/1 scores over rows / sqrt(n) (lm-eval's)"


@dataclass
class OwnPlan:
    """One --data evaluation, validated (rows read and checked; encoded by `prepare`)."""

    name: str
    metric: str
    path: Path
    task: object  # tasks.Task: the format and mask training uses
    mapping: dict  # the field mapping's keys that are set (empty for a paper task)
    rows: list[dict]
    n_full: int
    sha256: str
    cutoff_len: int
    regex: re.Pattern | None = None
    max_new_tokens: int | None = None
    limit: int | None = None  # --limit: the first N rows
    encoded: list[dict] = field(default_factory=list)


def task_name(path: Path, metric: str) -> str:
    """eval.json's key: `data.<stem>.<metric>` (dots mark it as a file's, not a benchmark)."""
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", Path(path).stem) or "data"
    return f"data.{stem}.{metric}"


def parse_fields(items) -> dict[str, str]:
    """--field KEY=VALUE (repeatable; a dict passes through) -> {key: value}, keys checked."""
    from fedmom_cli.instruct import KEYS

    if not items:
        return {}
    pairs = items.items() if isinstance(items, dict) else [_pair(x) for x in items]
    out = {}
    for key, value in pairs:
        if key not in KEYS:
            raise UserError(f"--field {key}: unknown field mapping key; known: {', '.join(KEYS)}")
        out[key] = value
    return out


def _pair(text: str) -> tuple[str, str]:
    key, eq, value = str(text).partition("=")
    if not eq or not key.strip():
        raise UserError(f"--field expects KEY=VALUE (e.g. response_field=answer), got {text!r}")
    return key.strip(), value


def check_options(opts) -> None:
    """The option combinations, before anything is read."""
    given = lambda name: getattr(opts, name) is not None  # noqa: E731
    if opts.data is None:
        for name, flag in (("metric", "--metric"), ("answer_regex", "--answer-regex")):
            if given(name):
                raise UserError(f"{flag} scores your own rows: give --data FILE")
        if given("max_new_tokens"):
            raise UserError("--max-new-tokens applies to --data FILE with --metric exact_match or contains")
        if opts.fields:
            raise UserError("--field maps the columns of --data FILE: give --data")
        return
    metric = opts.metric or "loss"
    if metric not in METRICS:
        raise UserError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if given("answer_regex") and metric != "exact_match":
        raise UserError(f"--answer-regex applies to --metric exact_match, not {metric}")
    if given("max_new_tokens"):
        if metric == "loss":
            raise UserError(
                "--max-new-tokens applies to --metric exact_match or contains (loss generates nothing)"
            )
        if opts.max_new_tokens < 1:
            raise UserError(f"--max-new-tokens must be at least 1, got {opts.max_new_tokens}")
    others = [
        flag
        for flag, on in (
            ("--tasks", opts.tasks is not None),
            ("--include-path", opts.include_path is not None),
            ("--data-dir", opts.data_dir is not None),
            ("--shots", opts.shots is not None),
            ("--protocol", opts.protocol != "lm-eval"),
            ("--clients", opts.clients is not None),
            ("--cache", opts.cache is not None),
            ("--code-sampling", opts.code_sampling != "greedy"),
        )
        if on
    ]
    if others:
        raise UserError(
            f"--data FILE is evaluated on its own: {', '.join(others)} would not apply; "
            "run the benchmarks in another `fedmom eval` call"
        )


def _task(cfg, fields: dict, run: bool):
    """The task (format and loss mask) the rows are read with, and the mapping keys set."""
    from fedmom_cli import instruct
    from fedmom_cli.tasks import INSTRUCT, task_for

    if not fields and run and cfg.task != INSTRUCT:
        return task_for(cfg), {}
    keep = cfg.task == INSTRUCT and run  # the run's own mapping, key by key under --field
    keys = {k: (getattr(cfg, k) if keep else None) for k in instruct.KEYS}
    mapped = dataclasses.replace(cfg, task=INSTRUCT, synthetic=None, **{**keys, **fields})
    instruct.check_mapping(mapped)
    return task_for(mapped), {k: v for k in instruct.KEYS if (v := getattr(mapped, k)) is not None}


def plan(opts, cfg) -> OwnPlan:
    """Read and check FILE under the mapping; nothing is written."""
    from fedmom_cli.data import Rows, load_rows

    metric = opts.metric or "loss"
    regex = None
    if opts.answer_regex is not None:
        try:
            regex = re.compile(opts.answer_regex)
        except re.error as exc:
            raise UserError(
                f"--answer-regex {opts.answer_regex!r} is not a regular expression: {exc}"
            ) from None
    fields = parse_fields(opts.fields)
    path = Path(opts.data)
    if not path.is_file():
        raise UserError(f"--data {path}: no such file")
    task, mapping = _task(cfg, fields, opts.run_dir is not None)
    loaded: Rows = load_rows(task, path)  # every row checked: one line naming the row and field
    rows = loaded.rows[: opts.limit] if opts.limit else loaded.rows
    return OwnPlan(
        name=task_name(path, metric),
        metric=metric,
        path=path,
        task=task,
        mapping=mapping,
        rows=rows,
        n_full=len(loaded.rows),
        sha256=loaded.fingerprint()["sha256"],
        cutoff_len=cfg.cutoff_len,
        regex=regex,
        max_new_tokens=(opts.max_new_tokens or DEFAULT_MAX_NEW_TOKENS) if metric != "loss" else None,
        limit=opts.limit,
    )


def prepare(p: OwnPlan, tokenizer) -> OwnPlan:
    """Encode every row as training does (tasks.encode); still before anything is written."""
    from fedmom_cli.tasks import IGNORE_INDEX, encode

    p.encoded = [encode(p.task, r, tokenizer, p.cutoff_len) for r in p.rows]
    if p.metric == "loss" and not any(any(x != IGNORE_INDEX for x in e["labels"][1:]) for e in p.encoded):
        raise UserError(
            f"--data {p.path}: cutoff_len {p.cutoff_len} leaves no response token in any row; "
            "nothing to score"
        )
    return p


# ---- loss --------------------------------------------------------------------------------------
def row_losses(model, encoded: list[dict], pad_id: int, device, batch_size: int) -> list[tuple[float, int]]:
    """(sum of the response tokens' losses, their number) per row, in row order."""
    import torch

    from fedmom_cli.client import collate
    from fedmom_cli.tasks import IGNORE_INDEX

    out = []
    with torch.no_grad():
        for i in range(0, len(encoded), batch_size):
            batch = collate(encoded[i : i + batch_size], pad_id, device)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = batch["labels"][:, 1:]
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none"
            )
            mask = labels != IGNORE_INDEX
            out += [(float(s), int(c)) for s, c in zip(losses.sum(1), mask.sum(1))]
    return out


def loss_summary(per_row: list[tuple[float, int]]) -> dict:
    """Mean token loss, perplexity and their standard errors (module docstring) over the rows
    that have a response token."""
    kept = [(s, c) for s, c in per_row if c > 0]
    n, tokens = len(kept), sum(c for _, c in kept)
    mean = sum(s for s, _ in kept) / tokens
    se = math.sqrt(n / (n - 1) * sum((s - mean * c) ** 2 for s, c in kept)) / tokens if n > 1 else None
    ppl = math.exp(mean)
    return {
        "value": mean,
        "stderr": se,
        "metrics": {
            "loss": {"value": mean, "stderr": se},
            "perplexity": {"value": ppl, "stderr": ppl * se if se is not None else None},
        },
        "n": n,
        "tokens": tokens,
        "rows_without_response": len(per_row) - n,
        "higher_is_better": False,
    }


# ---- generation --------------------------------------------------------------------------------
def extract(regex: re.Pattern | None, text: str) -> str | None:
    """The answer R finds in text: its first capture group, or the whole match; None: no match."""
    if regex is None:
        return text.strip()
    m = regex.search(text)
    if m is None:
        return None
    value = m.group(1) if regex.groups else m.group(0)
    return None if value is None else value.strip()


def score(
    metric: str, regex: re.Pattern | None, generation: str, response: str
) -> tuple[int, str | None, str]:
    """(0 or 1, the answer taken from the generation, the reference it was compared with)."""
    if metric == "contains":
        reference = response.strip()
        return int(reference in generation), None, reference
    answer = extract(regex, generation)
    reference = extract(regex, response)
    reference = response.strip() if reference is None else reference
    return int(answer is not None and answer == reference), answer, reference


def generate(model, tokenizer, p: OwnPlan, device) -> list[dict]:
    """Greedy generations from each row's training prompt, scored; one record per row."""
    import torch

    limit = getattr(model.config, "max_position_embeddings", None)
    records = []
    for i, row in enumerate(p.rows):
        if p.task.render is not None:
            prompt, _, templated = p.task.render(row, tokenizer)
        else:
            (prompt, _), templated = p.task.format(row), False
        response = p.task.format(row)[1]  # the plain reference text (a chat row's message content)
        ids = tokenizer(prompt, add_special_tokens=not templated)["input_ids"]
        room = p.max_new_tokens if limit is None else min(p.max_new_tokens, limit - len(ids))
        if room < 1:
            raise UserError(
                f"--data {p.path}: row {i}'s prompt has {len(ids)} tokens, no room to generate within "
                f"the model's {limit} positions"
            )
        with torch.no_grad():
            out = model.generate(
                input_ids=torch.tensor([ids], device=device),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
                max_new_tokens=room,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        text = tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)
        right, answer, reference = score(p.metric, p.regex, text, response)
        records.append(
            {"row": i, "prompt": prompt, "generation": text, "answer": answer, "target": reference}
            | {p.metric: right}
        )
    return records


def score_summary(values: list[int]) -> dict:
    n = len(values)
    return {
        "value": statistics.fmean(values),
        "stderr": statistics.stdev(values) / math.sqrt(n) if n > 1 else None,
        "n": n,
        "higher_is_better": True,
    }


def evaluate(p: OwnPlan, model, tokenizer, device, batch_size: int) -> tuple[dict, list[dict]]:
    """(eval.json's entry, per-row records for eval_samples/) of one planned evaluation."""
    if p.metric == "loss":
        per_row = row_losses(model, p.encoded, tokenizer.pad_token_id, device, batch_size)
        summary = loss_summary(per_row)
        records = [{"row": i, "loss_sum": s, "tokens": c} for i, (s, c) in enumerate(per_row)]
        how = {"stderr_method": STDERR_LOSS, "cutoff_len": p.cutoff_len}
    else:
        records = generate(model, tokenizer, p, device)
        summary = score_summary([r[p.metric] for r in records])
        how = {
            "stderr_method": STDERR_SCORE,
            "decoding": "greedy",
            "max_new_tokens": p.max_new_tokens,
            "answer_regex": p.regex.pattern if p.regex is not None else None,
        }
    entry = {
        "metric": p.metric,
        "metric_key": p.metric,
        **summary,
        "n_full": p.n_full,
        "limit": p.limit,
        "shots": 0,
        "protocol": PROTOCOL,
        "data": str(p.path),
        "data_sha256": p.sha256,
        "mapping": p.mapping or f"the {p.task.name} task's own format",
        "harness": "fedmom",
        **how,
    }
    return entry, records


def summary_line(name: str, t: dict) -> str:
    """What `fedmom eval` prints for one entry."""
    err = f" ± {t['stderr']:.4f}" if t["stderr"] is not None else ""
    lim = f", limit {t['limit']}" if t.get("limit") else ""
    if t["metric"] == "loss":
        ppl = t["metrics"]["perplexity"]
        perr = f" ± {ppl['stderr']:.2f}" if ppl["stderr"] is not None else ""
        return (
            f"{name}: loss = {t['value']:.4f}{err}, perplexity = {ppl['value']:.2f}{perr} "
            f"(n={t['n']}{lim}, {t['tokens']} response tokens, {t['data']})"
        )
    return (
        f"{name}: {t['metric']} = {t['value']:.4f}{err} (n={t['n']}{lim}, greedy, "
        f"max {t['max_new_tokens']} new tokens, {t['data']})"
    )
