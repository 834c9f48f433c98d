"""The docs' command blocks run as written (tests/docs_blocks.py has the convention).

`fast` blocks run in the default suite, `slow` ones under `pytest -m slow`; `skip` blocks are listed
with their reason. A `$` block with no marker fails `test_every_command_block_is_marked`.
"""

from __future__ import annotations

from pathlib import Path

import docs_blocks as db
import pytest

CASES = db.cases()


def _param(case: db.Case):
    marks = {"slow": [pytest.mark.slow], "skip": [pytest.mark.skip(reason=case.blocks[0].arg)]}
    return pytest.param(case, id=case.id, marks=marks.get(case.mode, []))


@pytest.mark.parametrize("case", [_param(c) for c in CASES if c.mode in ("fast", "slow", "skip")])
def test_doc_block(case: db.Case, tmp_path: Path):
    if case.needs_shared_data() and not (db.REPO.parent / "shared" / "data").is_dir():
        pytest.skip("../shared/data is not present")
    problems = db.run_case(case, tmp_path)
    assert not problems, "the docs and the program disagree:\n\n" + "\n\n".join(problems)


def test_every_command_block_is_marked():
    unmarked = [c.id for c in CASES if c.mode == "unmarked"]
    assert not unmarked, (
        "command blocks without a <!-- docs-test: fast|slow|skip (reason) --> marker: " + ", ".join(unmarked)
    )


# The docs test itself.

PAGE = """\
Intro.

<!-- docs-test: file hello.txt -->
```
hello
```

<!-- docs-test: fast -->
```
$ cat hello.txt && echo "round 1/5: loss 6.1688, 0.2 s/round, eta 1 s"
hello
round 1/5: loss 6.1688, 0.2 s/round, eta 1 s
$ sh -c 'echo "error: no such thing" >&2; exit 2'
error: no such thing
[exit 2]
```

<!-- docs-test: fast; continues -->
```
$ seq 1 5 && ls
1
...
5
hello.txt
```

```python
print("not a command block")
```
"""


def _cases(tmp_path: Path, text: str) -> list[db.Case]:
    page = tmp_path / "page.md"
    page.write_text(text)
    return db.cases([page])


def test_docs_test_passes_on_a_true_page_and_masks_timings(tmp_path):
    (case,) = _cases(tmp_path, PAGE)
    assert [b.line for b in case.blocks] == [9, 19] and case.files == {"hello.txt": "hello\n"}
    # The timings differ from the run's ("0.0 s"): masked. The second block ran in the same folder.
    assert db.run_case(case, tmp_path / "run") == []


@pytest.mark.parametrize(
    "doctored, shown, token",
    [
        ("hello\nround 1/5: loss 6.1688", "hello\nround 1/5: loss 6.1689", "6.1689"),  # a loss
        ("thing\n[exit 2]", "things\n[exit 2]", "error: no such things"),  # an error line
        ("[exit 2]", "[exit 1]", "[exit 1]"),  # an exit code
        ("1\n...\n5", "1\n...\n6", "6"),  # a line after `...`
    ],
)
def test_docs_test_fails_when_a_documented_output_is_changed(tmp_path, doctored, shown, token):
    assert PAGE.count(doctored) == 1
    (case,) = _cases(tmp_path, PAGE.replace(doctored, shown))
    problems = db.run_case(case, tmp_path / "run")
    assert len(problems) == 1 and "--- documented" in problems[0]
    assert any(line.startswith("-") and token in line for line in problems[0].splitlines())


def test_a_real_doc_block_doctored_fails(tmp_path):
    """A block of README.md with one error line changed no longer matches what fedmom prints."""
    (case,) = [c for c in CASES if c.blocks[0].path.name == "README.md" and c.mode == "fast"][:1]
    lines = next(c for c in db.commands(case.blocks[0].lines) if c.expected and c.expected[-1] == "[exit 2]")
    doctored = lines.expected[:-1] + ["[exit 1]"]
    actual = db.run_command(lines.cmd, db.workspace(tmp_path, {}), db.environment())
    assert db.compare(lines.expected, actual) is None
    assert "-[exit 1]" in db.compare(doctored, actual)


def test_unmarked_and_mismarked_blocks_are_errors(tmp_path):
    (case,) = _cases(tmp_path, "```\n$ echo hi\nhi\n```\n")
    assert case.mode == "unmarked"
    with pytest.raises(ValueError, match="shows no"):
        _cases(tmp_path, "<!-- docs-test: fast -->\n```\nhi\n```\n")
    with pytest.raises(ValueError, match="reason"):
        _cases(tmp_path, "<!-- docs-test: skip -->\n```\n$ echo hi\n```\n")
    with pytest.raises(ValueError, match="unknown docs-test mode"):
        _cases(tmp_path, "<!-- docs-test: quick -->\n```\n$ echo hi\n```\n")


def test_masking_and_matching_rules():
    assert db.mask("finished: fedmomentum on math, 5 rounds, 0.7 s, final loss 6.0249") == (
        "finished: fedmomentum on math, 5 rounds, <t>, final loss 6.0249"
    )
    assert db.mask("x 0.1 s/round, eta 12 s, aggregation 0.006 s") == "x <t>/round, eta <t>, aggregation <t>"
    assert db.mask("humaneval: pass@1 = 1.0000 (n=164, 164 completions, bwrap)").endswith("<isolation>)")
    assert db.clean_output("\r 10%|█  | 1/10 [00:01<00:09]\r100%|██| 10/10 [00:02<00:00]\nb\n") == ["b"]
    assert db.compare(["a ...", "..."], ["a b c", "d", "e"]) is None
    assert db.compare(["a", "..."], ["b"]) is not None
    warned = "/x/modeling_utils.py:3314: FutureWarning: deprecated\n  warnings.warn(\nok\n"
    assert db.clean_output(warned) == ["ok"]


def test_a_command_continued_with_a_backslash_is_one_command(tmp_path):
    """`\\` at the end of a `$ ` line continues the command (bash's line continuation), as the
    docs' long commands are written; a bare newline would end it."""
    (c,) = db.commands(["$ printf '%s+' one \\", "    two \\", "    three", "one+two+three+"])
    assert db.run_command(c.cmd, tmp_path, db.environment()) == c.expected == ["one+two+three+"]
