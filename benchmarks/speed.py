"""Speed and memory of the emotion MCTS planner, the two training schedules and an end-to-end fit, on CPU.

    python benchmarks/speed.py              # full run (a few minutes on 2 cores); writes benchmarks/RESULTS_speed.md
    python benchmarks/speed.py --quick      # smoke run with tiny sizes (< 1 minute); prints only
    python benchmarks/speed.py --threads 2  # torch CPU threads (default 1, the project's CLI default)

Sections (each measured in this one run, side by side):

1. Planner simulations per second: ``EmotionMCTS(50).search(model, history)`` on a batch of ``B`` environments
   against the literal reference (``emotion_rl.mcts.reference.literal_search``, one environment at a time, a full
   ``model.evaluate`` per expansion), with the ratio and a check that the root visit counts are identical, both
   on the float32 model that is timed and on a float64 copy of it.
2. Planner overhead: total search time over the time spent inside its model calls (the fused adapter
   ``mcts.search_model.FusedSearchModel``'s ``search_prefix``, ``children``, ``expand`` and the model's ``heads``;
   nested calls counted once). 1.0 is the physical limit.
3. Training timesteps per second: the ``timestep`` schedule (spec 2.3's loop) against the ``episode`` schedule,
   both through ``EmotionAgent.train_batch`` with the four Adam optimizers of ``configure_optimizers``.
4. End-to-end ``fit`` on CartPole (``configs/cartpole.yaml``): environment steps per second and peak RSS, in a
   subprocess; and the planner's peak tensor memory (torch profiler) over envs x simulations x history, plus the
   peak-RSS growth of planner-only subprocesses.

Sections 1, 2 and 4b live in speed_planner.py, 3 and 4a in speed_training.py, what they share in speed_common.py;
this file runs them, checks the targets and writes the results (docs/performance.md reads them).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from speed_common import (
    CARTPOLE_MAX_STEPS,
    FULL,
    JSON_MARK,
    QUICK,
    RESULTS,
    ROOT,
    Sizes,
    Table,
    cartpole_model_config,
    emit,
    make_planner,
    proc_status_mib,
    timed,
)
from speed_planner import bench_memory, bench_overhead, bench_planner, worker_rss
from speed_training import bench_fit, bench_training, worker_fit


def targets_table(sizes: Sizes, results: dict) -> Table:
    table = Table(
        "Targets",
        ["target", "threshold", "measured", "met?"],
        notes=[
            "absolute times on a shared CPU drift by up to about 1.5x over seconds-long phases; each ratio is taken "
            "within one measurement (interleaved planner/literal runs, the same searches for the overhead).",
        ],
    )
    key = (16, 64)
    planner = results["planner"].get(key)
    if planner:
        (s32, k32), (s64, k64) = planner["same32"], planner["same64"]
        identical = s32 == k32 and s64 == k64
        met = planner["speedup"] >= 30 and identical
        table.add(
            "planner vs literal, 16 envs, 50 sims, history 64",
            ">= 30x sims/s, identical visit counts",
            f"{planner['speedup']:.1f}x; identical f32 {s32}/{k32}, f64 {s64}/{k64}",
            "yes" if met else "NO",
        )
    else:
        table.add("planner vs literal, 16 envs, 50 sims, history 64", ">= 30x", "not measured at these sizes", "n/a")
    model_time = results["model_time"].get(key)
    if planner and model_time:
        table.notes.append(
            f"reading of the planner row: a search of 16 environments makes {planner['planner_calls']:.0f} batched "
            f"model calls (the prefix, the root's 8 children at once, then one per batch of waiting expansions), a "
            f"literal environment {planner['literal_calls']:.1f} (its root and its own expansions). A batched "
            f"expand call costs {model_time['per_expansion_call'] * 1e3:.2f} ms (section 2) and a literal "
            f"environment {planner['literal_per_env'] * 1e3 / planner['literal_calls']:.2f} ms per model call, its "
            "tree code included."
        )
    overhead = {k: v for k, v in results["overhead"].items() if k[0] == 64}
    if overhead:
        worst = max(overhead.values())
        table.add(
            "planner overhead, 64 envs",
            "<= 2x its model calls",
            ", ".join(f"T={t}: {v:.2f}x" for (_, t), v in sorted(overhead.items())),
            "yes" if worst <= 2 else "NO",
        )
    training = results["training"]
    table.add(
        f"whole-episode vs per-timestep training, {training['length']}-step episodes",
        ">= 20x timesteps/s",
        f"{training['ratio']:.0f}x"
        + ("" if training["k"] == training["length"] else f" (first {training['k']} steps)"),
        "yes" if training["ratio"] >= 20 else "NO",
    )
    memory, d_model = results["memory"], results["d_model"]
    envs, sims, lengths = sizes.memory_envs, sizes.memory_sims, sizes.memory_histories
    env_factor, sim_factor = envs[-1] / envs[0], sims[-1] / sims[0]
    env_ratio = max(
        memory[(envs[-1], s, t)][key] / memory[(envs[0], s, t)][key]
        for s in sims
        for t in lengths
        for key in ("peak", "after_encode")
    )
    # memory the extra simulations add, per environment and simulation: a tree node is a few hundred bytes; a
    # planner that stored an imagined sequence per node would add (T + 1) x d_model floats per simulation
    per_sim = {
        t: max(
            (memory[(e, sims[-1], t)][key] - memory[(e, sims[0], t)][key]) / (e * (sims[-1] - sims[0]))
            for e in envs
            for key in ("peak", "after_encode")
        )
        for t in lengths
    }
    node = max(memory[(e, s, t)]["tree"] / (e * (s + 1)) for e in envs for s in sims for t in lengths)
    sequence = {t: (t + 1) * d_model * 4 for t in lengths}
    linear = env_ratio <= 1.1 * env_factor and all(per_sim[t] <= 0.25 * sequence[t] for t in lengths)
    table.add(
        "planner memory linear in envs and in simulations",
        "no envs x sims x history term",
        f"peak and after-encode x{env_ratio:.2f} (at most) for envs x{env_factor:.0f}; sims x{sim_factor:.0f}: "
        + ", ".join(f"T={t}: {per_sim[t] / 1024:+.2f} KiB" for t in lengths)
        + f" per extra simulation per env (one tree node {node / 1024:.2f} KiB; one imagined sequence "
        + ", ".join(f"T={t}: {sequence[t] / 1024:.0f} KiB" for t in lengths)
        + ")",
        "yes" if linear else "NO",
    )
    return table


# ---------------------------------------------------------------------------------------------------- main
def machine() -> dict:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip() or str(os.cpu_count())
    return dict(cpu=cpu, nproc=nproc, python=platform.python_version(), torch=torch.__version__)


def other_load() -> str:
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    fits = subprocess.run(["pgrep", "-f", "emotion_rl fit"], capture_output=True, text=True).stdout.split()
    return f"load average {load}; other `emotion_rl fit` processes running: {len(fits)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every section (< 1 minute)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as the project's CLI)")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"markdown results (default: {RESULTS.relative_to(ROOT)} unless --quick)",
    )
    parser.add_argument("--worker", choices=["fit", "rss"], help=argparse.SUPPRESS)
    parser.add_argument("--envs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sims", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--history", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--max-steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.worker == "fit":
        print(JSON_MARK + json.dumps(worker_fit(args.envs, args.sims, args.max_steps, args.threads)), flush=True)
        return
    if args.worker == "rss":
        print(JSON_MARK + json.dumps(worker_rss(args.envs, args.sims, args.history)), flush=True)
        return

    sizes = QUICK if args.quick else FULL
    output = args.output if args.output is not None else (None if args.quick else RESULTS)
    command = "python benchmarks/speed.py" + ("" if len(sys.argv) == 1 else " " + " ".join(sys.argv[1:]))
    info = machine()
    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = other_load()
    header = (
        f"{started:%Y-%m-%d %H:%M} UTC | {info['nproc']} CPUs ({info['cpu']}) | torch {info['torch']} | "
        f"python {info['python']} | torch threads {torch.get_num_threads()} | {'quick' if args.quick else 'full'} run"
    )
    print(header)
    print(f"at start: {load_start}\n", flush=True)

    results: dict = {"planner": {}, "overhead": {}, "model_time": {}}
    tables: list[Table] = []
    wall = time.perf_counter()
    sections = []
    for name, bench in (
        ("1", lambda: bench_planner(sizes, results)),
        ("2", lambda: bench_overhead(sizes, results)),
        ("3", lambda: bench_training(sizes, results)),
        ("4a", lambda: bench_fit(sizes, args.threads, results)),
        ("4b", lambda: bench_memory(sizes, args.threads, results)),
    ):
        seconds, table = timed(bench)
        emit(table, tables)
        sections.append(f"{name}: {seconds:.0f} s")
    target = targets_table(sizes, results)
    print(target.text(), end="\n\n")
    wall = time.perf_counter() - wall
    load_end = other_load()
    footer = (
        f"benchmark wall time {wall:.0f} s (sections {', '.join(sections)}); this process's peak RSS "
        f"{proc_status_mib('VmHWM'):.0f} MiB"
    )
    print(f"at end: {load_end}\n{footer}")

    if output is not None:
        config = cartpole_model_config()
        model_sizes = ", ".join(
            f"{k} {config[k]}" for k in ("n_emotions", "d_model", "n_layers", "n_heads") if k in config
        )
        training = (
            f"action_loss {config['action_loss']['class_path']}, dynamics action_input "
            f"{config['dynamics_loss']['init_args']['action_input']}, return_scale "
            f"{config['value_loss']['init_args']['return_scale']}"
        )
        lines = [
            "# Speed benchmark: planner, training schedules, end-to-end fit (CPU)",
            "",
            f"- command: `{command}`",
            f"- date: {started:%Y-%m-%d %H:%M} UTC (benchmark wall time {wall:.0f} s)",
            f"- machine: nproc {info['nproc']}, CPU {info['cpu']}, no GPU",
            f"- torch {info['torch']}, python {info['python']}, torch threads {torch.get_num_threads()}",
            f"- model: EmotionModel(obs_dim=4, n_actions=2) sized by configs/cartpole.yaml ({model_sizes})"
            f", context {CARTPOLE_MAX_STEPS + 1}; planner {make_planner(sizes.simulations)}",
            f"- training section: EmotionAgent with configs/cartpole.yaml's model section ({training})",
            f"- other load at start: {load_start}",
            f"- other load at end: {load_end}",
            f"- {footer}",
            "",
            target.markdown(),
            "",
            *[t.markdown() + "\n" for t in tables],
        ]
        output.write_text("\n".join(lines))
        print(f"wrote {output}")


if __name__ == "__main__":
    main()
