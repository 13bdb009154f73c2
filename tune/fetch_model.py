"""`python tune/fetch_model.py URI --out DIR [--tracking-uri URI]`: a model a search logged to
MLflow, named by any URI a search prints (`models:/m-MODEL_ID`, `models:/NAME/VERSION`), by
`runs:/RUN_ID/model` or by `models:/NAME@ALIAS`, as a run folder that `bilaw` reads (config.yaml,
metrics.json, best.pt): evaluate it with `python -m bilaw.evaluate DIR`, or re-train its config
with `python -m bilaw.train --config DIR/config.yaml`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python tune/fetch_model.py`
    import _script_path  # noqa: F401  (puts this repository first on sys.path)

from bilaw.file_errors import DamagedFileError  # noqa: E402
from tune.tracking.model_store import URI_FORMS, ModelStoreError, fetch_run_folder  # noqa: E402
from tune.tracking.runs import (DEFAULT_TRACKING_URI, TrackingError, absolute_tracking_uri,  # noqa: E402
                                check_store_exists, check_tracking_uri)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_uri", help=URI_FORMS)
    p.add_argument("--out", required=True, help="folder to write the run into")
    p.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI, help="the MLflow store the search used")
    args = p.parse_args(argv)
    try:
        uri = absolute_tracking_uri(args.tracking_uri)
        check_store_exists(uri)
        check_tracking_uri(uri)
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise ModelStoreError(f"--out {args.out!r} is a file; pass a folder")
        folder = fetch_run_folder(uri, args.model_uri, out)
    except (ModelStoreError, TrackingError, DamagedFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # MLflow's own "not found" errors for a run or model version
        print(f"error: {args.model_uri}: {type(exc).__name__}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"wrote {folder}: evaluate with python -m bilaw.evaluate {folder}")
    return 0


if __name__ == "__main__":
    from tune.process_exit import exit_now

    exit_now(main())
