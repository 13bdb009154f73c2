"""`python tune/study.py [--dataset fashion_mnist] [--seeds 0,1,2]`: does BiLAW beat AT? The
controlled comparison behind the paper's headline (Fashion-MNIST, FC1, l-inf 0.1, 100 epochs:
BiLAW 70.6 PGD / 66.7 AA against AT 68.7 / 66.3), as one command.

Four arms, each trained per seed on the paper's schedule (the workload's config):
- `at`: AT under the paper's protocol, on every training image (60,000 for Fashion-MNIST);
- `at_58k`: AT on exactly BiLAW's training images (both validation sets held out);
- `bilaw`: BiLAW with the default meta-optimiser;
- `bilaw_frozen`: BiLAW's weight net at its seeded initialisation, never meta-trained (is it
  the learning, or any smooth reweighting by margin?).

Every run is a folder OUT/study/<workload>/<arm>/seed<s> (resumed from its checkpoint when
interrupted, reused when finished with the same config: `tune/reproduce.py`'s runs) and an MLflow
run tagged `reproduce_key`. Then each best state's AutoAttack is extended to the first
`--aa-points` test points, the same points for every arm (`study_aa.npz` in the run folder; the
training's own AutoAttack points are reused; AutoAttack's own sanity checks on them are kept in
its `warnings` and listed under the table), and the table is printed and written to
OUT/study_<dataset>.md: each arm's mean and 95% interval over seeds at the best state (held-out
PGD) and the last, and BiLAW minus each control on the same points: McNemar per seed and the
paired interval over seeds (`tune/results/paired.py`). Split the runs over two processes with --arms or
--seeds (each run is its own folder); `--no-train` prints the table of what is stored.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python tune/study.py`
    import _script_path  # noqa: F401  (puts this repository first on sys.path)

import numpy as np  # noqa: E402

from bilaw.config.train_config import ConfigError, parse_overrides  # noqa: E402
from bilaw.data.datasets import MissingDatasetError  # noqa: E402
from bilaw.file_errors import DamagedFileError  # noqa: E402
from bilaw.registry import unknown_name_message  # noqa: E402
from tune import spaces as sp  # noqa: E402
from tune.reproduce import (Job, ReproduceError, Row, Setting, add_job, check_finished, parse_seeds,  # noqa: E402
                            run_job)
from tune.study_autoattack import AA_NAME, autoattack_checks, check_note, study_autoattack  # noqa: E402
from tune.tracking.runs import TrackingError, absolute_tracking_uri, check_tracking_uri, redact_uri  # noqa: E402

GROUP = "study"
ARMS: dict[str, Row] = {
    "at": Row("AT (all training images)", "at", {"baselines_full_train": True}, name="at"),
    "at_58k": Row("AT (BiLAW's training images)", "at", {"baselines_full_train": False}, name="at_58k"),
    "bilaw": Row("BiLAW", "bilaw", {}, name="bilaw"),
    "bilaw_frozen": Row("BiLAW frozen (untrained net)", "bilaw_frozen", {}, name="bilaw_frozen"),
}
TREATMENT = "bilaw"
# dataset -> (workload, what the table calls it); digits and smoke are quick checks of the command
WORKLOADS = {"fashion_mnist": ("fmnist_fc1_linf", "Fashion-MNIST, FC1, l-inf 0.1"),
             "digits": ("digits", "digits, FC1, l-inf 0.2 (embedded; a quick check)"),
             "smoke": ("smoke", "digits smoke schedule (a check that the command runs)")}
# AutoAttack's test points for every arm. Sized so that BiLAW minus AT on them has a 95% interval
# of about 1 point over three seeds (docs/results.md, "Does BiLAW beat AT?"); the table prints
# the half-width the measured disagreement gives.
AA_POINTS = 2000
Z95 = 1.959964


@dataclass(frozen=True)
class Metric:
    name: str
    key: str          # per-point array: per_point.npz `test_*`, or "aa" for the study's AutoAttack
    state: str        # "best" or "last"


# "{pgd}" is the evaluation's PGD (PGD-20 at the paper's schedule); "pgd_on_aa" is that PGD on
# exactly AutoAttack's points, so the drop from PGD to AutoAttack compares like with like.
METRICS = [Metric("clean", "test_clean", "best"), Metric("{pgd}", "test_pgd", "best"),
           Metric("{pgd} on AA's points", "pgd_on_aa", "best"), Metric("AA", "aa", "best"),
           Metric("clean", "test_last_clean", "last"), Metric("{pgd}", "test_last_pgd", "last")]


class StudyError(ValueError):
    """A bad argument, found before any training."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="study.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion_mnist",
                   help=f"{', '.join(WORKLOADS)} (default fashion_mnist; digits and smoke are quick checks)")
    p.add_argument("--seeds", default="0,1,2", help="a count N (seeds 0..N-1) or a list '0,2' (default 0,1,2)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated arms (default all: {', '.join(ARMS)})")
    p.add_argument("--epochs", type=int, help="a reduced schedule (default the workload's: 100 for fashion_mnist)")
    p.add_argument("--aa-points", type=int, default=AA_POINTS,
                   help=f"AutoAttack on the first N test points of every arm (default {AA_POINTS})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key for every run (e.g. device=cuda)")
    p.add_argument("--out", default="results", help="folder for the runs and the table (default ./results)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlruns.db in this folder)")
    p.add_argument("--experiment", default="bilaw_vs_at", help="MLflow experiment (default bilaw_vs_at)")
    p.add_argument("--no-train", action="store_true", help="train nothing: the table of the stored runs")
    p.add_argument("--keep", metavar="DIR",
                   help="copy each finished run's small files (config, metrics, per-point results, AutoAttack "
                        "points, weight maps) to DIR/<run key>, e.g. docs/results/runs, to commit them")
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    return p


def _names(text: str, allowed: dict, flag: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        if n not in allowed:
            raise StudyError(f"{flag} {n!r}: " + unknown_name_message(flag.lstrip("-").rstrip("s"), n, allowed))
    if not names:
        raise StudyError(f"{flag} {text!r}: name at least one of {', '.join(allowed)}")
    return names


def plan_jobs(args) -> list[Job]:
    """Every (arm, seed) run, with its config validated, before anything trains."""
    if args.dataset not in WORKLOADS:
        raise StudyError("--dataset " + unknown_name_message("dataset", args.dataset, WORKLOADS))
    if args.epochs is not None and args.epochs < 1:
        raise StudyError(f"--epochs {args.epochs}: must be >= 1")
    if args.aa_points < 0:
        raise StudyError(f"--aa-points {args.aa_points}: must be >= 0")
    workload, label = WORKLOADS[args.dataset]
    arms = _names(args.arms, ARMS, "--arms")
    seeds = parse_seeds(args.seeds)
    base = dict(sp.load_workloads()[workload].config)
    overrides = parse_overrides(args.set)
    if "seed" in overrides:
        raise StudyError("--set seed=...: the seeds are --seeds")
    setting = Setting(workload, base.get("model", "fc1"), base.get("norm", "linf"), label)
    jobs, errors = [], []
    for arm in arms:
        row = ARMS[arm]
        for seed in seeds:
            data = {**base, **overrides, "method": row.method, **row.overrides, "seed": seed}
            add_job(jobs, errors, Job(GROUP, setting, row, seed, None), data, args.epochs)
    if errors:
        raise ConfigError(errors)
    return jobs


# ----- the table ---------------------------------------------------------------------------------------
def load_points(jobs: list[Job], out: Path, aa_points: int, log=print) -> dict[tuple[str, int], dict[str, Any]]:
    """(arm, seed) -> per-point arrays (METRICS' keys) and final metrics, for each finished run."""
    from bilaw.eval.per_point import PER_POINT_NAME
    from bilaw.runs.saved import read_metrics

    found = {}
    for job in jobs:
        folder = out / job.key
        if not (folder / "metrics.json").exists() or not (folder / PER_POINT_NAME).exists():
            continue
        with np.load(folder / PER_POINT_NAME) as npz:
            arrays = {k: npz[k] for k in npz.files}
        if aa_points:
            aa = study_autoattack(folder, aa_points, log)
            if aa is not None and len(aa) == min(aa_points, len(arrays["test_clean"])):
                arrays["aa"] = aa
                arrays["pgd_on_aa"] = arrays["test_pgd"][:len(aa)]
        metrics = read_metrics(folder)
        found[(job.row.name, job.seed)] = {"points": arrays, "final": metrics["final"],
                                           "status": weight_status(metrics["history"], job.cfg.burn_in_epochs),
                                           "aa_checks": autoattack_checks(folder, metrics["final"], aa_points)}
    return found


def weight_status(history: list[dict[str, Any]], burn_in: int) -> str:
    """The run's weight status under today's thresholds, from its stored history ("-" for a run
    without a weight net)."""
    from bilaw.methods.weight_health import weight_health

    if not any("weight_net_drift" in h for h in history):
        return "-"
    return weight_health(history, burn_in).get("weight_status") or "-"


KEPT_FILES = ("config.yaml", "metrics.json", "per_point.npz", AA_NAME, "weight_map.npz")


def keep_finished(jobs: list[Job], out: Path, keep: Path) -> list[Path]:
    """Copy the small files of every finished run (the ones the table reads, without checkpoints)
    to keep/<run key>; returns the folders written. A copy there is reused like the run itself."""
    import shutil

    written = []
    for job in jobs:
        folder = out / job.key
        if not (folder / "metrics.json").exists():
            continue
        target = keep / job.key
        target.mkdir(parents=True, exist_ok=True)
        for name in KEPT_FILES:
            if (folder / name).exists():
                shutil.copyfile(folder / name, target / name)
        written.append(target)
    return written


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def arm_cell(values: list[float], points: int) -> str:
    """Mean accuracy in percent with its 95% interval (t over seeds, Wilson for one run)."""
    from tune.results.uncertainty import accuracy_interval

    if not values:
        return "–"
    mean = sum(values) / len(values)
    interval = accuracy_interval(values, points)
    return _pct(mean) if interval is None else f"{_pct(mean)} [{_pct(interval[0])}, {_pct(interval[1])}]"


def paired_cell(comparison) -> str:
    from tune.results.paired import Paired

    if not isinstance(comparison, Paired):
        return "–"
    text = f"{100 * comparison.difference:+.2f} [{100 * comparison.low:+.2f}, {100 * comparison.high:+.2f}]"
    return text + (f" p={comparison.p_value:.2g}" if comparison.p_value is not None else "")


def needed_points(disagreement: float, half_width: float = 0.01, seeds: int = 1) -> int:
    """Test points for a paired 95% interval of about `half_width` when the two runs disagree on
    a fraction `disagreement` of the points and differ little: z^2 d / (h^2 seeds)."""
    return math.ceil(Z95 ** 2 * disagreement / (half_width ** 2 * seeds))


def study_table(jobs: list[Job], found: dict, aa_points: int, title: str) -> str:
    from tune.results.paired import compare

    arms = list(dict.fromkeys(j.row.name for j in jobs))
    seeds = sorted({j.seed for j in jobs})
    pgd = f"PGD-{jobs[0].cfg.eval_pgd_steps}"
    name = lambda m: m.name.format(pgd=pgd)  # noqa: E731
    epochs = sorted({j.cfg.epochs for j in jobs})
    lines = [f"# Does BiLAW beat AT? {title}", "",
             f"Seeds {', '.join(map(str, seeds))}; {'/'.join(map(str, epochs))} epochs. Clean and {pgd} on every "
             f"test point, AutoAttack on the first {aa_points} (the same points for every arm). Accuracies in %, "
             "mean over the seeds stored with its 95% interval (t over seeds; Wilson for one run). Paired rows: "
             "BiLAW minus the control on the same points, in points, with its 95% interval (one seed: McNemar's "
             "exact test and p; over seeds: the wider of the t-interval and the paired bootstrap).", ""]
    for state, title_state in (("best", "Best state (held-out PGD)"), ("last", "Last epoch's state")):
        metrics = [m for m in METRICS if m.state == state]
        head = ["arm"] + [name(m) for m in metrics] + ["seeds stored", "weights (per seed)"]
        lines += [f"## {title_state}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for arm in arms:
            runs = {s: found[(arm, s)] for s in seeds if (arm, s) in found}
            cells = [ARMS[arm].label]
            for m in metrics:
                got = [r["points"][m.key] for r in runs.values() if m.key in r["points"]]
                cells.append(arm_cell([float(np.mean(g)) for g in got], len(got[0]) if got else 0))
            cells.append(", ".join(map(str, runs)) or "–")
            cells.append(", ".join(r["status"] for r in runs.values()) or "–")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if TREATMENT not in arms:
            continue
        head = ["BiLAW minus", "metric"] + [f"seed {s}" for s in seeds] + ["over seeds"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for control in (a for a in arms if a != TREATMENT):
            for m in metrics:
                a = {s: found[(TREATMENT, s)]["points"][m.key] for s in seeds
                     if (TREATMENT, s) in found and m.key in found[(TREATMENT, s)]["points"]}
                b = {s: found[(control, s)]["points"][m.key] for s in seeds
                     if (control, s) in found and m.key in found[(control, s)]["points"]}
                per_seed = [paired_cell(compare({s: a[s]}, {s: b[s]}, True)) if s in a and s in b else "–"
                            for s in seeds]
                both = set(a) & set(b)
                over = paired_cell(compare(a, b, True)) if len(both) >= 2 else "–"
                lines.append("| " + " | ".join([ARMS[control].label, name(m), *per_seed, over]) + " |")
        lines.append("")
    lines += _aa_size_note(found, seeds, aa_points)
    lines += check_note(found, arms, seeds)
    return "\n".join(lines)


def _aa_size_note(found: dict, seeds: list[int], aa_points: int) -> list[str]:
    """How wide the AutoAttack comparison can be: the PGD-20 disagreement of BiLAW and AT on all
    test points (seed by seed) turned into the points a 1-point interval needs."""
    rates = [float(np.mean(found[(TREATMENT, s)]["points"]["test_pgd"] != found[("at", s)]["points"]["test_pgd"]))
             for s in seeds if (TREATMENT, s) in found and ("at", s) in found]
    if not rates or not aa_points:
        return []
    d = sum(rates) / len(rates)
    half = Z95 * math.sqrt(d / aa_points)
    return [f"AutoAttack's size: BiLAW and AT disagree under PGD-20 on {100 * d:.1f}% of the test points "
            f"({len(rates)} seed{'s' if len(rates) > 1 else ''}); on {aa_points} points that gives a per-seed "
            f"McNemar half-width of about {100 * half:.2f} points ({100 * half / math.sqrt(3):.2f} over three seeds' "
            f"points); a 1-point per-seed half-width needs {needed_points(d)} points, over three seeds "
            f"{needed_points(d, seeds=3)}.", ""]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        jobs = plan_jobs(args)
        out = Path(args.out)
        if args.dry_run:
            for j in jobs:
                print(f"{j.key:<45} {j.cfg.epochs} epochs -> {out / j.key}")
            return 0
        check_finished(jobs, out)
        if not args.no_train:
            from tune.plan import check_data

            check_data(jobs[0].cfg)
        uri = absolute_tracking_uri(args.tracking_uri)
        check_tracking_uri(uri)
    except (StudyError, ReproduceError, ConfigError, MissingDatasetError, DamagedFileError, TrackingError,
            sp.SpaceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.no_train:
        from tune.tracking.runs import SearchTracking

        tracking = SearchTracking(uri, args.experiment)
        print(f"study on {args.dataset}: {len(jobs)} runs; MLflow {redact_uri(uri)}, experiment {args.experiment}",
              flush=True)
        try:
            for job in jobs:
                run_job(job, out / job.key, uri, tracking.experiment_id)
        except (ConfigError, DamagedFileError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    found = load_points(jobs, out, args.aa_points)
    text = study_table(jobs, found, args.aa_points, WORKLOADS[args.dataset][1])
    path = out / f"study_{args.dataset}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    print(text)
    print(f"wrote {path}")
    if args.keep:
        for folder in keep_finished(jobs, out, Path(args.keep)):
            print(f"kept {folder}")
    return 0


if __name__ == "__main__":
    from tune.process_exit import exit_now

    exit_now(main())
