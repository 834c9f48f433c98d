"""`fedmom eval` and everything it needs; nothing in training imports this package.

- evaluate.py        the command: load a run's model, run the benchmarks, write eval.json
- lmeval_tasks.py    lm-eval tasks under the paper's protocol, on local copies of the data
- evaltasks.py       fedmom's own train-format and code tasks (prompts, scoring)
- answers.py         answer extraction and pass@k
- codesampling.py    code generation: greedy or the bigcode harness's default sampling, pass@k
- codeexec.py        generated programs through the sandbox, `fedmom eval --generations`
- sandbox*.py        running untrusted code (docs/sandbox.md); sandbox_runner.py and sandbox_setup.py
                     are read as text (importlib.resources) and run inside the sandbox
- convert.py         `fedmom data convert`: public data files -> the local formats above
"""
