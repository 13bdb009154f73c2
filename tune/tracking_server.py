"""`python tune/tracking_server.py --data DIR`: an MLflow tracking server on PostgreSQL, for labs
that share one tracking store across users and searches (SQLite, run_search.py's default, takes one
writer at a time on one disk). On first use it creates a PostgreSQL cluster in DIR/postgres with
MLflow's role and database, keeping the port and password it chose in DIR/server.json for restarts.
It runs `mlflow server` on it, artifacts served from DIR/artifacts (clients need only its URL),
prints the `--tracking-uri` for run_search.py, and on Ctrl-C or SIGTERM stops MLflow, then
PostgreSQL. PostgreSQL refuses to run as root: as root it runs as the system user `bilaw-pg` (made
when missing). It listens on 127.0.0.1 only; MLflow on --host. MLflow's job runner is off
(MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false unless set): tracking does not use it, and its worker
processes take the server from about 0.5 to 2.4 GB."""
from __future__ import annotations

import argparse
import errno
import importlib.util
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

if __package__ in (None, ""):  # run as `python tune/tracking_server.py`
    import _script_path  # noqa: F401  (puts this repository first on sys.path)

from tune.tracking.runs import TrackingError, check_tracking_uri  # noqa: E402

PG_USER = "bilaw-pg"
DB_NAME = "mlflow"  # the database, and the role MLflow logs in as
SETTINGS_FILE = "server.json"
PROGRAMS = ("initdb", "pg_ctl", "postgres", "psql")
DEBIAN_PG = Path("/usr/lib/postgresql")  # Debian's postgresql-N packages: DEBIAN_PG/N/bin
READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 30.0
PASSWORD = re.compile(r"[A-Za-z0-9_-]{16,}")  # what secrets.token_urlsafe makes: safe in SQL and URIs


class ServerError(Exception):
    """Starting or running failed: `error: ...` on stderr, exit 1."""


class UsageError(ServerError):
    """A bad argument or set-up, found before anything starts: exit 2."""


# The OS user PostgreSQL runs as; `switch`: its programs are run as that user (we are root).
Account = NamedTuple("Account", [("name", str), ("uid", int), ("gid", int), ("switch", bool)])


def _int_in(lo: int, hi: int, what: str):  # an argparse type
    def parse(text: str) -> int:
        if not text.strip().isdigit() or not lo <= int(text) <= hi:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return int(text)
    return parse


def build_parser() -> argparse.ArgumentParser:
    port = _int_in(1, 65535, "a port (1-65535)")
    p = argparse.ArgumentParser(
        prog="tracking_server.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="An MLflow tracking server on PostgreSQL; the cluster, role and database are made in "
                    "--data on first use. Ctrl-C stops both.",
        epilog="example:\n  python tune/tracking_server.py --data /srv/mlflow\n"
               "  python tune/run_search.py --space ablation_capacity --tracking-uri http://127.0.0.1:5000")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="folder of the store: PostgreSQL cluster, artifacts, logs (made when missing)")
    p.add_argument("--port", type=port, default=5000, help="MLflow's port (default 5000)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface MLflow listens on (default 127.0.0.1; 0.0.0.0: every interface)")
    p.add_argument("--db-port", type=port, help="PostgreSQL's port on 127.0.0.1 (default: its last one if free, "
                                                "else a free one)")
    p.add_argument("--workers", type=_int_in(1, 64, "a count (1-64)"), default=1,
                   help="MLflow's server processes (default 1; each one more adds about 0.25 GB)")
    return p


def find_pg_bin(cluster: Path) -> Path:
    """The folder holding initdb, pg_ctl, postgres and psql: Debian's for the version of `cluster`
    when it exists, then PATH's, then Debian's newest (Debian keeps them off PATH)."""
    version = cluster / "PG_VERSION"
    dirs = [DEBIAN_PG / version.read_text().strip() / "bin"] if version.is_file() else []
    if found := shutil.which("initdb"):
        dirs += [Path(found).parent, Path(os.path.realpath(found)).parent]
    dirs += sorted(DEBIAN_PG.glob("*/bin"), reverse=True,
                   key=lambda d: tuple(int(n) for n in re.findall(r"\d+", d.parent.name)))
    for d in dirs:
        if all((d / prog).is_file() and os.access(d / prog, os.X_OK) for prog in PROGRAMS):
            return d
    raise UsageError("PostgreSQL's programs (initdb, pg_ctl, postgres, psql) are not on PATH nor in "
                     "/usr/lib/postgresql/*/bin: install PostgreSQL (Debian/Ubuntu: apt-get install postgresql)")


def db_account() -> Account:
    """Who runs the database: this process's user, or as root the system user bilaw-pg (made with
    useradd when missing)."""
    if (uid := os.geteuid()) != 0:
        return Account(next((p.pw_name for p in pwd.getpwall() if p.pw_uid == uid), str(uid)), uid, os.getegid(),
                       False)
    try:
        pw = pwd.getpwnam(PG_USER)
    except KeyError:
        try:
            subprocess.run([shutil.which("useradd") or "useradd", "--system", "--user-group", "--no-create-home",
                            "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", PG_USER],
                           capture_output=True, text=True, check=True)
            pw = pwd.getpwnam(PG_USER)
        except (OSError, subprocess.CalledProcessError, KeyError) as exc:
            why = (getattr(exc, "stderr", "") or str(exc)).strip()
            raise UsageError(f"PostgreSQL refuses to run as root and user {PG_USER} could not be made ({why}): "
                             f"create it (useradd --system {PG_USER}) or run this as another user") from None
    return Account(pw.pw_name, pw.pw_uid, pw.pw_gid, True)


def unreachable_folders(path: Path, account: Account) -> list[Path]:
    """The folders from / down to `path` that `account` may not enter (no x permission for it)."""
    blocked = []
    for folder in [*reversed(path.parents), path]:
        st = folder.stat()
        if not st.st_mode & (stat.S_IXUSR if st.st_uid == account.uid else stat.S_IXGRP if st.st_gid == account.gid
                             else stat.S_IXOTH):
            blocked.append(folder)
    return blocked


def check_port(host: str, port: int, flag: str = "--db-port") -> int:
    """The port (port 0: a free one), or UsageError naming it when nothing could listen on host:port now."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise UsageError(f"cannot resolve --host {host!r}: {exc.strerror}") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is not "in use"
        try:
            s.bind(address)
        except OSError as exc:
            raise UsageError(f"port {port} on {host} is in use: stop what listens there or pass another {flag}"
                             if exc.errno == errno.EADDRINUSE else
                             f"cannot listen on {host} port {port} ({exc.strerror}): check --host") from None
        return s.getsockname()[1]


def db_settings(data: Path, requested: int | None) -> tuple[int, str]:
    """PostgreSQL's port and MLflow's password: those DIR/server.json keeps (the port while it is
    free; --db-port wins), else new ones; saved back, readable by the owner only."""
    path = data / SETTINGS_FILE
    try:
        saved = json.loads(path.read_text()) if path.exists() else {"db_port": 0, "password": ""}
        if not (isinstance(saved, dict) and isinstance(saved.get("db_port"), int)
                and isinstance(saved.get("password"), str)):
            raise ValueError("not an object with db_port and password")
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} is damaged ({exc}); delete it (a new password is then set) and start again") \
            from None
    try:
        port = check_port("127.0.0.1", requested or saved["db_port"])
    except UsageError:
        if requested:
            raise
        port = check_port("127.0.0.1", 0)
        print(f"note: PostgreSQL's port {saved['db_port']} is taken; it moves to {port}")
    password = saved["password"] if PASSWORD.fullmatch(saved["password"]) else secrets.token_urlsafe(24)
    tmp = path.with_name(SETTINGS_FILE + ".tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump({**saved, "db_port": port, "password": password}, f, indent=1)
    os.replace(tmp, path)
    return port, password


def backend_uri(db_port: int, password: str) -> str:
    """The SQLAlchemy URI MLflow logs in with. It holds the password, so mlflow gets it in its
    environment (MLFLOW_BACKEND_STORE_URI), not on its command line, and it is never printed."""
    return f"postgresql+psycopg2://{DB_NAME}:{password}@127.0.0.1:{db_port}/{DB_NAME}"


def mlflow_command(host: str, port: int, workers: int, artifacts: Path) -> list[str]:
    """`mlflow server` serving artifacts itself: new experiments get `mlflow-artifacts:/` roots,
    kept under `artifacts`, so clients upload and download through the server."""
    return [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers", str(workers),
            "--serve-artifacts", "--artifacts-destination", str(artifacts)]


def mlflow_env(uri: str) -> dict[str, str]:
    return {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ, "MLFLOW_BACKEND_STORE_URI": uri}


def url_host(host: str) -> str:
    """The host part of a URL reaching a server bound to `host` (0.0.0.0: this machine's name)."""
    host = socket.getfqdn() if host in ("0.0.0.0", "::", "") else host
    return f"[{host}]" if ":" in host else host


def log_tail(path: Path, secret: str = "", lines: int = 25) -> str:
    """The last lines of a log, indented, `secret` masked."""
    text = path.read_text(errors="replace") if path.is_file() else f"(no log at {path})"
    text = text.replace(secret, "***") if secret else text
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


class Postgres:
    """The cluster in DIR/postgres (data/, socket/, postgres.log); its programs run as `account`."""

    def __init__(self, bin_dir: Path, root: Path, account: Account, port: int = 0) -> None:
        self.bin, self.root, self.account, self.port = bin_dir, root, account, port
        self.data, self.socket, self.log = root / "data", root / "socket", root / "postgres.log"

    def command(self, name: str) -> list[str]:
        """The command line of step `name`: initdb, start, stop, status or psql."""
        data = str(self.data)
        if name == "initdb":  # into data.new, renamed when complete: an interrupted initdb leaves no cluster
            return [str(self.bin / "initdb"), "-D", str(self.root / "data.new"), "-E", "UTF8", "--locale=C",
                    "--auth-local=peer", "--auth-host=scram-sha-256"]
        if name == "psql":
            return [str(self.bin / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket),
                    "-p", str(self.port), "-d", "postgres", "-f", "-"]
        return [str(self.bin / "pg_ctl"), *{
            "start": ["start", "-D", data, "-l", str(self.log), "-w", "-t", "120", "-s"],
            "stop": ["stop", "-D", data, "-m", "fast", "-w", "-t", "60", "-s"],
            "status": ["status", "-D", data]}[name]]

    def run(self, name: str, stdin: str | None = None, what: str = "") -> subprocess.CompletedProcess:
        """Run step `name` as the database's user, in its folder; a failure is a ServerError if `what`."""
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("PG")}, "LC_ALL": "C", "HOME": str(self.root)}
        user = dict(user=self.account.uid, group=self.account.gid, extra_groups=[]) if self.account.switch else {}
        done = subprocess.run(self.command(name), input=stdin, capture_output=True, text=True, cwd=self.root,
                              env=env, **user)
        if what and done.returncode != 0:
            out = (done.stdout + done.stderr).strip()[-1500:]
            raise ServerError(f"{what} failed (exit {done.returncode}): {out}"
                              + (f"\n  {self.log} ends:\n{log_tail(self.log)}" if name == "start" else ""))
        return done

    def prepare(self) -> None:
        """Give DIR/postgres to the database's user, and make the cluster in it when missing."""
        self.root.mkdir(mode=0o700, exist_ok=True)
        if self.account.switch:
            for folder, dirs, files in os.walk(self.root):
                for path in [folder, *(os.path.join(folder, f) for f in dirs + files)]:
                    if os.lstat(path).st_uid != self.account.uid:
                        os.lchown(path, self.account.uid, self.account.gid)
        if not (self.data / "PG_VERSION").exists():
            shutil.rmtree(self.root / "data.new", ignore_errors=True)
            self.run("initdb", what=f"initdb of {self.data}")
            os.replace(self.root / "data.new", self.data)

    def running(self) -> bool:
        return (self.data / "PG_VERSION").exists() and self.run("status").returncode == 0

    def start(self) -> None:
        """Start it on 127.0.0.1:port with its socket in DIR/postgres/socket. The settings go in a
        file that postgresql.conf includes, so no path passes through pg_ctl's shell."""
        self.socket.mkdir(mode=0o700, exist_ok=True)
        conf, main_conf = self.data / "bilaw_server.conf", self.data / "postgresql.conf"
        conf.write_text(f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_permissions = 0700\n"
                        "unix_socket_directories = '{}'\n".format(str(self.socket).replace("'", "''")))
        if "bilaw_server.conf" not in main_conf.read_text():
            with main_conf.open("a") as f:
                f.write("\ninclude_if_exists = 'bilaw_server.conf'\n")
        if self.account.switch:
            os.chown(self.socket, self.account.uid, self.account.gid)
            os.chown(conf, self.account.uid, self.account.gid)
        self.run("start", what=f"starting PostgreSQL on 127.0.0.1:{self.port}")

    def ensure_database(self, password: str) -> None:
        """MLflow's role and database, made when missing, the role's password set to `password`
        (on psql's stdin, never on a command line)."""
        self.run("psql", what="creating MLflow's role and database", stdin=(
            f"SELECT 'CREATE ROLE {DB_NAME} LOGIN' WHERE NOT EXISTS "
            f"(SELECT FROM pg_roles WHERE rolname = '{DB_NAME}')\\gexec\n"
            f"ALTER ROLE {DB_NAME} LOGIN PASSWORD '{password}';\n"
            f"SELECT 'CREATE DATABASE {DB_NAME} OWNER {DB_NAME}' WHERE NOT EXISTS "
            f"(SELECT FROM pg_database WHERE datname = '{DB_NAME}')\\gexec\n"))

    def pid(self) -> str:
        """The postmaster's process id, from its postmaster.pid ('?' when it has none)."""
        path = self.data / "postmaster.pid"
        return path.read_text().split("\n")[0] if path.is_file() else "?"


def start_mlflow(args: argparse.Namespace, data: Path, uri: str) -> subprocess.Popen:
    """`mlflow server` in a process group of its own (with its workers), output appended to
    DIR/mlflow.log; a terminal's Ctrl-C reaches only us, and we stop it before PostgreSQL."""
    (data / "artifacts").mkdir(exist_ok=True)
    with (data / "mlflow.log").open("ab", buffering=0) as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} tracking_server.py starts mlflow\n".encode())
        return subprocess.Popen(mlflow_command(args.host, args.port, args.workers, data / "artifacts"),
                                env=mlflow_env(uri), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_ready(proc: subprocess.Popen, url: str, log: Path, secret: str) -> None:
    """Return once `url` passes run_search.py's own check of a tracking server (its /health answers);
    ServerError with the log's tail if mlflow exits or hangs."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while proc.poll() is None:
        try:
            return check_tracking_uri(url, timeout_s=2)
        except TrackingError:
            pass
        if time.monotonic() > deadline:
            raise ServerError(f"mlflow server did not answer {url}/health within {READY_TIMEOUT_S:g} s; "
                              f"{log} ends:\n{log_tail(log, secret)}")
        time.sleep(0.5)
    raise ServerError(f"mlflow server exited with code {proc.returncode}; {log} ends:\n{log_tail(log, secret)}")


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to mlflow's process group (server, workers), SIGKILL after STOP_TIMEOUT_S; until none runs."""
    for sig, wait_s in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 10.0)):
        deadline = time.monotonic() + wait_s
        try:
            os.killpg(proc.pid, sig)
            while time.monotonic() < deadline:
                time.sleep(0.2)
                if proc.poll() is not None:
                    os.killpg(proc.pid, 0)  # ProcessLookupError once its workers are gone too
        except ProcessLookupError:
            return


def serve(args: argparse.Namespace) -> None:
    """Check everything cheap first (UsageError), then run PostgreSQL and MLflow until a signal
    (returns) or until mlflow exits (ServerError); both are stopped either way."""
    data = Path(args.data).expanduser().resolve()
    if data.exists() and not data.is_dir():
        raise UsageError(f"--data {data} is a file; give a folder (made when missing)")
    if len(str(data / "postgres" / "socket")) > 90:  # a socket path has at most 107 bytes, with /.s.PGSQL.N
        raise UsageError(f"--data {data} is too long a path for PostgreSQL's Unix socket; choose a shorter one")
    if importlib.util.find_spec("psycopg2") is None:
        raise UsageError("psycopg2 is not installed: pip install -e '.[server]' (or bash scripts/setup.sh)")
    bin_dir = find_pg_bin(data / "postgres" / "data")
    check_port(args.host, args.port, "--port")
    data.mkdir(parents=True, exist_ok=True)
    account = db_account()
    if account.switch and (blocked := unreachable_folders(data, account)):
        raise UsageError(f"PostgreSQL runs as user {account.name}, who may not enter {', '.join(map(str, blocked))}: "
                         f"give it access (chmod o+x) or choose a --data folder it can reach (e.g. under /srv)")
    pg = Postgres(bin_dir, data / "postgres", account)
    if pg.running():
        raise UsageError(f"the PostgreSQL of {data} already runs (pid {pg.pid()}): another tracking_server.py "
                         f"serves this folder, or one was killed; stop it with {' '.join(pg.command('stop'))}"
                         + (f" (as user {account.name})" if account.switch else ""))
    pg.port, password = db_settings(data, args.db_port)
    url = f"http://{url_host(args.host)}:{args.port}"
    local = f"http://{url_host('127.0.0.1' if args.host in ('0.0.0.0', '::', '') else args.host)}:{args.port}"
    mlflow = None
    try:
        pg.prepare()
        pg.start()
        pg.ensure_database(password)
        mlflow = start_mlflow(args, data, backend_uri(pg.port, password))
        wait_ready(mlflow, local, data / "mlflow.log", password)
        print(f"MLflow tracking server on PostgreSQL, store in {data}\n"
              f"  tracking URI: {url}\n"
              f"  search with:  python tune/run_search.py --space NAME --tracking-uri {url}\n"
              f"  MLflow UI:    {url}/\n"
              f"  processes:    MLflow server pid {mlflow.pid} (log {data / 'mlflow.log'}), "
              f"PostgreSQL pid {pg.pid()} as {account.name} on 127.0.0.1:{pg.port} (log {pg.log})\n"
              "Ctrl-C stops both.", flush=True)
        mlflow.wait()
        wait_ready(mlflow, local, data / "mlflow.log", password)  # raises: mlflow exited
    except KeyboardInterrupt:
        print("stopping the MLflow server, then PostgreSQL ...", flush=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the stopping short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if mlflow is not None:
            stop_group(mlflow)
        if pg.running():
            pg.run("stop", what="stopping PostgreSQL")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # both unwind as KeyboardInterrupt
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        serve(args)
    except KeyboardInterrupt:  # before anything was started
        return 0
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    print("stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
