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

This one script holds the sections, what they share, the targets check and the results it writes (docs/performance.md
reads them).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tensordict import TensorDict

from emotion_rl import testing
from emotion_rl.agent import EmotionAgent
from emotion_rl.mcts.reference import literal_search
from emotion_rl.mcts.search import EmotionMCTS
from emotion_rl.mcts.search_model import FusedSearchModel
from emotion_rl.mcts.tree import Tree
from emotion_rl.model import EmotionModel
from emotion_rl.testing import training_batch

ROOT = Path(__file__).resolve().parents[1]

OBS_DIM, N_ACTIONS, N_EMOTIONS = 4, 2, 8  # CartPole-v1
CARTPOLE_MAX_STEPS = 500  # CartPole-v1's time limit: the agent's context is 500 + 1
CONFIG = ROOT / "configs" / "cartpole.yaml"
RESULTS = ROOT / "benchmarks" / "RESULTS_speed.md"
SCRIPT = ROOT / "benchmarks" / "speed.py"  # the entry point, also run as a worker subprocess
JSON_MARK = "SPEED_JSON "


@dataclass
class Sizes:
    planner_envs: tuple[int, ...]
    histories: tuple[int, ...]
    simulations: int
    literal_envs: int  # literal_search is timed on at most this many environments, then scaled per environment
    f64_rows: int  # rows checked against the literal reference on a float64 copy
    min_time: float  # seconds of repeated batched searches per configuration (at least min_reps)
    min_reps: int
    overhead_envs: tuple[int, ...]
    overhead_histories: tuple[int, ...]
    train_episodes: int
    train_length: int
    timestep_steps: int  # timesteps of the per-timestep schedule that are timed (the first k of one episode)
    episode_reps: int
    fit_envs: int
    fit_simulations: int
    fit_max_steps: int
    memory_envs: tuple[int, ...]
    memory_sims: tuple[int, ...]
    memory_histories: tuple[int, ...]
    rss_points: tuple[tuple[int, int, int], ...] = field(default_factory=tuple)  # (envs, sims, history)


FULL = Sizes(
    planner_envs=(1, 16, 64),
    histories=(16, 64, 128),
    simulations=50,
    literal_envs=16,
    f64_rows=4,
    min_time=1.5,
    min_reps=5,
    overhead_envs=(16, 64),
    overhead_histories=(64, 128),
    train_episodes=4,
    train_length=200,
    timestep_steps=200,
    episode_reps=5,
    fit_envs=16,
    fit_simulations=50,
    fit_max_steps=400,
    memory_envs=(16, 64),
    memory_sims=(25, 50, 100),
    memory_histories=(64, 128),
    rss_points=((16, 25, 128), (16, 50, 128), (64, 25, 128), (64, 50, 128)),
)
QUICK = Sizes(
    planner_envs=(1, 16),
    histories=(64,),
    simulations=50,
    literal_envs=2,
    f64_rows=2,
    min_time=0.2,
    min_reps=1,
    overhead_envs=(16, 64),
    overhead_histories=(64,),
    train_episodes=2,
    train_length=200,
    timestep_steps=10,
    episode_reps=1,
    fit_envs=16,
    fit_simulations=50,
    fit_max_steps=8,
    memory_envs=(4, 16),
    memory_sims=(10, 20),
    memory_histories=(16,),
)


def cartpole_model_config() -> dict:
    """The ``model:`` section of configs/cartpole.yaml, its base included (the agent's arguments, without the
    env-linked sizes)."""
    from omegaconf import OmegaConf

    from emotion_rl.cli import load_config

    return dict(OmegaConf.to_container(load_config(CONFIG).model, resolve=True))


def make_model(context_window: int = CARTPOLE_MAX_STEPS) -> EmotionModel:
    """``EmotionModel(obs_dim=4, n_actions=2)`` sized as in configs/cartpole.yaml (d_model 64, 2 layers, 4 heads)."""
    config = cartpole_model_config()
    sizes = {k: config[k] for k in ("n_emotions", "d_model", "n_layers", "n_heads", "head_hidden") if k in config}
    torch.manual_seed(0)
    return EmotionModel(OBS_DIM, N_ACTIONS, context_window=context_window, **sizes).eval()


def make_planner(num_simulations: int) -> EmotionMCTS:
    """``EmotionMCTS(num_simulations)`` with the config's ``c_puct`` and ``max_depth`` (1.0 and 3)."""
    planner = cartpole_model_config()["planner"]["init_args"]
    return EmotionMCTS(num_simulations, c_puct=planner.get("c_puct", 1.0), max_depth=planner.get("max_depth", 3))


def make_history(envs: int, length: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> TensorDict:
    """A random real history ``[envs, length]`` with CartPole's sizes (:func:`emotion_rl.testing.random_history`)."""
    return testing.random_history(envs, length, OBS_DIM, N_ACTIONS, seed=seed, n_emotions=N_EMOTIONS, dtype=dtype)


def make_episodes(batch: int, length: int, seed: int = 0) -> TensorDict:
    """Whole episodes ``[batch, length]`` with CartPole's sizes (:func:`emotion_rl.testing.random_episodes`)."""
    return testing.random_episodes([length] * batch, length, seed, torch.float32, OBS_DIM, N_ACTIONS, N_EMOTIONS)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def repeat_median(fn, min_time: float, min_reps: int) -> tuple[float, int, object]:
    """Median wall time of ``fn()`` over at least ``min_reps`` calls and ``min_time`` seconds (one warm-up first)."""
    fn()
    gc.collect()
    times, out = [], None
    while len(times) < min_reps or sum(times) < min_time:
        seconds, out = timed(fn)
        times.append(seconds)
    return statistics.median(times), len(times), out


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2 (the torch profiler's C++ start/stop lines)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


def fmt(x: float, digits: int = 3) -> str:
    if x != x:  # nan
        return "n/a"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}" if abs(x) < 100 else f"{x:.0f}"


class Table:
    def __init__(self, title: str, headers: list[str], notes: list[str] | None = None) -> None:
        self.title, self.headers, self.rows, self.notes = title, headers, [], list(notes or [])

    def add(self, *row) -> None:
        self.rows.append([str(c) for c in row])

    def text(self) -> str:
        widths = [
            max(len(h), *(len(r[i]) for r in self.rows)) if self.rows else len(h) for i, h in enumerate(self.headers)
        ]
        line = "  ".join(h.rjust(w) for h, w in zip(self.headers, widths, strict=True))
        out = [f"== {self.title}", line, "-" * len(line)]
        out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in self.rows]
        out += [f"   {n}" for n in self.notes]
        return "\n".join(out)

    def markdown(self) -> str:
        out = [f"### {self.title}", "", "| " + " | ".join(self.headers) + " |"]
        out.append("|" + "|".join(" --- " for _ in self.headers) + "|")
        out += ["| " + " | ".join(r) + " |" for r in self.rows]
        if self.notes:
            out.append("")
            out += [f"- {n}" for n in self.notes]
        return "\n".join(out)


def emit(table: Table, tables: list[Table]) -> None:
    print(table.text(), end="\n\n", flush=True)
    tables.append(table)


def run_worker(args: list[str], threads: int, timeout: float = 900) -> dict:
    """Run speed.py as a worker subprocess; returns its JSON line (stderr and stdout are kept on failure)."""
    cmd = [sys.executable, str(SCRIPT), "--threads", str(threads), *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(JSON_MARK):
            return json.loads(line[len(JSON_MARK) :])
    raise RuntimeError(f"worker {args} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def proc_status_mib(key: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, from /proc/self/status, in MiB.

    Not ``resource.getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries the spawning process's peak RSS over
    ``vfork``/``exec`` into it, so a subprocess started by a 2 GiB Python process reports at least 2 GiB.
    ``VmHWM`` belongs to the process's own address space (and can be reset, :func:`reset_peak_rss`).
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------------- sections 1, 2 and 4b: the planner
def bench_planner(sizes: Sizes, results: dict) -> Table:
    sims = sizes.simulations
    table = Table(
        f"1. Planner simulations per second ({sims} simulations per search, float32, sims = envs x {sims})",
        [
            "envs",
            "history",
            "planner s/search",
            "planner sims/s",
            "literal s/env",
            "literal sims/s",
            "literal timed",
            "model calls",
            "speed-up",
            "identical f32",
            "identical f64",
        ],
        notes=[
            "planner: EmotionMCTS(50).search(model, history) on the whole [envs, T] batch; median of repeated "
            "searches, interleaved with the literal runs (planner, a few literal rows, planner, ...) so that both see "
            "the same machine conditions.",
            "literal: emotion_rl.mcts.reference.literal_search once per environment; 'literal timed' = environments "
            "actually timed (k/N: timed on the first k of N rows and scaled per environment to N).",
            "model calls: batched model calls per planner search (the fused adapter's search_prefix at the root, "
            "one children call for the root's 8 children, one expand call per batch of waiting expansions) / full "
            "model.evaluate calls per literal environment (root + its expansions).",
            "identical f32: root visit counts of the timed float32 runs, planner row vs literal row, for every "
            "literal-timed row. identical f64: the same on a float64 copy of the model and history (first rows).",
        ],
    )
    model = make_model()
    model64 = copy.deepcopy(model).double()
    planner = make_planner(sims)
    tree_args = (planner.c_puct, planner.max_depth)
    for length in sizes.histories:
        for envs in sizes.planner_envs:
            history = make_history(envs, length, seed=length)
            k = min(envs, sizes.literal_envs)
            # Interleaved: planner search, literal on a few rows, planner search, ... so that both see the same
            # machine conditions (this machine's shared CPUs have slow phases lasting seconds).
            result = planner.search(model, history)  # warm-up
            literal_search(model, history[0], sims, *tree_args)  # warm-up
            gc.collect()
            planner_times, t_literal, same32, literal_calls = [], 0.0, 0, 0
            rows = list(range(k))
            chunk = max(1, -(-k // max(sizes.min_reps, 1)))
            while rows or len(planner_times) < sizes.min_reps or sum(planner_times) < sizes.min_time:
                seconds, result = timed(planner.search, model, history)
                planner_times.append(seconds)
                for row in rows[:chunk]:
                    stats: dict = {}
                    seconds, lit = timed(literal_search, model, history[row], sims, *tree_args, stats=stats)
                    t_literal += seconds
                    same32 += int(torch.equal(lit, result["visit_counts"][row]))
                    literal_calls += stats["model_calls"]
                rows = rows[chunk:]
            t_planner = statistics.median(planner_times)
            per_env = t_literal / k
            counter = ModelCallTimer(copy.deepcopy(model))
            planner.search(counter.search_model, history)
            planner_calls = sum(counter.calls[name] for name in ("search_prefix", "children", "expand"))
            # float64 copy: both implementations on the same double model, first rows
            k64 = min(envs, sizes.f64_rows)
            history64 = make_history(envs, length, seed=length, dtype=torch.float64)
            counts64 = planner.search(model64, history64)["visit_counts"]
            same64 = sum(
                int(torch.equal(literal_search(model64, history64[r], sims, *tree_args), counts64[r]))
                for r in range(k64)
            )
            planner_rate = envs * sims / t_planner
            literal_rate = sims / per_env
            speedup = planner_rate / literal_rate
            results["planner"][(envs, length)] = dict(
                speedup=speedup,
                same32=(same32, k),
                same64=(same64, k64),
                planner_rate=planner_rate,
                literal_per_env=per_env,
                literal_calls=literal_calls / k,
                planner_calls=planner_calls,
            )
            timed_note = f"{k}/{envs}" + (" scaled" if k < envs else "")
            table.add(
                envs,
                length,
                fmt(t_planner),
                fmt(planner_rate),
                fmt(per_env),
                fmt(literal_rate),
                timed_note,
                f"{planner_calls} / {literal_calls / k:.1f}",
                f"{speedup:.1f}x",
                f"{'yes' if same32 == k else 'NO'} ({same32}/{k})",
                f"{'yes' if same64 == k64 else 'NO'} ({same64}/{k64})",
            )
    return table


class ModelCallTimer:
    """Wall-clock timers around the planner's model calls: the fused adapter's entry points and the model's own.

    ``search_model`` is a :class:`~emotion_rl.mcts.search_model.FusedSearchModel`
    of ``model`` (what ``EmotionMCTS.search``
    builds for an :class:`EmotionModel`) whose ``search_prefix``, ``children`` and ``expand`` are wrapped; the
    model's ``heads`` (the root's, after the prefix) and ``encode_imagined`` are wrapped too. The wrappers are
    instance attributes, so internal calls (``root`` -> ``search_prefix`` + ``heads``, ``children`` ->
    ``encode_imagined`` + ``heads``) go through them as well; only the outermost call is timed, nested ones are
    only counted. Pass ``search_model`` to ``EmotionMCTS.search``.
    """

    ADAPTER = ("search_prefix", "children", "expand")
    MODEL = ("heads", "encode_imagined")

    def __init__(self, model: EmotionModel) -> None:
        self.seconds: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self._depth = 0
        self.model = model
        self.search_model = FusedSearchModel(model)
        for owner, names in ((self.search_model, self.ADAPTER), (model, self.MODEL)):
            for name in names:
                setattr(owner, name, self._wrap(name, getattr(owner, name)))

    def _wrap(self, name, method):
        def wrapper(*args, **kwargs):
            self.calls[name] += 1
            if self._depth:
                return method(*args, **kwargs)
            self._depth += 1
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
                self._depth -= 1

        return wrapper

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def bench_overhead(sizes: Sizes, results: dict) -> Table:
    sims = sizes.simulations
    table = Table(
        f"2. Planner overhead: search time / time inside its model calls ({sims} simulations, float32)",
        [
            "envs",
            "history",
            "search s",
            "model s",
            "prefix s",
            "root heads s",
            "root children s",
            "expansion s",
            "expansion calls",
            "overhead",
        ],
        notes=[
            "model s = wall time inside the fused adapter's calls (emotion_rl.mcts.search_model.FusedSearchModel): "
            "search_prefix (history encoding and expansion cache) + model.heads (root) + children (the root's 8 "
            "children, one call) + expand (the batched expansions); overhead = search s / model s (1.0 = the "
            "physical limit); sums over the timed searches, per search.",
        ],
    )
    timer = ModelCallTimer(make_model())
    search_model = timer.search_model
    planner = make_planner(sims)
    for length in sizes.overhead_histories:
        for envs in sizes.overhead_envs:
            history = make_history(envs, length, seed=length)
            planner.search(search_model, history)  # warm-up
            gc.collect()
            timer.reset()
            total, reps = 0.0, 0
            while reps < sizes.min_reps or total < sizes.min_time:
                seconds, _ = timed(planner.search, search_model, history)
                total += seconds
                reps += 1
            ratio = total / timer.total
            results["overhead"][(envs, length)] = ratio
            results["model_time"][(envs, length)] = dict(
                model=timer.total / reps,
                per_expansion_call=timer.seconds["expand"] / max(timer.calls["expand"], 1),
            )
            table.add(
                envs,
                length,
                fmt(total / reps),
                fmt(timer.total / reps),
                fmt(timer.seconds["search_prefix"] / reps),
                fmt(timer.seconds["heads"] / reps),
                fmt(timer.seconds["children"] / reps),
                fmt(timer.seconds["expand"] / reps),
                f"{timer.calls['expand'] / reps:.1f}",
                f"{ratio:.2f}x",
            )
    return table


def worker_rss(envs: int, sims: int, length: int) -> dict:
    """Peak RSS growth of one search in a fresh process: peak RSS during the search minus RSS before it."""
    model = make_model()
    history = make_history(envs, length, seed=length)
    make_planner(1).search(make_model(), make_history(1, 2))  # one-time lazy initialisation, tiny
    gc.collect()
    reset = reset_peak_rss()
    before = proc_status_mib("VmRSS")
    make_planner(sims).search(model, history)
    after = proc_status_mib("VmHWM")
    return dict(growth_mib=after - before, before_mib=before, peak_mib=after, reset=reset)


def tree_numpy_bytes(tree: Tree) -> int:
    """Bytes of a search tree's numpy arrays."""
    return sum(a.nbytes for a in tree.arrays)


def profiled_memory(model: EmotionModel, planner: EmotionMCTS, history: TensorDict) -> dict[str, int]:
    """Live tensor bytes during one search, from the torch profiler's memory events (allocations and frees).

    ``peak``: the maximum over the whole search. ``after_encode``: the maximum during the rest of the search (root
    heads, tree, simulations) above the level live when the fused adapter's ``search_prefix`` returned (the
    history's encoding: its key/value cache). ``tree``: bytes of the returned tree arrays. The search tree's own
    arrays are numpy arrays (:class:`emotion_rl.mcts.tree.Tree`), which the profiler does not see: their bytes
    (``numpy``) are added to ``peak`` and ``after_encode``.
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    search_model = FusedSearchModel(model)
    prefix = search_model.search_prefix
    trees: list[Tree] = []
    from_root = Tree.__dict__["from_root"]  # the classmethod itself, restored afterwards

    def marked_prefix(*args, **kwargs):
        with record_function("speed:encode"):
            return prefix(*args, **kwargs)

    def recorded_from_root(cls, *args, **kwargs):
        trees.append(from_root.__func__(cls, *args, **kwargs))
        return trees[-1]

    search_model.search_prefix = marked_prefix
    Tree.from_root = classmethod(recorded_from_root)
    try:
        with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            result = planner.search(search_model, history)
    finally:
        Tree.from_root = from_root
    numpy_bytes = tree_numpy_bytes(trees[0])
    events = prof.profiler.kineto_results.events()
    encode_end = max(e.end_ns() for e in events if e.name() == "speed:encode")
    live = peak = level = after = 0
    for start, nbytes in sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]"):
        live += nbytes
        peak = max(peak, live)
        if start <= encode_end:
            level = live
        else:
            after = max(after, live - level)
    tree = result["tree"]
    tree_bytes = sum(v.numel() * v.element_size() for v in tree.values(include_nested=True, leaves_only=True))
    del events, prof
    gc.collect()  # the profiler's results sit in reference cycles: hundreds of MiB per search until collected
    return dict(peak=peak + numpy_bytes, after_encode=after + numpy_bytes, tree=tree_bytes)


def bench_memory(sizes: Sizes, threads: int, results: dict) -> Table:
    table = Table(
        "4b. Planner tensor memory during one search (float32, torch profiler)",
        ["envs", "sims", "history", "peak MiB", "after-encode MiB", "tree MiB", "per-node-sequence MiB"],
        notes=[
            "peak = maximum of live tensor bytes allocated inside search() (profiler memory events; the model's "
            "parameters and the history are allocated before and not counted) plus the search tree's numpy arrays "
            "(not seen by the profiler; their nbytes). after-encode = maximum during the rest of the search (root "
            "heads, tree, simulations) above what was live when the fused adapter's search_prefix returned (the "
            "encoding: its key/value cache), plus the numpy tree. tree = the returned tree arrays.",
            "per-node-sequence = envs x (sims + 1) x (history + 1) x d_model x 4 bytes: what a planner that kept "
            "one imagined sequence's hidden states per node would hold (the product that must not appear).",
        ],
    )
    model = make_model()
    d_model = model.position_embed.embedding_dim
    memory = {}
    for length in sizes.memory_histories:
        for envs in sizes.memory_envs:
            for sims in sizes.memory_sims:
                history = make_history(envs, length, seed=length)
                out = profiled_memory(model, make_planner(sims), history)
                out["product"] = envs * (sims + 1) * (length + 1) * d_model * 4
                memory[(envs, sims, length)] = out
                table.add(
                    envs,
                    sims,
                    length,
                    f"{out['peak'] / 2**20:.2f}",
                    f"{out['after_encode'] / 2**20:.3f}",
                    f"{out['tree'] / 2**20:.3f}",
                    f"{out['product'] / 2**20:.1f}",
                )
    results["memory"] = memory
    results["d_model"] = d_model
    if sizes.rss_points:
        rss = {}
        for envs, sims, length in sizes.rss_points:
            out = run_worker(
                ["--worker", "rss", "--envs", str(envs), "--sims", str(sims), "--history", str(length)], threads
            )
            rss[(envs, sims, length)] = out["growth_mib"]
        results["rss"] = rss
        table.notes.append(
            "peak-RSS growth of one search in a fresh subprocess (VmHWM during the search - VmRSS before it, "
            "after resetting VmHWM): "
            + ", ".join(f"{e} envs / {s} sims / T={t}: {g:.1f} MiB" for (e, s, t), g in rss.items())
        )
    return table


# ----------------------------------------------------------------------------------------- sections 3 and 4a: training
def make_manual_agent(schedule: str) -> EmotionAgent:
    """An agent with configs/cartpole.yaml's model section, driven outside a Trainer (as tests/test_agent.py)."""
    torch.manual_seed(0)
    config = {**cartpole_model_config(), "schedule": schedule}
    agent = EmotionAgent(obs_dim=OBS_DIM, n_actions=N_ACTIONS, max_episode_steps=CARTPOLE_MAX_STEPS, **config)
    optimizers = agent.configure_optimizers()  # the four Adams of spec 3.2
    agent.optimizers = lambda: optimizers
    agent.manual_backward = lambda loss: loss.backward()
    agent.log = lambda *args, **kwargs: None
    agent.log_dict = lambda *args, **kwargs: None
    return agent.train()


def bench_training(sizes: Sizes, results: dict) -> Table:
    n, length = sizes.train_episodes, sizes.train_length
    episodes = make_episodes(n, length)
    k = min(sizes.timestep_steps, length)
    table = Table(
        f"3. Training timesteps per second on {length}-step episodes (agent.train_batch, 4 Adam optimizers)",
        ["schedule", "batch", "timesteps timed", "optimizer steps", "seconds", "timesteps/s", "ratio"],
        notes=[
            "episode: each phase once on the whole batch (median of repeated train_batch calls, after one warm-up).",
            f"timestep: spec 2.3's loop, four optimizer steps per timestep on the prefix [:t+1]; timed on the first "
            f"{k} timesteps of one {length}-step episode (train_batch on that episode cut to t < {k}; its prefixes "
            f"are exactly those of the full episode's loop)"
            + ("" if k == length else ", so the per-timestep cost of the later, longer prefixes is not included")
            + ".",
        ],
    )
    agent = make_manual_agent("episode")
    batch = training_batch(episodes)
    t_episode, reps, _ = repeat_median(lambda: agent.train_batch(batch), 0.0, sizes.episode_reps)
    steps_episode = int(episodes["mask"].sum())
    rate_episode = steps_episode / t_episode

    agent = make_manual_agent("timestep")
    agent.train_batch(training_batch(episodes[:1, :2]))  # warm-up (Adam state)
    gc.collect()
    t_timestep, _ = timed(agent.train_batch, training_batch(episodes[:1, :k]))
    rate_timestep = k / t_timestep
    ratio = rate_episode / rate_timestep
    results["training"] = dict(ratio=ratio, k=k, length=length)
    table.add("timestep", f"1 x {length} (first {k})", k, 4 * k, fmt(t_timestep), fmt(rate_timestep), "1.0x")
    table.add("episode", f"{n} x {length}", steps_episode, 4, fmt(t_episode), fmt(rate_episode), f"{ratio:.0f}x")
    return table


def worker_fit(envs: int, sims: int, max_steps: int, threads: int) -> dict:
    """``emotion_rl.cli.main([...], run=False)`` then ``trainer.fit``: env steps per second and peak RSS."""
    import lightning as L

    from emotion_rl.cli import main

    save_dir = tempfile.mkdtemp(prefix="speed_fit_")
    try:
        start = time.perf_counter()
        cli = main(
            [
                "--config",
                str(CONFIG),
                "--data.num_envs",
                str(envs),
                "--model.planner.num_simulations",
                str(sims),
                "--trainer.max_steps",
                str(max_steps),
                "--trainer.val_check_interval",
                "1000000",
                "--trainer.num_sanity_val_steps",
                "0",
                "--trainer.logger.init_args.save_dir",
                save_dir,
            ],
            run=False,
        )
        torch.set_num_threads(threads)  # the CLI sets 1 unless OMP_NUM_THREADS is set; --threads wins here
        setup = time.perf_counter() - start
        marks: list[tuple[float, int]] = []
        datamodule = cli.datamodule

        class Marks(L.Callback):
            def on_train_batch_end(self, *args, **kwargs) -> None:
                marks.append((time.perf_counter(), datamodule.env_steps))

        cli.trainer.callbacks.append(Marks())
        start = time.perf_counter()
        cli.trainer.fit(cli.model, datamodule=datamodule)
        wall = time.perf_counter() - start
        steady = float("nan")
        if len(marks) >= 2:
            (t0, s0), (t1, s1) = marks[0], marks[-1]
            steady = (s1 - s0) / (t1 - t0) if t1 > t0 else float("nan")
        return dict(
            env_steps=datamodule.env_steps,
            episodes=datamodule.episodes,
            batches=len(marks),
            global_step=cli.trainer.global_step,
            setup_s=setup,
            fit_s=wall,
            rate=datamodule.env_steps / wall,
            steady_rate=steady,
            peak_rss_mib=proc_status_mib("VmHWM"),
            ru_maxrss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        )
    finally:
        shutil.rmtree(save_dir, ignore_errors=True)


def bench_fit(sizes: Sizes, threads: int, results: dict) -> Table:
    out = run_worker(
        [
            "--worker",
            "fit",
            "--envs",
            str(sizes.fit_envs),
            "--sims",
            str(sizes.fit_simulations),
            "--max-steps",
            str(sizes.fit_max_steps),
        ],
        threads,
    )
    results["fit"] = out
    table = Table(
        f"4a. End-to-end fit on CartPole-v1 ({sizes.fit_envs} envs, {sizes.fit_simulations} simulations, "
        f"max_steps {sizes.fit_max_steps}, no validation)",
        [
            "env steps",
            "episodes",
            "mean ep. length",
            "train batches",
            "fit s",
            "env steps/s (fit)",
            "env steps/s (steady)",
            "peak RSS MiB",
        ],
        notes=[
            "emotion_rl.cli.main(['--config', 'configs/cartpole.yaml', overrides], run=False), then trainer.fit, "
            "in a subprocess; env steps = the datamodule's env_steps counter. 'fit' = over the whole fit call "
            "(warm-up collection of 16 episodes, checkpoint at the end included); 'steady' = between the first and "
            "the last training batch. Peak RSS = VmHWM of that subprocess (/proc/self/status; its ru_maxrss "
            "would include this benchmark process's own peak, inherited over vfork/exec).",
            "a fresh agent plays short CartPole episodes: the histories it searches are short (mean episode length).",
        ],
    )
    table.add(
        out["env_steps"],
        out["episodes"],
        fmt(out["env_steps"] / max(out["episodes"], 1)),
        out["batches"],
        fmt(out["fit_s"]),
        fmt(out["rate"]),
        fmt(out["steady_rate"]),
        f"{out['peak_rss_mib']:.0f}",
    )
    return table


# -------------------------------------------------------------------------------------------- targets, results, driver
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
