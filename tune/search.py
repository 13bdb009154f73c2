"""The Ray Tune side of a search: Ray start-up, OptunaSearch, scheduler, MLflow parent run,
the Tuner, and what is printed and written at the end. `run_search.py` validates everything
before calling `run_search(plan, argv)`."""
from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.search import ConcurrencyLimiter, Repeater
from ray.tune.search.optuna import OptunaSearch

from tune import finished_search, orphans, study_records
from tune import library_adapters as adapters
from tune import spaces as sp
from tune.driver import clean_up_killed_driver, record_driver
from tune.plan import Plan, SearchError, git_commit
from tune.ray_start import start_ray, start_ray_and_tracking
from tune.results.per_point_runs import PerPointStore
from tune.results.search_outcome import report
from tune.spaces.schema import NOT_SEARCHED
from tune.state_files import OPTUNA_DB
from tune.stopping import STOP
from tune.storage import StorageError, check_shared_storage
from tune.tracking.runs import SearchTracking, redact_uri, use_fast_fail_http
from tune.tracking.trial_callback import TrialTracking
from tune.trainable import META_KEY, train_trial
from tune.variant_runs import PROGRESS_COLUMNS, trial_name


class ResumableOptunaSearch(OptunaSearch):
    """OptunaSearch that survives a resume whose Ray snapshot predates the study: a trial Optuna
    already finished (told before the driver was killed, after Ray's last experiment snapshot)
    may report again once Ray re-runs it; its study entry is kept as it was."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        trials = adapters.optuna_search_trials(self)
        if not error and trial_id in trials and trial_id not in adapters.optuna_search_told(self):
            study_records.record(trials[trial_id], trial_id, result)  # its runs, before it is told
        try:
            super().on_trial_complete(trial_id, result=result, error=error)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass

    def restore(self, checkpoint_path: str) -> None:
        """A trial whose tell failed (a full disk) is not done, so its re-run at --resume reaches
        the study (Ray's OptunaSearch counts it done and ignores the re-run)."""
        super().restore(checkpoint_path)
        states = {t.number: t.state for t in adapters.optuna_search_study(self).get_trials(deepcopy=False)}
        told, trials = adapters.optuna_search_told(self), adapters.optuna_search_trials(self)
        for trial_id in list(told):
            trial = trials.get(trial_id)
            if trial is not None and not states.get(trial.number, optuna.trial.TrialState.COMPLETE).is_finished():
                told.discard(trial_id)


class PrunedAwareOptunaSearch(ResumableOptunaSearch):
    """Tells Optuna that a trial the scheduler stopped early was PRUNED, not COMPLETE with its
    early-rung value (Ray's OptunaSearch tells it COMPLETE, and TPE would then model truncated scores
    as finals)."""

    def __init__(self, *args, max_t: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._max_t = max_t

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        early = result and result.get("training_iteration", self._max_t) < self._max_t
        trials, told = adapters.optuna_search_trials(self), adapters.optuna_search_told(self)
        if not error and early and trial_id in trials and self.metric in result and trial_id not in told:
            trial = trials[trial_id]
            study_records.record(trial, trial_id, result)
            try:
                trial.report(result[self.metric], result["training_iteration"])
                adapters.optuna_search_study(self).tell(trial, state=optuna.trial.TrialState.PRUNED)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # finished in the study before a resume (see ResumableOptunaSearch)
            told.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)


UNLIMITED = 1 << 30  # a concurrency limit that never binds: Ray Tune's resources decide


class AdjustableConcurrencyLimiter(ConcurrencyLimiter):
    """At most `--max-concurrent` trials at once, a limit a resume may change (Ray Tune's own
    `max_concurrent_trials` comes back from the snapshot); `wanted` survives restoring the state."""

    def __init__(self, searcher, max_concurrent: int | None) -> None:
        super().__init__(searcher, max_concurrent=max_concurrent or UNLIMITED)
        self.wanted = self.max_concurrent

    def set_state(self, state: dict) -> None:
        wanted = self.wanted
        super().set_state(state)
        self.wanted = self.max_concurrent = wanted

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Also passes on an errored trial's re-run end at --resume, which Ray's limiter drops (the
        trial left its live set); not through a Repeater, which counted the errored run already."""
        limiting = adapters.limiter_is_limiting(self)
        gone = limiting and trial_id not in self.live_trials and not isinstance(self.searcher, Repeater)
        (self.searcher if gone else super()).on_trial_complete(trial_id, result=result, error=error)


def use_max_concurrent(tuner: tune.Tuner, max_concurrent: int | None) -> None:
    """Give a restored search the --max-concurrent of this resume."""
    limiter = adapters.tuner_search_alg(tuner)
    if isinstance(limiter, AdjustableConcurrencyLimiter):
        limiter.wanted = limiter.max_concurrent = max_concurrent or UNLIMITED


def make_sampler(space: sp.SearchSpace, n: int, seed: int = 0) -> optuna.samplers.BaseSampler:
    """The space's Optuna sampler, seeded (--sampler-seed): the same seed draws the same trials.
    TPE is multivariate with constant liar; with conditional params it also groups them (each
    group of params that appear together is modelled jointly)."""
    if space.sampler == "grid":
        return optuna.samplers.GridSampler(space.grid_values(), seed=seed)
    if space.sampler == "tpe":
        grouped = any(p.when for p in space.params.values())
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, n // 3)),
                                          **({"multivariate": True, "group": True} if grouped else {}))
    if space.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, n // 2)))
    return optuna.samplers.RandomSampler(seed=seed)


class _GridDoneNote:
    """Drops the warning Ray's OptunaSearch logs when Optuna's GridSampler, having handed out its
    last grid point, stops the study outside an objective ("`Study.stop` is supposed to be
    invoked inside an objective function or a callback."): the trial is told all the same, and
    the grid being done is what the search expects."""

    def filter(self, record) -> bool:
        return "Study.stop" not in str(record.msg)


_GRID_DONE = _GridDoneNote()


def make_searcher(plan: Plan, folder: Path):
    space = plan.space
    log = logging.getLogger(OptunaSearch.__module__)
    if _GRID_DONE not in log.filters:
        log.addFilter(_GRID_DONE)
    storage = optuna.storages.RDBStorage(f"sqlite:///{folder / OPTUNA_DB}")
    metric = space.metric if space.multi_objective else space.metric[0]
    mode = space.mode if space.multi_objective else space.mode[0]
    kwargs = dict(space=sp.define_by_run(space, plan.base), metric=metric, mode=mode,
                  sampler=make_sampler(space, plan.num_samples // len(plan.seeds), plan.sampler_seed),
                  study_name=plan.experiment, storage=storage, points_to_evaluate=space.first_trials or None)
    if space.scheduler:
        searcher = PrunedAwareOptunaSearch(max_t=plan.cfg.epochs, **kwargs)
    else:
        searcher = ResumableOptunaSearch(**kwargs)
    if len(plan.seeds) > 1:  # each sampled config once per seed; Optuna sees the mean
        searcher = study_records.SeedRecordingRepeater(searcher, repeat=len(plan.seeds), set_index=True)
    return AdjustableConcurrencyLimiter(searcher, plan.options.max_concurrent)


def make_scheduler(plan: Plan):
    asha = (plan.space.scheduler or {}).get("asha")
    if not asha:
        return None
    return tune.schedulers.ASHAScheduler(time_attr="training_iteration", max_t=plan.cfg.epochs,
                                         grace_period=asha["grace_period"],
                                         reduction_factor=asha["reduction_factor"])


def parent_tags(plan: Plan, argv: list[str]) -> dict[str, str]:
    return {"space": plan.space.name, "workload": plan.workload.name, "sampler": plan.space.sampler,
            "command": _redacted_command(argv), "git_commit": git_commit(),
            "ray_experiment_path": plan.experiment_path, "state_dir": str(plan.state_dir),
            "seeds": ",".join(map(str, plan.seeds)), "sampler_seed": str(plan.sampler_seed),
            "num_samples": str(plan.num_samples)}


def _redacted_command(argv: list[str]) -> str:
    out, hide = [], False
    for a in argv:
        if hide or a.startswith("--tracking-uri="):  # the URI alone, or after "--tracking-uri="
            a = redact_uri(a) if hide else "--tracking-uri=" + redact_uri(a.split("=", 1)[1])
        hide = a == "--tracking-uri"
        out.append(a)
    return "python tune/run_search.py " + shlex.join(out)


# Ray Tune settings a search runs under (read by Ray when the Tuner runs, not at import); a value
# the user already set in the environment wins.
TUNE_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",  # the classic progress table honours our columns
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    # Snapshot the experiment after every result, so a killed driver resumes with every trial it
    # started and each trial's snapshot names a checkpoint that still exists (num_to_keep below);
    # the snapshot is a few small files, cheap against an epoch.
    "TUNE_GLOBAL_CHECKPOINT_S": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


def use_tune_env() -> None:
    for key, value in TUNE_ENV.items():
        os.environ.setdefault(key, value)


def run_search(plan: Plan, argv: list[str]) -> int:
    use_fast_fail_http()
    use_tune_env()
    folder = plan.state_dir  # the driver's own files; trials' files go to plan.experiment_path
    folder.mkdir(parents=True, exist_ok=True)
    done = None
    if plan.options.resume:
        clean_up_killed_driver(folder)
        tracking = SearchTracking(plan.tracking_uri, plan.experiment)
        done = finished_search.stored_parent(tracking, plan.experiment_path)
        if done is not None and done.info.status == "FINISHED" and finished_search.nothing_new(plan, done):
            return finished_search.show_again(plan, tracking, done, folder)  # nothing stored changes
        available, session_dir = start_ray(plan)
    else:
        tracking, available, session_dir = start_ray_and_tracking(plan)
    try:
        record_driver(folder, joined_cluster=bool(plan.options.address), session_dir=session_dir)
        results, gpus = _fit(plan, argv, tracking, folder, available)
        if STOP.stopping:  # Ray Tune took the stop and returned from fit
            raise KeyboardInterrupt
        orphans.clear_closed_tag(tracking.client, tracking.experiment_id, tracking.parent_run_id)
        store = PerPointStore(tracking.client)  # the report's per-point downloads serve the race too
        if done is not None and done.info.status == "FINISHED":  # --race on a finished search
            finished_search.print_summary(tracking, done, folder)
            code = 0
        else:
            with STOP.deferred(), finished_search.kept_summary(tracking, folder):  # the summary is kept first
                code = report(plan, results, tracking, folder, store)
        if code == 0 and plan.options.race:
            from tune.race import run_race

            code = run_race(plan, results, tracking, folder, gpus, store)
        return code
    except KeyboardInterrupt:
        _close_after_stop(plan, tracking, folder)
        raise
    finally:
        adapters.shut_down_ray_at_once()


def _close_after_stop(plan: Plan, tracking: SearchTracking, folder: Path) -> None:
    """After a stop (a signal, Ctrl-C, the time budget): the parent run and every running child
    run end KILLED, tagged with what stopped them, and the study's running trials are set aside
    (WAITING) for --resume. Nothing here may hide the stop itself."""
    why = f"stopped by {STOP.reason or 'SIGINT'}"
    try:
        if tracking.parent_run_id is not None:
            n = orphans.close_running_runs(tracking.client, tracking.experiment_id, tracking.parent_run_id, why,
                                           parent=True)
            status = tracking.client.get_run(tracking.parent_run_id).info.status
            print(f"MLflow: {n} running trial run(s) ended KILLED ({why}); the search's parent run is {status}",
                  flush=True)
    except Exception as exc:  # noqa: BLE001
        print(f"warning: MLflow: could not end the running runs: {exc}", file=sys.stderr)
    try:
        orphans.set_running_trials_aside(folder / OPTUNA_DB, plan.experiment, why)
    except Exception as exc:  # noqa: BLE001
        print(f"warning: Optuna: could not set the study's running trials aside: {exc}", file=sys.stderr)


def _fit(plan: Plan, argv: list[str], tracking: SearchTracking, folder: Path, available: float) -> tuple[Any, float]:
    """Run (or resume) the search's trials under its MLflow parent run; return Ray's results and
    the GPU share per trial. A failure or Ctrl-C ends the parent run as FAILED or KILLED."""
    try:
        study_records.RUNS.use(tracking, plan.space.metric)
        try:
            nodes = check_shared_storage(plan.storage_location)
        except StorageError as exc:
            raise SearchError(str(exc)) from None
        gpus = plan.resolve_gpus(available)
        where = (f"GPUs: {gpus:g} GPU + {plan.cpus:g} CPU per trial ({available:g} GPUs in the cluster)"
                 if gpus > 0 else f"CPUs: {plan.cpus:g} CPU per trial (no GPU in the cluster)")
        verb = "resuming" if plan.options.resume else "search"
        print(f"{verb} {plan.experiment}: {plan.num_samples} trials of {plan.space.name} on {plan.workload.name}; "
              f"trials run on {where}", flush=True)
        print(f"  trial results: {plan.experiment_path}" + (f" (shared by all {nodes} nodes)" if nodes > 1 else "")
              + f"; search state: {folder}", flush=True)
        if plan.options.resume and tracking.resume_parent(plan.experiment_path):
            _close_orphans(tracking, folder, plan)
            tuner = tune.Tuner.restore(plan.experiment_path, trainable=tune.with_resources(train_trial, _resources(plan, gpus)),
                                       resume_unfinished=True, resume_errored=True)
            _use_log_models(tuner, plan)
            use_max_concurrent(tuner, plan.options.max_concurrent)
        else:
            if plan.options.resume:
                raise SearchError(f"--resume: no MLflow parent run of {plan.experiment_path} in "
                                  f"{redact_uri(plan.tracking_uri)}; "
                                  f"pass the --tracking-uri the search used")
            tracking.start_parent(f"{plan.space.name} on {plan.workload.name} {time.strftime('%Y-%m-%d %H:%M')}",
                                  parent_tags(plan, argv), params={k: v for k, v in plan.base.items()})
            tuner = build_tuner(plan, tracking, folder, gpus)
        with STOP.during_fit():
            return tuner.fit(), gpus
    except KeyboardInterrupt:
        tracking.finish_parent("KILLED")
        raise
    except Exception:
        tracking.finish_parent("FAILED")
        raise


def _use_log_models(tuner: tune.Tuner, plan: Plan) -> None:
    """A resumed search's --log-models (it may change on resume): the trial-tracking callback Ray
    Tune restores from its snapshot keeps the first run's choice, so it is given the new one."""
    run_config = adapters.tuner_run_config(tuner)
    for callback in (run_config.callbacks or []) if run_config is not None else []:
        if isinstance(callback, TrialTracking):
            callback.log_models = plan.options.log_models == "finished"


def _close_orphans(tracking: SearchTracking, folder: Path, plan: Plan) -> None:
    """At --resume, before Ray Tune continues: every run of the search still RUNNING has no live
    trial behind it (one driver per search, and this one has not started any): end it KILLED. A
    trial that Ray Tune continues opens its own run again. The study's trials a stop set aside
    are taken back."""
    n = orphans.close_running_runs(tracking.client, tracking.experiment_id, tracking.parent_run_id,
                                   orphans.orphan_reason("its driver was gone: killed, or its node lost"))
    if n:
        print(f"closed {n} run(s) left RUNNING by a driver that is gone (ended KILLED, tagged "
              f"{orphans.KILLED_TAG}; a trial that continues takes its run back)", flush=True)
    orphans.take_trials_back(folder / OPTUNA_DB, plan.experiment)


def build_tuner(plan: Plan, tracking: SearchTracking, folder: Path, gpus: float) -> tune.Tuner:
    space = plan.space
    meta = {"seeds": plan.seeds, "threads": max(1, int(plan.cpus)), "space": space.name,
            "checkpoint_every_s": plan.checkpoint_every, "searched": list(space.params), "gpu_share": gpus}
    constants = {k: v for k, v in plan.base.items() if k not in space.params}
    if gpus == 0 and constants.get("device", "auto") == "auto":
        constants["device"] = "cpu"  # a 0-GPU trial on a GPU box still sees every GPU (ray#54868)
    multi = space.multi_objective
    reporter = ConditionalParamsReporter(parameter_columns=list(space.params), metric_columns=PROGRESS_COLUMNS,
                                         max_report_frequency=15)
    return tune.Tuner(
        tune.with_resources(train_trial, _resources(plan, gpus)),
        param_space={**constants, META_KEY: meta},
        tune_config=tune.TuneConfig(
            metric=None if multi else space.metric[0], mode=None if multi else space.mode[0],
            search_alg=make_searcher(plan, folder), scheduler=make_scheduler(plan),
            num_samples=plan.num_samples,  # --max-concurrent: the searcher's AdjustableConcurrencyLimiter
            reuse_actors=True,  # later trials skip the worker start-up and imports (benchmarks/search_overhead.py)
            trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(
            name=plan.experiment, storage_path=plan.storage_location,
            failure_config=tune.FailureConfig(max_failures=2),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            progress_reporter=reporter, verbose=1,
            callbacks=[TrialTracking(tracking, space.name, searched=list(space.params),
                                     log_models=plan.options.log_models == "finished")]))


def _resources(plan: Plan, gpus: float) -> dict[str, float]:
    return {"cpu": plan.cpus, "gpu": gpus}


@dataclass
class BestTrialView:
    """What Ray's current-best-trial line reads of a trial (its id, and its last result with the
    config), each searched parameter the trial lacks set to NOT_SEARCHED."""

    trial_id: str
    last_result: dict


class ConditionalParamsReporter(adapters.best_trial_reporter()):
    """The progress table and current-best-trial line for a space with conditional parameters.

    Ray looks up each parameter column in the best trial's config without a default, so a leading
    trial without a conditional parameter (bilaw_tpe's trades_beta for a plain BiLAW trial) stops
    the search with a KeyError; here it reads NOT_SEARCHED. The table already shows such a cell blank."""

    def best_trial_view(self, trial, metric: str) -> tuple[BestTrialView, str]:
        filled = {**{name: NOT_SEARCHED for name in self.parameter_columns}, **trial.last_result.get("config", {})}
        return BestTrialView(trial.trial_id, {**trial.last_result, "config": filled}), metric
