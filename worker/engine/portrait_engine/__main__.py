"""python -m portrait_engine: JSON-lines requests on stdin, events on stdout, logs on stderr."""

import logging
import os
import signal
import sys
from typing import TextIO

# No network on the machines this runs on, and no progress bars in the log.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from .config import parse_config  # noqa: E402


def _take_stdout() -> TextIO:
    """Keeps a private handle on the real stdout for events and points fd 1 and sys.stdout at stderr, so that
    anything a library prints ends up in the log instead of corrupting the event stream."""
    sys.stdout.flush()
    events = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return events


def quiet_libraries() -> None:
    # Imported here, after the stdout redirect, like everything heavy.
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def die_with_parent() -> None:
    """If the worker that started us dies (even by kill -9), we get SIGTERM, which cancels our jobs and exits:
    an orphaned engine must not keep training a job that the queue will hand to another worker."""
    parent = os.getppid()
    try:
        import ctypes  # noqa: PLC0415

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return  # not Linux: stdin closing still ends the process once its work is done
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def main() -> int:
    die_with_parent()
    config = parse_config()  # before the redirect, so --help prints where it is expected
    events = _take_stdout()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    from .server import run  # noqa: PLC0415 (after the redirect: libraries may print while importing)

    return run(config, events, sys.stdin.buffer)


if __name__ == "__main__":
    sys.exit(main())
