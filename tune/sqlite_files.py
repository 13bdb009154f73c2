"""The two SQLite files of a search, read without changing them: MLflow's tracking database
(`mlruns.db`) and the Optuna study (`optuna.db`). `sqlite_problem` says what is wrong with one
(damaged, cut short, not the store it should be); `count_rows` reads one number from one."""
from __future__ import annotations

import sqlite3
from pathlib import Path

# The tables each store must hold: a file without them is some other database.
MLFLOW_TABLES = ("experiments", "runs", "tags", "metrics", "params")
OPTUNA_TABLES = ("studies", "trials")


def sqlite_path(uri: str) -> Path | None:
    """The file of a `sqlite:///PATH` tracking URI; None for any other store."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def sqlite_problem(db: str | Path, tables: tuple[str, ...] = ()) -> str | None:
    """What is wrong with the SQLite file `db`, or None when SQLite reads it whole (its quick
    integrity check passes) and it holds `tables`. Opened read-only, so nothing is changed; a
    database another process holds locked is not called damaged (None). The check reads every
    page once: well under a second for a search's stores of tens of MB."""
    try:
        if Path(db).stat().st_size == 0:
            return "it is empty (0 bytes): cut short or never written"
        con = sqlite3.connect(f"{Path(db).resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            health = con.execute("pragma quick_check").fetchone()[0]
            names = {row[0] for row in con.execute("select name from sqlite_master where type = 'table'")}
        finally:
            con.close()
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return None
        if "unable to open" in str(exc):
            return f"SQLite cannot open it ({exc})"
        return f"SQLite cannot read it ({exc}): it is damaged, cut short or not a database"
    except sqlite3.DatabaseError as exc:
        return f"SQLite cannot read it ({exc}): it is damaged, cut short or not a database"
    if health != "ok":
        return f"it is damaged (SQLite's integrity check says: {' '.join(str(health).split())[:200]})"
    missing = [t for t in tables if t not in names]
    if missing:
        return f"it is an SQLite database without the tables {', '.join(missing)}: not the store it should be"
    return None


def count_rows(db: Path, query: str, args: tuple = ()) -> int | None:
    """One count from a whole SQLite file (read-only), or None where it cannot be read."""
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            return int(con.execute(query, args).fetchone()[0])
        finally:
            con.close()
    except (sqlite3.Error, TypeError):
        return None
