"""Progress for long work: a rich bar on a terminal, plain lines in CI logs, nothing with --quiet."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console


class Progress:
    def __init__(self, mode: str = "auto", console: Console | None = None) -> None:
        """``mode``: "auto" (bar on a terminal, lines otherwise), "lines", or "quiet"."""
        self.console = console or Console(stderr=True)
        if mode == "auto":
            mode = "bar" if self.console.is_terminal else "lines"
        self.mode = mode

    def info(self, message: str) -> None:
        if self.mode != "quiet":
            self.console.print(message, highlight=False)

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        """Yield ``update(done)``; shows counts and an ETA for ``total`` steps."""
        if self.mode == "quiet":
            yield lambda done: None
            return
        if self.mode == "lines":
            start = time.perf_counter()
            step = max(1, (total or 10) // 4)
            last = [0]

            def update(done: int) -> None:
                if done - last[0] >= step or done == total:
                    last[0] = done
                    of = f"/{total}" if total else ""
                    print(f"  {description}: {done}{of} ({time.perf_counter() - start:.1f}s)", file=sys.stderr, flush=True)

            yield update
            return
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
        with RichProgress(*columns, console=self.console, transient=True) as bar:
            task_id = bar.add_task(description, total=total)
            yield lambda done: bar.update(task_id, completed=done)
