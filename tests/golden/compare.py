"""How a fixed-seed fit's metrics are compared with the committed ones (tests/test_golden.py, make_golden.py).

Counts are compared exactly: a column whose committed values are all integers (steps, episodes, env steps, epoch).
Every other number is compared within ``RTOL`` (relative) or ``ATOL`` (absolute, for values near 0): the last bits
of float kernels differ between CPUs (another vector unit, another BLAS path), and a golden file written on one
machine must hold on another. Empty cells (a metric not logged on that row) must stay empty.
``make_golden.py --exact`` keeps the bit-for-bit comparison for refactors on one machine.
"""

from __future__ import annotations

import math

RTOL = 1e-5
"""Relative tolerance of float metrics: far above float32 rounding across CPUs (seen: 8e-8), far below any change
of behaviour a test should notice (a changed option moves losses by percents)."""
ATOL = 1e-7
"""Absolute tolerance, for float metrics at or near 0."""


def count_columns(rows: list[dict[str, str]]) -> set[str]:
    """Columns whose every filled value is an integer (``"3"`` or ``"3.0"``): compared exactly."""
    counts = set(rows[0]) if rows else set()
    for row in rows:
        for key, text in row.items():
            if text != "" and key in counts and not float(text).is_integer():
                counts.discard(key)
    return counts


def differences(
    expected: list[dict[str, str]], got: list[dict[str, str]], rtol: float = RTOL, atol: float = ATOL
) -> list[str]:
    """Every way ``got`` differs from ``expected`` (rows of a ``metrics.csv``), one line each; empty when equal
    within the tolerances (counts exactly; ``rtol = atol = 0`` compares every value bit for bit)."""
    if [sorted(r) for r in got] != [sorted(r) for r in expected]:
        return [f"columns or rows changed: {len(got)} rows vs {len(expected)} expected"]
    counts = count_columns(expected)
    problems = []
    for i, (row, want) in enumerate(zip(got, expected, strict=True)):
        for key, text in want.items():
            have = row[key]
            if text == "" or have == "":
                if text != have:
                    problems.append(f"row {i} {key}: {have!r} vs {text!r}")
                continue
            a, b = float(have), float(text)
            exact = key in counts or (rtol == 0 and atol == 0)
            if exact and a != b or not exact and not math.isclose(a, b, rel_tol=rtol, abs_tol=atol):
                problems.append(f"row {i} {key}: {have} vs {text}" + ("" if exact else f" (rtol {rtol})"))
    return problems
