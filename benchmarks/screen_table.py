"""The screen's table from a folder of ``benchmarks/learning.py`` results: one row per variant.

Per variant and seed, the run's score (the mean of its evaluations over the last third of the budget,
``emotion_rl.evaluation.last_third_mean``; results written before the score existed show their final 100-episode
mean instead) with the search-gain measurement's search / prior / best single emotion means; then the interquartile
mean over seeds (``emotion_rl.evaluation.iqm``), how many seeds held the threshold, on how many the search beats its
prior and every single emotion, the mean gains of the search over its values, its prior and its best single emotion,
the heads' agreement and the training wall time per env step. The protocol's rule (docs/results.md,
``emotion_rl.evaluation.screen_passes``): keep an option if its IQM improves on the baseline's and the search gain is
positive on at least 4 of 5 seeds.

    python benchmarks/screen_table.py benchmarks/results/values/screen --baseline emotion

Runs with ``--paired-decision`` get a second table: each greedy decision's score, final mean and hold on the same
network, with the search-gain rows of both decisions, the values read per action and the prior.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from emotion_rl.evaluation import held, iqm

GAINS = ("values", "prior", "best")
"""The gain columns: the search's mean minus its values' (Q-greedy), its prior's, its best single emotion's."""


def gain_of(result: dict) -> dict[str, float] | None:
    """The search, values (NaN if not played), prior and best single emotion means of a run's search-gain
    measurement, if it has one."""
    rows = (result.get("search_gain") or {}).get("rows")
    if not rows:
        return None
    singles = [row["mean"] for name, row in rows.items() if name.startswith("emotion_")]
    values = rows.get("values", {}).get("mean", math.nan)
    return {"search": rows["search"]["mean"], "values": values, "prior": rows["prior"]["mean"], "best": max(singles)}


def score_of(result: dict) -> float:
    """The run's score under the hold protocol, else (an older result) its final mean."""
    score = result.get("score")
    return result["final_return_mean"] if score is None else score


def cell(result: dict | None) -> str:
    """One seed's cell: its score (or final mean, with where it first reached the threshold), its gain's means."""
    if result is None:
        return "-"
    text = f"{score_of(result):.1f}"
    if result.get("score") is None and result.get("reached_env_steps") is not None:
        if result["final_return_mean"] >= result["threshold"]:
            text += f" ({result['threshold']:.0f} at {result['reached_env_steps']:,})"
    gain = gain_of(result)
    if gain is not None:
        text += f" ({gain['search']:.0f} / {gain['prior']:.0f} / {gain['best']:.0f})"
    return text


def row(variant: str, per_seed: dict[int, dict], seeds: list[int]) -> str:
    """The variant's line of the table."""
    runs = list(per_seed.values())
    gains = [gain for r in runs if (gain := gain_of(r)) is not None]
    positive = sum(g["search"] > max(g["prior"], g["best"]) for g in gains)
    scored = [r for r in runs if r.get("score") is not None]
    held = f"{sum(r.get('held') is True for r in scored)}/{len(scored)}" if scored else "-"
    means = [np.mean([g["search"] - g[name] for g in gains]) if gains else math.nan for name in GAINS]
    agreement = [a for r in runs if (a := ((r.get("search_gain") or {}).get("heads") or {}).get("pairwise_agreement"))]
    agree = f"{np.mean(agreement):.2f}" if agreement else "-"
    ms = np.median([1000 * r["train_s_per_env_step"] for r in runs])
    cells = [variant, *(cell(per_seed.get(seed)) for seed in seeds), f"{iqm([score_of(r) for r in runs]):.0f}", held]
    cells += [f"{positive}/{len(gains)}", *(f"{m:+.1f}" if math.isfinite(m) else "-" for m in means), agree]
    return "| " + " | ".join([*cells, f"{ms:.1f}"]) + " |"


def table(folder: Path, baseline: str | None = None) -> str:
    runs: dict[str, dict[int, dict]] = defaultdict(dict)
    for path in sorted(folder.glob("*.json")):
        result = json.loads(path.read_text())
        if "variant" in result and "final_return_mean" in result:
            runs[result["variant"]][int(result["seed"])] = result
    seeds = sorted({seed for per_seed in runs.values() for seed in per_seed})
    header = ["variant", *(f"seed {s}" for s in seeds), "IQM", "held", "gain > 0"]
    header += ["search - values", "search - prior", "search - best emotion", "head agreement", "ms / env step"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [row(variant, runs[variant], seeds) for variant in sorted(runs, key=lambda v: (v != baseline, v))]
    return "\n".join(lines)


def decisions(folder: Path) -> str:
    """The paired greedy decisions (``--paired-decision``), one line per run: the configured decision's score and final
    mean beside the other's (same network, same start states), whether each held, and the search-gain rows of both
    decisions, the network's values read per action (``values``) and the prior. Empty when no run was paired."""
    lines = []
    for path in sorted(folder.glob("*.json")):
        result = json.loads(path.read_text())
        other = next((key[len("score_by_") :] for key in result if key.startswith("score_by_")), None)
        if other is None:
            continue
        curve = result["curve"]
        held_other = held(curve, result["threshold"], result["hold_floor"], f"return_mean_by_{other}")
        rows = (result.get("search_gain") or {}).get("rows", {})
        means = [
            rows.get(name, {}).get("mean", math.nan) for name in ("search", f"search_by_{other}", "values", "prior")
        ]
        lines.append(
            f"| {result['variant']} | {result['seed']} | {result['score']:.1f} | {result[f'score_by_{other}']:.1f} | "
            f"{result['final_return_mean']:.1f} | {result[f'final_return_mean_by_{other}']:.1f} | {result['held']} | "
            f"{held_other} | " + " | ".join(f"{m:.1f}" for m in means) + " |"
        )
    header = "| variant | seed | score | score (other) | final | final (other) | held | held (other) | search | "
    return "\n".join([header + "search (other) | values | prior |", "|" + "---|" * 12, *lines]) if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--baseline", help="the variant listed first")
    args = parser.parse_args()
    print(table(args.folder, args.baseline))
    print(
        "\nCells: score, the last-third mean (older results: final mean over 100 episodes); in brackets search / "
        "prior's argmax emotion / best single emotion."
    )
    paired = decisions(args.folder)
    if paired:
        print("\nThe two greedy decisions on the same networks and start states (emotion_rl.decision):\n" + paired)


if __name__ == "__main__":
    main()
