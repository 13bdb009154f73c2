"""One run's configuration: `TrainConfig`, every key validated in one place, and reading config
values from YAML files and `--set key=value` overrides (`ConfigError` names the bad value and
what is allowed); what else a re-run needs to reproduce a run (the thread count) and what
"the paper's evaluation" is (`FULL_EVAL`); and the data a run of a config holds (`run_data_args`).
"""
from bilaw.lazy_exports import lazy_exports

_EXPORTS = {
    "TrainConfig": "train_config",
    "KEYS": "train_config",
    "METHODS": "train_config",
    "ConfigError": "yaml_values",
    "FULL_EVAL": "reproducibility",
    "use_threads": "reproducibility",
    "run_data_args": "run_data",
    "parse_overrides": "yaml_values",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
