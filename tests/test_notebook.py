"""notebooks/analysis.ipynb runs top to bottom against real study databases, so it never rots."""

from __future__ import annotations

import ast

import nbformat
import pytest
from nbclient import NotebookClient

from latts.reporting.documents import answer_for
from latts.storage import Repository
from tests.conftest import REPO_ROOT
from tests.handmade import make_study

NOTEBOOK = REPO_ROOT / "notebooks" / "analysis.ipynb"


def run_notebook(url: str, study: str, folder, monkeypatch) -> tuple[dict, int]:
    """Execute the notebook on `study`; return its printed choice per budget and how many images it drew."""
    monkeypatch.setenv("LATTS_STORAGE", url)  # the kernel inherits this process's environment
    monkeypatch.setenv("LATTS_STUDY", study)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # "python3" is ipykernel's own kernel; jupyter_client starts it with this interpreter (sys.executable).
    NotebookClient(notebook, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(folder)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    printed = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stdout")
    (line,) = [x for x in printed.splitlines() if x.startswith("chosen per budget: ")]
    return ast.literal_eval(line.removeprefix("chosen per budget: ")), images


def test_notebook_on_handmade_study(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'latts.db'}"
    make_study(url, tmp_path)
    chosen, images = run_notebook(url, "hand", tmp_path, monkeypatch)
    assert chosen == {0.15: 0, 0.5: 1, 2.0: 3}
    assert images == 3  # frontier, trade-off heatmaps, latency distributions


@pytest.mark.engine
def test_notebook_on_tuned_study(sqlite_study, tmp_path, monkeypatch):
    url, _ = sqlite_study
    repo = Repository(url)
    trials = repo.trials("e2e")
    spec = repo.study_spec("e2e")
    # The notebook shows what tune printed: each budget's raced answer (a config re-timed in the race may
    # fit a budget that nothing fitted when its finalists were picked).
    answers = repo.budget_answers("e2e")
    expected = {
        b: (t.number if (t := answer_for(trials, b, spec["latency_statistic"], answers=answers)) else None) for b in spec["budgets_s"]
    }
    chosen, images = run_notebook(url, "e2e", tmp_path, monkeypatch)
    assert chosen == expected
    assert images == (3 if any(n is not None for n in expected.values()) else 2)
