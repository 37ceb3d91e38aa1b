"""What every use-case module of the service shares: a repository for a ``home`` argument and
the progress callback's shape."""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

from pynomaly.store.repository import Repository

# progress(stage, fraction or None): what a face shows while a use case works
Progress = Optional[Callable[[str, Optional[float]], None]]


@contextlib.contextmanager
def opened(home):
    """The repository of ``home``: an open Repository as it is (the caller closes it), else a
    new one closed on leaving."""
    if isinstance(home, Repository):
        yield home
    else:
        r = Repository(home)
        try:
            yield r
        finally:
            r.close()


def report(progress: Progress, stage: str, fraction=None) -> None:
    if progress is not None:
        progress(stage, fraction)
