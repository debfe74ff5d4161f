"""The production search (``emotion_rl/mcts/``: the compiled loop and the root rules) against the literal oracle.

The oracle (``emotion_rl.mcts.reference.literal_search``) transcribes spec 1.3-1.5 node by node, with the Q
transforms and the Gumbel root each from its own definition. On random tiny models in float32 and float64, with
padded histories, every Q transform, the floor, and both root rules (exploring or not), the two agree on every
visit count, every expanded depth, the Gumbel winner and its policy target. Then the compiled parts alone on
crafted near-ties and exact ties, where computing in another float type or breaking ties otherwise would choose
differently; the backup against its definition; and which execution runs when.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tensordict import TensorDict

from emotion_rl import EmotionMCTS, EmotionModel
from emotion_rl.mcts import loop
from emotion_rl.mcts.reference import (
    GumbelSettings,
    Node,
    completed_q,
    gumbel_choice,
    gumbel_scores,
    literal_search,
    select_child_ucb,
)
from emotion_rl.mcts.rules import (
    GumbelRoot,
    GumbelState,
    PUCTRoot,
    gumbel_best,
    gumbel_root,
    halving_schedule,
    puct_root,
)
from emotion_rl.mcts.search import numpy_generator
from emotion_rl.mcts.search_model import FusedSearchModel
from emotion_rl.mcts.tree import Expansion, NodeOutputs, Tree

from conftest import N_ACTIONS, OBS_DIM, random_history

Q_TRANSFORMS = ["literal", "completed", "minmax", "minmax_completed"]


# ---------------------------------------------------------------------------------------------- helpers
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


class Recording:
    """The fused search model, recording each environment's outputs by the state they were computed at, so that the
    oracle reads the very numbers the search read (the fused and the plain paths of the model agree to rounding
    only, and a c_puct of 0 or a clipped min-max score makes rounding decide ties)."""

    def __init__(self, model: EmotionModel) -> None:
        self.inner = FusedSearchModel(model)
        self.outputs: dict = {}

    def record(self, env: int, state: torch.Tensor | None, outputs: Expansion) -> None:
        key = (env, None if state is None else state.numpy().tobytes())
        self.outputs.setdefault(key, TensorDict(outputs._asdict(), batch_size=[]))  # the first computation

    def root(self, history):
        outputs, cache = self.inner.root(history)
        for b in range(outputs.policy.shape[0]):
            self.record(b, None, Expansion(*(x[b] for x in outputs)))
        return outputs, cache

    def children(self, cache, observation):
        outputs = self.inner.children(cache, observation)
        for b, e in np.ndindex(*observation.shape[:2]):
            self.record(b, observation[b, e], Expansion(*(x[b, e] for x in outputs)))
        return outputs

    def expand(self, cache, observation):
        outputs = self.inner.expand(cache, observation)
        for b in range(observation.shape[0]):  # rows not waiting repeat an earlier state: the first one is kept
            self.record(b, observation[b], Expansion(*(x[b] for x in outputs)))
        return outputs

    def replay(self, env: int):
        """The oracle's model for environment ``env``: ``evaluate`` answers from the recording."""
        outputs = self.outputs

        class Replayed:
            def evaluate(self, history, imagined_observation=None):
                state = None if imagined_observation is None else imagined_observation[0].numpy().tobytes()
                assert (env, state) in outputs, "the oracle expands a state the search never evaluated"
                return outputs[env, state].unsqueeze(0)

        return Replayed()


def assert_matches_oracle(planner: EmotionMCTS, model: EmotionModel, history, seed: int, explore: bool) -> None:
    """``planner``'s batched search equals the oracle's, environment by environment, with the same draws and the
    same model outputs."""
    recording = Recording(model)
    result = planner.search(recording, history, generator=torch.Generator().manual_seed(seed), explore=explore)
    draws = numpy_generator(torch.Generator().manual_seed(seed)) if explore else None
    root = planner.root_rule
    dtype = np.float64 if model.policy_head.weight.dtype == torch.float64 else np.float32
    batch = history.batch_size[0]
    n_emotions = result["prior"].shape[-1]
    gumbel = np.zeros((batch, n_emotions), dtype)
    if isinstance(root, GumbelRoot) and draws is not None:
        gumbel = draws.gumbel(size=(batch, n_emotions)).astype(dtype)  # GumbelRoot.start's one draw
    depth = result["tree", "node_depth"]
    for b in range(batch):
        single = history[b]
        if "mask" in single.keys():
            single = single[: int(single["mask"].sum())].exclude("mask")
        options = dict(q_transform=planner.q_transform, min_spread=planner.min_spread)
        if isinstance(root, GumbelRoot):
            options["gumbel"] = GumbelSettings(gumbel[b], root.considered, root.c_visit, root.c_scale)
        stats: dict = {}
        counts = literal_search(
            recording.replay(b), single, planner.num_simulations, planner.c_puct, planner.max_depth, stats=stats,
            **options,
        )  # fmt: skip
        assert torch.equal(result["visit_counts"][b], counts), b
        assert depth[b][depth[b] >= 0].tolist() == stats["expanded_depths"], b
        oracle_root = stats["root"]  # the root children's completed Q, from the oracle's own literal copy
        q = [completed_q(oracle_root.children[e]) for e in range(n_emotions)]
        torch.testing.assert_close(result["completed_q"][b], torch.stack(q), rtol=0, atol=0)
        if isinstance(root, GumbelRoot):
            assert int(result["selected_emotion"][b]) == stats["selected_emotion"], b
            target = torch.from_numpy(stats["policy_target"]).to(result["policy_target"].dtype)
            torch.testing.assert_close(result["policy_target"][b], target, rtol=0, atol=0)
        else:
            assert "selected_emotion" not in result.keys()
            assert torch.equal(result["policy_target"][b], result["visit_distribution"][b])


# ---------------------------------------------------------------------------------------------- whole searches
cases = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**16),
        "dtype": st.sampled_from([torch.float32, torch.float64]),
        "sharpen": st.booleans(),
        "batch": st.integers(1, 6),
        "length": st.integers(1, 9),
        "masked": st.booleans(),
        "num_simulations": st.sampled_from([1, 2, 3, 8, 30]),
        "max_depth": st.integers(1, 4),
        "q_transform": st.sampled_from(Q_TRANSFORMS),
        "min_spread": st.sampled_from([0.0, 0.05, 1.0]),
        "c_puct": st.sampled_from([0.0, 0.5, 1.0, 1.25, 2.5]) | st.floats(0.0, 4.0),
        "root": st.sampled_from(["puct", "gumbel"]),
        "considered": st.sampled_from([1, 2, 3, 8]) | st.integers(1, 9),
        "c_visit": st.sampled_from([50.0, 30.0, 0.0]) | st.floats(0.0, 100.0),
        "c_scale": st.sampled_from([0.1, 0.5, 1.0, 0.0]) | st.floats(0.0, 2.0),
        "explore": st.booleans(),
    }
)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(cases)
def test_the_search_equals_the_oracle_for_every_root_rule_and_q_transform(case):
    """Random tiny models and settings: the same visit counts, expansions, winner and policy target."""
    model = tiny_model(case["seed"], case["dtype"], case["sharpen"])
    history = padded_history(case["batch"], case["length"], case["seed"], case["dtype"], case["masked"])
    if case["root"] == "gumbel":
        root = GumbelRoot(case["considered"], case["c_visit"], case["c_scale"])
    else:
        root = PUCTRoot()
    planner = EmotionMCTS(
        case["num_simulations"], case["c_puct"], case["max_depth"], q_transform=case["q_transform"],
        min_spread=case["min_spread"], root_rule=root,
    )  # fmt: skip
    assert_matches_oracle(planner, model, history, case["seed"], case["explore"])


@pytest.mark.parametrize("explore", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("q_transform", Q_TRANSFORMS)
@pytest.mark.parametrize("root", ["puct", "gumbel"])
def test_the_search_equals_the_oracle_at_the_shipped_settings(root, q_transform, dtype, explore):
    """50 simulations, depth 3, 9 environments of padded histories, Gumbel draws when exploring: deep trees, every
    phase of the sequential halving, many batched expansions."""
    model, history = tiny_model(4, dtype), padded_history(9, 8, 4, dtype, masked=True)
    rule = GumbelRoot() if root == "gumbel" else PUCTRoot()
    planner = EmotionMCTS(50, q_transform=q_transform, root_rule=rule)
    assert_matches_oracle(planner, model, history, seed=6, explore=explore)
    depth = planner.search(model, history)["tree", "node_depth"]
    assert int(depth.max()) == 2  # the test reaches max_depth through the model


@pytest.mark.parametrize("considered", [2, 3, 8])
@pytest.mark.parametrize("q_transform", ["literal", "minmax_completed"])
def test_the_gumbel_root_with_a_flat_prior_breaks_exact_ties_like_the_oracle(q_transform, considered):
    """A flat prior and no exploring: every considered child has the same ``g + log P``, so the first root choices
    tie exactly (lowest index)."""
    model = tiny_model(9, torch.float32, sharpen=False)
    with torch.no_grad():
        model.policy_head.weight.zero_()
        model.policy_head.bias.zero_()
    history = padded_history(6, 5, 9, torch.float32, masked=True)
    rule = GumbelRoot(considered=considered)
    planner = EmotionMCTS(16, q_transform=q_transform, root_rule=rule)
    assert_matches_oracle(planner, model, history, seed=0, explore=False)
    assert (planner.search(model, history)["prior"] == np.float32(1 / 8)).all()


# ---------------------------------------------------------------------------------------------- crafted near-ties
def near_tie_tree(rng: np.random.Generator, dtype: np.dtype, batch: int = 4, max_nodes: int = 64) -> Tree:
    """A tree whose nodes' scores ``Q + explore / (1 + N)`` round to about the same value (a float32 tie or an ulp
    apart): the argmax then depends on every rounding of the score."""
    n_emotions = 8
    size = batch * max_nodes + 1
    visits = rng.integers(1, 7, (size, n_emotions)) * (rng.random((size, n_emotions)) < 0.75)
    prior = rng.dirichlet(np.ones(n_emotions), size)
    c_puct = float(rng.uniform(0.0, 2.5))
    outputs = NodeOutputs(
        policy=prior.astype(dtype),
        c_prior=(torch.from_numpy(prior.astype(dtype)) * c_puct).numpy(),  # in torch, as from_model computes it
        values=rng.normal(size=(size, n_emotions)).astype(dtype),
        dynamics=np.zeros((size, n_emotions, 1), dtype),
        leaf_value=rng.normal(size=size).astype(dtype),
    )
    tree = Tree.from_root(outputs.take(np.arange(batch)), max_nodes, c_puct)
    a = tree.arrays
    a.prior[:], a.c_prior[:], a.child_value[:] = outputs.policy, outputs.c_prior, outputs.values
    a.visits_plus_one[:] = (visits + 1).astype(dtype)
    a.node_visits[:] = visits.sum(axis=1).astype(dtype)
    a.explore[:] = a.c_prior * np.sqrt(np.maximum(a.node_visits, dtype.type(1)))[:, None]
    target = rng.normal(size=(size, 1)).astype(dtype)
    near = target - a.explore / a.visits_plus_one  # a score of about ``target`` for every emotion
    a.q[:] = np.where(visits > 0, near, dtype.type(0))
    a.value_sum[:] = a.q * visits
    a.child_value[:] = np.where(visits > 0, a.child_value, near)
    a.node_value[:] = np.median(near, axis=1).astype(dtype)
    per_env = near[:-1].reshape(batch, -1)
    a.q_low[:], a.q_high[:] = np.quantile(per_env, 0.2, axis=1), np.quantile(per_env, 0.8, axis=1)
    a.q_low[0], a.q_high[0] = np.inf, -np.inf  # nothing backed up yet
    a.q_high[1] = a.q_low[1]  # one value seen
    return tree


def oracle_node(tree: Tree, node: int) -> Node:
    """The oracle's view of a crafted node: its prior, value and children's N, W, Q and predicted values."""
    torch_dtype = torch.float64 if tree.prior.dtype == np.float64 else torch.float32

    def scalar(x) -> torch.Tensor:
        return torch.tensor(x, dtype=torch_dtype)

    oracle = Node(P=torch.from_numpy(tree.prior[node].copy()), leaf_value=scalar(tree.node_value[node]))
    for e in range(tree.prior.shape[1]):
        n = int(tree.visits_plus_one[node, e] - 1)
        q = scalar(tree.q[node, e])
        oracle.children[e] = Node(N=n, W=q * n, Q=q, value=scalar(tree.child_value[node, e]))
    return oracle


@pytest.mark.parametrize("min_spread", [0.0, 0.3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("q_transform", Q_TRANSFORMS)
def test_the_compiled_selection_is_the_oracles_at_near_ties(q_transform, dtype, min_spread):
    """spec 1.2 selection, node by node, on scores that tie or differ by an ulp. In float32 the scores round as the
    oracle's float32 (checked sensitive: float64 scores choose otherwise)."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(Q_TRANSFORMS.index(q_transform))
    tree = near_tie_tree(rng, dtype)
    planner = EmotionMCTS(q_transform=q_transform, min_spread=min_spread)
    selection = planner.selection(dtype)
    options = dict(q_transform=q_transform, min_spread=min_spread)
    torch_dtype = torch.float64 if dtype == np.float64 else torch.float32
    chosen, expected = [], []
    for node in range(tree.sink):
        env = node // tree.max_nodes
        bounds = [torch.tensor(tree.q_low[env], dtype=torch_dtype), torch.tensor(tree.q_high[env], dtype=torch_dtype)]
        chosen.append(loop.select_child(tree.arrays, selection, node, env))
        expected.append(select_child_ucb(oracle_node(tree, node), tree.c_puct, options, bounds))
    assert chosen == expected
    if q_transform == "literal" and dtype == np.float32:
        wide = tree.q.astype(np.float64) + tree.explore / tree.visits_plus_one.astype(np.float64)
        assert (wide[:-1].argmax(axis=1) != np.array(expected)).mean() > 0.05


@pytest.mark.parametrize(("c_visit", "c_scale"), [(50.0, 0.1), (30.0, 0.5), (0.0, 1.0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_compiled_gumbel_choice_is_the_oracles_at_near_ties(dtype, c_visit, c_scale):
    """``gumbel_best`` root by root, with the Gumbel variables set so that every considered child's ``g + logits +
    sigma`` is about the same float64 value (the argmax depends on every rounding), and on exact ties (a flat prior,
    no draws, equal completed values). Checked sensitive: sigma computed in the tree's type chooses otherwise."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(int(c_visit))
    batch, n_emotions = 300, 8
    tree = near_tie_tree(rng, dtype, batch=batch, max_nodes=1)
    exact = np.arange(batch) % 3 == 0
    a = tree.arrays
    a.prior[:batch][exact] = dtype.type(1 / n_emotions)
    a.q[:batch][exact] = a.child_value[:batch][exact] = a.node_value[:batch][exact, None]
    rule = GumbelRoot(considered=n_emotions, c_visit=c_visit, c_scale=c_scale)
    planner = EmotionMCTS(root_rule=rule)
    selection = planner.selection(dtype)
    state = rule.start(tree, 50, None)
    gumbel = state[0]
    options = dict(min_spread=0.0)
    for b in range(batch):  # g such that every child scores about the same
        settings_b = GumbelSettings(np.zeros(n_emotions, dtype), n_emotions, c_visit, c_scale)
        logits, _, sigma = gumbel_scores(oracle_node(tree, b), settings_b, options)
        if not exact[b]:
            gumbel[b] = (rng.normal() - logits - sigma).astype(dtype)
    chosen, expected, narrow = [], [], []
    for b in range(batch):
        target = int(rng.choice(tree.visits[b]))
        settings_b = GumbelSettings(gumbel[b], n_emotions, c_visit, c_scale)
        chosen.append(gumbel_best(a, selection, b, b, target, state))
        expected.append(gumbel_choice(oracle_node(tree, b), settings_b, options, list(range(n_emotions)), target))
        logits, base, sigma = gumbel_scores(oracle_node(tree, b), settings_b, options)
        eligible = tree.visits[b] == target
        narrow.append(int(np.argmax(np.where(eligible, base + sigma.astype(dtype), -np.inf))))
    assert chosen == expected
    if dtype == np.float32 and c_scale > 0:
        assert (np.array(narrow) != np.array(expected))[~exact].mean() > 0.02


def test_the_halving_schedule():
    assert halving_schedule(4, 8).tolist() == [0, 0, 0, 0, 1, 1, 2, 2]
    assert halving_schedule(1, 3).tolist() == [0, 1, 2]
    schedule = halving_schedule(8, 50)
    assert len(schedule) == 50 and schedule[:8].tolist() == [0] * 8 and (np.diff(schedule[::8]) >= 0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_backup_follows_its_definition(dtype):
    """spec 1.4 backup along a path: ``N += 1``, ``W += v``, ``Q = W / N`` on each edge, ``N(n) += 1`` and the
    exploration terms ``c_puct P sqrt(N(n))`` at each node, the environment's bounds of Q; nothing else moves."""
    dtype = np.dtype(dtype)
    tree = near_tie_tree(np.random.default_rng(3), dtype, batch=2, max_nodes=8)
    expected = {name: value.copy() for name, value in tree.arrays._asdict().items()}
    nodes, emotions, leaf, one = np.array([8, 10, 13]), np.array([2, 5, 0]), dtype.type(0.375), dtype.type(1)
    loop.backup(tree.arrays, 1, nodes, emotions, 3, leaf, one)
    for node, e in zip(nodes, emotions, strict=True):
        expected["visits_plus_one"][node, e] += one
        expected["value_sum"][node, e] += leaf
        q = expected["value_sum"][node, e] / (expected["visits_plus_one"][node, e] - one)
        expected["q"][node, e] = q
        expected["q_low"][1], expected["q_high"][1] = min(expected["q_low"][1], q), max(expected["q_high"][1], q)
        expected["node_visits"][node] += one
        expected["explore"][node] = expected["c_prior"][node] * np.sqrt(expected["node_visits"][node])
    for name, value in tree.arrays._asdict().items():
        assert value.dtype == expected[name].dtype and np.array_equal(value, expected[name]), name


# ---------------------------------------------------------------------------------------------- which execution runs
class PythonPUCTRoot(PUCTRoot):
    """The pUCT root with its select as a plain Python function: the loop then runs as Python."""

    select = staticmethod(getattr(puct_root, "py_func", puct_root))  # the Python function numba compiled


def test_a_root_rule_in_plain_python_runs_the_same_search_uncompiled(monkeypatch):
    model, history = tiny_model(5, torch.float64), padded_history(4, 5, 5, torch.float64, masked=True)
    compiled = EmotionMCTS(20, q_transform="minmax_completed").search(model, history)
    calls = []
    python_rounds = loop.run_rounds.py_func
    monkeypatch.setattr(loop.run_rounds, "py_func", lambda *a: calls.append(1) or python_rounds(*a))
    plain = EmotionMCTS(20, q_transform="minmax_completed", root_rule=PythonPUCTRoot()).search(model, history)
    assert calls and not loop.is_compiled(PythonPUCTRoot.select) and loop.is_compiled(PUCTRoot.select)
    for key in ("visit_counts", ("tree", "child_value_sum"), ("tree", "node_depth")):
        assert torch.equal(plain[key], compiled[key]), key


class PythonGumbelRoot(GumbelRoot):
    """The Gumbel root with its select as a plain Python function (its helpers stay compiled)."""

    select = staticmethod(getattr(gumbel_root, "py_func", gumbel_root))


def test_the_gumbel_roots_named_state_is_read_the_same_compiled_and_in_python():
    model, history = tiny_model(6, torch.float32), padded_history(4, 5, 6, torch.float32, masked=True)
    rule = GumbelRoot(considered=4, c_scale=0.5)
    state = rule.start(Tree.from_root(NodeOutputs.empty(np.dtype(np.float32), 8, OBS_DIM, (3,)), 11, 1.0), 10, None)
    assert isinstance(state, GumbelState) and state.considered.sum() == 3 * 4 and state.c_scale == 0.5
    assert state.schedule.shape == (10,) and state.tiny == np.finfo(np.float32).tiny
    for explore in (False, True):
        searches = [
            EmotionMCTS(10, q_transform="completed", root_rule=root).search(
                model, history, torch.Generator().manual_seed(1), explore
            )
            for root in (GumbelRoot(considered=4, c_scale=0.5), PythonGumbelRoot(considered=4, c_scale=0.5))
        ]
        for key in ("visit_counts", "policy_target", "selected_emotion", "completed_q"):
            assert torch.equal(searches[0][key], searches[1][key]), key
    assert loop.is_compiled(GumbelRoot.select) == (loop.numba is not None)
    assert not loop.is_compiled(PythonGumbelRoot.select)


def test_without_numba_the_same_code_runs_as_python():
    """In a process where numba cannot be imported, ``kernel`` leaves every function as Python; the search is the
    same (visit counts of a small search, printed by the child process)."""
    script = textwrap.dedent(
        """
        import sys
        sys.modules["numba"] = None  # the import fails
        import torch
        sys.path.insert(0, "tests")
        from test_search_loop import padded_history, tiny_model
        from emotion_rl import EmotionMCTS
        from emotion_rl.mcts import loop
        from emotion_rl.mcts.rules import GumbelRoot
        assert loop.numba is None and not loop.is_compiled(loop.run_rounds)
        model, history = tiny_model(5, torch.float64), padded_history(3, 4, 5, torch.float64, masked=True)
        for root in (None, GumbelRoot(considered=4)):
            planner = EmotionMCTS(12, q_transform="completed", root_rule=root)
            print(planner.search(model, history)["visit_counts"].tolist())
        """
    )
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=root)
    out = run.stdout.split("\n")
    model, history = tiny_model(5, torch.float64), padded_history(3, 4, 5, torch.float64, masked=True)
    for line, root in zip(out, (None, GumbelRoot(considered=4)), strict=False):
        expected = EmotionMCTS(12, q_transform="completed", root_rule=root).search(model, history)["visit_counts"]
        assert line == str(expected.tolist())
