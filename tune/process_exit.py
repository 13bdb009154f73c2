"""A command's fast, clean exit.

Once a search has returned, Python's own teardown (freeing every module and object of torch, Ray,
MLflow, Optuna and SQLAlchemy) costs the driver one to two seconds that do nothing a user can see.
`exit_now` keeps what a normal exit does that matters (the `atexit` handlers, so libraries close
their files and connections, and flushed output) and skips the rest.
"""
from __future__ import annotations

import atexit
import os
import sys
from typing import NoReturn


def exit_now(code: int | None) -> NoReturn:
    """End the process with `code` (None: 0, as sys.exit) after running its atexit handlers and
    flushing stdout and stderr."""
    atexit._run_exitfuncs()  # CPython's own entry point: what interpreter exit runs first
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing more to write
            pass
    os._exit(0 if code is None else code)
