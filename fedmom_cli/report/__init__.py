"""`fedmom report`: run folders -> the paper's tables and figures. Reads files only; imports no torch
(tests/test_report.py imports every module here in a fresh interpreter and checks).

- tables.py    collect runs (result.json, metrics.jsonl, eval.json) into Tables 2-8
- render.py    tables -> markdown / csv / json, the command's entry point
- paired.py    per-seed paired differences between methods
- figures.py   matplotlib figures (loss curves, rank sweeps)
- own_evals.py the user's own evaluations (--data, --include-path), apart from the paper's tables
"""
