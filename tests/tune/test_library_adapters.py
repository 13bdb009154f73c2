"""The boundary with Ray, Optuna and MLflow: no module of tune/, benchmarks/ or scripts/ but
tune/library_adapters.py uses a private module or attribute of theirs, and each of the adapter's
readers works on the pinned versions, or fails loudly, naming the installed version, where the
attribute is gone. Also the public routes that replaced private ones (the Ray session folder
from `ray.init`, an Optuna trial's storage id from its number)."""
from __future__ import annotations

import ast
import importlib
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from helpers import REPO

from tune import library_adapters as adapters

LIBRARIES = ("ray", "optuna", "mlflow")
ADAPTER = REPO / "tune" / "library_adapters.py"
# Private attributes of the pinned libraries that tune/ needs (read only in the adapter).
PRIVATE_NAMES = {"_ot_trials", "_ot_study", "_completed_trials", "_global_node", "_trial_id", "_metric",
                 "_limit_concurrency", "_local_tuner", "_remote_tuner", "_tune_config", "_trial_id_to_group",
                 "_current_best_trial", "_parameter_columns", "_private", "_internal", "_raylet"}
# A dotted name inside a pinned library's private part, as a string: a logger's name, say.
PRIVATE_DOTTED = re.compile(r"(ray|optuna|mlflow)(\.\w+)*\._\w+(\.\w+)*")


def _private_uses(source: str) -> list[str]:
    """Where `source` imports a private module of a pinned library (a path component or an
    imported name starting with "_"), reaches one through an attribute (ray._private.x), names a
    private attribute of theirs from PRIVATE_NAMES (also through getattr/hasattr/setattr, or by
    overriding it), names a private module as a string (a logger's name), or imports a private name
    of another project module."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            found += [f"{line}: import {a.name}" for a in node.names
                      if a.name.split(".")[0] in LIBRARIES and any(c.startswith("_") for c in a.name.split("."))]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            parts = node.module.split(".")
            private = any(c.startswith("_") for c in parts) or any(a.name.startswith("_") for a in node.names)
            if parts[0] in LIBRARIES + ("tune", "bilaw") and private and node.module != "__future__":
                found.append(f"{line}: from {node.module} import {', '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.Attribute):
            if node.attr in PRIVATE_NAMES:
                found.append(f"{line}: .{node.attr}")
            elif node.attr.startswith("_") and not node.attr.startswith("__"):
                root = node.value
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in LIBRARIES:
                    found.append(f"{line}: {ast.unparse(node)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in (
                "getattr", "hasattr", "setattr", "delattr"):
            if len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and node.args[1].value in PRIVATE_NAMES:
                found.append(f"{line}: {node.func.id}(..., {node.args[1].value!r})")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in PRIVATE_NAMES:
            found.append(f"{line}: def {node.name}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and PRIVATE_DOTTED.fullmatch(node.value):
            found.append(f"{line}: {node.value!r}")
    return found


def test_the_check_finds_each_kind_of_private_use():
    source = ("import ray._private.worker\nfrom ray.train._internal import storage\nfrom ray.tune import _x\n"
              "s = ray._private.worker._global_node\nsearcher._ot_trials\ngetattr(t, '_trial_id')\n"
              "class R:\n    def _current_best_trial(self): pass\nfrom tune.tracking.runs import _client\n"
              "logging.getLogger('ray.train._internal.storage')\n")
    assert len(_private_uses(source)) == 10, _private_uses(source)
    assert not _private_uses("import ray\nfrom ray.tune.search import Repeater\nx._own_helper\nos._exit(1)\n"
                             "from __future__ import annotations\nimport _script_path\n")


def test_only_the_adapter_uses_private_parts_of_ray_optuna_and_mlflow():
    files = [p for folder in ("tune", "benchmarks", "scripts") for p in sorted((REPO / folder).rglob("*.py"))]
    assert ADAPTER in files
    uses = {str(p.relative_to(REPO)): u for p in files if p != ADAPTER and (u := _private_uses(p.read_text()))}
    assert not uses, f"private uses outside tune/library_adapters.py (move them there): {uses}"


def test_the_pins_are_the_versions_installed_and_in_pyproject():
    pins = dict(re.findall(r'"(ray|optuna|mlflow)(?:\[\w+\])?==([\w.]+)"', (REPO / "pyproject.toml").read_text()))
    assert pins == adapters.PINNED
    assert {lib: adapters.installed_version(lib) for lib in LIBRARIES} == adapters.PINNED


# -- each reader on the pinned versions ---------------------------------------------------------
def _optuna_search():
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(space={"x": optuna.distributions.FloatDistribution(0.0, 1.0)}, metric="m", mode="max")


def test_optuna_search_readers_are_the_searchers_own_study_trials_and_told_set():
    searcher = _optuna_search()
    searcher.suggest("a")
    searcher.suggest("b")
    trials, study = adapters.optuna_search_trials(searcher), adapters.optuna_search_study(searcher)
    assert set(trials) == {"a", "b"} and isinstance(trials["a"], optuna.Trial)
    assert [t.number for t in study.get_trials(deepcopy=False)] == [trials["a"].number, trials["b"].number]
    searcher.on_trial_complete("a", {"m": 0.5})
    told = adapters.optuna_search_told(searcher)
    assert told == {"a"} and study.get_trials(deepcopy=False)[0].state == optuna.trial.TrialState.COMPLETE
    told.add("b")  # the searcher's own set: a trial counted told is not told again
    searcher.on_trial_complete("b", {"m": 0.7})
    assert study.get_trials(deepcopy=False)[1].state == optuna.trial.TrialState.RUNNING
    assert searcher.metric == "m"  # public: tune/search.py reads it instead of _metric


def test_concurrency_limiter_and_repeater_readers():
    from ray.tune.search import ConcurrencyLimiter, Repeater

    assert adapters.limiter_is_limiting(ConcurrencyLimiter(_optuna_search(), max_concurrent=2)) is True
    repeater = Repeater(_optuna_search(), repeat=2)
    repeater.suggest("a")
    repeater.suggest("b")
    assert adapters.repeater_group(repeater, "b") == "a" and adapters.repeater_group(repeater, "zz") is None


def test_tuner_readers_give_its_search_alg_and_run_config(tmp_path):
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    limiter, callback = ConcurrencyLimiter(_optuna_search(), max_concurrent=1), tune.Callback()
    tuner = tune.Tuner(lambda config: None, tune_config=tune.TuneConfig(search_alg=limiter, num_samples=1),
                       run_config=tune.RunConfig(storage_path=str(tmp_path), callbacks=[callback]))
    assert adapters.tuner_search_alg(tuner) is limiter
    assert adapters.tuner_run_config(tuner).callbacks == [callback]
    remote = SimpleNamespace(_remote_tuner=object())  # a Tuner under Ray Client: nothing to reach here
    assert adapters.tuner_search_alg(remote) is None and adapters.tuner_run_config(remote) is None


def test_best_trial_reporter_shows_the_subclasss_view(capsys):
    from ray.tune.experiment import Trial

    class Renamed(adapters.best_trial_reporter()):
        def best_trial_view(self, trial, metric):
            assert self.parameter_columns == ["x"]
            return SimpleNamespace(trial_id="seen-" + trial.trial_id, last_result=trial.last_result), metric

    trial = Trial("f", config={"x": 1}, stub=True, trial_id="t1")
    trial.storage = SimpleNamespace(experiment_driver_staging_path="r", trial_driver_staging_path=None)
    trial.update_last_result({"m": 0.5, "config": {"x": 1}})
    trial.set_status(Trial.TERMINATED)
    reporter = Renamed(parameter_columns=["x"], metric_columns=["m"], print_intermediate_tables=True)
    reporter.setup(start_time=time.time(), total_samples=1, metric="m", mode="max")
    reporter.report([trial], True)
    assert "Current best trial: seen-t1 with m=0.5 and parameters={'x': 1}" in capsys.readouterr().out


def test_ray_logger_names_are_the_pinned_rays_own():
    for name in adapters.RAY_STORAGE_LOGGERS + (adapters.RAY_TRIAL_STORAGE_LOGGER,):
        importlib.import_module(name)
        assert name in logging.root.manager.loggerDict, name


# -- a changed library fails loudly --------------------------------------------------------------
@pytest.mark.parametrize("read, attribute", [
    (adapters.optuna_search_trials, "_ot_trials"), (adapters.optuna_search_study, "_ot_study"),
    (adapters.optuna_search_told, "_completed_trials"), (adapters.limiter_is_limiting, "_limit_concurrency"),
    (lambda obj: adapters.repeater_group(obj, "a"), "_trial_id_to_group"),
    (adapters.tuner_search_alg, "_local_tuner"), (adapters.tuner_run_config, "_local_tuner")])
def test_a_missing_private_attribute_is_an_error_naming_the_ray_version(read, attribute):
    with pytest.raises(adapters.LibraryChanged) as err:
        read(SimpleNamespace())
    message = str(err.value)
    assert f"ray {adapters.installed_version('ray')}" in message and repr(attribute) in message
    assert "tune/library_adapters.py" in message


def test_a_private_attribute_of_another_kind_is_an_error_too():
    with pytest.raises(adapters.LibraryChanged, match=r"ray .*holds a list.*'_completed_trials'"):
        adapters.optuna_search_told(SimpleNamespace(_completed_trials=[]))


# -- the public routes that replaced private ones ------------------------------------------------
@pytest.fixture
def own_ray(monkeypatch):
    """A local Ray of this test's own (address="local": never a cluster already running here), its
    temp folder apart from the machine's /tmp/ray; shut down after the test. RAY_AUTH_MODE is left
    as Ray sets it: the first local ray.init of a process sets it to "token" for the whole process
    and caches that, so a test that changed it would leave later Rays of this process with a GCS
    that asks for a token its client does not send (seen in CI as "Failed to start GCS")."""
    import ray

    folder = Path(tempfile.mkdtemp(prefix="raytest-", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(folder))
    try:
        yield ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="WARNING")
    finally:
        ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow  # about 13 s: a Ray of its own starts and stops
def test_the_driver_records_the_session_folder_ray_init_gives(own_ray, tmp_path):
    import ray

    from tune.driver import record_driver
    from tune.state_files import read_driver_record

    session_dir = own_ray.address_info["session_dir"]
    assert Path(session_dir).is_dir() and Path(session_dir).name == ray.get_runtime_context().get_session_name()
    record_driver(tmp_path, joined_cluster=False, session_dir=session_dir)
    assert read_driver_record(tmp_path)["session_dir"] == session_dir


def test_study_trials_are_set_aside_and_taken_back_by_their_public_storage_id(tmp_path):
    from tune import orphans

    db = tmp_path / "optuna.db"
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{db}")
    study.tell(study.ask(), 1.0)
    study.ask()  # RUNNING, as a killed search leaves it
    assert orphans.set_running_trials_aside(db, "s", "stopped") == 1
    states = [t.state for t in optuna.load_study(study_name="s", storage=f"sqlite:///{db}").trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.WAITING]
    assert orphans.take_trials_back(db, "s") == 1
    trial = optuna.load_study(study_name="s", storage=f"sqlite:///{db}").trials[1]
    assert trial.state == optuna.trial.TrialState.RUNNING and trial.user_attrs[orphans.INTERRUPTED_ATTR] == "stopped"
