"""Data errors: one line naming the file, frame and field; collected, then reported together."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


class DataError(ValueError):
    """Bad input data. The message is one line: file, frame, field, what is wrong."""


@dataclass
class Problems:
    """Collects every problem found in a subject, so a check can report them all at once."""

    items: list[str] = field(default_factory=list)

    def add(self, file: Path | str, message: str, frame: Optional[int | str] = None, field_name: Optional[str] = None) -> None:
        where = f"{file}"
        if frame is not None:
            where += f": frame {frame}"
        if field_name is not None:
            where += f": field '{field_name}'"
        self.items.append(f"{where}: {message}")

    def __len__(self) -> int:
        return len(self.items)

    def raise_if_any(self, hint: str = "") -> None:
        if self.items:
            more = f" (and {len(self.items) - 1} more problem(s){'; ' + hint if hint else ''})" if len(self.items) > 1 else ""
            raise DataError(self.items[0] + more)


_previous_hook = sys.excepthook


def _data_error_hook(exc_type, exc, tb) -> None:  # pragma: no cover - exercised in a subprocess
    if issubclass(exc_type, DataError):
        print(f"error: {exc}", file=sys.stderr)
        return
    _previous_hook(exc_type, exc, tb)


def install_excepthook() -> None:
    """Print an uncaught :class:`DataError` as one line (no traceback) in CLI runs such as ns-train.

    Other exceptions keep the previous hook. The process still exits with status 1.
    """
    if sys.excepthook is not _data_error_hook:
        global _previous_hook
        _previous_hook = sys.excepthook
        sys.excepthook = _data_error_hook
