"""Ray's worker processes end quietly when Ray stops them.

Ray stops a worker with SIGTERM, and the worker's handler raises SystemExit. When the signal lands
while the worker runs a weakref callback or a `__del__`, Python cannot raise there: it prints an
"Exception ignored in ... SystemExit: 1" traceback, which Ray forwards to the driver's terminal,
and the worker runs on. Every worker of a search (or a re-run) therefore starts with
`exit_quietly_on_sigterm`, Ray's worker set-up hook: such a worker ends at once, as the signal
meant, and prints nothing. Every other exception Python cannot raise is still printed.
"""
from __future__ import annotations

import os
import sys
from typing import Any


def exit_quietly_on_sigterm() -> None:
    """Install the hook that ends a worker whose SystemExit Python could not raise."""
    sys.unraisablehook = _end_on_system_exit


def _end_on_system_exit(unraisable: Any) -> None:
    if not isinstance(unraisable.exc_value, SystemExit):
        sys.__unraisablehook__(unraisable)
        return
    code = unraisable.exc_value.code
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing more to keep
            pass
    os._exit(code if isinstance(code, int) else 1)


def worker_runtime_env(env_vars: dict[str, str]) -> dict[str, Any]:
    """Ray's runtime environment for the workers that run trials: `env_vars` and the quiet exit."""
    return {"env_vars": dict(env_vars), "worker_process_setup_hook": exit_quietly_on_sigterm}
