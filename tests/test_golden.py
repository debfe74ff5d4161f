"""Bit-identical behaviour: a fixed-seed short fit logs exactly the committed metrics (tests/golden/)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))

from make_golden import HERE, RUNS, run_metrics  # noqa: E402


@pytest.mark.parametrize("name", sorted(RUNS))
def test_fit_metrics_are_bit_identical_to_the_committed_run(name, tmp_path):
    with open(HERE / f"{name}.csv") as f:
        expected = list(csv.DictReader(f))
    got = run_metrics(name, str(tmp_path))
    assert [sorted(r) for r in got] == [sorted(r) for r in expected], "logged columns changed"
    for i, (row, want) in enumerate(zip(got, expected, strict=True)):
        assert row == want, f"row {i} differs: {[(k, row[k], want[k]) for k in want if row[k] != want[k]]}"
