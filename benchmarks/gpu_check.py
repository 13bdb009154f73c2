"""The project's one prepared GPU check: every GPU code path, timed and compared, in one short
device call (docs/performance.md, "The GPU check", has the command and what each file means).

    PYTHONPATH=. python3 benchmarks/gpu_check.py OUT_DIR          # on the GPU machine, <= 5 minutes
    python benchmarks/gpu_check.py OUT_DIR --dry-run               # the same steps on the CPU, tiny

It needs only bilaw/ and torch, torchvision, scikit-learn, PyYAML and tqdm (no Ray, Optuna,
MLflow or pyautoattack: the lent machine has none of them). Each step runs in its own process
under a time box, and the next runs whatever happened; OUT_DIR gets, directly inside it:
environment.json, checks.json, step_cost.json, packing.json (one per step), gpu_check.log (every
step's output) and summary.md + summary.json (the table of what `SUMMARY` names).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STEPS = {"environment": 20, "checks": 90, "step_cost": 90, "packing": 100}  # time box, seconds (GPU run)
DRY_STEPS = {"environment": 30, "checks": 90, "step_cost": 60, "packing": 120}
PACK_N = (1, 2, 4, 8)
# Summary rows: (label, step file, path of keys into its JSON).
SUMMARY = [
    ("torch", "environment", ("torch",)), ("CUDA", "environment", ("cuda",)),
    ("device", "environment", ("device_name",)), ("device memory GiB", "environment", ("device_memory_gib",)),
    *[(f"check {c}", "checks", ("results", c, "ok")) for c in ("bilaw_run", "amp_run", "channels_last", "jvp_hypergrad")],
    ("gpu-marked tests", "checks", ("pytest", "outcome")),
    *[(f"step ms {m} {v}", "step_cost", ("fp32", m, v, "median_ms")) for m in ("fc1", "tiny_cnn", "small_cnn")
      for v in ("at", "bilaw")],
    *[(f"ratio {m} bilaw/at", "step_cost", ("fp32", m, "bilaw", "ratio_to_at")) for m in ("fc1", "tiny_cnn", "small_cnn")],
    *[(f"amp+cl step ms {m} bilaw", "step_cost", ("amp_channels_last", m, "bilaw", "median_ms"))
      for m in ("tiny_cnn", "small_cnn")],
    ("compile step ms small_cnn at", "step_cost", ("compile", "small_cnn", "at", "median_ms")),
    ("peak MiB small_cnn bilaw", "step_cost", ("fp32", "small_cnn", "bilaw", "peak_mem_mb")),
    *[(f"packing N={n} trials/h", "packing", ("runs", str(n), "trials_per_hour")) for n in PACK_N],
    *[(f"packing N={n} speed-up", "packing", ("runs", str(n), "speedup")) for n in PACK_N],
]


def _write(out: Path, step: str, data: dict[str, Any]) -> None:
    (out / f"{step}.json").write_text(json.dumps(data, indent=2, default=str))


def step_environment(out: Path, dry: bool, save) -> dict[str, Any]:
    import platform

    import torch

    cuda = torch.cuda.is_available()
    props = torch.cuda.get_device_properties(0) if cuda else None
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": cuda,
            "device_name": props.name if props else platform.processor() or platform.machine(),
            "device_memory_gib": round(props.total_memory / 2 ** 30, 1) if props else None,
            "device_count": torch.cuda.device_count(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "dry_run": dry}


GPU_TESTS = ["tests/bilaw/test_models.py", "tests/bilaw/eval/test_evaluate.py", "tests/bilaw/data/test_data.py", "tests/bilaw/eval/test_attacks.py",
             "tests/bilaw/test_gpu_memory.py", "tests/test_gpu_check.py"]


def step_checks(out: Path, dry: bool, save) -> dict[str, Any]:
    import importlib.util

    import gpu_checks

    device = "cpu" if dry else "cuda"
    results = {}
    for name, check in gpu_checks.CHECKS.items():
        start = time.perf_counter()
        try:
            results[name] = check(device, dry=dry)
        except Exception as exc:  # recorded, and the other checks still run
            results[name] = {"check": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        results[name]["seconds"] = round(time.perf_counter() - start, 2)
        print(name, json.dumps(results[name], default=str), flush=True)
        save({"device": device, "results": results})
    pytest = {"outcome": "pytest not installed"}
    if importlib.util.find_spec("pytest") is not None:
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *GPU_TESTS]
        if dry:
            cmd += ["--co"]  # collect only: the CPU has no gpu-marked test to run
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=100)
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        print("\n".join(tail), flush=True)
        pytest = {"outcome": tail[-1] if tail else "", "returncode": proc.returncode, "tail": tail}
    return {"device": device, "results": results, "pytest": pytest}


def step_step_cost(out: Path, dry: bool, save) -> dict[str, Any]:
    import torch

    import step_cost

    device = torch.device("cpu" if dry else "cuda")
    models = ("fc1", "tiny_cnn", "small_cnn")
    variants = ["at", "bilaw", "bilaw_jvp", "bilaw_k5", "bilaw_fast"]
    reps, warmup, batch = (1, 0, 8) if dry else (10, 3, 128)
    data: dict[str, Any] = {"device": str(device), "reps": reps, "batch": batch}
    for label, extra, names in (("fp32", {}, variants),
                                ("amp_channels_last", {"amp": True, "channels_last": True}, variants),
                                ("compile", {"compile": True}, ["at", "bilaw_jvp"])):
        data[label] = {}
        for model in (("small_cnn",) if label == "compile" else models):  # compiling takes tens of seconds a model
            if dry and label == "compile":  # inductor on the CPU needs a C++ toolchain and minutes
                data[label][model] = {v: {"median_ms": None, "ratio_to_at": None, "peak_mem_mb": None}
                                      for v in names}
                continue
            try:
                data[label][model] = step_cost.measure(model, reps, warmup, batch, device, names, extra)
            except Exception as exc:
                data[label][model] = {v: {"median_ms": None, "ratio_to_at": None, "peak_mem_mb": None,
                                          "error": f"{type(exc).__name__}: {exc}"} for v in names}
            print(label, model, json.dumps(data[label][model], default=str), flush=True)
            save(data)
    return data


def step_packing(out: Path, dry: bool, save) -> dict[str, Any]:
    """N concurrent training processes on the one GPU, each capped to 1/N of its memory."""
    import torch

    epochs = 1 if dry else 10
    keys = {"dataset": "digits", "model": "fc1", "method": "at", "epochs": epochs, "aa_samples": 0,
            "analysis_samples": 0, "plots": "false", "device": "cpu" if dry else "cuda"}
    if dry:
        keys.update(meta_val_size=60, holdout_val_size=60, pgd_steps=3, eval_pgd_steps=3)
    sets = [a for k, v in keys.items() for a in ("--set", f"{k}={v}")]
    runs: dict[str, Any] = {}
    total = (DRY_STEPS if dry else STEPS)["packing"] - 5
    for n in PACK_N:
        budget = total * n / sum(PACK_N)  # more processes, more time: each N gets its share
        share = 1.0 / n
        code = ("import sys; from bilaw.gpu_memory import cap_gpu_memory; "
                f"cap_gpu_memory({share}); from bilaw.train import main; sys.exit(main(sys.argv[1:]))")
        start = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", code, "--out", str(out / f".pack_{n}_{i}"), "--no-progress",
                                   *sets, "--set", f"seed={i}"], cwd=REPO, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO),
                                                                          "OMP_NUM_THREADS": "1"})
                 for i in range(n)]
        codes = []
        for p in procs:
            try:
                _, err = p.communicate(timeout=max(1.0, budget - (time.perf_counter() - start)))
                codes.append(p.returncode)
                if p.returncode:
                    print(err[-1500:], flush=True)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
                codes.append("timeout")
        wall = time.perf_counter() - start
        done = sum(c == 0 for c in codes)
        runs[str(n)] = {"n": n, "gpu_share": share, "wall_s": round(wall, 2), "finished": done,
                        "exit_codes": codes, "trials_per_hour": round(done / wall * 3600, 1) if done else 0.0}
        print("packing", json.dumps(runs[str(n)]), flush=True)
        save({"runs": runs})
    one = runs["1"]["trials_per_hour"] or None
    for r in runs.values():
        r["speedup"] = round(r["trials_per_hour"] / one, 2) if one else None
    import shutil

    for d in out.glob(".pack_*"):
        shutil.rmtree(d, ignore_errors=True)
    return {"epochs": epochs, "device": keys["device"], "cuda": torch.cuda.is_available(), "runs": runs}


STEP_FUNCS = {"environment": step_environment, "checks": step_checks, "step_cost": step_step_cost,
              "packing": step_packing}


def _lookup(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return "(missing)"
        data = data[key]
    return data


def summarise(out: Path) -> dict[str, Any]:
    steps = {s: json.loads((out / f"{s}.json").read_text()) if (out / f"{s}.json").exists() else {} for s in STEPS}
    rows = {label: _lookup(steps[step], path) for label, step, path in SUMMARY}
    rows.update({f"step {s} status": steps[s].get("status", "missing") for s in STEPS})
    (out / "summary.json").write_text(json.dumps(rows, indent=2, default=str))
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| what | value |", "|---|---|", *[f"| {k} | {fmt(v)} |" for k, v in rows.items()]]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return rows


def run_step(step: str, out: Path, dry: bool) -> int:
    """One step in this process; what it has measured so far is saved as it goes (status
    "partial"), so a step stopped by its time box keeps its finished parts."""
    sys.path[:0] = [str(HERE), str(REPO)]
    start = time.perf_counter()
    data = STEP_FUNCS[step](out, dry, lambda partial: _write(out, step, {**partial, "status": "partial"}))
    data.update(status="ok", seconds=round(time.perf_counter() - start, 1))
    _write(out, step, data)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="folder for the step files, the log and the summary")
    p.add_argument("--dry-run", action="store_true", help="every step on the CPU at tiny sizes")
    p.add_argument("--step", choices=list(STEPS), help=argparse.SUPPRESS)  # one step, in its own process
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.step:
        return run_step(args.step, out, args.dry_run)
    boxes = DRY_STEPS if args.dry_run else STEPS
    with open(out / "gpu_check.log", "w") as log:
        for step, limit in boxes.items():
            log.write(f"===== {step} (time box {limit} s)\n")
            log.flush()
            start = time.perf_counter()
            cmd = [sys.executable, str(Path(__file__).resolve()), str(out), "--step", step,
                   *(["--dry-run"] if args.dry_run else [])]
            try:
                code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=limit, cwd=REPO).returncode
                status = "ok" if code == 0 else f"failed (exit {code})"
            except subprocess.TimeoutExpired:
                status = f"timed out after {limit} s"
            if status != "ok":
                path = out / f"{step}.json"
                kept = json.loads(path.read_text()) if path.exists() else {}
                _write(out, step, {**kept, "status": status, "seconds": round(time.perf_counter() - start, 1)})
            log.write(f"===== {step}: {status} in {time.perf_counter() - start:.1f} s\n")
            log.flush()
            print(f"{step}: {status} ({time.perf_counter() - start:.0f} s)", flush=True)
    summarise(out)
    print((out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
