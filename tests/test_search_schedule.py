"""How the batched planner gets its speed, each part checked not to change the search (spec 1.3 - 1.5).

The planner runs each environment's simulations in the spec's order but not in step with the other
environments, batches the waiting expansions into one call of the fused ``expand`` path, and evaluates
the root's 8 children up front (``prefetch_root``). Equality with the literal pseudocode is tested in
test_search.py; these tests pin that the fast path is the one used, and that the schedule and the prefetch leave
every tree array unchanged.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

import emotion_rl.mcts.search as search_module
from emotion_rl import EmotionMCTS, EmotionModel
from emotion_rl.mcts.reference import literal_search
from emotion_rl.mcts.search_model import FusedSearchModel

from conftest import N_ACTIONS, OBS_DIM, random_history


def model_and_history(batch: int = 6, length: int = 5, seed: int = 0):
    torch.manual_seed(seed)
    model = EmotionModel(OBS_DIM, N_ACTIONS, d_model=16, n_layers=2, n_heads=2, context_window=31).double().eval()
    with torch.no_grad():  # peaked priors, spread values: deeper, more varied trees
        model.policy_head.weight.mul_(4.0)
        model.value_heads.w2.mul_(4.0)
    history = random_history(batch, length, seed=seed)
    lengths = torch.tensor([length, 1, 3, length, 2, 4]).repeat(-(-batch // 6))[:batch]
    history["mask"] = torch.arange(length) < lengths.clamp(max=length).unsqueeze(1)
    return model, history


def counted(model: EmotionModel, monkeypatch) -> Counter:
    """Count calls of the fused adapter's and the model's entry points (internal calls counted too)."""
    calls: Counter = Counter()
    targets = [(FusedSearchModel, name) for name in ("search_prefix", "children", "expand")]
    targets += [(model, name) for name in ("evaluate_imagined", "evaluate", "encode")]
    for owner, name in targets:
        method = getattr(owner, name)

        def wrapper(*args, _method=method, _name=name, **kwargs):
            calls[_name] += 1
            return _method(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)
    return calls


def test_search_uses_the_lean_path_and_batches_expansions(monkeypatch):
    """One prefix, one call for the root's children, and far fewer expansion calls than simulations: the fused
    path is what the planner runs, never the general per-expansion path (a regression to it would be slow)."""
    model, history = model_and_history(batch=16, length=8)
    calls = counted(model, monkeypatch)
    result = EmotionMCTS(num_simulations=50).search(model, history)
    expansions = int(result["tree", "num_nodes"].sum()) - 16  # nodes other than the roots
    assert calls["search_prefix"] == 1 and calls["children"] == 1
    assert calls["encode"] == calls["evaluate_imagined"] == calls["evaluate"] == 0
    assert 1 <= calls["expand"] < 25  # lockstep would make one per simulation with an expansion
    assert expansions > 8 * calls["expand"]  # many expansions share each call


def tree_arrays(result):
    return {key: result["tree", key] for key in result["tree"].keys()}


@pytest.mark.parametrize("seed", range(4))
def test_root_prefetch_changes_nothing(seed, monkeypatch):
    """The same tree, array by array, with and without the root children's outputs prefetched (spec 1.4: an
    expansion's outputs depend on the state only; the node is still created when the simulation expands it)."""
    model, history = model_and_history(seed=seed)
    planner = EmotionMCTS(num_simulations=40, c_puct=1.5, max_depth=3)
    with_prefetch = planner.search(model, history)
    monkeypatch.setattr(search_module, "prefetch_root", lambda *args: None)
    without = planner.search(model, history)
    for key, value in tree_arrays(with_prefetch).items():
        torch.testing.assert_close(value, tree_arrays(without)[key], rtol=1e-12, atol=1e-12, msg=key)
    assert torch.equal(with_prefetch["visit_counts"], without["visit_counts"])


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_schedule_changes_nothing(fraction, monkeypatch):
    """Whenever the batched model call is made (0.0: at every round with a waiting expansion, the old lockstep
    schedule; 1.0: only when no environment can go on), every environment's tree is the same and equals the
    literal pseudocode's counts."""
    model, history = model_and_history(seed=7)
    planner = EmotionMCTS(num_simulations=30, c_puct=1.0, max_depth=3)
    reference = planner.search(model, history)
    monkeypatch.setattr(search_module, "WAIT_FRACTION", fraction)
    result = planner.search(model, history)
    for key, value in tree_arrays(result).items():
        torch.testing.assert_close(value, tree_arrays(reference)[key], rtol=1e-12, atol=1e-12, msg=key)
    for row in range(history.batch_size[0]):
        single = history[row][: int(history[row]["mask"].sum())].exclude("mask")
        assert torch.equal(result["visit_counts"][row], literal_search(model, single, 30, 1.0, 3))


def test_float32_search_matches_the_literal_pseudocode():
    """The timed configuration (float32, the benchmark's sizes scaled down): identical visit counts; the UCB
    arithmetic runs in numpy float32 in the reference's order, so the scores are the reference's bit for bit."""
    torch.manual_seed(0)
    model = EmotionModel(OBS_DIM, N_ACTIONS, d_model=32, n_layers=2, n_heads=4).eval()
    history = random_history(8, 12, seed=1).apply(lambda x: x.float() if x.is_floating_point() else x)
    counts = EmotionMCTS(num_simulations=50).search(model, history)["visit_counts"]
    for row in range(8):
        assert torch.equal(counts[row], literal_search(model, history[row], 50, 1.0, 3)), row
