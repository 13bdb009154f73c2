"""A list of whole configs run once each as Ray trials, each tracked as an MLflow run: the
machinery of the re-runs of a best config (tune/rerun_best.py) and of a search's race
(tune/race.py). Ray must be up. Also the trial names and progress columns every Tuner of the
project uses."""
from __future__ import annotations

from typing import Any

from ray import tune

from bilaw.metrics import BEST_VAL_PGD_ACC, VAL_CLEAN_ACC, VAL_PGD_ACC
from tune.tracking.runs import SearchTracking
from tune.tracking.trial_callback import TrialTracking
from tune.trainable import META_KEY, VARIANT_KEY, train_trial

PROGRESS_COLUMNS = ["epoch", VAL_CLEAN_ACC, VAL_PGD_ACC, BEST_VAL_PGD_ACC, "weight_std"]


def trial_name(trial) -> str:
    """Short trial names: Ray's default folder name spells out the whole config."""
    return f"trial_{trial.trial_id}"


def unfinished_trials(results: Any) -> int:
    """Trials of a ResultGrid that neither finished nor failed: what a Ctrl-C leaves (Ray Tune
    catches the first one, ends its run gracefully and returns from fit)."""
    return len(results) - results.num_terminated - results.num_errors


def run_variants(variants: list[dict[str, Any]], *, meta: dict[str, Any], resources: dict[str, float],
                 tracking: SearchTracking, tags: dict[str, str], name: str, storage_path: str,
                 searched: list[str] | tuple[str, ...] = (), space: str = "",
                 max_concurrent: int | None = None, variant_tags: list[dict[str, str]] | None = None) -> Any:
    """Run each of `variants` (TrainConfig values, the seed included) once; every trial's MLflow
    run carries `tags` (and its own `variant_tags[i]`) and is a child of `tracking`'s parent run
    where it has one. Returns Ray's ResultGrid; a result's config[VARIANT_KEY] says which variant."""
    tuner = tune.Tuner(
        tune.with_resources(train_trial, resources),
        param_space={META_KEY: {**meta, "variants": variants, "variant_tags": variant_tags or []}, VARIANT_KEY: tune.grid_search(list(range(len(variants))))},
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, reuse_actors=True,
                                    trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(name=name, storage_path=storage_path,
                                  failure_config=tune.FailureConfig(max_failures=2),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2), verbose=1,
                                  progress_reporter=tune.CLIReporter(metric_columns=PROGRESS_COLUMNS,
                                                                     max_report_frequency=15),
                                  callbacks=[TrialTracking(tracking, space, tags=tags, searched=list(searched))]))
    from tune.stopping import STOP

    with STOP.during_fit():  # a stop signal ends the fit as Ctrl-C does
        return tuner.fit()
