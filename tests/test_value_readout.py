"""The planner's ``value_readout`` option (docs/search.md; beyond the specification).

``"mean"`` (the default, spec 1.4) is covered bit for bit by tests/test_search.py and tests/test_golden.py. Here
``"policy"``, the value of a state read as ``sum_e pi(e | s) V^e(s)``, in the planner (a leaf's backed-up value,
the root's "parent" completion, both adapters alike). The learner reads a state's value as the mean only
(``EmotionModel.state_value``): the losses' readout option was removed (docs/results.md, "Options removed").
"""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from test_search import constant_model, make_history, make_model

from emotion_rl.mcts.search import EmotionMCTS
from emotion_rl.mcts.search_model import PlainSearchModel
from emotion_rl.model import EmotionModel, state_value


def evaluated(model: EmotionModel, history: TensorDict, state: torch.Tensor | None = None) -> TensorDict:
    """``model.evaluate`` on one real history, with an imagined ``state`` appended when given (spec 1.5)."""
    imagined = None if state is None else state.unsqueeze(0)
    return model.evaluate(history.unsqueeze(0), imagined_observation=imagined)[0]


# ---------------------------------------------------------------------------------------------- the planner
@pytest.mark.parametrize("max_depth", [2, 3])
@pytest.mark.parametrize("seed", [1, 2])
def test_every_expansion_backs_up_the_policy_weighted_value_of_its_outputs(seed, max_depth):
    """The edge ``(p, e)`` into a node ``n`` one level above ``max_depth`` collects, in order: the stored ``V_p^e``
    (first visit, unexpanded), the leaf value of ``n``'s expansion (second visit), then ``n``'s children's stored
    values (never expanded at ``max_depth``). So ``W(p, e) = V_p^e + sum_e' pi_n(e') V_n^e' + sum_e' N(n, e')
    V_n^e'``, with ``pi_n, V_n`` what ``model.evaluate`` gives at "history + Z_p^e". Depth 2 checks the prefetched
    root children, depth 3 the expansions made during the simulations."""
    model, history = make_model(seed), make_history(6, seed)
    planner = EmotionMCTS(40, max_depth=max_depth, value_readout="policy")
    tree = planner.search(model, history.unsqueeze(0))["tree"][0]
    torch.testing.assert_close(tree["child_value"][0], evaluated(model, history)["values"], rtol=0, atol=1e-12)
    checked = 0
    for p, e in (tree["children"] >= 0).nonzero().tolist():
        node = int(tree["children"][p, e])
        if int(tree["node_depth"][node]) != max_depth - 1:
            continue
        checked += 1
        out = evaluated(model, history, tree["child_state"][p, e])
        leaf = (out["policy"] * out["values"]).sum()
        assert abs(leaf - out["values"].mean()) > 1e-3, "the test needs the two readouts to differ"
        torch.testing.assert_close(tree["prior"][node], out["policy"], rtol=0, atol=1e-12)
        below = (tree["child_visits"][node] * out["values"]).sum()
        assert int(tree["child_visits"][p, e]) == 2 + int(tree["child_visits"][node].sum())
        expected = tree["child_value"][p, e] + leaf + below
        torch.testing.assert_close(tree["child_value_sum"][p, e], expected, rtol=0, atol=1e-10)
    assert checked >= 2


def test_the_parent_completion_reads_the_roots_policy_weighted_value():
    """Depth 1, c_puct 0: the score is Q alone. Prior (0.1, 0.5, 0.4 / 6 x 6), values (-0.2, 2, -1 x 6).
    mean: the root's value is -0.525 < -0.2, so emotion 0, tried first, is kept: [50, 0, ...].
    policy: 0.1 * -0.2 + 0.5 * 2 - 0.4 = 0.58 > -0.2, so emotion 1 is tried next and kept: [1, 49, 0, ...]."""
    model = constant_model([0.1, 0.5] + [0.4 / 6] * 6, [-0.2, 2.0] + [-1.0] * 6)
    history = make_history(4, seed=0).unsqueeze(0)
    settings = dict(c_puct=0.0, max_depth=1, q_transform="completed", completed_value="parent")
    mean = EmotionMCTS(50, **settings).search(model, history)["visit_counts"][0].tolist()
    policy = EmotionMCTS(50, value_readout="policy", **settings).search(model, history)["visit_counts"][0].tolist()
    assert mean == [50, 0, 0, 0, 0, 0, 0, 0]
    assert policy == [1, 49, 0, 0, 0, 0, 0, 0]


def test_plain_and_fused_adapters_search_alike_under_the_policy_readout():
    planner, differs = EmotionMCTS(50, value_readout="policy"), False
    for seed in range(4):
        model, history = make_model(seed), make_history(5 + seed, seed).unsqueeze(0)
        fused = planner.search(model, history)
        plain = planner.search(PlainSearchModel(model), history)
        assert torch.equal(fused["visit_counts"], plain["visit_counts"]), seed
        torch.testing.assert_close(fused["tree", "child_value_sum"], plain["tree", "child_value_sum"])
        differs |= not torch.equal(fused["visit_counts"], EmotionMCTS(50).search(model, history)["visit_counts"])
    assert differs, "the readout never changed a search: the test cannot tell the two apart"


def test_the_option_is_validated_and_shown():
    with pytest.raises(ValueError, match="value_readout"):
        EmotionMCTS(value_readout="max")
    assert "value_readout='policy'" in repr(EmotionMCTS(value_readout="policy"))
    assert "value_readout" not in repr(EmotionMCTS())
    values, policy = torch.tensor([1.0, 3.0]), torch.tensor([0.25, 0.75])
    assert state_value(values, policy, "mean") == 2.0 and state_value(values, policy, "policy") == 2.5
    assert state_value(values, policy, "mean") == EmotionModel.state_value(values), "one readout of the mean"
