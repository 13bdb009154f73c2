"""A full disk at any point of a search: found behind whatever wraps it (`disk_full_cause`),
told in one line (`disk_full_message`: the full file system, what of the search it holds, what
was kept, the command that resumes), with Ray's tracebacks of the same failure cut to one line
(`keep_disk_full_tracebacks_out`). `run_search.py` exits DISK_FULL_EXIT after printing it."""
from __future__ import annotations

import errno
import os
from pathlib import Path

# Ray's loggers that write a traceback when a write to the storage fails
from tune.library_adapters import RAY_STORAGE_LOGGERS
from tune.mounts import mount_of
from tune.sqlite_files import count_rows, sqlite_path
from tune.state_files import OPTUNA_DB

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


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def disk_full_message(plan, cause: str, resume_command: str) -> str:
    """The one line a search that stopped on a full disk prints (after `error: `): which of its
    places (the trials' results, the state folder, the tracking database) are on a full file
    system, named by mount point and type with its free space; what was kept (the finished
    trials, each unfinished trial's last checkpoint); and that `resume_command` continues the
    search once space is freed. `cause` is `disk_full_cause`'s line."""
    places: dict[Path, list[str]] = {}  # path -> what of the search it holds
    if plan.storage is not None:
        places.setdefault(plan.storage / plan.experiment, []).append("the trials' results")
    places.setdefault(Path(plan.state_dir), []).append("the search state (Optuna study)")
    tracking_db = sqlite_path(plan.tracking_uri)
    if tracking_db is not None:
        places.setdefault(tracking_db, []).append("the MLflow database")
    disks: dict[str, dict] = {}
    for path, what in places.items():
        mount, kind = mount_of(path)
        try:
            st = os.statvfs(mount or path)
            free, size = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
        except OSError:
            free, size = float("nan"), float("nan")
        disk = disks.setdefault(mount or str(path), {"kind": kind or "unknown", "free": free, "size": size, "holds": []})
        disk["holds"].append(f"{' and '.join(what)} ({path})")
    def described(mount: str) -> str:
        d = disks[mount]
        return f"{mount} ({d['kind']}, {_size(d['free'])} free of {_size(d['size'])}) holds {' and '.join(d['holds'])}"

    full = [m for m, d in disks.items() if d["free"] < max(1 << 20, 0.01 * d["size"])]  # under 1% or 1 MiB free
    if full:
        where = "; ".join(described(m) for m in full)
    else:  # freed since, or the write that failed was on another machine (a trial's node)
        where = (f"no file system of the search on this machine is full now ({'; '.join(map(described, disks))}): "
                 f"space was freed since, or the write that failed was on another node of the cluster")
        full = ["the file system that filled up"]
    done = count_rows(Path(plan.state_dir) / OPTUNA_DB,
                       "select count(*) from trials t join studies s on t.study_id = s.study_id "
                       "where s.study_name = ? and t.state = 'COMPLETE'", (plan.experiment,))
    kept = (f"{done} of the {plan.num_samples} trials finished" if done is not None else "the trials that finished")
    return (f"the disk is full ({cause}): {where}. The search stopped; kept: {kept} (in the Optuna study, in MLflow "
            f"and in their trial folders) and each unfinished trial's last checkpoint, so nothing that finished is "
            f"lost. Free space on {' and '.join(full)}, then run: {resume_command} (it continues the search where it "
            f"stopped)")


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
