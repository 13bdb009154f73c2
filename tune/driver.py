"""The driver's own record and what a killed driver leaves behind.

A running search writes `driver.json` (its pid, process group and Ray session) in its experiment
folder. `--resume` after a SIGKILLed driver first stops the processes that driver left behind
(Ray's agents and workers outlive it), found by that record: processes of the search's own Ray
session or of the killed driver's process group. A search that joined a cluster with --address
shares the cluster's session, so only its process group is cleaned up then."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from bilaw.training.checkpoint import atomic_write_text
from tune.plan import SearchError
from tune.state_files import DRIVER_FILE, read_driver_record


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return Path(f"/proc/{pid}").exists() and "zombie" not in _proc_state(pid)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return ""


def clean_up_killed_driver(folder: Path) -> None:
    """Before resuming: stop the Ray processes a killed driver left behind. Refuses to resume while
    that driver still runs; a damaged record is a DamagedFileError naming it."""
    info = read_driver_record(folder)
    if info is None:
        return
    if info["pid"] != os.getpid() and _alive(info["pid"]):
        raise SearchError(f"--resume: the search is still running (driver pid {info['pid']}); stop it first")
    # a joined cluster's session is the cluster's own: its head and other drivers carry it too
    session = "" if info.get("joined_cluster") else Path(info.get("session_dir", "")).name
    victims = []
    for proc in Path("/proc").glob("[0-9]*"):
        pid = int(proc.name)
        if pid == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            pgid = os.getpgid(pid)
        except (OSError, ProcessLookupError):
            continue
        same_group = info.get("pgid") == info["pid"] and pgid == info["pgid"] and pgid != os.getpgrp()
        if (session and session in cmdline) or same_group:
            victims.append(pid)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if victims:
        print(f"stopped {len(victims)} processes left behind by the killed search", flush=True)


def record_driver(folder: Path, joined_cluster: bool, session_dir: str) -> None:
    """Write `driver.json` for this driver (after Ray is up), atomically: a kill leaves the whole file.
    `session_dir` is the Ray session's folder (`ray.init(...).address_info["session_dir"]`)."""
    atomic_write_text(folder / DRIVER_FILE, json.dumps({"pid": os.getpid(), "pgid": os.getpgrp(),
                                                        "session_dir": session_dir, "joined_cluster": joined_cluster}))
