"""The notebooks in ``notebooks/`` are up to date with their generator and run top to bottom (tiny setting)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from analysis.scores_io import save_scores  # noqa: E402
from analysis.synthetic import synthetic_scores  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
TIMEOUT = 120


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory) -> Path:
    """A kernel spec named python3 that runs *this* interpreter (the venv's), whatever else is installed."""
    kernels = tmp_path_factory.mktemp("kernels")
    spec = kernels / "python3"
    spec.mkdir()
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Python 3 (test)", "language": "python"}))
    return kernels


def execute(name: str, cwd: Path, kernel_dir: Path) -> nbformat.NotebookNode:
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    specs = KernelSpecManager(kernel_dirs=[str(kernel_dir)], ensure_native_kernel=False)
    km = KernelManager(kernel_name="python3", kernel_spec_manager=specs)
    client = nbclient.NotebookClient(nb, km=km, kernel_name="python3", timeout=TIMEOUT,
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


def outputs(nb, mime: str) -> list:
    found = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error", "".join(output.get("traceback", []))
            if mime == "stream" and output.get("output_type") == "stream":
                found.append(output["text"])
            elif mime in output.get("data", {}):
                found.append(output["data"][mime])
    return found


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv("STEERDECO_RESULTS", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    return tmp_path


def test_stored_notebooks_match_their_generator_and_have_no_outputs():
    result = subprocess.run([sys.executable, str(NOTEBOOKS / "build_notebooks.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for name in ("consistency_statistics.ipynb", "trajectory_plots.ipynb"):
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        assert nb.cells[1].metadata.get("tags") == ["parameters"]
        assert "SETTING" in nb.cells[1].source and "RESULTS" in nb.cells[1].source
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


def test_consistency_notebook_runs_in_the_tiny_setting(clean_env, kernel_dir):
    nb = execute("consistency_statistics.ipynb", clean_env, kernel_dir)
    markdown = "\n".join(outputs(nb, "text/markdown"))
    assert "| Variant | n | Avg T | Delta T | Consistency (T) |" in markdown
    for label in ("| Baseline |", "| Low |", "| High |", "| Placebo |", "| heldout |", "| system |", "p (Wilcoxon)", "rho"):
        assert label in markdown, label
    assert "synthetic teacher_forced scores" in "".join(outputs(nb, "stream"))
    assert len(outputs(nb, "image/png")) == 2  # placement forest plot, dose-response


def test_trajectory_notebook_runs_in_the_tiny_setting(clean_env, kernel_dir):
    nb = execute("trajectory_plots.ipynb", clean_env, kernel_dir)
    assert "synthetic teacher_forced scores" in "".join(outputs(nb, "stream"))
    assert len(outputs(nb, "image/png")) == 3  # one prompt (3 panels), relative bins, absolute bins
    assert "| metric | bin | high | low | none |" in "\n".join(outputs(nb, "text/markdown"))


def test_trajectory_notebook_reads_a_results_folder(clean_env, kernel_dir, monkeypatch):
    """Given STEERDECO_RESULTS, the notebook shows the saved scores (here: synthetic, saved like the CLI does)."""
    results = clean_env / "some_results"
    scores = synthetic_scores(n_groups=6, levels=(1, 2), phrasings=1, n_tokens=(6, 14), seeds=(0, 1), seed=3)
    save_scores(scores, results / "free_running_scores.jsonl")
    save_scores(scores.assign(seed=0).drop_duplicates(["group_id", "variant", "command_id", "placement", "level"]),
                results / "teacher_forced_scores.jsonl")
    monkeypatch.setenv("STEERDECO_RESULTS", str(results))
    nb = execute("trajectory_plots.ipynb", clean_env, kernel_dir)
    assert f"teacher_forced scores of {results}" in "".join(outputs(nb, "stream"))
    assert len(outputs(nb, "image/png")) == 3  # one prompt (3 panels), relative bins, absolute bins
    assert "| metric | bin | high | low | none |" in "\n".join(outputs(nb, "text/markdown"))
