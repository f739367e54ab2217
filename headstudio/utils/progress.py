"""Progress bars for one-time work outside training (deriving masks, fitting FLAME to meshes)."""

from __future__ import annotations

from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def progress_bar():
    """A transient progress bar on stderr for the one-time work on a subject (masks, FLAME recovery)."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), transient=True,
    )  # fmt: skip


def stepper(bar: Progress) -> Callable[[str, int, int], None]:
    """``step(description, done, total)``: one task per description on ``bar``."""
    tasks: dict[str, int] = {}

    def step(what: str, done: int, total: int) -> None:
        if what not in tasks:
            tasks[what] = bar.add_task(what, total=total)
        bar.update(tasks[what], completed=done)

    return step
