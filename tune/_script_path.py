"""Makes `python tune/<script>.py` import this repository's packages.

Python puts a script's own folder first on sys.path: for a script in tune/ that folder's modules
(search, tracking, plan, ...) would shadow top-level modules of the same name, and `import tune`
or `import bilaw` would find whatever copy is installed rather than this checkout. Each script
in tune/ imports this module first when it runs as a script; it swaps tune/ for the repository
root. Importing it again, or as `tune._script_path`, changes nothing more."""
from __future__ import annotations

import sys
from pathlib import Path

_TUNE = Path(__file__).resolve().parent
_ROOT = str(_TUNE.parent)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _TUNE]
if sys.path[:1] != [_ROOT]:
    sys.path.insert(0, _ROOT)
