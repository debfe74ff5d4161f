"""The notebooks run: every code cell of each notebook executes in order, in one namespace.

Cells run in a temporary folder that holds a link to the repo's ``configs/``, so logs and checkpoints stay out of
the checkout. ``EMOTION_RL_NOTEBOOK_QUICK=1`` makes each notebook's parameters cell choose its tiny settings (the
committed outputs come from the full ones), and figures go to matplotlib's Agg backend. This runner is the project's
stand-in for nbmake: it needs no Jupyter.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.name for n in NOTEBOOKS])
def test_notebook_runs(notebook, tmp_path, monkeypatch):
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["notebook"])
    monkeypatch.setenv("EMOTION_RL_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    code = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    assert code, f"{notebook.name} has no code"
    namespace: dict = {}
    for index, cell in enumerate(code):
        exec(compile("".join(cell["source"]), f"{notebook.name}[{index}]", "exec"), namespace)  # noqa: S102
