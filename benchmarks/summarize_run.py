"""Print a fit's learning curve from its CSV log: episode return against environment steps, and evaluations.

python benchmarks/summarize_run.py runs/cartpole/version_0/metrics.csv
"""

from __future__ import annotations

import argparse
import csv
import math


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", help="metrics.csv written by the CSVLogger")
    parser.add_argument("--points", type=int, default=20, help="rows of the training curve to print")
    args = parser.parse_args()
    with open(args.metrics) as f:
        rows = list(csv.DictReader(f))

    def number(row: dict, key: str) -> float:
        value = row.get(key, "")
        return float(value) if value not in ("", None) else math.nan

    train = [(number(r, "episode/env_steps"), number(r, "episode/return")) for r in rows]
    train = [(s, v) for s, v in train if not math.isnan(s) and not math.isnan(v)]
    print(f"{'env steps':>10} {'episode return (recent)':>24}")
    stride = max(1, len(train) // args.points)
    for steps, value in train[::stride] + train[-1:]:
        print(f"{int(steps):>10} {value:>24.1f}")
    evals = [(number(r, "step"), number(r, "val/return_mean")) for r in rows]
    evals = [(s, v) for s, v in evals if not math.isnan(v)]
    if evals:
        print(f"\n{'training batch':>14} {'val/return_mean':>16}")
        for step, value in evals:
            print(f"{int(step):>14} {value:>16.1f}")


if __name__ == "__main__":
    main()
