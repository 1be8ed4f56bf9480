"""The rich progress bar that `generate` and `batch` feed from the pipeline's progress events.

It draws on stderr: stdout carries the results (written paths), one per line, for scripts.
"""

from __future__ import annotations

import sys
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
