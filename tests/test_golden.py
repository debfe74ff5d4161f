"""A fixed-seed short fit logs the committed metrics (tests/golden/): counts exactly, floats within a tolerance.

The committed files were written on one machine; another CPU may differ in the last bits of float kernels, so
floats are compared within ``golden.compare.RTOL`` (bit for bit: ``make_golden.py --exact``, for refactors).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from golden.compare import RTOL, count_columns, differences

GOLDEN = Path(__file__).resolve().parent / "golden"


def read(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    """The golden runs, regenerated from this checkout (in a subprocess with one OpenMP thread, as written)."""
    out = tmp_path_factory.mktemp("golden")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(GOLDEN / "make_golden.py"), str(out)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.parametrize("name", ["shipped", "literal_whole_episodes_reanalyze"])
def test_fit_metrics_match_the_committed_runs_within_tolerance(regenerated, name):
    expected, got = read(GOLDEN / f"{name}.csv"), read(regenerated / f"{name}.csv")
    assert len(expected) >= 10 and {"step", "episode/env_steps", "train/phase3_value_loss"} <= set(expected[0])
    problems = differences(expected, got)
    assert not problems, f"{name}.csv:\n" + "\n".join(problems[:20])


def test_counts_are_exact_and_floats_tolerate_only_rounding():
    rows = read(GOLDEN / "shipped.csv")
    counts = count_columns(rows)
    assert {"step", "epoch", "episode/count", "episode/env_steps"} <= counts
    assert "train/phase1_dynamics_loss" not in counts and "emotion/usage_0" not in counts
    row = next(i for i, r in enumerate(rows) if r["train/phase3_value_loss"])

    def changed(key: str, factor: float = 1.0, add: float = 0.0) -> list[dict[str, str]]:
        copy = [dict(r) for r in rows]
        copy[row][key] = repr(float(copy[row][key]) * factor + add)
        return copy

    assert differences(rows, rows) == []
    assert differences(rows, changed("train/phase3_value_loss", 1 + 1e-7)) == []  # another CPU's last bits
    assert differences(rows, changed("train/phase3_value_loss", 1 + 10 * RTOL))  # a behaviour change
    assert differences(rows, changed("step", add=1))  # a count is exact
    assert differences(rows, changed("train/phase3_value_loss", 1 + 1e-7), rtol=0.0, atol=0.0)  # --exact
    blank = [dict(r) for r in rows]
    blank[row]["train/phase3_value_loss"] = ""
    assert differences(rows, blank)  # a metric that stops being logged
    assert differences(rows, rows[:-1])  # a row fewer
