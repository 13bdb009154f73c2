"""A finished search resumed: nothing stored changes. `--resume` of a search whose parent run
FINISHED (and, with `--race`, whose same race finished) does not start Ray: it prints the summary
the search printed when it ended (kept as SUMMARY_FILE in its state folder and on its parent run;
the race's race.txt) and, with `--register`, registers the winner's model that is already logged
(once: a version of that run already registered is reported, not made again). No model is logged
again and no run's end time moves. A new `--race` on a finished search runs that race."""
from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from typing import Any, Iterator

from tune.plan import Plan
from tune.tracking.runs import PARENT_TAG, SearchTracking, find_runs
from tune.tracking.runs_view import SHARED_VIEW_TAG

SUMMARY_FILE = "summary.txt"
RACE_ARTIFACT = "race.txt"       # a race's rounds and outcome (tune/race.py)
RACE_ASKED_TAG = "race_asked"    # "K=2 seeds=5" on the parent of a search whose race finished
RACE_TAG = "race"                # "true" on every race run
ROUND_TAG = "race_round"         # 1, 2, ...
CONFIG_TAG = "race_config"       # the config's label, e.g. "weight_net=64"
NOTE_TAG = "mlflow.note.content"  # a run's description: MLflow's UI shows it, as Markdown, on the run's page
NOTE_LIMIT = 8000                 # the longest tag value MLflow stores


def race_asked(k: int, seeds: int) -> str:
    """What a race was asked (--race K --race-seeds N), as its parent's RACE_ASKED_TAG."""
    return f"K={k} seeds={seeds}"


def stored_parent(tracking: SearchTracking, experiment_path: str) -> Any:
    """The most recent parent run of the search stored at `experiment_path`, or None."""
    runs = find_runs(tracking.client, [tracking.experiment_id], {"tags.ray_experiment_path": experiment_path},
                     order_by=["attributes.start_time DESC"])
    return next((run for run in runs if PARENT_TAG not in run.data.tags), None)


class _Tee(io.TextIOBase):
    def __init__(self, out) -> None:
        self.out, self.kept = out, io.StringIO()

    def write(self, text: str) -> int:
        self.kept.write(text)
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()


@contextlib.contextmanager
def kept_summary(tracking: SearchTracking, folder: Path) -> Iterator[None]:
    """Keep what the search's report prints (stdout) as SUMMARY_FILE, in `folder` and on the
    parent run, for a later --resume to print again."""
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        yield
    text = tee.kept.getvalue().strip("\n")
    if not text:
        return
    path = Path(folder) / SUMMARY_FILE
    try:
        path.write_text(text + "\n")
        if tracking.parent_run_id is not None:
            tracking.client.log_artifact(tracking.parent_run_id, str(path))
            describe_parent(tracking, folder)
    except Exception as exc:  # noqa: BLE001 - the summary was printed; keeping it is a convenience
        print(f"warning: could not keep the search's summary: {exc}", file=sys.stderr)


def describe_parent(tracking: SearchTracking, folder: Path) -> None:
    """Set the parent run's description (shown on its page in MLflow's UI) to the search's story
    in Markdown: links to the winner's run and logged model, the summary the search printed
    (ranked configs with their intervals, the paired verdict, the winner) and the race's outcome."""
    client, parent_id = tracking.client, tracking.parent_run_id
    parent = client.get_run(parent_id)
    tags, exp = parent.data.tags, parent.info.experiment_id
    lines = [f"## {parent.info.run_name}", "",
             f"Space `{tags.get('space', '?')}` on workload `{tags.get('workload', '?')}`, seeds {tags.get('seeds', '?')}; "
             f"command: `{tags.get('command', '?')}`", ""]
    if SHARED_VIEW_TAG + parent_id in client.get_experiment(exp).tags:
        lines.append(f"- the trials, ranked: [runs table](#/experiments/{exp}/runs?viewStateShareKey={parent_id})")
    winner = tags.get("winner_run_id")
    if winner:
        lines.append(f"- winner: [{tags.get('winner_run_name', winner)}](#/experiments/{exp}/runs/{winner})")
        for out in client.get_run(winner).outputs.model_outputs or []:
            lines.append(f"- winner's logged model: [{out.model_id}](#/experiments/{exp}/models/{out.model_id}) "
                         f"(`models:/{out.model_id}`)")
    if tags.get("race_winner"):
        lines.append(f"- race winner: {tags['race_winner']} (separated: {tags.get('race_separated', '?')})")
    for title, name in (("Summary", SUMMARY_FILE), ("Race", RACE_ARTIFACT)):
        path = Path(folder) / name
        if path.exists():
            lines += ["", f"### {title}", "", "```", path.read_text().rstrip("\n"), "```"]
    text = "\n".join(lines)
    if len(text) > NOTE_LIMIT:  # MLflow refuses a longer tag value
        cut = f"\n... (cut here: the whole text is the run's artifacts {SUMMARY_FILE} and {RACE_ARTIFACT})"
        kept = text[:NOTE_LIMIT - len(cut) - 4]
        text = kept + cut + ("\n```" if kept.count("```") % 2 else "")
    client.set_tag(parent_id, NOTE_TAG, text)


def print_summary(tracking: SearchTracking, parent: Any, folder: Path) -> None:
    """The summary the search printed when it finished (or, for a search from before it was
    kept, its parent run's best metric and winner)."""
    path = Path(folder) / SUMMARY_FILE
    end = parent.info.end_time
    import time

    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(end / 1000)) if end else "?"
    print(f"this search finished on {when} (MLflow parent run {parent.info.run_id}); nothing to resume, nothing "
          f"changed. Its summary:")
    if path.exists():
        print(path.read_text().rstrip("\n"))
        return
    best = {k: v for k, v in parent.data.metrics.items() if k.startswith(("best_", "winner_"))}
    for key, value in sorted(best.items()):
        print(f"  {key}: {value:.4f}")
    if "winner_run_name" in parent.data.tags:
        print(f"  winner: {parent.data.tags['winner_run_name']} (run {parent.data.tags.get('winner_run_id')})")


def nothing_new(plan: Plan, parent: Any) -> bool:
    """A resume of the finished search of `parent` asks for no new work: no --race, or the same
    --race (K and --race-seeds) as a race that finished."""
    k = plan.options.race
    return k is None or parent.data.tags.get(RACE_ASKED_TAG) == race_asked(k, plan.options.race_seeds)


def show_again(plan: Plan, tracking: SearchTracking, parent: Any, folder: Path) -> int:
    """--resume of a finished search (see the module docstring)."""
    tracking.parent_run_id = parent.info.run_id
    print_summary(tracking, parent, folder)
    race = Path(folder) / RACE_ARTIFACT
    if plan.options.race and race.exists():
        print("\nits race, as it finished:\n" + race.read_text().rstrip("\n"))
    if plan.options.register:
        return register_logged(plan, tracking, parent)
    return 0


def _logged_model(tracking: SearchTracking, run_id: str) -> Any:
    models = tracking.client.search_logged_models(experiment_ids=[tracking.experiment_id],
                                                  filter_string=f"source_run_id = '{run_id}'")  # a hex id
    ready = [m for m in models if m.name == "model"]
    return ready[0] if ready else None


def logged_model_uri(tracking: SearchTracking, run_id: str) -> str | None:
    """The URI of the best model already logged with run `run_id` (tune/tracking/model_store.py), or None."""
    model = _logged_model(tracking, run_id)
    return None if model is None else model.model_uri


def registered_version(tracking: SearchTracking, run_id: str, name: str) -> str | None:
    """The version of `name` in the Model Registry made from run `run_id`, or None."""
    for version in tracking.client.search_model_versions(f"run_id = '{run_id}'"):
        if version.name == name:
            return version.version
    return None


def register_logged(plan: Plan, tracking: SearchTracking, parent: Any) -> int:
    """Register the winner's model already logged with its run; an existing version of that run
    under the experiment's name is reported, not registered again."""
    from tune.tracking.model_store import register

    run_id = parent.data.tags.get("winner_run_id")
    if not run_id:
        print("error: --register: this finished search has no winner run (no trial finished)", file=sys.stderr)
        return 1
    version = registered_version(tracking, run_id, plan.experiment)
    if version is not None:
        print(f"already registered: models:/{plan.experiment}/{version} (run {run_id})")
        return 0
    model = _logged_model(tracking, run_id)
    if model is None:
        print(f"error: --register: the winner's run {run_id} has no logged model (the search ran with "
              f"--log-models none); nothing was registered", file=sys.stderr)
        return 1
    tags = {"run_id": run_id, "space": plan.space.name, "workload": plan.workload.name}  # register adds the rest
    version = register(tracking.uri, model.model_uri, plan.experiment, tags)
    print(f"registered: models:/{plan.experiment}/{version.version} (the model logged with run {run_id})")
    return 0
