"""SIGTERM stops an evaluation as Ctrl-C does.

Lightning only notes a SIGTERM and acts on it at the next batch, so the
test-time analysis after the last batch (minutes on a large model) would run
to its end. Inside :func:`stop_on_sigterm` a SIGTERM raises
:class:`Terminated`, a ``KeyboardInterrupt``, where the program is: Lightning
shuts down as after Ctrl-C (callbacks' ``on_exception``, teardown, exit status 1)
and no report is written. Fit keeps Lightning's own handling (it stops at the
next batch and its checkpoints stay as they are).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(f"received signal {signum} (SIGTERM)")


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Inside, SIGTERM raises :class:`Terminated` (main thread only; elsewhere nothing
    changes); the previous handler comes back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
