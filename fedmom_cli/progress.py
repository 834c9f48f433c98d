"""Progress over rounds and clients: rich bars (rate, ETA, loss) on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TransferSpeedlessRate(TextColumn):
    """Completed items per minute (rounds or clients), from rich's own speed estimate."""

    def __init__(self) -> None:
        super().__init__("")

    def render(self, task):
        from rich.text import Text

        speed = task.finished_speed or task.speed
        return Text(f"{speed * 60:.1f}/min" if speed else "-/min", style="progress.data.speed")


def _missing(record: dict) -> str:
    """Who did not return this round: `dropped` (client_dropout) and `late` (the round deadline;
    metrics.jsonl lists them in `dropped` too), e.g. "dropped 1, late 0, 2"; "" when all returned."""
    late = set(record.get("late") or [])
    dropped = [k for k in record.get("dropped") or [] if k not in late]
    parts = [f"dropped {', '.join(map(str, dropped))}"] if dropped else []
    if late:
        parts.append(f"late {', '.join(map(str, sorted(late)))}")
    return ", ".join(parts)


class RoundProgress:
    def __init__(
        self, rounds: int, clients_per_round: int, start_round: int = 0, enabled: bool | None = None
    ) -> None:
        self.console = Console(stderr=True)
        self.live = self.console.is_terminal if enabled is None else enabled
        self.rounds, self.clients = rounds, clients_per_round
        self.start = time.perf_counter()
        self.round = start_round
        self._bar = None
        if self.live:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TransferSpeedlessRate(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[loss]}"),
                console=self.console,
                transient=False,
            )
            self._rounds = self._bar.add_task("rounds", total=rounds, completed=start_round, loss="")
            self._clients = self._bar.add_task("clients", total=clients_per_round, loss="")

    def __enter__(self):
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def round_started(self, round_idx: int) -> None:
        self.round = round_idx
        self._round_start = time.perf_counter()
        if self._bar is not None:
            self._bar.reset(self._clients, total=self.clients, loss="")

    def client_done(self, client: int, loss: float) -> None:
        if self._bar is not None:
            self._bar.update(self._clients, advance=1, loss=f"client {client} loss {_fmt(loss)}")
        else:
            print(f"round {self.round + 1}/{self.rounds} client {client}: loss {_fmt(loss)}", file=sys.stderr)

    def round_done(self, record: dict) -> None:
        done = record["round"] + 1
        elapsed = time.perf_counter() - self._round_start
        # metrics.jsonl's `loss`: the clients' losses weighted as the aggregation weights them (by
        # their examples unless `client_weights: uniform`), not their plain mean; said so here.
        losses = f"loss {_fmt(record['loss'])} (weighted mean)"
        missing = _missing(record)
        if missing:  # client_dropout and the round deadline: say who did not return, and why
            losses += f", {missing}"
        if not record.get("clients", [None]):  # every sampled client dropped
            losses = f"no client returned, model unchanged, {missing}"
        if record.get("steps"):  # straggler_policy partial: who returned fewer steps
            steps = sorted(record["steps"].items(), key=lambda kv: int(kv[0]))
            losses += ", partial " + ", ".join(f"{k} ({n} step{'' if n == 1 else 's'})" for k, n in steps)
        if record.get("val_loss") is not None:
            losses += f", val loss {record['val_loss']:.4f}"
        if self._bar is not None:
            self._bar.update(self._rounds, completed=done, loss=losses)
        else:
            remaining = (self.rounds - done) * elapsed
            print(
                f"round {done}/{self.rounds}: {losses}, {elapsed:.1f} s/round, "
                f"eta {remaining:.0f} s, aggregation {record['aggregation_seconds']:.3f} s",
                file=sys.stderr,
            )


def _fmt(loss: float | None) -> str:
    return "none (no trainable token)" if loss is None else f"{loss:.4f}"


QUIET_ENV = "FEDMOM_NO_PROGRESS"  # set by quiet_libraries: Flower's client processes read it too


def quiet_libraries() -> None:
    """`--no-progress`: no progress bar and no colour code from any library, in one place.

    Environment variables for whatever is imported (or started as a process, Ray's Flower clients
    included) later: tqdm's TQDM_DISABLE (read when tqdm is imported), datasets' and huggingface_hub's
    switches, NO_COLOR (rich, and libraries that follow https://no-color.org); then the same switches
    of the libraries already imported: transformers', datasets', huggingface_hub's, every tqdm bar
    (lm-eval passes `disable=` itself, so tqdm's constructor is told to disable), Flower's coloured
    log prefix and wandb's console output."""
    import os

    os.environ.update(
        {
            QUIET_ENV: "1",
            "TQDM_DISABLE": "1",
            "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "NO_COLOR": "1",
            "WANDB_SILENT": "true",
            "WANDB_CONSOLE": "off",
            "RAY_COLOR_PREFIX": "0",  # Ray's "(ClientAppActor pid=...)" prefix, coloured even in a pipe
        }
    )
    import tqdm.std

    if not getattr(tqdm.std.tqdm.__init__, "_fedmom_quiet", False):
        original = tqdm.std.tqdm.__init__

        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            original(self, *args, **kwargs)

        __init__._fedmom_quiet = True
        tqdm.std.tqdm.__init__ = __init__
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover - a dependency
        pass
    try:
        import transformers.utils.logging as tlog

        tlog.disable_progress_bar()
    except ImportError:  # pragma: no cover - a dependency
        pass
    try:
        import huggingface_hub.utils as hub_utils

        hub_utils.disable_progress_bars()
    except ImportError:  # pragma: no cover - a dependency
        pass
    if "flwr.supercore.logger" in sys.modules:  # Flower colours its log prefix unconditionally
        from flwr.supercore.logger import update_console_handler

        update_console_handler(colored=False)


def quiet_if_asked() -> None:
    """In a process fedmom did not start itself (a Flower client): quiet when its parent was."""
    import os

    if os.environ.get(QUIET_ENV) == "1":
        quiet_libraries()
