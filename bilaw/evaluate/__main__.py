"""`python -m bilaw.evaluate RUN_DIR [--aa-samples N ...]`: re-evaluate a saved run (bilaw/runs.py).

A package entry point, so that the evaluation library (this package) never imports the run
loader, which imports it."""
import sys

from bilaw.runs import evaluate_main

sys.exit(evaluate_main())
