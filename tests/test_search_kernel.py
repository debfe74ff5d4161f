"""The compiled simulation loop (``emotion_rl/mcts/loop.py``) against the numpy loop of ``EmotionMCTS``.

The two must build the same trees: every array equal (``np.array_equal``, not close), the same search outputs, and
the model called as often and with the same batched input. Random tiny models in float32 and float64, padded
histories, every Q transform and completion, root noise, both value readouts, the pUCT and the Gumbel root; then
the compiled selection, Gumbel root choice and backup alone on crafted near-ties, exact ties and degenerate
values, where computing in another float type or breaking ties otherwise would choose differently; and which
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

import emotion_rl.mcts.search as search_module
from emotion_rl import EmotionMCTS, EmotionModel
from emotion_rl.mcts import loop as kernel
from emotion_rl.mcts.rules import GumbelRoot, Rules, completion, halving_schedule, make_rules
from emotion_rl.mcts.search_model import FusedSearchModel
from emotion_rl.mcts.tree import SLOTS, VISITS_PLUS_ONE, EdgeArrays, Tree

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


gumbel_cases = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**16),
        "dtype": st.sampled_from([torch.float32, torch.float64]),
        "sharpen": st.booleans(),
        "batch": st.integers(1, 9),
        "length": st.integers(1, 9),
        "masked": st.booleans(),
        "num_simulations": st.sampled_from([1, 2, 3, 8, 50]),
        "max_depth": st.integers(1, 4),
        "q_transform": st.sampled_from(["literal", "completed", "minmax", "minmax_completed"]),
        "completed_value": st.sampled_from(["child", "parent"]),  # the inner rules' and the root's sigma
        "c_puct": st.sampled_from([0.5, 1.0, 1.25]) | st.floats(0.0, 4.0),
        "considered": st.sampled_from([1, 2, 3, 8]) | st.integers(1, 9),
        "c_visit": st.sampled_from([50.0, 30.0, 0.0]) | st.floats(0.0, 100.0),
        "c_scale": st.sampled_from([0.1, 0.5, 1.0, 0.0]) | st.floats(0.0, 2.0),
        "explore": st.booleans(),
        "dirichlet": st.booleans(),
        "value_readout": st.sampled_from(["mean", "policy"]),
    }
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(gumbel_cases)
def test_the_gumbel_root_builds_identical_trees(case):
    """The Gumbel root (its draws made in numpy before the simulations when exploring, zeros when not): the same
    root choice every simulation, so the same tree array by array, improved policy and selected emotion."""
    model = tiny_model(case["seed"], case["dtype"], case["sharpen"])
    history = padded_history(case["batch"], case["length"], case["seed"], case["dtype"], case["masked"])
    planner = EmotionMCTS(
        case["num_simulations"],
        case["c_puct"],
        case["max_depth"],
        q_transform=case["q_transform"],
        completed_value=case["completed_value"],
        dirichlet_fraction=0.25 if case["dirichlet"] else 0.0,
        root_rule="gumbel",
        gumbel_considered=case["considered"],
        gumbel_c_visit=case["c_visit"],
        gumbel_c_scale=case["c_scale"],
        value_readout=case["value_readout"],
    )
    assert_same_search(search_both(planner, model, history, seed=case["seed"], explore=case["explore"]))


@pytest.mark.parametrize("explore", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("num_simulations", [1, 2, 8, 50])
@pytest.mark.parametrize("considered", [1, 2, 3, 8])
def test_the_gumbel_root_for_every_considered_count_and_budget(considered, num_simulations, dtype, explore):
    """Every ``m`` and simulation budget, both float types, exploring or not, with every Q transform and
    completion over the cases (the pair turns with the case); 9 environments of padded histories."""
    case = [1, 2, 3, 8].index(considered) * 4 + [1, 2, 8, 50].index(num_simulations)
    q_transform = ["literal", "completed", "minmax", "minmax_completed"][case % 4]
    completed_value = ["child", "parent"][case // 4 % 2]
    model, history = tiny_model(20 + case, dtype), padded_history(9, 8, 20 + case, dtype, masked=True)
    planner = EmotionMCTS(
        num_simulations,
        q_transform=q_transform,
        completed_value=completed_value,
        root_rule="gumbel",
        gumbel_considered=considered,
    )
    assert_same_search(search_both(planner, model, history, seed=case, explore=explore))


@pytest.mark.parametrize("explore", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("completed_value", ["child", "parent"])
@pytest.mark.parametrize("q_transform", ["literal", "completed", "minmax", "minmax_completed"])
def test_the_gumbel_root_at_the_shipped_settings(q_transform, completed_value, dtype, explore):
    """50 simulations, depth 3, all 8 emotions considered, mctx's ``c_visit`` and ``c_scale``, 9 environments:
    every phase of the sequential halving, deep trees, many batched expansions."""
    model, history = tiny_model(4, dtype), padded_history(9, 8, 4, dtype, masked=True)
    planner = EmotionMCTS(50, q_transform=q_transform, completed_value=completed_value, root_rule="gumbel")
    runs = search_both(planner, model, history, seed=6, explore=explore)
    assert_same_search(runs)
    tree, result, expanded = runs[0]
    assert tree.node_depth.max() == 2 and len(expanded) >= 3
    assert "selected_emotion" in result.keys()


@pytest.mark.parametrize("considered", [2, 3, 8])
@pytest.mark.parametrize("q_transform", ["literal", "minmax_completed"])
@pytest.mark.parametrize("completed_value", ["child", "parent"])
def test_the_gumbel_root_with_a_flat_prior_breaks_exact_ties_alike(completed_value, q_transform, considered):
    """A flat prior and no exploring: every considered child has the same ``g + log P``, and under the parent
    completion the same completed ``Q`` until it is visited, so the root choices tie exactly (lowest index)."""
    model = tiny_model(9, torch.float32, sharpen=False)
    with torch.no_grad():
        model.policy_head.weight.zero_()
        model.policy_head.bias.zero_()
    history = padded_history(6, 5, 9, torch.float32, masked=True)
    planner = EmotionMCTS(
        16, q_transform=q_transform, completed_value=completed_value, root_rule="gumbel", gumbel_considered=considered
    )
    runs = search_both(planner, model, history)
    assert_same_search(runs)
    assert (runs[0][0].prior[runs[0][0].roots] == np.float32(1 / 8)).all()


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
    gumbel = EmotionMCTS(30, q_transform="completed", root_rule="gumbel", gumbel_considered=3)
    assert_same_search(search_both(gumbel, model, history, seed=11, explore=True))


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


ROOT_ROWS = ("near tie", "close q", "exact tie", "equal q", "subnormal spread", "nan q", "impossible emotions")
"""The kinds of crafted roots of :func:`gumbel_near_tie_roots`, in turn."""


def gumbel_near_tie_roots(
    rng: np.random.Generator, dtype: np.dtype, completed_value: str, c_visit: float, c_scale: float, batch: int = 600
) -> tuple[Tree, GumbelRoot, np.ndarray, np.ndarray]:
    """Roots (one node per environment) with a Gumbel root over them, a visit target per root and each root's kind
    (:data:`ROOT_ROWS`). At least two considered children have the target's count; by kind:

    - near tie: the draws are set so that every child's ``g + logits + sigma(q)`` is about the same float64
      value, up to the rounding of ``g + logits`` in the tree's type: the argmax depends on every rounding;
    - close q: the eligible children share ``g + logits`` and their completed values are a few ulps apart: the
      scores differ by less than a float32 ulp of the score, so only float64 scores tell them apart;
    - exact tie: a flat prior, no draw, equal completed values: every eligible score is the same;
    - equal q: equal completed values (``high - low = 0``, divided by ``tiny``), the scores from the logits;
    - subnormal spread: the completed values differ by subnormal amounts (``high - low < tiny``);
    - nan q: one child's completed value is NaN (min, max and argmax propagate it);
    - impossible emotions: every eligible child has prior 0 (score ``-inf``, as the ineligible ones).
    """
    n_emotions, one = 8, dtype.type(1)
    kind = np.arange(batch) % len(ROOT_ROWS)
    close = kind == ROOT_ROWS.index("close q")
    size = batch + 1
    considered = rng.random((batch, n_emotions)) < rng.uniform(0.2, 1.0, (batch, 1))
    eligible = considered & (rng.random((batch, n_emotions)) < 0.7)
    for row in range(batch):  # at least two eligible children; a close-q root also one ineligible
        chosen = rng.permutation(n_emotions)
        eligible[row, chosen[:2]] = considered[row, chosen[:2]] = True
        if close[row]:
            eligible[row, chosen[2]] = False
    target = np.where(close, rng.integers(1, 4, batch), rng.integers(0, 4, batch))  # close q: visited children
    visits = rng.integers(0, 5, (batch, n_emotions))
    visits = np.where(eligible, target[:, None], np.where(visits == target[:, None], visits + 1, visits))
    prior = rng.dirichlet(np.ones(n_emotions), batch).astype(dtype)
    q = rng.normal(size=(batch, n_emotions)).astype(dtype)
    child_value = rng.normal(size=(batch, n_emotions)).astype(dtype)
    node_value = rng.normal(size=batch).astype(dtype)
    gumbel = rng.gumbel(size=(batch, n_emotions)).astype(dtype)
    for row in range(batch):
        name = ROOT_ROWS[kind[row]]
        if name == "exact tie":
            prior[row], gumbel[row] = one / n_emotions, 0
        if name == "close q":  # the largest ones a few ulps apart, the score dominated by g + logits
            prior[row, eligible[row]], gumbel[row, eligible[row]] = prior[row].max(), 30
            top = dtype.type(rng.uniform(1.0, 2.0))
            ulps = rng.integers(0, 4, n_emotions).astype(dtype) * np.spacing(top)
            q[row] = child_value[row] = np.where(eligible[row], top - ulps, top - one)
        if name in ("exact tie", "equal q"):
            q[row] = child_value[row] = node_value[row]
        if name == "subnormal spread":
            q[row] = child_value[row] = rng.integers(0, 1000, n_emotions) * np.finfo(dtype).smallest_subnormal
        if name == "nan q":
            (child_value if rng.random() < 0.5 else q)[row, rng.integers(n_emotions)] = np.nan
        if name == "impossible emotions":
            prior[row] = np.where(eligible[row], 0, prior[row] + one)
    edges = np.zeros((size, SLOTS, n_emotions), dtype=dtype)
    edges[:batch, 0] = np.where(visits > 0, q, 0)
    edges[:, VISITS_PLUS_ONE] = 1
    edges[:batch, VISITS_PLUS_ONE] = visits + 1
    edges[:batch, 3] = edges[:batch, 0] * visits
    tree = Tree(
        edges=EdgeArrays(edges),
        prior=np.concatenate([prior, np.zeros((1, n_emotions), dtype)]),
        child_value=np.concatenate([child_value, np.zeros((1, n_emotions), dtype)]),
        child_state=np.zeros((size, n_emotions, 1), dtype=dtype),
        children=np.full((size, n_emotions), size - 1, dtype=np.int64),
        node_visits=np.concatenate([visits.sum(axis=1), [0]]).astype(dtype),
        node_value=np.concatenate([node_value, [0]]).astype(dtype),
        node_depth=np.zeros(size, dtype=np.int64),
        num_nodes=np.ones(batch, dtype=np.int64),
        c_puct=1.0,
    )
    with np.errstate(divide="ignore"):
        logits = np.log(prior)
    root = GumbelRoot(gumbel, logits, considered, halving_schedule(8, 50), completed_value, c_visit, c_scale)
    near = kind == ROOT_ROWS.index("near tie")
    sigma = root.sigma(tree, np.arange(batch))  # float64, as numpy computes it
    level = rng.normal(size=(batch, 1))
    root.gumbel = np.where(near[:, None], (level - logits - sigma).astype(dtype), gumbel)
    return tree, root, target, kind


def compiled_gumbel_select(tree: Tree, root: GumbelRoot, target: np.ndarray) -> np.ndarray:
    dtype = tree.prior.dtype
    one, tiny, by_parent = dtype.type(1), np.finfo(dtype).tiny, root.completed_value == "parent"
    return np.array(
        [
            kernel._gumbel_select(
                tree.edges.data,
                tree.child_value,
                tree.node_value,
                int(tree.roots[b]),
                root.gumbel[b],
                root.logits[b],
                root.considered[b],
                int(target[b]),
                by_parent,
                root.c_visit,
                root.c_scale,
                one,
                tiny,
            )  # fmt: skip
            for b in range(tree.batch)
        ]
    )


@pytest.mark.parametrize(("c_visit", "c_scale"), [(50.0, 0.1), (30.0, 0.5), (0.0, 1.0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("completed_value", ["child", "parent"])
def test_compiled_gumbel_root_matches_numpy_at_near_ties(completed_value, dtype, c_visit, c_scale):
    """``GumbelRoot._best``'s choice root by root on crafted near-ties, exact ties, equal and subnormally spread
    completed values, NaN, and children the prior rules out. Checked sensitive: in float32, sigma computed in
    float32 (not numpy's float64) chooses otherwise; the last maximum instead of the first; no ``tiny`` floor."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(int(c_visit) + 7 * (completed_value == "parent") + 13 * (dtype == np.float32))
    tree, root, target, kind = gumbel_near_tie_roots(rng, dtype, completed_value, c_visit, c_scale)
    rows = np.arange(tree.batch)
    expected = root._best(tree, rows, target)
    chosen = compiled_gumbel_select(tree, root, target)
    for name in ROOT_ROWS:
        which = kind == ROOT_ROWS.index(name)
        assert np.array_equal(chosen[which], expected[which]), name
    # the crafted roots are sensitive to each way of computing the choice otherwise
    edges = tree.edges.at(tree.roots)
    eligible = root.considered & (edges.visits == target[:, None])
    q = np.where(edges.visits_plus_one > 1, edges.q, completion(tree, tree.roots, completed_value))
    low, high = q.min(axis=1, keepdims=True), q.max(axis=1, keepdims=True)
    base = root.gumbel + root.logits
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = (q - low) / np.maximum(high - low, np.finfo(dtype).tiny)
        unfloored = (q - low) / (high - low)
    max_visits = edges.visits.max(axis=1, keepdims=True)

    def choice(score):
        return np.where(eligible, score, -np.inf).argmax(axis=1)

    assert np.array_equal(choice(base + (c_visit + max_visits) * c_scale * scaled), expected)  # the reference
    near, close = kind == ROOT_ROWS.index("near tie"), kind == ROOT_ROWS.index("close q")
    exact = kind == ROOT_ROWS.index("exact tie")
    if dtype == np.float32:
        narrow = base + (dtype.type(c_visit) + max_visits.astype(dtype)) * dtype.type(c_scale) * scaled
        assert (choice(narrow)[close] != expected[close]).mean() > 0.1
        wide = root.gumbel.astype(np.float64) + root.logits + (c_visit + max_visits) * c_scale * scaled
        assert (choice(wide)[near] != expected[near]).mean() > 0.1
    last_max = eligible.shape[1] - 1 - np.where(eligible, base, -np.inf)[:, ::-1].argmax(axis=1)
    assert (last_max[exact] != expected[exact]).mean() > 0.5
    equal_q = kind == ROOT_ROWS.index("equal q")
    floorless = choice(base + (c_visit + max_visits) * c_scale * unfloored)
    assert (floorless[equal_q] != expected[equal_q]).mean() > 0.3


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
        for root_rule in ("puct", "gumbel"):
            for explore in (True, False):
                planner = EmotionMCTS(
                    8, q_transform=q_transform, completed_value=completed_value, dirichlet_fraction=0.25,
                    root_rule=root_rule, gumbel_considered=4,
                )  # fmt: skip
                before = calls[0]
                planner.search(model, history, generator=torch.Generator().manual_seed(0), explore=explore)
                assert calls[0] > before, (q_transform, completed_value, root_rule, explore)
    before = calls[0]
    pickle.loads(pickle.dumps(EmotionMCTS(8))).search(model, history)  # a worker process's copy
    pickle.loads(pickle.dumps(EmotionMCTS(8, root_rule="gumbel"))).search(model, history)
    assert calls[0] > before + 1


@pytest.mark.parametrize("root_rule", ["puct", "gumbel"])
def test_random_ties_keep_the_numpy_loop(root_rule, count_compiled):
    calls = count_compiled
    model, history = tiny_model(2, torch.float64), padded_history(3, 5, 2, torch.float64, masked=True)
    planner = EmotionMCTS(12, c_puct=0.5, tie_break="random", root_rule=root_rule, gumbel_considered=4)
    result = planner.search(model, history, generator=torch.Generator().manual_seed(3), explore=True)
    forced = copy.copy(planner)
    forced.kernel = False
    numpy_result = forced.search(model, history, generator=torch.Generator().manual_seed(3), explore=True)
    assert calls[0] == 0
    assert torch.equal(result["visit_counts"], numpy_result["visit_counts"])
    forced.kernel = True
    with pytest.raises(ValueError, match="compiled"):
        forced.search(model, history)


def test_a_root_rule_the_kernel_does_not_know_keeps_the_numpy_loop(monkeypatch, count_compiled):
    """A subclass of GumbelRoot may choose otherwise: the numpy loop asks it; forcing the kernel is an error."""

    class Reversed(GumbelRoot):
        def select(self, tree, rows, simulation):
            return super().select(tree, rows, simulation[::-1])

    monkeypatch.setattr(search_module, "GumbelRoot", Reversed)
    planner = EmotionMCTS(8, root_rule="gumbel", gumbel_considered=3)
    planner.search(tiny_model(4, torch.float64), padded_history(2, 3, 4, torch.float64, masked=False))
    assert count_compiled[0] == 0 and not kernel.kernel_root(Reversed(*([None] * 4), "child", 1.0, 1.0))
    planner.kernel = True
    with pytest.raises(ValueError, match="compiled"):
        planner.search(tiny_model(4, torch.float64), padded_history(2, 3, 4, torch.float64, masked=False))


def test_the_compiled_loop_refuses_draws_in_another_float_type():
    """Numpy would add float64 draws to a float32 tree's logits in float64: the loop refuses rather than cast."""
    model, history = tiny_model(5, torch.float32), padded_history(2, 3, 5, torch.float32, masked=False)
    root, _ = FusedSearchModel(model).root(history)
    tree = Tree.from_root(root, 9, 1.0)
    root_rule = GumbelRoot.start(tree, 4, 8, "child", 50.0, 0.1, None)
    root_rule.gumbel = root_rule.gumbel.astype(np.float64)
    with pytest.raises(ValueError, match="float type"):
        kernel.CompiledLoop(tree, 8, 3, kernel.kernel_rules(make_rules()), None, root_rule)


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
    monkeypatch.setitem(sys.modules, "emotion_rl.mcts.loop", None)  # the import fails
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
