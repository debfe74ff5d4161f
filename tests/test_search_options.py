"""The search options beyond the specification (docs/search.md): each off by default, each changing what it names.

Hand-made constant models with ``max_depth=1`` and ``c_puct=0`` make the root a bandit whose visit counts can be
worked out on paper (as in test_search.py); random seeded models check invariances and determinism.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from test_search import constant_model, make_history, make_model

import emotion_rl.mcts.search as search_module
from emotion_rl.mcts.rules import GumbelRoot, PUCTRoot, halving_schedule
from emotion_rl.mcts.search import EmotionMCTS
from emotion_rl.policy import EmotionPolicy

from fakes import FakeModel, FakePlanner

UNIFORM = [1 / 8] * 8


def first_step(n_envs: int) -> TensorDict:
    """A policy input: every env at its first step."""
    return TensorDict(
        observation=torch.zeros(n_envs, 2),
        is_init=torch.ones(n_envs, 1, dtype=torch.bool),
        prev_reward=torch.zeros(n_envs, 1),
        batch_size=[n_envs],
    )


def counts(planner: EmotionMCTS, model, history, **kwargs) -> list[int]:
    return planner.search(model, history.unsqueeze(0), **kwargs)["visit_counts"][0].tolist()


# ---------------------------------------------------------------------------------------------- (a) completed Q
def test_completed_q_gives_unvisited_children_a_value_instead_of_zero():
    """c_puct 0, depth 1: the score is Q alone. Values (-0.2, 2, -1 x 6), mean -0.525.
    literal: unvisited read 0 > -0.2, so emotion 0 is tried once, then 1 is found and kept: [1, 49, 0, ...].
    completed by the child's stored value: emotion 1 scores 2 from the start: [0, 50, 0, ...].
    """
    model = constant_model(UNIFORM, [-0.2, 2.0] + [-1.0] * 6)
    history = make_history(4, seed=0)
    literal = EmotionMCTS(50, c_puct=0.0, max_depth=1)
    completed = EmotionMCTS(50, c_puct=0.0, max_depth=1, q_transform="completed")
    assert counts(literal, model, history) == [1, 49, 0, 0, 0, 0, 0, 0]
    assert counts(completed, model, history) == [0, 50, 0, 0, 0, 0, 0, 0]


# ---------------------------------------------------------------------------------------------- (b) min-max Q
def scaled_values(model, scale: float, shift: float):
    """The same model with every value head output mapped to ``scale * v + shift``."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.value_heads.w2.mul_(scale)
        other.value_heads.b2.mul_(scale).add_(shift)
    return other


@pytest.mark.parametrize("q_transform", ["minmax", "minmax_completed"])
@pytest.mark.parametrize("seed", range(3))
def test_min_max_q_is_invariant_to_the_scale_of_the_values(q_transform, seed):
    """Normalised by the tree's bounds, Q no longer depends on the values' scale and offset: a model whose values
    are 4 v + 0.5 searches exactly as the original; the literal search (the control) does not."""
    model, history = make_model(seed, sharpen=False), make_history(6, seed)
    scaled = scaled_values(model, 4.0, 0.5)
    normalised = EmotionMCTS(50, c_puct=1.0, max_depth=3, q_transform=q_transform)
    assert counts(normalised, model, history) == counts(normalised, scaled, history)
    literal = EmotionMCTS(50, c_puct=1.0, max_depth=3)
    assert counts(literal, model, history) != counts(literal, scaled, history)


def test_min_max_bounds_are_the_extremes_of_the_backed_up_q(monkeypatch):
    model, history = make_model(1), make_history(5, 1)
    planner, trees = EmotionMCTS(30, q_transform="minmax"), []
    run = search_module.run_simulations
    monkeypatch.setattr(search_module, "run_simulations", lambda tree, *args: (run(tree, *args), trees.append(tree)))
    tree = planner.search(model, history.unsqueeze(0))["tree"][0]
    visited = tree["child_visits"] > 0
    q = tree["child_value_sum"][visited] / tree["child_visits"][visited]
    assert q.min() < q.max()  # the test needs two different values
    low, high = trees[0].q_low[0], trees[0].q_high[0]  # every Q ever backed up, not only the final ones
    assert low <= q.min().item() < q.max().item() <= high
    assert low == q.min().item() or high == q.max().item()  # the extremes of this search stay in the tree


# ---------------------------------------------------------------------------------------------- (c) exploring
def test_the_puct_root_draws_nothing_when_exploring():
    """The specification's root has no root noise: exploring (training's acting) searches as evaluation does, and
    the root keeps the model's prior; exploration over emotions is the temperature's (spec 3.4)."""
    model, history = make_model(2), make_history(5, 2).unsqueeze(0)
    plain = EmotionMCTS(30).search(model, history)
    exploring = EmotionMCTS(30).search(model, history, generator=torch.Generator().manual_seed(1), explore=True)
    assert torch.equal(exploring["visit_counts"], plain["visit_counts"])
    assert torch.equal(exploring["tree", "prior"], plain["tree", "prior"])
    assert torch.equal(exploring["tree", "prior"][:, 0], plain["prior"])


def test_the_policy_explores_only_when_not_greedy():
    seen = []

    class FlagPlanner(FakePlanner):
        def search(self, model, history, generator=None, explore=False):
            seen.append(explore)
            return super().search(model, history)

    for greedy in (False, True):
        EmotionPolicy(FakeModel(), FlagPlanner(n_actions=2), greedy=greedy)(first_step(1))
    assert seen == [True, False]


# ---------------------------------------------------------------------------------------------- (d) Q floor
def test_min_spread_keeps_a_small_gap_between_values_small():
    """c_puct 1, depth 1, min-max Q. Values (0.01, 0, ... 0): the literal normalisation maps the 0.01 gap onto the
    whole [0, 1] scale, so emotion 0 outscores the prior's exploration of the others and takes most visits; with
    a floor of 1 on the spread the gap is worth 0.01 and the visits spread as the uniform prior asks."""
    model, history = constant_model(UNIFORM, [0.01] + [0.0] * 7), make_history(4, seed=3)
    literal = counts(EmotionMCTS(40, c_puct=1.0, max_depth=1, q_transform="minmax"), model, history)
    floored = counts(EmotionMCTS(40, c_puct=1.0, max_depth=1, q_transform="minmax", min_spread=1.0), model, history)
    assert literal[0] > 20 and max(floored) - min(floored) <= 1 and sum(floored) == 40


# ---------------------------------------------------------------------------------------------- (e) Gumbel root
def test_halving_schedule():
    assert halving_schedule(4, 8).tolist() == [0, 0, 0, 0, 1, 1, 2, 2]
    assert halving_schedule(1, 3).tolist() == [0, 1, 2]
    schedule = halving_schedule(8, 50)
    assert len(schedule) == 50 and schedule[:8].tolist() == [0] * 8 and (np.diff(schedule[::8]) >= 0).all()


def completed_sigma(result, c_visit: float, c_scale: float) -> torch.Tensor:
    """sigma(completed Q) at the root, recomputed from the returned tree (completion: the child's stored value)."""
    tree = result["tree"]
    visits, value_sum = tree["child_visits"][:, 0], tree["child_value_sum"][:, 0]
    q = torch.where(visits > 0, value_sum / visits.clamp(min=1), tree["child_value"][:, 0])
    low, high = q.min(-1, keepdim=True).values, q.max(-1, keepdim=True).values
    q = (q - low) / (high - low)
    return (c_visit + visits.max(-1, keepdim=True).values) * c_scale * q


@pytest.mark.parametrize("seed", range(3))
def test_gumbel_root_halves_and_returns_the_improved_policy(seed):
    model, history = make_model(seed), make_history(6, seed).unsqueeze(0).expand(3, 6).clone()
    planner = EmotionMCTS(8, max_depth=3, root_rule=GumbelRoot(considered=4, c_scale=0.5))
    result = planner.search(model, history, generator=torch.Generator().manual_seed(seed), explore=True)
    visits = result["visit_counts"]
    for row in range(3):  # sequential halving: 4 children once, then the best 2 twice more
        assert sorted(visits[row].tolist(), reverse=True) == [3, 3, 1, 1, 0, 0, 0, 0]
    assert not all(torch.equal(visits[0], visits[r]) for r in (1, 2)), "the Gumbel draws differ per environment"
    logits = result["prior"].log()
    expected = torch.softmax(logits + completed_sigma(result, 50.0, 0.5), dim=-1)
    torch.testing.assert_close(result["policy_target"], expected)
    torch.testing.assert_close(result["visit_distribution"], visits.double() / 8.0)  # the visits themselves
    winner = result["selected_emotion"]
    assert (visits.gather(1, winner.unsqueeze(1)).squeeze(1) == 3).all()  # among the most visited


def test_gumbel_root_without_exploring_considers_the_top_logits_deterministically():
    model, history = make_model(4, sharpen=True), make_history(5, 4).unsqueeze(0)
    planner = EmotionMCTS(12, root_rule=GumbelRoot(considered=2))
    a, b = planner.search(model, history), planner.search(model, history)
    assert torch.equal(a["visit_counts"], b["visit_counts"]) and torch.equal(
        a["selected_emotion"], b["selected_emotion"]
    )
    top2 = set(a["prior"][0].topk(2).indices.tolist())
    assert set(a["visit_counts"][0].nonzero().flatten().tolist()) == top2
    assert a["selected_emotion"].item() in top2


def test_the_policy_acts_on_the_searchs_selected_emotion():
    class Chooser(FakePlanner):
        def search(self, model, history, generator=None, explore=False):
            result = super().search(model, history)
            result["selected_emotion"] = torch.full(history.batch_size[:1], 6)
            return result

    out = EmotionPolicy(FakeModel(), Chooser(n_actions=2), temperature=1.0)(first_step(2))
    assert out["emotion"].tolist() == [6, 6]  # not the planner's most visited emotion (1 and 2 here)


# ---------------------------------------------------------------------------------------------- configuration
def test_options_are_validated_and_shown():
    with pytest.raises(ValueError, match="q_transform"):
        EmotionMCTS(q_transform="softmax")
    with pytest.raises(ValueError, match="min_spread"):
        EmotionMCTS(min_spread=-1.0)
    with pytest.raises(ValueError, match="RootRule"):
        EmotionMCTS(root_rule="gumbel")
    with pytest.raises(ValueError, match="considered"):
        GumbelRoot(considered=0)
    assert repr(EmotionMCTS()).startswith("EmotionMCTS(num_simulations=50, c_puct=1.0, max_depth=3")
    assert "GumbelRoot(considered=8" in repr(EmotionMCTS(root_rule=GumbelRoot()))


def test_a_planner_with_any_option_pickles_for_worker_processes():
    import pickle

    for q_transform in ("literal", "completed", "minmax", "minmax_completed"):
        for root_rule in (PUCTRoot(), GumbelRoot(considered=4)):
            planner = EmotionMCTS(q_transform=q_transform, root_rule=root_rule, min_spread=0.1)
            copy = pickle.loads(pickle.dumps(planner))
            assert repr(copy) == repr(planner) and type(copy.root_rule) is type(planner.root_rule)
            model, history = make_model(0), make_history(4, 0).unsqueeze(0)
            assert torch.equal(
                copy.search(model, history)["visit_counts"], planner.search(model, history)["visit_counts"]
            )
