"""The paper's benchmarks per task family, by fedmom's eval task names (no heavy imports).

`fedmom eval` runs a family's list by default; `fedmom report` uses it as that table's columns.
"""

COMMONSENSE = [
    "boolq",
    "piqa",
    "social_i_qa",
    "hellaswag",
    "winogrande",
    "ARC-Easy",
    "ARC-Challenge",
    "openbookqa",
]
FAMILY_TASKS = {"math": ["gsm8k", "math"], "commonsense": COMMONSENSE, "code": ["humaneval", "mbpp"]}
