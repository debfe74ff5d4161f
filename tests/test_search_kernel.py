"""The compiled simulation loop (``emotion_rl/search_kernel.py``) against the numpy loop of ``EmotionMCTS``.

The two must build the same trees: every array equal (``np.array_equal``, not close), the same search outputs, and
the model called as often and with the same batched input. Random tiny models in float32 and float64, padded
histories, every Q transform and completion, root noise, both value readouts; then the compiled selection and
backup alone on crafted near-ties, where computing a float32 tree in float64 would choose differently; and which
loop runs when. The numpy loop itself is checked against the literal pseudocode in test_search.py and
test_search_schedule.py (whose searches take the compiled loop by default).
"""

from __future__ import annotations

import contextlib
import copy
import pickle
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import emotion_rl.search as search_module
from emotion_rl import EmotionMCTS, EmotionModel
from emotion_rl import search_kernel as kernel
from emotion_rl.fused import FusedSearchModel
from emotion_rl.search_rules import Rules, make_rules
from emotion_rl.tree import SLOTS, VISITS_PLUS_ONE, EdgeArrays, Tree

from conftest import N_ACTIONS, OBS_DIM, random_history

Q_TRANSFORMS = [
    ("literal", "child"),
    ("completed", "child"),
    ("completed", "parent"),
    ("minmax", "child"),
    ("minmax_completed", "child"),
    ("minmax_completed", "parent"),
]
TREE_ARRAYS = ("prior", "child_value", "child_state", "children", "node_visits", "node_value", "node_depth")
TREE_ARRAYS += ("num_nodes", "q_low", "q_high")


# ---------------------------------------------------------------------------------------------- helpers
class Recording:
    """The fused adapter, recording the observation of every ``expand`` call."""

    def __init__(self, model: EmotionModel) -> None:
        self.inner = FusedSearchModel(model)
        self.expanded: list[torch.Tensor] = []

    def root(self, history):
        return self.inner.root(history)

    def children(self, state, observation):
        return self.inner.children(state, observation)

    def expand(self, state, observation):
        self.expanded.append(observation.clone())
        return self.inner.expand(state, observation)


def arrays(tree: Tree) -> dict[str, np.ndarray | None]:
    return {"edges": tree.edges.data} | {name: getattr(tree, name) for name in TREE_ARRAYS}


def search_both(planner: EmotionMCTS, model: EmotionModel, history, seed: int | None = None, explore: bool = False):
    """``planner``'s search with the compiled and with the numpy loop: per loop the tree, the result, and the
    recorded model inputs."""
    runs = []
    for compiled in (True, False):
        copied = copy.copy(planner)
        copied.kernel = compiled
        trees: list[Tree] = []
        run = copied.run_simulations
        copied.run_simulations = lambda tree, *args, _run=run, _trees=trees: (_run(tree, *args), _trees.append(tree))
        recording = Recording(model)
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        with compiled_calls() as calls:
            result = copied.search(recording, history, generator=generator, explore=explore)
        assert (calls[0] > 0) == compiled, "each loop ran"
        runs.append((trees[0], result, recording.expanded))
    return runs


def assert_same_search(runs) -> None:
    (tree, result, expanded), (numpy_tree, numpy_result, numpy_expanded) = runs
    for name, value in arrays(tree).items():
        expected = arrays(numpy_tree)[name]
        if expected is None:
            assert value is None, name
            continue
        assert value.dtype == expected.dtype and np.array_equal(value, expected), name
    assert set(result.keys(True, True)) == set(numpy_result.keys(True, True))
    for key in numpy_result.keys(True, True):
        assert torch.equal(result[key], numpy_result[key]), key
    assert len(expanded) == len(numpy_expanded), "the model is called as often"
    for call, (a, b) in enumerate(zip(expanded, numpy_expanded, strict=True)):
        assert torch.equal(a, b), f"expand call {call} sees the same batched input"


def tiny_model(seed: int, dtype: torch.dtype, sharpen: bool = True) -> EmotionModel:
    torch.manual_seed(seed)
    model = EmotionModel(OBS_DIM, N_ACTIONS, d_model=8, n_layers=1, n_heads=2, context_window=15).to(dtype).eval()
    if sharpen:  # peaked priors, spread values: deeper, more varied trees
        with torch.no_grad():
            model.policy_head.weight.mul_(4.0)
            model.value_heads.w2.mul_(4.0)
    return model


def padded_history(batch: int, length: int, seed: int, dtype: torch.dtype, masked: bool):
    history = random_history(batch, length, seed=seed).apply(lambda x: x.to(dtype) if x.is_floating_point() else x)
    if masked:
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(1, length + 1, (batch,), generator=g)
        history["mask"] = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    return history


# ---------------------------------------------------------------------------------------------- whole searches
cases = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**16),
        "dtype": st.sampled_from([torch.float32, torch.float64]),
        "sharpen": st.booleans(),
        "batch": st.integers(1, 9),
        "length": st.integers(1, 9),
        "masked": st.booleans(),
        "num_simulations": st.sampled_from([1, 2, 3, 8, 50]),
        "max_depth": st.integers(1, 4),
        "q_transform": st.sampled_from(Q_TRANSFORMS),
        "c_puct": st.sampled_from([0.0, 0.5, 1.0, 1.25, 2.5]) | st.floats(0.0, 4.0),
        "noise": st.booleans(),
        "value_readout": st.sampled_from(["mean", "policy"]),
    }
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(cases)
def test_compiled_and_numpy_loops_build_identical_trees(case):
    """Random tiny models and settings: the same tree array by array, the same outputs, the same model calls."""
    model = tiny_model(case["seed"], case["dtype"], case["sharpen"])
    history = padded_history(case["batch"], case["length"], case["seed"], case["dtype"], case["masked"])
    q_transform, completed_value = case["q_transform"]
    planner = EmotionMCTS(
        case["num_simulations"],
        case["c_puct"],
        case["max_depth"],
        q_transform=q_transform,
        completed_value=completed_value,
        dirichlet_fraction=0.25 if case["noise"] else 0.0,
        value_readout=case["value_readout"],
    )
    assert_same_search(search_both(planner, model, history, seed=case["seed"], explore=case["noise"]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("q_transform", "completed_value"), Q_TRANSFORMS)
def test_every_q_transform_at_the_shipped_settings(q_transform, completed_value, dtype):
    """50 simulations, depth 3, 9 environments of padded histories, root noise on: deep trees with many batched
    expansions."""
    model, history = tiny_model(3, dtype), padded_history(9, 8, 3, dtype, masked=True)
    planner = EmotionMCTS(50, q_transform=q_transform, completed_value=completed_value, dirichlet_fraction=0.25)
    runs = search_both(planner, model, history, seed=5, explore=True)
    assert_same_search(runs)
    tree = runs[0][0]
    assert tree.node_depth.max() == 2 and len(runs[0][2]) >= 3  # the test reaches max_depth through the model


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("prefetch", [True, False])
def test_any_schedule_and_no_prefetch(fraction, prefetch, monkeypatch):
    """The compiled loop follows the module's WAIT_FRACTION and works without the roots' prefetched children, as
    the numpy loop does (the model is then called at the same points with the same input)."""
    monkeypatch.setattr(search_module, "WAIT_FRACTION", fraction)
    if not prefetch:
        monkeypatch.setattr(search_module, "prefetch_root", lambda *args: None)
    model, history = tiny_model(11, torch.float32), padded_history(7, 6, 11, torch.float32, masked=True)
    assert_same_search(search_both(EmotionMCTS(30, q_transform="minmax_completed"), model, history))


# ---------------------------------------------------------------------------------------------- the compiled parts
def near_tie_tree(rng: np.random.Generator, dtype: np.dtype, batch: int = 4, max_nodes: int = 64) -> Tree:
    """A tree whose edges are made so that every node's scores ``Q + explore / (1 + N)`` round to about the same
    value (a float32 tie or an ulp apart): the argmax then depends on every rounding of the score."""
    size, n_emotions = batch * max_nodes + 1, 8
    visits = rng.integers(1, 7, (size, n_emotions)) * (rng.random((size, n_emotions)) < 0.75)
    visits_plus_one = (visits + 1).astype(dtype)
    node_visits = visits.sum(axis=1).astype(dtype)
    c_prior = (rng.uniform(0.0, 2.5) * rng.dirichlet(np.ones(n_emotions), size)).astype(dtype)
    explore = c_prior * np.sqrt(np.maximum(node_visits, dtype.type(1)))[:, None]
    target = rng.normal(size=(size, 1)).astype(dtype)
    near = target - explore / visits_plus_one  # a score of about ``target`` for every emotion
    q = np.where(visits > 0, near, dtype.type(0))
    edges = np.zeros((size, SLOTS, n_emotions), dtype=dtype)
    for slot, value in enumerate((q, explore, visits_plus_one, q * visits, c_prior)):
        edges[:, slot] = value
    per_env = near[:-1].reshape(batch, -1)
    low, high = np.quantile(per_env, 0.2, axis=1).astype(dtype), np.quantile(per_env, 0.8, axis=1).astype(dtype)
    low[0], high[0] = np.inf, -np.inf  # nothing backed up yet
    high[1] = low[1]  # one value seen
    tree = Tree(
        edges=EdgeArrays(edges),
        prior=c_prior.copy(),
        child_value=np.where(visits > 0, rng.normal(size=visits.shape), near).astype(dtype),
        child_state=np.zeros((size, n_emotions, 1), dtype=dtype),
        children=np.full((size, n_emotions), size - 1, dtype=np.int64),
        node_visits=node_visits,
        node_value=np.median(near, axis=1).astype(dtype),
        node_depth=np.zeros(size, dtype=np.int64),
        num_nodes=np.full(batch, max_nodes, dtype=np.int64),
        c_puct=1.0,
        q_low=low,
        q_high=high,
    )
    tree.clear_sink()
    return tree


def compiled_select(tree: Tree, rules: Rules, nodes: np.ndarray) -> np.ndarray:
    flags = kernel.kernel_rules(rules)
    one = tree.prior.dtype.type(1)
    chosen = []
    for node in nodes:
        env = tree.environment(node)
        low, high = (tree.q_low[env], tree.q_high[env]) if flags.minmax else (one, one)
        args = (flags.completed, flags.by_parent, flags.minmax, low, high, one)
        chosen.append(kernel._select(tree.edges.data, tree.child_value, tree.node_value, int(node), *args))
    return np.array(chosen)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("q_transform", "completed_value"), Q_TRANSFORMS)
def test_compiled_selection_matches_the_rules_at_near_ties(q_transform, completed_value, dtype):
    """spec 1.2 selection, node by node: the compiled choice is ``Rules.select``'s on scores that tie or differ by
    an ulp. In float32 the scores round as numpy's float32 (checked sensitive: float64 scores choose otherwise)."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(Q_TRANSFORMS.index((q_transform, completed_value)))
    tree = near_tie_tree(rng, dtype)
    nodes = np.arange(tree.sink)
    rules = make_rules(q_transform, completed_value)
    expected = rules.select(tree, nodes, None)
    assert np.array_equal(compiled_select(tree, rules, nodes), expected)
    if q_transform == "literal" and dtype == np.float32:
        wide = tree.edges.q.astype(np.float64) + tree.edges.explore / tree.edges.visits_plus_one.astype(np.float64)
        assert (wide[:-1].argmax(axis=1) != expected).mean() > 0.05


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_backup_matches_tree_backup(dtype):
    """spec 1.4 backup, path by path, against ``Tree.backup`` on the same paths: every array equal, the sink
    cleared. Checked sensitive: the exploration terms computed in float64 would round otherwise in float32."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(7)
    batch, max_nodes, depth_limit = 5, 64, 4
    tree = near_tie_tree(rng, dtype, batch, max_nodes)
    tree.q_low[:], tree.q_high[:] = np.inf, -np.inf
    numpy_tree = copy.deepcopy(tree)
    one, touched = dtype.type(1), set()
    for _ in range(40):
        depth = rng.integers(1, depth_limit + 1, batch)
        nodes = np.full((batch, depth_limit), tree.sink, dtype=np.int64)
        emotions = rng.integers(0, 8, (batch, depth_limit))
        for b in range(batch):
            nodes[b, : depth[b]] = b * max_nodes + rng.choice(max_nodes, depth[b], replace=False)
            touched.update(nodes[b, : depth[b]].tolist())
        leaf = rng.normal(size=batch).astype(dtype)
        numpy_tree.backup(nodes, emotions, leaf)
        for b in range(batch):
            kernel._backup(
                tree.edges.data, tree.node_visits, tree.q_low, tree.q_high, True, b, nodes[b], emotions[b],
                int(depth[b]), leaf[b], one,
            )  # fmt: skip
    numpy_tree.clear_sink()
    for name, value in arrays(tree).items():
        assert np.array_equal(value, arrays(numpy_tree)[name]), name
    assert np.isfinite(tree.q_low).all() and (tree.q_low < tree.q_high).all()
    if dtype == np.float32:
        rows = sorted(touched)
        wide = tree.edges.c_prior[rows].astype(np.float64) * np.sqrt(tree.node_visits[rows].astype(np.float64))[:, None]
        assert not np.array_equal(wide.astype(dtype), tree.edges.explore[rows])


# ---------------------------------------------------------------------------------------------- which loop runs
@contextlib.contextmanager
def compiled_calls():
    """Count the compiled loop's steps (``CompiledLoop.advance`` calls) while in the block."""
    calls = [0]
    advance = kernel.CompiledLoop.advance

    def counting(self, *args, **kwargs):
        calls[0] += 1
        return advance(self, *args, **kwargs)

    kernel.CompiledLoop.advance = counting
    try:
        yield calls
    finally:
        kernel.CompiledLoop.advance = advance


@pytest.fixture
def count_compiled():
    with compiled_calls() as calls:
        yield calls


def test_deterministic_rules_run_compiled_by_default(count_compiled):
    calls = count_compiled
    model, history = tiny_model(1, torch.float32), padded_history(3, 4, 1, torch.float32, masked=False)
    for q_transform, completed_value in Q_TRANSFORMS:
        planner = EmotionMCTS(8, q_transform=q_transform, completed_value=completed_value, dirichlet_fraction=0.25)
        before = calls[0]
        planner.search(model, history, generator=torch.Generator().manual_seed(0), explore=True)
        assert calls[0] > before, q_transform
    before = calls[0]
    pickle.loads(pickle.dumps(EmotionMCTS(8))).search(model, history)  # a worker process's copy
    assert calls[0] > before


@pytest.mark.parametrize("options", [dict(tie_break="random"), dict(root_rule="gumbel", gumbel_considered=4)])
def test_random_ties_and_the_gumbel_root_keep_the_numpy_loop(options, count_compiled):
    calls = count_compiled
    model, history = tiny_model(2, torch.float64), padded_history(3, 5, 2, torch.float64, masked=True)
    planner = EmotionMCTS(12, c_puct=0.5, **options)
    result = planner.search(model, history, generator=torch.Generator().manual_seed(3), explore=True)
    forced = copy.copy(planner)
    forced.kernel = False
    numpy_result = forced.search(model, history, generator=torch.Generator().manual_seed(3), explore=True)
    assert calls[0] == 0
    assert torch.equal(result["visit_counts"], numpy_result["visit_counts"])
    forced.kernel = True
    with pytest.raises(ValueError, match="compiled"):
        forced.search(model, history)


def test_rules_the_kernel_does_not_know_keep_the_numpy_loop(count_compiled):
    calls = count_compiled
    planner = EmotionMCTS(8)
    planner.rules = Rules(q_transform=lambda tree, edges, node: -edges.q)
    assert kernel.kernel_rules(planner.rules) is None
    planner.search(tiny_model(4, torch.float64), padded_history(2, 3, 4, torch.float64, masked=False))
    assert calls[0] == 0


def test_without_numba_the_numpy_loop_runs(monkeypatch, count_compiled):
    model, history = tiny_model(5, torch.float32), padded_history(4, 5, 5, torch.float32, masked=True)
    compiled = EmotionMCTS(20, q_transform="completed").search(model, history)
    before = count_compiled[0]
    monkeypatch.setitem(sys.modules, "emotion_rl.search_kernel", None)  # the import fails
    fallback = EmotionMCTS(20, q_transform="completed").search(model, history)
    assert before > 0 and count_compiled[0] == before
    assert torch.equal(compiled["visit_counts"], fallback["visit_counts"])
    forced = EmotionMCTS(20)
    forced.kernel = True
    with pytest.raises(ImportError):
        forced.search(model, history)


def test_the_numpy_loop_leaves_the_sink_as_built():
    """The numpy loop's backups write garbage into the sink; it ends the search as built, as the compiled loop
    (which never writes there) leaves it."""
    (tree, _, _), (numpy_tree, _, _) = search_both(
        EmotionMCTS(20), tiny_model(6, torch.float64), padded_history(3, 4, 6, torch.float64, masked=False)
    )
    for built in (tree, numpy_tree):
        assert (built.edges.data[built.sink, VISITS_PLUS_ONE] == 1).all() and built.node_visits[built.sink] == 0
        assert not built.edges.data[built.sink, [0, 1, 3, 4]].any()
