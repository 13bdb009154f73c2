"""One driver per search: a lock in the search's state folder, taken before Ray starts.

The lock is `driver.lock`: an exclusive `flock` held on it for the driver's whole life (released by
the kernel when the process ends, however it ends: two drivers started at once cannot both get
it), and in it the holder's record (host, pid, process start time, start date, command). The
file is never deleted (deleting a locked file lets a third driver lock a new one beside it); a
driver that ends empties it.

- held by a live driver here: refused, naming its host, pid, start and how to stop it;
- a record from this host whose process is gone (a SIGKILLed driver): taken over, with a note;
- a record from another host: honoured (this host cannot tell whether that driver lives), unless
  `--break-lock` says that host's driver is dead. (The state folder is local; another host's
  record means the folder was shared or moved.)
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

LOCK_FILE = "driver.lock"


class LockError(RuntimeError):
    """Another driver holds this search; the message names it and what to do."""


def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot (tells a reused pid apart); "" if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _alive(record: dict[str, Any]) -> bool:
    """The process the record names still runs on this host (same pid, same start time)."""
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    ticks = _start_ticks(pid)
    return bool(ticks) and ticks == str(record.get("start_ticks", ticks))


def _describe(record: dict[str, Any]) -> str:
    return (f"driver pid {record.get('pid', '?')} on host {record.get('host', '?')}, started "
            f"{record.get('started', '?')}: {record.get('command', '?')}")


class SearchLock:
    """The lock of the search whose state folder is `folder` (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_FILE
        self._fd: int | None = None
        self.note: str | None = None  # what was taken over, to print

    def _read(self) -> dict[str, Any]:
        try:
            text = self.path.read_text()
            return json.loads(text) if text.strip() else {}
        except (OSError, ValueError):
            return {}

    def acquire(self, command: str, break_lock: bool = False) -> None:
        """Take the lock or raise LockError (see the module docstring)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = {}
            for _ in range(20):  # the holder writes its record right after locking
                holder = self._read()
                if holder:
                    break
                time.sleep(0.05)
            who = _describe(holder) if holder else "another driver (it has not written its record yet)"
            stop = f"kill {holder['pid']}" if holder.get("pid") else "stop it"
            raise LockError(f"this search is already running: {who}; wait for it to end, or stop it "
                            f"({stop}: it stops gracefully and --resume continues it)") from None
        old = self._read()
        here = socket.gethostname()
        if old and old.get("host") != here and not break_lock:
            os.close(fd)
            raise LockError(f"this search's lock {self.path} is held by {_describe(old)}; this host ({here}) "
                            f"cannot tell whether that driver still runs: if it does, stop it there; if that "
                            f"host or its driver is dead, pass --break-lock to take the lock over")
        if old:
            gone = "is dead (--break-lock)" if old.get("host") != here else "is no longer running"
            self.note = f"took over the lock of {_describe(old)}, which {gone}"
        record = {"host": here, "pid": os.getpid(), "start_ticks": _start_ticks(os.getpid()),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Empty the record and let go (the kernel also lets go when the process dies)."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "SearchLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holder_state(folder: Path) -> str:
    """Whether a driver runs the search of state folder `folder`, read without touching the lock:
    "running" (a live driver here), "other host" (a record from another host: cannot tell),
    "none" (no record, or its process is gone), "unknown" (no such folder on this host)."""
    folder = Path(folder)
    if not folder.is_dir():
        return "unknown"
    try:
        text = (folder / LOCK_FILE).read_text()
        record = json.loads(text) if text.strip() else {}
    except FileNotFoundError:
        record = {}
    except (OSError, ValueError):
        return "unknown"
    if not record:  # no lock record: a search from before the lock, or none running; ask driver.json
        from tune.state_files import read_driver_record

        try:
            old = read_driver_record(folder)
        except Exception:  # noqa: BLE001 - a damaged record says nothing either way
            return "unknown"
        return "running" if old and old["pid"] != os.getpid() and _start_ticks(old["pid"]) else "none"
    if record.get("host") != socket.gethostname():
        return "other host"
    return "running" if _alive(record) else "none"

