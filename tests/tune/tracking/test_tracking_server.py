"""tune/tracking_server.py: argument and set-up checks (exit 2 with one `error:` line, before
anything starts), the command lines it builds, its settings file, and one end-to-end run of the
MLflow server on a real PostgreSQL: log through it, stop it with SIGINT, restart it on the same
folder, and see it stop PostgreSQL when mlflow dies."""
from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from helpers import REPO, alive, group_members
from tune import tracking_server as ts

SCRIPT = REPO / "tune" / "tracking_server.py"


@pytest.fixture
def main():
    """ts.main, with the signal handlers it installs put back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield ts.main
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.fixture
def fake_pg(tmp_path, monkeypatch):
    """A Debian-like tree of (empty, executable) PostgreSQL programs for versions 9.6, 14 and 15, none on PATH."""
    root = tmp_path / "usr_lib_postgresql"
    for version in ("9.6", "14", "15"):
        (root / version / "bin").mkdir(parents=True)
        for prog in ts.PROGRAMS:
            (root / version / "bin" / prog).write_text("#!/bin/sh\n")
            (root / version / "bin" / prog).chmod(0o755)
    monkeypatch.setattr(ts, "DEBIAN_PG", root)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    return root


@pytest.mark.parametrize("flag,value", [("--port", "0"), ("--port", "70000"), ("--port", "http"),
                                        ("--db-port", "-1"), ("--workers", "0")])
def test_a_bad_number_is_an_argparse_error(main, tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as exc:
        main(["--data", str(tmp_path), flag, value])
    assert exc.value.code == 2
    assert f"error: argument {flag}:" in capsys.readouterr().err


def test_data_that_is_a_file_stops_the_script_with_one_error_line(tmp_path):
    (tmp_path / "store").write_text("not a folder")
    out = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path / "store")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.startswith("error: --data ") and "is a file" in out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_missing_postgresql_programs_name_the_package(main, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ts, "DEBIAN_PG", tmp_path / "none")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["--data", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: PostgreSQL's programs") and "apt-get install postgresql" in err
    assert not (tmp_path / "store").exists()  # nothing made before the checks pass


def test_the_programs_come_from_the_clusters_version_else_the_newest(fake_pg, tmp_path):
    assert ts.find_pg_bin(tmp_path / "no_cluster") == fake_pg / "15" / "bin"
    cluster = tmp_path / "cluster"
    cluster.mkdir()
    (cluster / "PG_VERSION").write_text("14\n")
    assert ts.find_pg_bin(cluster) == fake_pg / "14" / "bin"
    (fake_pg / "15" / "bin" / "psql").unlink()  # an incomplete folder is passed over
    assert ts.find_pg_bin(tmp_path / "no_cluster") == fake_pg / "14" / "bin"


def test_a_busy_port_is_named_before_anything_starts(main, fake_pg, tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["--data", str(tmp_path / "store"), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: port {port} on 127.0.0.1 is in use") and "another --port" in err
    assert not (tmp_path / "store").exists()


def test_a_host_this_machine_does_not_have_is_named():
    with pytest.raises(ts.UsageError, match="cannot listen on 192.0.2.1 port 5000 .*check --host"):
        ts.check_port("192.0.2.1", 5000, "--port")  # TEST-NET-1: never a local address


def test_the_mlflow_command_serves_artifacts_and_carries_no_password(tmp_path, monkeypatch):
    cmd = ts.mlflow_command("0.0.0.0", 5001, 2, tmp_path / "artifacts")
    assert cmd[:4] == [sys.executable, "-m", "mlflow", "server"]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0" and cmd[cmd.index("--port") + 1] == "5001"
    assert cmd[cmd.index("--workers") + 1] == "2" and "--serve-artifacts" in cmd
    assert cmd[cmd.index("--artifacts-destination") + 1] == str(tmp_path / "artifacts")
    assert "--default-artifact-root" not in cmd  # mlflow-artifacts:/ then: uploads go through the server
    uri = ts.backend_uri(5433, "Secret_Password-0123")
    assert uri == "postgresql+psycopg2://mlflow:Secret_Password-0123@127.0.0.1:5433/mlflow"
    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", raising=False)
    env = ts.mlflow_env(uri)
    assert env["MLFLOW_BACKEND_STORE_URI"] == uri and env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert not any("Secret" in part for part in cmd)
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "true")  # a user who wants the job runner keeps it
    assert ts.mlflow_env(uri)["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "true"


def test_postgres_command_lines(tmp_path):
    pg = ts.Postgres(Path("/pg/bin"), tmp_path / "postgres", ts.Account("someone", 1000, 1000, False), 5433)
    initdb = pg.command("initdb")
    assert initdb[0] == "/pg/bin/initdb" and initdb[initdb.index("-D") + 1] == str(tmp_path / "postgres" / "data.new")
    assert "--auth-local=peer" in initdb and "--auth-host=scram-sha-256" in initdb
    assert pg.command("start") == ["/pg/bin/pg_ctl", "start", "-D", str(pg.data), "-l", str(pg.log), "-w", "-t",
                                   "120", "-s"]
    stop = pg.command("stop")
    assert stop[:4] == ["/pg/bin/pg_ctl", "stop", "-D", str(pg.data)] and stop[stop.index("-m") + 1] == "fast"
    psql = pg.command("psql")
    assert psql[0] == "/pg/bin/psql" and psql[psql.index("-h") + 1] == str(pg.socket)
    assert psql[psql.index("-p") + 1] == "5433" and psql[-2:] == ["-f", "-"]  # SQL (and password) on stdin


def test_settings_are_kept_private_and_reused(tmp_path, capsys):
    port, password = ts.db_settings(tmp_path, None)
    path = tmp_path / ts.SETTINGS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"db_port": port, "password": password}
    assert ts.PASSWORD.fullmatch(password)
    assert ts.db_settings(tmp_path, None) == (port, password)
    with socket.socket() as busy:  # its port taken: a new one, the same password
        busy.bind(("127.0.0.1", port))
        busy.listen()
        moved, same = ts.db_settings(tmp_path, None)
        assert moved != port and same == password and f"port {port} is taken" in capsys.readouterr().out
        with pytest.raises(ts.UsageError, match=f"port {port} on 127.0.0.1 is in use.*--db-port"):
            ts.db_settings(tmp_path, port)
    path.write_text("{not json")
    with pytest.raises(ts.UsageError, match="server.json is damaged"):
        ts.db_settings(tmp_path, None)


def test_folders_the_database_user_cannot_enter_are_named(tmp_path):
    locked = tmp_path / "locked"
    (locked / "store").mkdir(parents=True)
    locked.chmod(0o700)
    other = ts.Account("other", os.getuid() + 4242, os.getgid() + 4242, True)
    assert locked in ts.unreachable_folders(locked / "store", other)
    assert ts.unreachable_folders(locked / "store", ts.Account("me", os.getuid(), os.getgid(), False)) == []


def test_url_host():
    assert ts.url_host("127.0.0.1") == "127.0.0.1"
    assert ts.url_host("::1") == "[::1]"
    assert ts.url_host("0.0.0.0") == socket.getfqdn()


# ----------------------------------------------------------------------------- end to end


class Server:
    """tracking_server.py in a subprocess, its output collected line by line."""

    def __init__(self, data: Path, port: int, db_port: int) -> None:
        self.proc = subprocess.Popen([sys.executable, str(SCRIPT), "--data", str(data), "--port", str(port),
                                      "--db-port", str(db_port)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, cwd=REPO)
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.proc.stdout], daemon=True).start()

    def wait_for(self, text: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.output):
            try:
                self.output.append(self.lines.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"no {text!r} within {timeout} s; output:\n{''.join(self.output)}") from None
            assert self.proc.poll() is None or not self.lines.empty(), "".join(self.output)

    def pids(self) -> tuple[int, int]:
        text = "".join(self.output)
        return (int(re.search(r"MLflow server pid (\d+)", text).group(1)),
                int(re.search(r"PostgreSQL pid (\d+)", text).group(1)))

    def finish(self, timeout: float = 90.0) -> int:
        code = self.proc.wait(timeout=timeout)
        time.sleep(0.2)
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return code


def _assert_stopped(server: Server, ports: tuple[int, int]) -> None:
    mlflow_pid, pg_pid = server.pids()
    deadline = time.monotonic() + 10
    while (alive(pg_pid) or group_members(mlflow_pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(mlflow_pid) and not group_members(mlflow_pid), "mlflow server or a worker still runs"
    assert not alive(pg_pid), "PostgreSQL still runs"
    for port in ports:
        ts.check_port("127.0.0.1", port)


def server_place() -> tuple[Path, tuple[int, int]]:
    """A fresh folder for a server's store and two free ports (MLflow, PostgreSQL); skips the
    test where PostgreSQL's programs are not installed."""
    try:
        ts.find_pg_bin(Path("/nonexistent"))
    except ts.UsageError:
        pytest.skip("PostgreSQL's programs are not installed (Debian: apt-get install postgresql)")
    top = Path(tempfile.mkdtemp(prefix="bilaw-ts-", dir="/tmp"))
    top.chmod(0o755)  # as root, PostgreSQL runs as bilaw-pg, which must be able to enter it
    return top, (ts.check_port("127.0.0.1", 0), ts.check_port("127.0.0.1", 0))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_end_to_end_log_stop_restart_and_mlflow_dying():
    from mlflow.tracking import MlflowClient

    top, ports = server_place()
    data = top / "store"
    uri = f"http://127.0.0.1:{ports[0]}"
    server = None
    try:
        server = Server(data, *ports)
        server.wait_for("Ctrl-C stops both.")
        text = "".join(server.output)
        assert f"tracking URI: {uri}" in text and f"--tracking-uri {uri}" in text
        assert json.loads((data / ts.SETTINGS_FILE).read_text())["password"] not in text

        client = MlflowClient(uri)
        experiment = client.create_experiment("tracking-server-e2e")
        assert client.get_experiment(experiment).artifact_location.startswith("mlflow-artifacts:")
        run_id = client.create_run(experiment).info.run_id
        client.log_metric(run_id, "test_pgd_acc", 0.625, step=3)
        (top / "note.txt").write_text("through the server\n")
        client.log_artifact(run_id, str(top / "note.txt"))
        client.set_terminated(run_id)
        assert client.get_run(run_id).data.metrics == {"test_pgd_acc": 0.625}
        assert [f.path for f in client.list_artifacts(run_id)] == ["note.txt"]
        assert list((data / "artifacts").rglob("note.txt")), "the artifact is not in DIR/artifacts"

        server.proc.send_signal(signal.SIGINT)
        assert server.finish() == 0, "".join(server.output)
        assert "stopped." in "".join(server.output)
        _assert_stopped(server, ports)

        server = Server(data, *ports)  # same folder: same store
        server.wait_for("Ctrl-C stops both.")
        back = MlflowClient(uri).get_run(run_id)
        assert back.data.metrics == {"test_pgd_acc": 0.625} and back.info.status == "FINISHED"
        local = MlflowClient(uri).download_artifacts(run_id, "note.txt", str(top))
        assert Path(local).read_text() == "through the server\n"

        os.killpg(server.pids()[0], signal.SIGKILL)  # mlflow dies: PostgreSQL is stopped, exit 1
        assert server.finish() == 1, "".join(server.output)
        assert "error: mlflow server exited with code" in "".join(server.output)
        assert json.loads((data / ts.SETTINGS_FILE).read_text())["password"] not in "".join(server.output)
        _assert_stopped(server, ports)
    finally:
        if server is not None and server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
            server.proc.wait(timeout=90)
        shutil.rmtree(top, ignore_errors=True)
