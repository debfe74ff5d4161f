"""Bit-identical behaviour: a fixed-seed short fit logs exactly the committed metrics (tests/golden/)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent / "golden"


def test_fit_metrics_are_bit_identical_to_the_committed_runs(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the thread environment the files were written in
    result = subprocess.run(
        [sys.executable, str(GOLDEN / "make_golden.py"), str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for expected_file in sorted(GOLDEN.glob("*.csv")):
        with open(expected_file) as f:
            expected = list(csv.DictReader(f))
        with open(tmp_path / expected_file.name) as f:
            got = list(csv.DictReader(f))
        assert [sorted(r) for r in got] == [sorted(r) for r in expected], f"{expected_file.name}: columns changed"
        for i, (row, want) in enumerate(zip(got, expected, strict=True)):
            diff = [(k, row[k], want[k]) for k in want if row[k] != want[k]]
            assert not diff, f"{expected_file.name} row {i} differs: {diff}"
