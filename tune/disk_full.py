"""A full disk at any point of a search: found behind whatever wraps it (`disk_full_cause`), with
Ray's tracebacks of the same failure cut to one line (`keep_disk_full_tracebacks_out`). The one
line the driver prints is tune/stopping.py's `disk_full_message`; `run_search.py` exits
DISK_FULL_EXIT after printing it."""
from __future__ import annotations

import errno

# Ray's loggers that write a traceback when a write to the storage fails
from tune.library_adapters import RAY_STORAGE_LOGGERS

DISK_FULL_EXIT = 74  # EX_IOERR (sysexits.h): the search stopped on a write that found no space
# What a full disk reads as once wrapped: SQLite's message (Optuna, MLflow), the C library's
# (an OSError turned into text, as Ray Tune's TuneError holds a traceback), a quota's.
DISK_FULL_TEXT = ("database or disk is full", "No space left on device", "Disk quota exceeded")


def disk_full_cause(exc: BaseException) -> str | None:
    """What the full-disk error behind `exc` says, in a few words, or None when there is none: `exc`, what
    it was raised from or while handling (Optuna's StorageInternalError from SQLite's
    OperationalError; MLflow's MlflowException; Ray Tune's TuneError, which holds the traceback
    as text; a RayTaskError's `cause`), at any depth. An OSError with errno ENOSPC or EDQUOT,
    or any of DISK_FULL_TEXT in an error's text, is a full disk."""
    seen, stack = set(), [exc]
    while stack:
        err = stack.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"{err.strerror}" + (f": {err.filename}" if err.filename else "")
        text = str(err)
        for phrase in DISK_FULL_TEXT:
            if phrase in text:
                return phrase + (" (SQLite)" if phrase == DISK_FULL_TEXT[0] else "")
        cause = getattr(err, "cause", None)
        stack += [err.__context__, err.__cause__] + ([cause] if isinstance(cause, BaseException) else [])
    return None


class _DiskFullTracebacks:
    """Cuts a Ray log record whose traceback ends in a full disk down to one line, and drops the
    repeats of that line: Ray's syncer logs each failed copy of the experiment's state to the
    storage (several a second until the driver stops) and Ray Tune each trial that failed on it,
    every one with its whole traceback; the driver's one `error:` line (`disk_full_message`)
    says what happened and what to do. Other records pass unchanged."""

    def __init__(self) -> None:
        self.shown: set[tuple[str, str]] = set()

    def filter(self, record) -> bool:
        text = record.getMessage()
        error = record.exc_info[1] if record.exc_info else None
        cause = disk_full_cause(error) if error is not None else None
        if cause is None and "Traceback" in text:
            cause = next((phrase for phrase in DISK_FULL_TEXT if phrase in text), None)
        if cause is None:
            return True
        first = text.splitlines()[0].rstrip(": ") if text.strip() else record.name
        if (record.name, first) in self.shown:
            return False
        self.shown.add((record.name, first))
        record.msg, record.args = f"{first}: {cause} (repeats of this line are not shown)", ()
        record.exc_info = record.exc_text = None
        return True


_CUT = _DiskFullTracebacks()


def keep_disk_full_tracebacks_out() -> None:
    """Install `_DiskFullTracebacks` on Ray's storage loggers in this (the driver's) process;
    calling it again changes nothing."""
    import logging

    for name in RAY_STORAGE_LOGGERS:
        log = logging.getLogger(name)
        if _CUT not in log.filters:
            log.addFilter(_CUT)
