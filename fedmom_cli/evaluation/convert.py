"""`fedmom data convert`: LLM-Adapters' commonsense test files -> lm-eval's offline layout.

    fedmom data convert ../shared/data/commonsense_eval --out data/lm_eval

LLM-Adapters (Hu et al., 2023) ships each evaluation set as rows {instruction, input, output,
answer}, the question and options rendered into one instruction. lm-eval's tasks read the HF
dataset's own schema, so each instruction is parsed back into that schema and written to
OUT/<lm-eval task>/<split>.jsonl (the split lm-eval evaluates):

    ARC-Easy.json       -> arc_easy/test.jsonl        id, question, choices{text,label}, answerKey
    ARC-Challenge.json  -> arc_challenge/test.jsonl   (same)
    openbookqa.json     -> openbookqa/test.jsonl      id, question_stem, choices{text,label}, answerKey
    piqa.json           -> piqa/validation.jsonl      goal, sol1, sol2, label (0/1)
    social_i_qa.json    -> social_iqa/validation.jsonl  context, question, answerA-C, label ("1"-"3")
    winogrande.json     -> winogrande/validation.jsonl  sentence, option1, option2, answer ("1"/"2")

Beside each file goes OUT/<task>/<task>.yaml, lm-eval's own task config pointed at it
(lmeval_yaml.py), so that plain `lm_eval --include_path OUT --tasks <task>` runs offline too.

What cannot come back, and why it does not change lm-eval's scores:
- ids and choice labels: LLM-Adapters drops them. Rows get `<set>-<row>` ids and labels A, B, C...
  lm-eval uses the label only to find the gold choice's index (`choices.label.index(answerKey)`).
- SIQA's context/question boundary: LLM-Adapters joins them with one space; lm-eval's prompt is
  "Q: {{context}} {{question}}", identical for any split at a space. We split before the last
  sentence (the question).
An existing file is replaced only with `--force`, and only one an earlier convert wrote: the YAML
beside it carries that convert's header (`lmeval_yaml.WRITTEN_BY`); a file of the user's at either
name stops the command (issue 30: --force replaces only fedmom's own files).
Refused: boolq (the copy has the question only; lm-eval's prompt starts with the passage) and
hellaswag (lm-eval's prompt needs activity_label, ctx_a and ctx_b separately; LLM-Adapters
renders them as one context). A row that does not parse is reported with its index; nothing is
written then.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from fedmom_cli import safety
from fedmom_cli.errors import UserError

REFUSED = {
    "boolq": "LLM-Adapters' boolq rows hold the question only; lm-eval's boolq prompt is built on "
    "the passage, which the copy lacks",
    "hellaswag": "LLM-Adapters' hellaswag rows merge activity_label, ctx_a and ctx_b into one "
    "context; lm-eval's hellaswag prompt needs them separately",
}
LABELS = "ABCDEFGH"


class RowError(ValueError):
    pass


def _match(pattern: str, text: str) -> re.Match:
    m = re.fullmatch(pattern, text, flags=re.S)
    if m is None:
        raise RowError("instruction does not have LLM-Adapters' layout for this set")
    return m


def _options(block: str, word: str) -> list[str]:
    """'Answer1: x Answer2: y ...' -> [x, y, ...]; refuses an option that contains a marker."""
    k = len(re.findall(rf"(?:^| ){word}(\d): ", block))
    parts = re.split(rf"(?:^| ){word}\d: ", block)[1:]
    if k < 2 or len(parts) != k:
        raise RowError(f"cannot find the {word}N: options")
    if [int(n) for n in re.findall(rf"(?:^| ){word}(\d): ", block)] != list(range(1, k + 1)):
        raise RowError(f"{word}N markers are not 1..{k} in order (an option may contain one)")
    return parts


def _gold(row: dict, word: str, k: int) -> int:
    m = re.fullmatch(rf"{word}(\d)", row["answer"].strip())
    if m is None or not 1 <= int(m.group(1)) <= k:
        raise RowError(f"answer {row['answer']!r} is not {word}1..{word}{k}")
    return int(m.group(1)) - 1


MC = (
    r"Please choose the correct answer to the question: (.*)\n\n(Answer1: .*)"
    r"\n\nAnswer format: answer1(?:/answer\d)+"
)


def _arc(row: dict, i: int, prefix: str, question_key: str = "question") -> dict:
    q, block = _match(MC, row["instruction"]).groups()
    texts = _options(block, "Answer")
    labels = list(LABELS[: len(texts)])
    return {
        "id": f"{prefix}-{i}",
        question_key: q,
        "choices": {"text": texts, "label": labels},
        "answerKey": labels[_gold(row, "answer", len(texts))],
    }


def _piqa(row: dict, i: int) -> dict:
    pattern = (
        r"Please choose the correct solution to the question: (.*)\n\nSolution1: (.*)"
        r"\n\nSolution2: (.*)\n\nAnswer format: solution1/solution2"
    )
    goal, sol1, sol2 = _match(pattern, row["instruction"]).groups()
    if "\n\nSolution" in sol1 + sol2:
        raise RowError("a solution contains a SolutionN marker")
    return {"goal": goal, "sol1": sol1, "sol2": sol2, "label": _gold(row, "solution", 2)}


SENTENCE_END = re.compile(r"""[.!?]["')]?\s""")


def _siqa(row: dict, i: int) -> dict:
    text, block = _match(MC, row["instruction"]).groups()
    texts = _options(block, "Answer")
    if len(texts) != 3:
        raise RowError(f"SIQA has 3 answers, this row {len(texts)}")
    ends = list(SENTENCE_END.finditer(text))
    cut = ends[-1].end() - 1 if ends else text.find(" ")
    if cut <= 0:
        raise RowError("cannot split context and question at a space")
    return {
        "context": text[:cut],
        "question": text[cut + 1 :],
        "answerA": texts[0],
        "answerB": texts[1],
        "answerC": texts[2],
        "label": str(_gold(row, "answer", 3) + 1),
    }


def _winogrande(row: dict, i: int) -> dict:
    pattern = (
        r"Please choose the correct answer to fill in the blank to complete the given sentence: "
        r"(.*)\n\nOption1: (.*) Option2: (.*) Answer format: option1/option2"
    )
    sentence, o1, o2 = _match(pattern, row["instruction"]).groups()
    if "_" not in sentence:
        raise RowError("the sentence has no blank '_'")
    if " Option2: " in o1 + o2 or " Answer format: " in o2:
        raise RowError("an option contains an OptionN marker")
    return {"sentence": sentence, "option1": o1, "option2": o2, "answer": str(_gold(row, "option", 2) + 1)}


# LLM-Adapters file stem -> (lm-eval task, the split lm-eval evaluates, row converter)
SETS: dict[str, tuple[str, str, Callable[[dict, int], dict]]] = {
    "ARC-Easy": ("arc_easy", "test", lambda r, i: _arc(r, i, "ARC-Easy")),
    "ARC-Challenge": ("arc_challenge", "test", lambda r, i: _arc(r, i, "ARC-Challenge")),
    "openbookqa": ("openbookqa", "test", lambda r, i: _arc(r, i, "openbookqa", "question_stem")),
    "piqa": ("piqa", "validation", _piqa),
    "social_i_qa": ("social_iqa", "validation", _siqa),
    "winogrande": ("winogrande", "validation", _winogrande),
}


# lm-eval task -> its folder under lm_eval/tasks/ (where lmeval_yaml reads lm-eval's own config)
LM_EVAL_FOLDER = {
    "arc_easy": "arc",
    "arc_challenge": "arc",
    "openbookqa": "openbookqa",
    "piqa": "piqa",
    "social_iqa": "siqa",
    "winogrande": "winogrande",
}


def task_yaml(name: str, target: Path, src: Path) -> str:
    """The lm-eval task YAML for set `name` converted to `target` (lmeval_yaml.py)."""
    from fedmom_cli.evaluation import lmeval_tasks, lmeval_yaml

    task, split, _ = SETS[name]
    cfg = lmeval_yaml.config(task, LM_EVAL_FOLDER[task], target)
    if lmeval_tasks.eval_split(cfg) != split:  # SETS names the split lm-eval evaluates
        raise RuntimeError(f"lm-eval evaluates {task}'s {lmeval_tasks.eval_split(cfg)} split, not {split}")
    return lmeval_yaml.render(cfg, f"{src / (name + '.json')}")


def convert_rows(name: str, rows: list) -> list[dict]:
    """All rows of one set in the HF schema; UserError naming the first row that does not map."""
    if name in REFUSED:
        raise UserError(f"{name}: cannot convert: {REFUSED[name]}")
    _, _, fn = SETS[name]
    out = []
    for i, row in enumerate(rows):
        try:
            if not isinstance(row, dict) or not isinstance(row.get("instruction"), str):
                raise RowError("not an object with a string 'instruction'")
            if not isinstance(row.get("answer"), str):
                raise RowError("no string 'answer'")
            out.append(fn(row, i))
        except RowError as exc:
            raise UserError(f"{name}: row {i} cannot be mapped to lm-eval's schema: {exc}") from None
    return out


def _ours(config: Path) -> bool:
    """Whether `config` is a YAML an earlier `fedmom data convert` wrote (its header says so): then it
    and the converted file beside it are fedmom's to replace under --force (review F17)."""
    from fedmom_cli.evaluation.lmeval_yaml import WRITTEN_BY  # lazily, as task_yaml does

    try:
        with open(config, "rb") as f:
            return WRITTEN_BY.encode() in f.read(4096)
    except OSError:  # missing, a folder, unreadable: not fedmom's
        return False


def _write_all(files: dict[Path, str]) -> None:
    """Every file or none: each is written under its temporary name first, then all are renamed;
    a failure (a full disk) removes the temporary files and the folders this call made."""
    made, tmps = [], []
    try:
        for target, text in files.items():
            missing = [p for p in [target.parent, *target.parent.parents] if not p.exists()]
            target.parent.mkdir(parents=True, exist_ok=True)
            made += reversed(missing)
            tmp = target.with_name(f".{target.name}.tmp")
            tmps.append(tmp)
            with open(tmp, "wb") as f:
                f.write(text.encode())
                f.flush()
                os.fsync(f.fileno())
        for target in files:
            os.replace(target.with_name(f".{target.name}.tmp"), target)
    except BaseException:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: nothing of the user's is touched
        raise


def run(src: Path, out: Path, sets: list[str] | None = None, force: bool = False) -> dict:
    """Convert; validate every requested set and target before the first write."""
    if not src.is_dir():
        raise UserError(f"{src} is not a folder (expected LLM-Adapters' <set>.json files)")
    if sets is not None and not [s for s in sets if s]:
        raise UserError("--sets names no set; leave it out to convert every set present")
    sets = [s for s in sets if s] if sets is not None else None
    safety.check_out(out, "dir")  # a file, under a file, read-only, a name too long: one line
    known = [*SETS, *REFUSED]
    if sets is None:
        chosen = [s for s in SETS if (src / f"{s}.json").is_file()]
        if not chosen:
            raise UserError(f"{src} holds none of {', '.join(f'{s}.json' for s in SETS)}")
    else:
        chosen = sets
    for s in chosen:
        if s not in known:
            raise UserError(f"unknown set {s!r}; convertible: {', '.join(SETS)}")
        if s in REFUSED:
            raise UserError(f"{s}: cannot convert: {REFUSED[s]}")
        if not (src / f"{s}.json").is_file():
            raise UserError(f"{s}: {src / f'{s}.json'} not found")
    converted = {}
    for s in chosen:
        path = src / f"{s}.json"
        try:
            rows = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{path}: not valid JSON ({exc.__class__.__name__})") from None
        if not isinstance(rows, list) or not rows:
            raise UserError(f"{path}: expected a non-empty JSON list of rows")
        task, split, _ = SETS[s]
        target = out / task / f"{split}.jsonl"
        config = out / task / f"{task}.yaml"
        for path in (target, config):
            safety.check_out(path, "file")
            if path.is_symlink():
                raise UserError(f"{path} is a symbolic link; move it away")
            if path.exists() and not force:
                raise UserError(f"{path} exists; pass --force to overwrite it")
            if path.exists() and not _ours(config):  # issue 30: --force replaces fedmom's files only
                raise UserError(
                    f"{path} exists and `fedmom data convert` did not write it ({config} is not its "
                    "YAML); --force replaces only what an earlier convert wrote: move it away"
                )
        converted[s] = (target, convert_rows(s, rows), config, task_yaml(s, target, src))
    files = {}
    for target, rows, config, text in converted.values():
        files[target] = "".join(json.dumps(r) + "\n" for r in rows)
        files[config] = text
    _write_all(files)
    skipped = {s: REFUSED[s] for s in REFUSED if sets is None and (src / f"{s}.json").is_file()}
    return {
        "written": {
            s: {"file": str(t), "rows": len(r), "task": SETS[s][0], "yaml": str(c)}
            for s, (t, r, c, _) in converted.items()
        },
        "skipped": skipped,
    }
