"""The search's own state files, read before Ray starts: `driver.json` (the running driver's
record, tune/driver.py) and the Optuna study `optuna.db` (resuming a search, report.py's
--importance). A missing, damaged or foreign one is a `DamagedFileError` naming it and what to
do; Ray's own files are Ray's to check."""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from bilaw.file_errors import DamagedFileError, check_file, load_json, require_mapping

DRIVER_FILE = "driver.json"  # the running driver's pid, process group and Ray session
OPTUNA_DB = "optuna.db"      # the search's Optuna study (SQLite)
IDENTITY_FILE = "search.json"  # what shapes the search, stored by its first run (tune/resume_check.py)
_DRIVER_TYPES = {"pid": int, "pgid": int, "session_dir": str, "joined_cluster": bool}


def read_driver_record(folder: Path) -> dict[str, Any] | None:
    """The record the search's driver wrote in `folder` ({"pid", "pgid", "session_dir",
    "joined_cluster"}), or None when there is none."""
    path = Path(folder) / DRIVER_FILE
    if not path.exists() and not path.is_symlink():
        return None
    fix = ("if no search of this experiment is still running, delete it and run --resume again (the processes a "
           "killed search left behind are then not stopped for you)")
    info = require_mapping(path, load_json(path, fix), ("pid",), "a search driver's record", fix)
    bad = [k for k, t in _DRIVER_TYPES.items()
           if k in info and (not isinstance(info[k], t) or (t is int and isinstance(info[k], bool)))]
    if bad or info["pid"] <= 0:
        raise DamagedFileError(path, f"holds values of the wrong type or range ({', '.join(bad) or 'pid'}): it is "
                                     f"not a search driver's record", fix)
    return dict(info)


def check_study(db: Path, study_name: str, fix: str) -> None:
    """`db` is a whole SQLite file of Optuna's holding the study `study_name`. Opened read-only,
    so a foreign database is never changed (Optuna would add its tables to it)."""
    db = check_file(db, fix)
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        try:
            names = {row[0] for row in con.execute("select study_name from studies")}
            con.execute("select count(*) from trials").fetchone()
            health = con.execute("pragma quick_check").fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        foreign = "no such table" in str(exc)
        problem = (f"is an SQLite database but not an Optuna study ({exc})" if foreign else
                   f"is not a readable SQLite database: damaged, cut short or garbage bytes ({exc})")
        raise DamagedFileError(db, problem, fix) from None
    if health != "ok":
        raise DamagedFileError(db, f"is a damaged SQLite database (its integrity check says: {health})", fix)
    if study_name not in names:
        held = ", ".join(sorted(names)) or "none"
        raise DamagedFileError(db, f"holds no study named {study_name!r} (it holds: {held}): it is another search's "
                                   f"study", fix)
