"""Where a search keeps its files, and the check that every node of a cluster sees the storage.

Two places: the *storage* Ray Tune writes trials' checkpoints and results to (`--storage-path`:
a local folder, a folder every node mounts at the same path, or a URI Ray Tune accepts:
`file://`, `s3://...`, `gs://...`), and the driver's *state folder* (`--state-dir`: the Optuna
study, `driver.json`, `best_config.yaml`, the Pareto files), always a local folder, since SQLite
on a network file system is unreliable. By default the state folder is the experiment's folder
in the storage when that is a local, non-network folder (one place for everything on one
machine), else `./ray_results/<experiment>`.
"""
from __future__ import annotations

import errno
import json
import os
import pickletools
import shlex
import sqlite3
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from bilaw.file_errors import DamagedFileError

URI_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "abfs", "abfss", "az")
# File systems whose files other machines can see (and where SQLite's locking is unreliable).
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "fuse.ceph", "lustre", "gpfs", "glusterfs",
                       "fuse.glusterfs", "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "beegfs", "9p", "fuse.juicefs")
MARKERS = ".storage-check"


class StorageError(ValueError):
    """--storage-path or --state-dir cannot be used as asked; the message says what to use instead."""


def is_uri(text: str) -> bool:
    return "://" in text


def storage_location(text: str) -> str:
    """--storage-path as Ray Tune takes it: a URI unchanged (its scheme checked), a local folder
    made absolute."""
    if is_uri(text):
        scheme = urlsplit(text).scheme.lower()
        if scheme not in URI_SCHEMES:
            raise StorageError(f"--storage-path {text!r}: unknown scheme {scheme!r}; allowed: a folder, or a URI "
                               f"with one of {', '.join(URI_SCHEMES)}")
        return text.rstrip("/")
    return str(Path(text).expanduser().resolve())


def join(location: str, name: str) -> str:
    return f"{location.rstrip('/')}/{name}" if is_uri(location) else str(Path(location) / name)


def filesystem_type(path: str | Path) -> str:
    """The type of the file system holding `path` (from /proc/mounts; "" where unknown)."""
    return mount_of(path)[1]


def on_network(location: str) -> bool:
    return is_uri(location) or filesystem_type(location) in NETWORK_FILESYSTEMS


def state_folder(location: str, experiment: str, state_dir: str | None) -> Path:
    """The driver's state folder (see the module docstring)."""
    if state_dir is not None:
        folder = Path(state_dir).expanduser().resolve()
        if filesystem_type(folder) in NETWORK_FILESYSTEMS:
            raise StorageError(f"--state-dir {state_dir!r} is on a network file system "
                               f"({filesystem_type(folder)}): the Optuna study is SQLite, which needs a local disk")
        return folder
    if not on_network(location):
        return Path(location) / experiment
    return Path("ray_results").resolve() / experiment


def _filesystem(location: str):
    """(pyarrow file system, path inside it) for a storage location, local or URI."""
    import pyarrow.fs

    if is_uri(location):
        return pyarrow.fs.FileSystem.from_uri(location)
    return pyarrow.fs.LocalFileSystem(), location


def _write_marker(location: str, name: str) -> None:
    fs, root = _filesystem(location)
    fs.create_dir(f"{root}/{MARKERS}", recursive=True)
    with fs.open_output_stream(f"{root}/{MARKERS}/{name}") as out:
        out.write(b"ok")


def _sees_marker(location: str, name: str) -> bool:
    import pyarrow.fs

    fs, root = _filesystem(location)
    return fs.get_file_info(f"{root}/{MARKERS}/{name}").type == pyarrow.fs.FileType.File


def _node_probe(location: str, driver_marker: str, node_marker: str) -> tuple[bool, str]:
    """On one node: does it see the driver's marker, and can it write its own?"""
    try:
        seen = _sees_marker(location, driver_marker)
        _write_marker(location, node_marker)
        return seen, ""
    except Exception as exc:  # noqa: BLE001 - reported to the driver, which refuses the storage
        return False, f"{type(exc).__name__}: {exc}"


def check_shared_storage(location: str, timeout_s: float = 60.0) -> int:
    """On a Ray cluster of several nodes, check that every node sees `location` as the driver
    does: the driver writes a marker every node must see, and each node writes one the driver
    must see. Raises StorageError naming the first node that does not; returns the node count."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return len(nodes)
    token = uuid.uuid4().hex[:12]
    driver_marker = f"driver-{token}"
    _write_marker(location, driver_marker)
    probe = ray.remote(num_cpus=0)(_node_probe)
    try:
        for node in nodes:
            node_marker = f"node-{token}-{node['NodeID'][:12]}"
            ref = probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
                location, driver_marker, node_marker)
            seen, error = ray.get(ref, timeout=timeout_s)
            where = (f"node {node.get('NodeManagerHostname', '?')} ({node.get('NodeManagerAddress', '?')}, "
                     f"Ray node id {node['NodeID'][:12]})")
            if error or not seen or not _sees_marker(location, node_marker):
                what = error or ("does not see what the driver wrote there" if not seen
                                 else "writes there, but the driver does not see it")
                raise StorageError(
                    f"--storage-path {location}: {where} {what}. Every node must see the same storage: mount "
                    f"one shared folder at the same path on every machine, or use a URI such as "
                    f"s3://BUCKET/PATH or gs://BUCKET/PATH (--state-dir keeps the driver's own files local)")
    finally:
        _remove_markers(location, token)
    return len(nodes)


def _remove_markers(location: str, token: str) -> None:
    try:
        fs, root = _filesystem(location)
        import pyarrow.fs

        for info in fs.get_file_info(pyarrow.fs.FileSelector(f"{root}/{MARKERS}", allow_not_found=True)):
            if token in info.base_name:
                fs.delete_file(info.path)
    except Exception:  # noqa: BLE001 - leftover markers are a few bytes; never worth failing for
        pass
    if not is_uri(location):
        try:
            os.rmdir(Path(location) / MARKERS)
        except OSError:
            pass


# The tables each store must hold: a file without them is some other database.
MLFLOW_TABLES = ("experiments", "runs", "tags", "metrics", "params")
OPTUNA_TABLES = ("studies", "trials")


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


def _count_rows(db: Path, query: str, args: tuple = ()) -> int | None:
    """One count from a whole SQLite file (read-only), or None where it cannot be read."""
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            return int(con.execute(query, args).fetchone()[0])
        finally:
            con.close()
    except (sqlite3.Error, TypeError):
        return None


def _trial_folders(plan) -> str:
    """The search's trial folders, as the intact part of a damaged-store message."""
    if plan.storage is None:
        return f"the trial folders in {plan.experiment_path}"
    folder = plan.storage / plan.experiment
    count = sum(1 for p in folder.glob("trial_*") if p.is_dir()) if folder.is_dir() else 0
    return f"the {count} trial folders in {folder} (each trial's results and checkpoints)"


def _study(db: Path, experiment: str) -> str:
    count = _count_rows(db, "select count(*) from trials t join studies s on t.study_id = s.study_id "
                            "where s.study_name = ?", (experiment,))
    return f"the Optuna study {db}" + (f" ({count} trials)" if count is not None else "")


def _tracking(db: Path, experiment: str) -> str:
    count = _count_rows(db, "select count(*) from runs r join experiments e on r.experiment_id = e.experiment_id "
                            "where e.name = ?", (experiment,))
    return f"the MLflow database {db}" + (f" ({count} runs of experiment {experiment!r})" if count is not None else "")


def check_search_stores(plan) -> None:
    """Before Ray starts (and before anything is written): the search's MLflow SQLite database
    and, on --resume, its Optuna study are whole SQLite files of the right kind. A damaged one
    stops the search with a DamagedFileError naming the file, what is wrong, what is intact (the
    trial folders and the other store) and how to go on, instead of SQLite's traceback from deep
    inside MLflow or Optuna. A --resume whose state folder holds no study is a SearchError naming
    --state-dir and the folder the search used, where MLflow recorded it; Ray Tune's experiment
    files cut short by a full disk are put back whole (`restore_cut_ray_files`, the one write
    here). A tracking server, or a tracking database not created yet, is not checked here."""
    from tune.state_files import OPTUNA_DB
    from tune.tracking import sqlite_path

    tracking_db = sqlite_path(plan.tracking_uri)
    study_db = Path(plan.state_dir) / OPTUNA_DB
    resume = bool(getattr(plan.args, "resume", False))
    if tracking_db is not None and tracking_db.is_file() and tracking_db.stat().st_size > 0:  # MLflow fills an empty one
        problem = sqlite_problem(tracking_db, MLFLOW_TABLES)
        if problem:
            intact = [_trial_folders(plan)] + ([_study(study_db, plan.experiment)] if study_db.exists() else [])
            kept = (f"Intact: {' and '.join(intact)}; only MLflow's records (runs, params, metrics) are in the "
                    f"damaged file" if resume else "Nothing of this search is in it yet")
            raise DamagedFileError(
                tracking_db, f"the MLflow tracking database cannot be used: {problem}. {kept}",
                f"put back a copy of {tracking_db} from a backup and run the same command again, or log to a new "
                f"database (--tracking-uri sqlite:///NEW.db"
                + (" with --experiment NEW_NAME: a new search, since a resume needs its first run's records)"
                   if resume else ")"))
    if resume and not study_db.exists():
        raise _no_study_here(plan, study_db)
    if resume:
        note = restore_cut_ray_files(plan)
        if note:
            print(f"note: {note}", flush=True)
    if resume:
        problem = sqlite_problem(study_db, OPTUNA_TABLES)
        if problem:
            intact = [_trial_folders(plan)] + ([_tracking(tracking_db, plan.experiment)]
                                               if tracking_db is not None and tracking_db.exists() else [])
            raise DamagedFileError(
                study_db, f"the search's Optuna study cannot be used: {problem}. Intact: {' and '.join(intact)}; "
                          f"only the sampler's record of the trials is in the damaged file",
                f"put back a copy of {study_db} from a backup and run the same command again; or start a new "
                f"search with --experiment NEW_NAME (the finished trials stay in MLflow: python tune/report.py "
                f"--experiment {plan.experiment} --trials lists them)")


def _no_study_here(plan, study_db: Path) -> Exception:
    """The error of a --resume whose state folder holds no Optuna study: it names --state-dir and,
    where the tracking store recorded it, the state folder (and the trials' folder) the search
    used. A right folder that lost its study is told apart from a wrong folder."""
    from tune.plan import SearchError
    from tune.tracking import recorded_search_places, redact_uri

    given = (f"--state-dir {plan.args.state_dir}" if getattr(plan.args, "state_dir", None)
             else "the default state folder (no --state-dir given)")
    head = f"--resume: no Optuna study in {given}: {study_db} does not exist"
    places = recorded_search_places(plan.tracking_uri, plan.experiment)
    mine = [p for p in places if p["ray_experiment_path"] == plan.experiment_path] or places
    elsewhere = [p for p in mine if Path(p["state_dir"]) != Path(plan.state_dir)]
    if mine and not elsewhere:  # the search kept its state here, and the study is gone
        return SearchError(f"{head}, though it is the state folder the search used (MLflow run {mine[0]['run_id']}): "
                           f"its study was deleted or moved; put back a copy of it from a backup and run the same "
                           f"command again, or start a new search with --experiment NEW_NAME (the finished trials "
                           f"stay in MLflow and in {plan.experiment_path})")
    if elsewhere:
        options = []
        for place in elsewhere[:3]:
            option = f"--state-dir {shlex.quote(place['state_dir'])}"
            trials = place["ray_experiment_path"]
            if trials and trials != plan.experiment_path and not is_uri(trials):
                option += f" --storage-path {shlex.quote(str(Path(trials).parent))}"
            options.append(option)
        return SearchError(f"{head}. MLflow ({redact_uri(plan.tracking_uri)}) records that the search "
                           f"{plan.experiment!r} kept its state in {' or '.join(p['state_dir'] for p in elsewhere[:3])}: "
                           f"run the same command with {'; or with '.join(options)}")
    return SearchError(f"{head}, and {redact_uri(plan.tracking_uri)} records no search {plan.experiment!r} that says "
                       f"where its state was: pass the --state-dir the search used (the folder holding its optuna.db, "
                       f"printed as 'search state:' when it started; by default the experiment's folder in "
                       f"--storage-path) and the --tracking-uri it used")


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


def mount_of(path: str | Path) -> tuple[str, str]:
    """(mount point, file system type) of the file system holding `path` (its nearest existing
    folder), from /proc/mounts; ("", "") where unknown."""
    path = Path(path).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    best, kind = "", ""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "", ""
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = fields[1].replace("\\040", " ")
        if (str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
            best, kind = mount, fields[2]
    return best, kind


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
    from tune.state_files import OPTUNA_DB
    from tune.tracking import sqlite_path

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
    done = _count_rows(Path(plan.state_dir) / OPTUNA_DB,
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


# Ray's loggers that write a traceback when a write to the storage fails.
RAY_STORAGE_LOGGERS = ("ray.train._internal.syncer", "ray.train._internal.storage", "ray.tune.execution.tune_controller",
                       "ray.tune.execution.experiment_state")
_CUT = _DiskFullTracebacks()


def keep_disk_full_tracebacks_out() -> None:
    """Install `_DiskFullTracebacks` on Ray's storage loggers in this (the driver's) process;
    calling it again changes nothing."""
    import logging

    for name in RAY_STORAGE_LOGGERS:
        log = logging.getLogger(name)
        if _CUT not in log.filters:
            log.addFilter(_CUT)


# Ray Tune's own files of an experiment, rewritten after every result; the newest set is read at --resume.
RAY_EXPERIMENT_FILES = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl")


def _whole(data: bytes) -> bool:
    """Whether one of Ray Tune's experiment files is whole: a pickle (these start with its
    protocol byte, 0x80) read to its STOP opcode without loading anything, else JSON that parses."""
    try:
        if data[:1] == b"\x80":
            for _ in pickletools.genops(data):
                pass
        else:
            json.loads(data)
    except Exception:  # noqa: BLE001 - any decoder error means: not whole
        return False
    return bool(data)


def restore_cut_ray_files(plan) -> str | None:
    """On --resume, before Ray starts: Ray Tune's experiment files in the storage, whole. Ray writes
    each in the driver's session folder, then copies it to the storage; a full disk cuts that
    copy short, and Ray, finding its newest experiment state unreadable at --resume, logs an error
    and starts the search over from nothing (measured: a 4-trial search resumed as 1 new trial).
    A cut storage copy is replaced (atomically) with the driver's own copy, named by driver.json's
    Ray session, when that one is whole; returns a note naming them, or None when all are whole.
    Without a whole copy, a DamagedFileError says what is intact and how to go on. Storage that is
    a URI is Ray's to check."""
    from tune.state_files import read_driver_record

    if plan.storage is None:
        return None
    folder = plan.storage / plan.experiment
    states = sorted(folder.glob("experiment_state-*.json"))
    if not states:
        return None
    stamp = states[-1].name[len("experiment_state-"):-len(".json")]  # Ray reads the newest set
    cut = [path for pattern in RAY_EXPERIMENT_FILES
           for path in folder.glob(pattern.replace("*", stamp)) if not _whole(path.read_bytes())]
    if not cut:
        return None
    record = read_driver_record(plan.state_dir) or {}
    session = Path(record.get("session_dir") or "/nonexistent")
    restored = []
    for path in cut:
        copies = [c for c in session.glob(f"artifacts/*/{plan.experiment}/driver_artifacts/{path.name}")
                  if _whole(c.read_bytes())]
        if not copies:
            raise DamagedFileError(
                path, f"Ray Tune's experiment file is cut short or damaged (a full disk or a kill stopped its last "
                      f"copy to the storage), and the driver's own copy is not in its Ray session folder "
                      f"({session}); Ray would start the search over from nothing. Intact: "
                      f"{_trial_folders(plan)}, the Optuna study and the MLflow runs",
                f"put back a copy of {path} from a backup and run the same command again, or start a new search "
                f"with --experiment NEW_NAME (the finished trials stay in MLflow: python tune/report.py "
                f"--experiment {plan.experiment} --trials lists them)")
        tmp = path.with_name(f".{path.name}.restoring")
        tmp.write_bytes(copies[0].read_bytes())
        os.replace(tmp, path)
        restored.append(f"{path.name} (from {copies[0]})")
    return (f"Ray Tune's experiment files in {folder} were cut short (a full disk or a kill stopped the driver's "
            f"last copy to the storage); put back whole from the driver's own copies: {', '.join(restored)}")
