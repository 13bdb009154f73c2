"""Search spaces and workloads: the YAML files a researcher edits (`search_spaces/`), loaded,
validated and turned into what the search needs. `load_space` and `load_workloads` read the files,
`resolve_workload` and `base_config` give a trial's base TrainConfig, `check_space_against_config`
checks a space against it before Ray starts, and `define_by_run` is the function OptunaSearch
samples with (conditional parameters included). Every problem with a file is one `SpaceError`.
Modules: catalog (the entry points), schema (the dataclasses and allowed names), loading (parsing
and validating a file), conditions (a param's `when`), seeds (the one rule for seeds).
"""
from bilaw.lazy_exports import lazy_exports

_EXPORTS = {name: "catalog" for name in (
    "DEFAULT_WORKLOAD", "KINDS", "MODES", "PAPER", "SAMPLERS", "SPACES_DIR", "TOP_KEYS", "WORKLOAD_KEYS",
    "WORKLOADS_FILE", "DefineByRun", "Param", "SearchSpace", "SpaceError", "Workload", "base_config",
    "check_space_against_config", "define_by_run", "list_spaces", "load_space", "load_workloads",
    "resolve_workload")}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
