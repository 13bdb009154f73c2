"""What a user sees of a finished search in a real browser: MLflow's UI and optuna-dashboard, each
started on loopback as the README says, their pages loaded in headless Chromium with `--dump-dom`
(the DOM after the page's scripts ran). Chromium is opt-in (`bash scripts/setup.sh --with-browser`);
without it these tests are skipped, saying so."""
from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import free_port, search_runs, stop_group

from tune.finished_search import NOTE_TAG

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "chromium-headless-shell")) if p), None)
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed: `bash scripts/setup.sh "
                                                          "--with-browser` installs it (Debian's chromium)")]


def _serve(cmd: list[str], url: str, log: Path) -> subprocess.Popen:
    """Start a server in a process group of its own; return once `url` answers 200."""
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            break
    stop_group(proc)
    raise AssertionError(f"{cmd[:4]} did not answer at {url}: " + log.read_text()[-2000:])


def page_text(url: str, wait_ms: int = 20000) -> str:
    """The visible text of `url` once its scripts ran (headless Chromium's DOM, tags stripped)."""
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          "--window-size=2400,1400",  # the runs table draws only the columns in view
                          f"--virtual-time-budget={wait_ms}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=180)
    dom = re.sub(r"<script.*?</script>|<style.*?</style>", " ", out.stdout, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom)))


@pytest.fixture(scope="module")
def shown(smoke_search, tmp_path_factory):
    """MLflow's UI over the store of the finished smoke search (tests/tune/conftest.py, read only) and
    optuna-dashboard over its study; their logs in a folder of this module's."""
    logs = tmp_path_factory.mktemp("browser")
    ui_port, dash_port = free_port(), free_port()
    ui = _serve([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", smoke_search.uri,
                 "--host", "127.0.0.1", "--port", str(ui_port)], f"http://127.0.0.1:{ui_port}/", logs / "ui.log")
    try:
        dash = _serve([str(Path(sys.executable).with_name("optuna-dashboard")),
                       f"sqlite:///{smoke_search.folder / 'optuna.db'}",
                       "--host", "127.0.0.1", "--port", str(dash_port)],
                      f"http://127.0.0.1:{dash_port}/dashboard/", logs / "dashboard.log")
    except BaseException:
        stop_group(ui)
        raise
    try:
        yield smoke_search, f"http://127.0.0.1:{ui_port}", f"http://127.0.0.1:{dash_port}"
    finally:
        stop_group(ui)
        stop_group(dash)


def _search(search):
    """(experiment id, the parent run, the child runs) of the search."""
    _, exp, parents, children = search_runs(search.uri, search.experiment)
    return exp, parents[0], children


def test_the_runs_page_lists_the_search(shown):
    search, ui, _ = shown
    exp, parent, children = _search(search)
    text = page_text(f"{ui}/#/experiments/{exp}/runs")
    assert parent.info.run_name in text and "ablation_capacity" in text
    assert f"{len(children) + 1} matching runs" in text, text[:3000]


def test_the_printed_runs_table_link_opens_on_the_trials_ranked_with_their_columns(shown):
    search, ui, _ = shown
    exp, parent, children = _search(search)
    link = re.search(r"runs table: (\S+)", search.stdout).group(1)
    assert link.startswith("http://127.0.0.1:5000/") and "viewStateShareKey=" in link
    text = page_text(ui + link[len("http://127.0.0.1:5000"):])
    assert f"{len(children)} matching runs" in text, text[:3000]  # the trials, not the parent
    assert parent.info.run_name not in text
    columns = ["weight_net", "seed", "best_val_pgd_acc", "test_clean_acc", "test_pgd_acc", "best_epoch"]
    at = [text.find(" " + name + " ") for name in columns]
    assert all(i >= 0 for i in at), dict(zip(columns, at))
    assert "Sort: best_val_pgd_acc" in text
    # the rows, best first (the names come in the rows' order)
    rows = sorted(children, key=lambda r: text.find(r.info.run_name))
    assert all(text.find(r.info.run_name) >= 0 for r in rows), text[:4000]
    ranked = [r.data.metrics["best_val_pgd_acc"] for r in rows]
    assert ranked == sorted(ranked, reverse=True), ranked
    # the default table (no view) shows neither the searched parameter nor a test metric
    plain = page_text(f"{ui}/#/experiments/{exp}/runs")
    assert " weight_net " not in plain and " test_pgd_acc " not in plain


def test_the_parent_page_shows_the_search_story(shown):
    search, ui, _ = shown
    exp, parent, _ = _search(search)
    text = page_text(f"{ui}/#/experiments/{exp}/runs/{parent.info.run_id}")
    note = parent.data.tags[NOTE_TAG]
    assert parent.info.run_name in text
    assert "winner: " + parent.data.tags["winner_run_name"] in text, text[:3000]
    best = next(line for line in note.splitlines() if line.startswith("best best_val_pgd_acc:"))
    assert " ".join(best.split()) in text  # the summary's first line, as the page shows it


def test_a_childs_page_shows_its_name_and_metric(shown):
    search, ui, _ = shown
    exp, _, children = _search(search)
    child = children[0]
    text = page_text(f"{ui}/#/experiments/{exp}/runs/{child.info.run_id}")
    assert child.info.run_name in text
    assert f"best_val_pgd_acc {child.data.metrics['best_val_pgd_acc']!r}" in text, text[:3000]


def test_the_logged_models_page_shows_its_test_metrics(shown):
    search, ui, _ = shown
    client, exp, parents, _ = search_runs(search.uri, search.experiment)
    winner = client.get_run(parents[0].data.tags["winner_run_id"])
    model = winner.outputs.model_outputs[0].model_id
    text = page_text(f"{ui}/#/experiments/{exp}/models/{model}")
    for key in ("test_clean_acc", "test_pgd_acc"):
        assert f"{key} - {winner.info.run_name} {winner.data.metrics[key]!r}" in text, text[:3000]


def test_the_dashboard_shows_the_studys_trials(shown):
    search, _, dash = shown
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{search.folder / 'optuna.db'}")
    study_id = storage.get_study_id_from_name("ablation_capacity")
    trials = storage.get_all_trials(study_id)
    text = page_text(f"{dash}/dashboard/studies/{study_id}/trials")
    assert "ablation_capacity" in text and f"{len(trials)} Trials" in text, text[:3000]
    for t in trials:
        assert f"Trial {t.number} Complete" in text
    # the trial shown first (trial 0) with its MLflow run, as its user attributes
    run_id = trials[0].user_attrs["mlflow_run_ids"][0]
    assert "User Attributes" in text and run_id in text, text[:3000]
