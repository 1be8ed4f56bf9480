"""The rich progress bars: `generate`'s, fed from the pipeline's progress events, and
`batch`'s, counting clips.

It draws on stderr: stdout carries the results (written paths), one per line, for scripts.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from foleyrt.pipeline.pipeline import Progress as ProgressEvent
    from foleyrt.pipeline.pipeline import ProgressFn


class progress_bar:
    """A rich progress bar on stderr fed by the pipeline's progress callback (`None` with
    --quiet)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __enter__(self) -> ProgressFn | None:
        if self.quiet:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        # Lines printed while the bar is live go through its console, above the bar, when stdout
        # is the terminal it draws on; stdout redirected elsewhere must get them untouched.
        self._bar = Progress("[progress.description]{task.description}", BarColumn(),
                             MofNCompleteColumn(), TimeElapsedColumn(),
                             console=Console(stderr=True), transient=True,
                             redirect_stdout=sys.stdout.isatty())
        self._bar.start()
        self._task = self._bar.add_task("preparing", total=None)

        def update(event: ProgressEvent) -> None:
            self._bar.update(self._task, description=event.stage, completed=event.step,
                             total=event.total)

        return update

    def __exit__(self, *exc: object) -> None:
        if not self.quiet:
            self._bar.stop()


class item_bar:
    """Items ended out of `total` on stderr, with clips per second and the time left (None
    with --quiet); the callable it gives counts one item."""

    def __init__(self, quiet: bool, total: int) -> None:
        self.quiet = quiet
        self.total = total

    def __enter__(self) -> Callable[[], None] | None:
        if self.quiet:
            return None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            Task,
            TimeElapsedColumn,
        )
        from rich.text import Text

        class RateAndEta(ProgressColumn):
            """Clips per second since the start and the time left at that pace (groups end
            in bursts: a recent-window speed would swing with them)."""

            def render(self, task: Task) -> Text:
                if not task.completed or not task.elapsed:
                    return Text("- clips/s")
                rate = task.completed / task.elapsed
                left = round(task.remaining / rate) if task.remaining is not None else 0
                return Text(f"{rate:.2f} clips/s  ETA {left // 60}:{left % 60:02d}")

        self._bar = Progress("clips", BarColumn(), MofNCompleteColumn(), RateAndEta(),
                             TimeElapsedColumn(), console=Console(stderr=True),
                             transient=True, redirect_stdout=sys.stdout.isatty())
        self._bar.start()
        task = self._bar.add_task("clips", total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if not self.quiet:
            self._bar.stop()
