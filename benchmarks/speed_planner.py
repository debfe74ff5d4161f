"""Speed sections 1, 2 and 4b: the planner against the literal reference, its overhead over its own model
calls, and its memory during one search."""

from __future__ import annotations

import copy
import gc
import statistics
import time
from collections import Counter

import torch
from speed_common import (
    Sizes,
    Table,
    fmt,
    make_history,
    make_model,
    make_planner,
    proc_status_mib,
    quiet_stderr,
    reset_peak_rss,
    run_worker,
    timed,
)
from tensordict import TensorDict

from emotion_rl.mcts.reference import literal_search
from emotion_rl.mcts.search import EmotionMCTS
from emotion_rl.mcts.search_model import FusedSearchModel
from emotion_rl.mcts.tree import Tree
from emotion_rl.model import EmotionModel


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
