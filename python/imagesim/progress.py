"""Progress reporting between a stage and whoever drives it (the CLI's progress bar, a notebook, nothing).

A stage calls ``progress(total)`` once to get a :class:`ProgressSink`, then ``update(done)`` as work
finishes and ``close()`` at the end. The CLI's factory draws a rich progress bar.
"""

from __future__ import annotations

from collections.abc import Callable


class ProgressSink:
    """Receives the number of items finished; the default does nothing."""

    def update(self, done: int) -> None:
        pass

    def close(self) -> None:
        pass


ProgressFactory = Callable[[int], ProgressSink]


def open_progress(progress: ProgressFactory | None, total: int) -> ProgressSink:
    """The sink ``progress`` makes for ``total`` items, or a silent one."""
    return progress(total) if progress is not None else ProgressSink()
