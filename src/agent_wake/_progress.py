"""A one-line progress bar for the command line's long jobs, on standard error.

On a terminal it redraws in place; elsewhere (a log, a pipe) it writes one
line when the job ends, so that logs are not flooded with redraws.
"""

from typing import TextIO

__all__ = ["ProgressBar"]

_WIDTH = 30


class ProgressBar:
    """``update(done, total)`` as work goes; ``close()`` once at the end."""

    def __init__(self, label: str, stream: TextIO) -> None:
        self._label = label
        self._stream = stream
        self._interactive = stream.isatty()
        self._line = ""

    def update(self, done: int, total: int) -> None:
        filled = _WIDTH if total <= 0 else min(_WIDTH, _WIDTH * done // total)
        self._line = f"{self._label} [{'#' * filled}{'.' * (_WIDTH - filled)}] {done}/{total}"
        if self._interactive:
            self._stream.write(f"\r{self._line}")
            self._stream.flush()

    def close(self) -> None:
        if not self._line:
            return
        self._stream.write("\n" if self._interactive else f"{self._line}\n")
        self._stream.flush()
