"""The screen's table from a folder of ``benchmarks/learning.py`` results: one row per variant.

Per variant: each seed's final 100-episode mean (with the search, its prior's argmax emotion and the best single
emotion from the search-gain measurement), the interquartile mean over seeds, on how many seeds the search beats
its prior and every single emotion, and the training wall time per env step. The protocol's rule (docs/results.md):
keep an option if the IQM improves on the baseline's and the search gain is positive on at least 4 of 5 seeds.

    python benchmarks/screen_table.py benchmarks/results/values/screen --baseline emotion
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def iqm(values: list[float]) -> float:
    """The interquartile mean over seeds (rliable's, as benchmarks/plot_learning.py computes it)."""
    from rliable import metrics

    return float(metrics.aggregate_iqm(np.asarray(values, dtype=float).reshape(-1, 1)))


def gain_of(result: dict) -> tuple[float, float, float] | None:
    """(search, prior, best single emotion) means of a run's search-gain measurement, if it has one."""
    rows = (result.get("search_gain") or {}).get("rows")
    if not rows:
        return None
    singles = [row["mean"] for name, row in rows.items() if name.startswith("emotion_")]
    return rows["search"]["mean"], rows["prior"]["mean"], max(singles)


def agreement_of(result: dict) -> float | None:
    """The pairwise agreement of the emotions' greedy actions over the search's states, if measured."""
    heads = (result.get("search_gain") or {}).get("heads") or {}
    return heads.get("pairwise_agreement")


def table(folder: Path, baseline: str | None = None) -> str:
    runs: dict[str, dict[int, dict]] = defaultdict(dict)
    for path in sorted(folder.glob("*.json")):
        result = json.loads(path.read_text())
        if "variant" in result and "final_return_mean" in result:
            runs[result["variant"]][int(result["seed"])] = result
    seeds = sorted({seed for per_seed in runs.values() for seed in per_seed})
    header = ["variant", *(f"seed {s}" for s in seeds), "IQM", "gain > 0", "head agreement", "ms / env step"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = sorted(runs, key=lambda v: (v != baseline, v))
    for variant in order:
        per_seed = runs[variant]
        cells, positive, measured = [], 0, 0
        for seed in seeds:
            result = per_seed.get(seed)
            if result is None:
                cells.append("-")
                continue
            cell = f"{result['final_return_mean']:.1f}"
            if result.get("reached_env_steps") is not None and result["final_return_mean"] >= result["threshold"]:
                cell += f" (475 at {result['reached_env_steps']:,})"
            gain = gain_of(result)
            if gain is not None:
                measured += 1
                positive += gain[0] > max(gain[1], gain[2])
                cell += f" ({gain[0]:.0f} / {gain[1]:.0f} / {gain[2]:.0f})"
            cells.append(cell)
        finals = [r["final_return_mean"] for r in per_seed.values()]
        ms = np.median([1000 * r["train_s_per_env_step"] for r in per_seed.values()])
        agreement = [a for r in per_seed.values() if (a := agreement_of(r)) is not None]
        agree = f"{np.mean(agreement):.2f}" if agreement else "-"
        lines.append(
            f"| {variant} | "
            + " | ".join(cells)
            + f" | {iqm(finals):.0f} | {positive}/{measured} | {agree} | {ms:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--baseline", help="the variant listed first")
    args = parser.parse_args()
    print(table(args.folder, args.baseline))
    print("\nCells: final mean over 100 episodes (search / prior's argmax emotion / best single emotion, search gain).")


if __name__ == "__main__":
    main()
