"""The codebase's own rules, checked on its source: small modules, no import cycles (imports
inside functions count), bilaw/ free of Ray, Optuna and MLflow, and comments that cite only
documents inside the repository."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("bilaw", "tune")
MAX_LINES = 400
OUTSIDE_DOCS = re.compile(r"\b(METHODS|HPO|PERFORMANCE|DESIGN|PAPER|STYLE)\.md\b|shared/spec")


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages (sub-packages too)."""
    out = {}
    for pkg in PACKAGES:
        for p in sorted((REPO / pkg).rglob("*.py")):
            parts = p.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules `name` imports anywhere in its file (top level, functions, __main__ blocks)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from .x import y (from .. goes one package up)
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def test_no_module_is_over_400_lines():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_no_import_cycle_among_project_modules():
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


# bilaw's layers, bottom first: a module imports only modules of its own layer or below it
# (docs/architecture.md draws them). A name ending in "." is a package, the others are modules.
LAYERS = [
    ["bilaw", "bilaw.registry", "bilaw.file_errors", "bilaw.lazy_exports", "bilaw.metrics", "bilaw.models",
     "bilaw.epochs", "bilaw.gpu_memory"],
    ["bilaw.eval."], ["bilaw.data."], ["bilaw.methods."], ["bilaw.config."], ["bilaw.analysis."],
    ["bilaw.training."], ["bilaw.runs."],
    ["bilaw.train", "bilaw.evaluate", "bilaw.export"],
]
# tune's layers, bottom first, under the same rule (tune may import any of bilaw).
TUNE_LAYERS = [
    ["tune", "tune._script_path", "tune.moved_modules", "tune.library_adapters", "tune.mounts", "tune.sqlite_files",
     "tune.state_files", "tune.system_metrics", "tune.worker_exit", "tune.disk_full", "tune.search_lock",
     "tune.storage", "tune.process_exit"],
    ["tune.spaces."], ["tune.trainable"], ["tune.tracking."],
    ["tune.plan"],
    ["tune.resume_check", "tune.stopping", "tune.ray_start", "tune.finished_search", "tune.store_checks", "tune.orphans",
     "tune.study_records", "tune.study_autoattack"],
    ["tune.results."],
    ["tune.driver", "tune.variant_runs", "tune.race", "tune.search"],
    ["tune.run_search", "tune.report", "tune.rerun_best", "tune.reproduce", "tune.study", "tune.fetch_model",
     "tune.tracking_server"],
]


def _layer(name: str) -> int:
    for i, members in enumerate(LAYERS if name.startswith("bilaw") else TUNE_LAYERS):
        if any(name == m or (m.endswith(".") and (name + ".").startswith(m)) for m in members):
            return i
    raise AssertionError(f"{name} is in no layer of LAYERS or TUNE_LAYERS: add it there and to docs/architecture.md")


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_downward(package):
    modules = _modules()
    own = {n: p for n, p in modules.items() if n.split(".")[0] == package}
    upward = [f"{name} (layer {_layer(name)}) imports {target} (layer {_layer(target)})"
              for name, path in own.items() for target in sorted(_imports(name, path, set(own)))
              if _layer(target) > _layer(name)]
    assert not upward, "\n".join(upward)


def test_bilaw_never_imports_the_search_stack():
    for name, path in _modules().items():
        if name.startswith("bilaw"):
            tree = ast.parse(path.read_text())
            roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            roots |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
            assert not roots & {"ray", "optuna", "mlflow", "tune"}, (name, roots & {"ray", "optuna", "mlflow", "tune"})


@pytest.mark.parametrize("folder", ["bilaw", "tune", "tests", "benchmarks", "docs", "scripts"])
def test_code_and_docs_cite_only_documents_inside_the_repository(folder):
    hits = [f"{p.relative_to(REPO)}:{i}" for p in sorted((REPO / folder).rglob("*"))
            if p.suffix in (".py", ".md", ".sh", ".yaml") and p.name != "test_structure.py"
            for i, line in enumerate(p.read_text().splitlines(), 1) if OUTSIDE_DOCS.search(line)]
    assert not hits, hits
