"""How long-running work reports progress: silent by default, rich progress bars in the CLI."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

Advance = Callable[[int], None]


class Reporter(Protocol):
    """Receives progress and messages from the engine."""

    def progress(self, description: str, total: int) -> AbstractContextManager[Advance]:
        """A context whose value is called with the number of units just completed."""
        ...

    def info(self, message: str) -> None:
        """A line for the user."""
        ...


class SilentReporter:
    """Reports nothing (library use and tests)."""

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Advance]:
        del description, total
        yield lambda n: None

    def info(self, message: str) -> None:
        del message


class RichReporter:
    """Progress bars and messages on a rich console."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Advance]:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)

    def info(self, message: str) -> None:
        self.console.print(message)
