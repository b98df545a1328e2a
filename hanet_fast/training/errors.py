"""The one error type of a training run that its command line reports in one line."""

from __future__ import annotations

__all__ = ["RunError"]


class RunError(Exception):
    """A setting, run folder, checkpoint or data problem that the CLI reports in one line; exit
    status ``status`` (2: bad input; 1: a fault during the run, such as a full disk)."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status
