"""Build the worked example's dataset (docs/own_data.md): one "site" per public source.

    python -m scripts.build_own_data ../shared/data --out sites.jsonl --val-out sites_val.jsonl

Reads the real files in ../shared/data (README.md there names their sources and licenses) and
writes instruction rows under the field names a user's own data might have, not fedmom's:
`question`, `answer`, `site` (the source the row came from: one client per site under
`partitioner: natural`) and `kind` (math or commonsense, a label to split or count by). Sites:
boolq, piqa, social_i_qa, ARC-Easy and openbookqa (LLM-Adapters' commonsense test files:
instruction -> question, output -> answer) and gsm8k (GSM8K's train.jsonl, whose question and
answer columns are taken as they are). Each site's first --rows rows go to --out and the next
--val-rows rows to --val-out (held out, for the validation loss); the order is the files' own, so
the output is the same on every machine. Exit 2 with one `error:` line if a file is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

COMMONSENSE = ("boolq", "piqa", "social_i_qa", "ARC-Easy", "openbookqa")


def site_rows(shared: Path, site: str, n: int) -> list[dict]:
    if site == "gsm8k":
        path = shared / "gsm8k" / "train.jsonl"
        lines = path.read_text(encoding="utf-8").splitlines()[:n]
        rows = [json.loads(x) for x in lines]
        kind, prompt, response = "math", "question", "answer"
    else:
        path = shared / "commonsense_eval" / f"{site}.json"
        rows = json.loads(path.read_text(encoding="utf-8"))[:n]
        kind, prompt, response = "commonsense", "instruction", "output"
    return [{"question": r[prompt], "answer": r[response], "site": site, "kind": kind} for r in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shared_data", type=Path, help="the folder ../shared/data")
    parser.add_argument("--out", type=Path, default=Path("sites.jsonl"))
    parser.add_argument("--val-out", type=Path, default=Path("sites_val.jsonl"))
    parser.add_argument("--rows", type=int, default=24, help="training rows per site")
    parser.add_argument("--val-rows", type=int, default=4, help="held-out rows per site")
    args = parser.parse_args()
    train, val = [], []
    try:
        for site in (*COMMONSENSE, "gsm8k"):
            rows = site_rows(args.shared_data, site, args.rows + args.val_rows)
            train += rows[: args.rows]
            val += rows[args.rows :]
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: cannot read {args.shared_data}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    for path, rows in ((args.out, train), (args.val_out, val)):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    sites = len({r["site"] for r in train})
    print(f"wrote {args.out} ({len(train)} rows, {sites} sites) and {args.val_out} ({len(val)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
