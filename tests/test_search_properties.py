"""Property tests of the planner (hypothesis): random models, histories and settings (spec 1.3 - 1.6)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from emotion_rl import EmotionMCTS, EmotionModel
from emotion_rl.mcts.reference import literal_search

from conftest import N_ACTIONS, OBS_DIM, random_history

search_settings = st.fixed_dictionaries(
    {
        "model_seed": st.integers(0, 2**16),
        "history_seed": st.integers(0, 2**16),
        "batch": st.integers(1, 4),
        "length": st.integers(1, 9),
        "num_simulations": st.integers(1, 40),
        "c_puct": st.floats(0.0, 4.0),
        "max_depth": st.integers(1, 4),
        "masked": st.booleans(),
    }
)


def build(case):
    torch.manual_seed(case["model_seed"])
    model = EmotionModel(OBS_DIM, N_ACTIONS, d_model=8, n_layers=1, n_heads=2, context_window=15).double()
    history = random_history(case["batch"], case["length"], seed=case["history_seed"])
    if case["masked"]:
        g = torch.Generator().manual_seed(case["history_seed"])
        lengths = torch.randint(1, case["length"] + 1, (case["batch"],), generator=g)
        history["mask"] = torch.arange(case["length"]).unsqueeze(0) < lengths.unsqueeze(1)
    planner = EmotionMCTS(case["num_simulations"], case["c_puct"], case["max_depth"])
    return model, history, planner


@settings(max_examples=40, deadline=None, derandomize=True)
@given(search_settings)
def test_search_invariants(case):
    model, history, planner = build(case)
    before = history.clone()
    result = planner.search(model, history)
    counts, distribution = result["visit_counts"], result["visit_distribution"]
    # visit counts sum to the number of simulations
    assert torch.equal(counts.sum(-1), torch.full((case["batch"],), case["num_simulations"]))
    # the distribution is a valid probability vector
    assert (distribution >= 0).all()
    torch.testing.assert_close(distribution.sum(-1), torch.ones(case["batch"], dtype=distribution.dtype))
    # the search never changes the real history (spec 1.6)
    for key in before.keys():
        assert torch.equal(history[key], before[key]), key
    # no node deeper than max_depth is expanded: expanded nodes sit at depth <= max_depth - 1
    depth = result["tree", "node_depth"]
    assert int(depth.max()) <= case["max_depth"] - 1
    assert torch.equal((depth >= 0).sum(-1), result["tree", "num_nodes"])


@settings(max_examples=25, deadline=None, derandomize=True)
@given(search_settings)
def test_batched_search_equals_per_environment_search_and_the_literal_pseudocode(case):
    model, history, planner = build(case)
    batched = planner.search(model, history)["visit_counts"]
    for row in range(case["batch"]):
        single = history[row]
        if case["masked"]:
            single = single[: int(single["mask"].sum())].exclude("mask")
        alone = planner.search(model, single.unsqueeze(0))["visit_counts"][0]
        assert torch.equal(batched[row], alone)
        literal = literal_search(model, single, case["num_simulations"], case["c_puct"], case["max_depth"])
        assert torch.equal(batched[row], literal)
