"""How code completions are generated for HumanEval / MBPP: greedy (fedmom's default) or the bigcode
harness's own default sampling, and the pass@k estimator the harness reports.

    fedmom eval RUN_DIR --tasks humaneval --data-dir DIR                           # greedy, pass@1
    fedmom eval RUN_DIR --tasks humaneval --data-dir DIR --code-sampling harness --n-samples 20

The harness (bigcode-project/bigcode-evaluation-harness, `bigcode_eval/arguments.py` and
`main.py`) samples by default: do_sample=True, temperature 0.2, top_p 0.95, top_k 0, n_samples 1,
seed 0 (accelerate's set_seed). It reports pass@k for k in (1, 10, 100) where every problem has at
least k samples, each problem's pass@k estimated without bias from its n samples of which c pass,
`1 - C(n-c, k) / C(n, k)` (Chen et al., 2021; the harness's `estimate_pass_at_k`, the same product
form as answers.pass_at_k, which `fedmom eval --generations` uses too), averaged.
Greedy decoding is one deterministic completion per problem: pass@1 is the share that passes.

The setting is recorded in every code entry of eval.json (`sampling`), so the report never sets a
sampled column beside a greedy one without saying so.
"""

from __future__ import annotations

from fedmom_cli.evaluation.answers import pass_at_k  # noqa: F401 (the harness's estimator)

MODES = ("greedy", "harness")
# bigcode-evaluation-harness's defaults (bigcode_eval/arguments.py, main.py at 8fc5bae, July 2025)
HARNESS = {"do_sample": True, "temperature": 0.2, "top_p": 0.95, "top_k": 0}
HARNESS_SEED = 0
HARNESS_KS = (1, 10, 100)


def check(mode: str, n_samples: int) -> None:
    from fedmom_cli.errors import UserError

    if mode not in MODES:
        raise UserError(f"--code-sampling must be greedy or harness, got {mode!r}")
    if n_samples < 1:
        raise UserError(f"--n-samples must be at least 1, got {n_samples}")
    if mode == "greedy" and n_samples != 1:
        raise UserError(
            "--n-samples needs --code-sampling harness (greedy decoding gives one completion per problem)"
        )


def generation_kwargs(mode: str) -> dict:
    """The sampling part of lm-eval's generation_kwargs (HFLM hands them to model.generate)."""
    return dict(HARNESS) if mode == "harness" else {"do_sample": False}


def record(mode: str, n_samples: int) -> dict:
    """eval.json's `sampling` entry of a code task."""
    if mode == "greedy":
        return {"mode": "greedy", "n_samples": 1}
    return {"mode": "harness", **HARNESS, "n_samples": n_samples, "seed": HARNESS_SEED}


def ks(n_samples: int) -> list[int]:
    """The k the harness reports for n samples per problem (k <= n)."""
    return [k for k in HARNESS_KS if k <= n_samples]


def label(entry: dict) -> str:
    """A short name of how a code entry was generated ('greedy', 'harness T=0.2 top_p=0.95 n=20');
    entries from before this option record none and were greedy."""
    s = entry.get("sampling") or {"mode": "greedy"}
    if s.get("mode") == "greedy":
        return "greedy"
    return f"{s['mode']} T={s.get('temperature')} top_p={s.get('top_p')} n={s.get('n_samples')}"
