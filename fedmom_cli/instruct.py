"""`task: instruct`: any instruction dataset, read through a field mapping.

    fedmom train --task instruct --recipe smoke --data rows.jsonl \\
        --set prompt_field=question --set response_field=answer

Two row shapes:
- prompt/response rows: `prompt_field` and `response_field` name the columns (optional
  `input_field`); with no column named, Alpaca's: `instruction`, `output`, and `input` where a row
  has it (as `task: commonsense` reads them). Without `prompt_template` the prompt is the Alpaca
  template the paper's math and commonsense tasks train with (prompts.ALPACA; ALPACA_INPUT when the
  row's input is non-empty), so an instruct run on MetaMathQA's columns encodes exactly as
  `task: math`. A `prompt_template` is Python format text whose `{name}` placeholders are the
  row's columns ("Q: {question}\\nA: "). `system`, when set, is put before the prompt, followed by a
  blank line. The response is the response column; EOS is appended, as for the paper's tasks.
- chat rows: `messages_field` names a list of {"role", "content"} messages; the response is the
  last assistant message and the prompt everything before it. `chat_template: auto` (the default)
  renders them with the tokenizer's own chat template (`apply_chat_template`), or, for a tokenizer
  that has none (fedmom's tiny one), with the code task's "### User:" / "### Assistant:" headers;
  `none` always uses the headers; any other value is a Jinja file used as the template. With a chat
  template the prompt is `apply_chat_template(messages before the response,
  add_generation_prompt=True)` and the response is what the full conversation's rendering adds to
  it (so it ends with the template's own end-of-turn marker, and no EOS is appended; the prompt is
  tokenized without adding special tokens, since the template writes its own). `system` becomes a
  first system message unless the row starts with one.

Loss is on the response tokens only (tasks.encode). Every row is checked before anything is
written: a missing field, an empty response or a value of the wrong type is one line naming the
field, the row and the row's columns.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

from fedmom_cli.errors import UserError
from fedmom_cli.prompts import ALPACA, ALPACA_INPUT, _code_format

#: Config keys of the field mapping (config.py; all unset for the paper's tasks).
KEYS = (
    "prompt_field",
    "response_field",
    "input_field",
    "system",
    "prompt_template",
    "messages_field",
    "chat_template",
)


@dataclass(frozen=True)
class Mapping:
    prompt_field: str | None = None
    response_field: str | None = None
    input_field: str | None = None
    system: str | None = None
    prompt_template: str | None = None
    messages_field: str | None = None
    chat_template: str | None = None  # None = auto
    input_optional: bool = False  # the default mapping's `input` may be absent from a row

    @classmethod
    def of(cls, cfg) -> Mapping:
        """The config's mapping; with no column named, Alpaca's: instruction, input, output."""
        keys = {k: getattr(cfg, k) for k in KEYS}
        if all(
            keys[k] is None for k in ("prompt_field", "response_field", "messages_field", "prompt_template")
        ):
            if keys["input_field"] is None:
                keys.update(prompt_field="instruction", response_field="output", input_field="input")
                return cls(**keys, input_optional=True)
        return cls(**keys)

    @property
    def placeholders(self) -> list[str]:
        """The columns a prompt_template names."""
        if self.prompt_template is None:
            return []
        try:
            return [f for _, f, _, _ in string.Formatter().parse(self.prompt_template) if f is not None]
        except ValueError as exc:
            raise UserError(f"prompt_template cannot be parsed: {exc}") from None


def check_mapping(cfg) -> None:
    """Config-time checks (config._check): the keys fit the task and each other."""
    given = [k for k in KEYS if getattr(cfg, k) is not None]
    if cfg.task != "instruct":
        if given:
            raise UserError(f"{given[0]} is a key of task instruct, not of task {cfg.task}")
        return
    m = Mapping.of(cfg)
    if m.messages_field is not None:
        row_keys = ("prompt_field", "response_field", "input_field", "prompt_template")
        extra = [k for k in row_keys if getattr(m, k)]
        if extra:
            raise UserError(
                f"messages_field (chat rows) and {extra[0]} (prompt/response rows) exclude each other"
            )
    else:
        if m.chat_template is not None:
            raise UserError(
                "chat_template applies to chat rows: set messages_field, or leave chat_template out"
            )
        if m.response_field is None:
            raise UserError(
                "task instruct needs response_field and prompt_field (prompt/response rows), or "
                "messages_field (chat rows)"
            )
        if m.prompt_field is None and m.prompt_template is None:
            raise UserError("task instruct needs prompt_field (or a prompt_template naming the columns)")
        bad = [f for f in m.placeholders if not f.isidentifier()]
        if bad:
            raise UserError(f"prompt_template placeholder {{{bad[0]}}} is not a column name")
    if m.chat_template not in (None, "auto", "none") and not Path(m.chat_template).is_file():
        raise UserError(f"chat_template must be auto, none or a Jinja file; no such file: {m.chat_template}")
    if cfg.synthetic is not None:
        raise UserError(
            f"task instruct has no synthetic rows (synthetic is {cfg.synthetic}): set synthetic: null "
            "(--set synthetic=null over the smoke recipe) and give data"
        )


def _columns(row: dict) -> str:
    return ", ".join(sorted(map(str, row))) or "none"


def row_problem(m: Mapping, row: dict) -> str | None:
    """What is wrong with one row under the mapping (None: nothing); the caller adds the row."""

    def need(field: str, key: str, empty_ok: bool = False, optional: bool = False) -> str | None:
        if field not in row:
            return f"has no field {field!r} ({key}); its columns: {_columns(row)}"
        value = row[field]
        if optional and value is None:
            return None
        if not isinstance(value, str):
            return f"has {field!r} ({key}) of type {type(value).__name__}, not a string"
        if not empty_ok and not value.strip():
            return f"has an empty {field!r} ({key})"
        return None

    if m.messages_field is not None:
        f = m.messages_field
        if f not in row:
            return f"has no field {f!r} (messages_field); its columns: {_columns(row)}"
        messages = row[f]
        if not isinstance(messages, list) or not all(
            isinstance(x, dict) and isinstance(x.get("role"), str) and isinstance(x.get("content"), str)
            for x in messages
        ):
            return f"has {f!r} (messages_field) that is not a list of {{role, content}} strings"
        last = _last_assistant(messages)
        if last is None:
            return f"has no assistant message in {f!r} (messages_field): nothing to learn"
        if not messages[last]["content"].strip():
            return f"has an empty last assistant message in {f!r} (messages_field)"
        return None
    checks = [(m.response_field, "response_field", False, False)]
    if m.prompt_template is None:
        checks.insert(0, (m.prompt_field, "prompt_field", False, False))
    else:
        checks = [(p, "prompt_template", True, False) for p in m.placeholders] + checks
        if m.prompt_field is not None:
            checks.insert(0, (m.prompt_field, "prompt_field", False, False))
    if m.input_field is not None and not (m.input_optional and m.input_field not in row):
        checks.append((m.input_field, "input_field", True, True))
    for field, key, empty_ok, optional in checks:
        problem = need(field, key, empty_ok, optional)
        if problem:
            return problem
    return None


def _last_assistant(messages: list[dict]) -> int | None:
    return max((i for i, x in enumerate(messages) if x["role"] == "assistant"), default=None)


def format_row(m: Mapping, row: dict) -> tuple[str, str]:
    """(prompt, response) of a prompt/response row, or of a chat row rendered with the headers."""
    if m.messages_field is not None:
        return _code_format({"messages": _with_system(m, row[m.messages_field])})
    if m.prompt_template is not None:
        prompt = m.prompt_template.format(**{f: row[f] for f in m.placeholders})
    else:
        text = row.get(m.input_field) if m.input_field else None
        template = ALPACA_INPUT if text else ALPACA
        prompt = template.format(instruction=row[m.prompt_field], input=text or "")
    if m.system:
        prompt = f"{m.system}\n\n{prompt}"
    return prompt, row[m.response_field]


def _with_system(m: Mapping, messages: list[dict]) -> list[dict]:
    if m.system and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": m.system}, *messages]
    return list(messages)


def render(m: Mapping, row: dict, tokenizer) -> tuple[str, str, bool]:
    """(prompt, response, templated): templated when a chat template wrote the text (its own
    special tokens and end of turn), else the plain format_row."""
    template = _template(m, tokenizer)
    if template is None:
        prompt, response = format_row(m, row)
        return prompt, response, False
    messages = _with_system(m, row[m.messages_field])
    last = _last_assistant(messages)
    try:
        prompt = tokenizer.apply_chat_template(
            messages[:last], chat_template=template, tokenize=False, add_generation_prompt=True
        )
        full = tokenizer.apply_chat_template(messages[: last + 1], chat_template=template, tokenize=False)
    except Exception as exc:  # noqa: BLE001 - a Jinja error in the user's template or row
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(f"chat template failed on a row: {type(exc).__name__}: {first}") from None
    if not full.startswith(prompt):
        raise UserError(
            "the chat template's rendering of a conversation does not start with its generation prompt; "
            "the response cannot be separated (use chat_template: none, or another template)"
        )
    return prompt, full[len(prompt) :], True


def _template(m: Mapping, tokenizer) -> str | None:
    """The Jinja text to render chat rows with, or None for the plain headers."""
    if m.messages_field is None or m.chat_template == "none":
        return None
    if m.chat_template not in (None, "auto"):
        return Path(m.chat_template).read_text(encoding="utf-8")
    return getattr(tokenizer, "chat_template", None) or None
