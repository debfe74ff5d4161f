"""The ``value_readout`` option (docs/search.md, docs/training.md; beyond the specification).

``"mean"`` (the default, spec 1.4) is covered bit for bit by tests/test_search.py and tests/test_golden.py. Here
``"policy"``, the value of a state read as ``sum_e pi(e | s) V^e(s)``: in the planner (a leaf's backed-up value,
the root's "parent" completion, both adapters alike), in phase 2's critic and in phase 3's imagined-token target.
"""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from test_losses import backward_of
from test_losses import make_model as make_loss_model
from test_search import constant_model, make_history, make_model

from emotion_rl import EmotionAgent
from emotion_rl.losses import MaxValueActionLoss, ValueLoss
from emotion_rl.mcts.search import EmotionMCTS
from emotion_rl.mcts.search_model import PlainSearchModel
from emotion_rl.model import EmotionModel, state_value

from conftest import N_ACTIONS, random_episodes


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
    with pytest.raises(ValueError, match="value_readout"):
        MaxValueActionLoss(make_loss_model(), value_readout="max")
    with pytest.raises(ValueError, match="value_readout"):
        ValueLoss(make_loss_model(), value_readout="max")
    assert "value_readout='policy'" in repr(EmotionMCTS(value_readout="policy"))
    assert "value_readout" not in repr(EmotionMCTS())
    values, policy = torch.tensor([1.0, 3.0]), torch.tensor([0.25, 0.75])
    assert state_value(values, policy, "mean") == 2.0 and state_value(values, policy, "policy") == 2.5


# ---------------------------------------------------------------------------------------------- the losses
@pytest.fixture
def episodes():
    return random_episodes([12, 7, 3], max_len=12, dtype=torch.float64)


def test_phase2_critic_is_minus_the_policy_weighted_value_at_the_imagined_state(episodes):
    model = make_loss_model()
    out = MaxValueActionLoss(model, value_readout="policy").per_step(episodes)
    h = model.encode(episodes).hidden
    for b, t in [(0, 0), (0, 7), (1, 3), (2, 2)]:
        e = int(episodes["emotion"][b, t])
        z = model.dynamics(h[b, t], torch.softmax(model.action_logits(h[b, t]), -1))[e]
        imagined = model.evaluate(episodes[b : b + 1, : t + 1], imagined_observation=z.unsqueeze(0))[0]
        expected = (imagined["policy"] * imagined["values"]).sum()
        assert abs(expected - imagined["values"].mean()) > 1e-4, "the test needs the two readouts to differ"
        torch.testing.assert_close(out["imagined_value"][b, t], expected)
        torch.testing.assert_close(out["loss"][b, t], -expected)


def test_phase2_under_the_policy_readout_still_trains_only_the_action_heads_and_transformer(episodes):
    model = make_loss_model()
    grads = backward_of(MaxValueActionLoss(model, value_readout="policy"), episodes)
    assert grads["action"] > 0 and grads["transformer"] > 0
    assert grads["dynamics"] == grads["value"] == grads["policy"] == 0


def test_phase3_row_end_target_trains_the_policy_weighted_imagined_value():
    """At a row's end (``e_{t+1}`` unseen) ``sum_e pi V^e`` at the imagined token learns ``y_{t+1}``; inside a row
    ``V^{e_{t+1}}`` and after a termination every ``V^e`` are unchanged; the policy head gets no gradient."""
    model = make_loss_model()
    batch = random_episodes([6, 4], max_len=6, seed=2, dtype=torch.float64).exclude("terminated", "truncated")
    batch["done"][1, 3] = True  # row 1 terminated at its last step; row 0 ends unterminated (a window)
    policy_loss = ValueLoss(model, return_scale=0.5, gamma=0.9, imagined_weight=1.0, value_readout="policy")
    mean_loss = ValueLoss(model, return_scale=0.5, gamma=0.9, imagined_weight=1.0)
    encoding = model.encode(batch)
    _, next_targets = policy_loss.targets(batch)
    errors = policy_loss.imagined_errors(batch, encoding, next_targets)
    mean_errors = mean_loss.imagined_errors(batch, encoding, next_targets)
    h, y = encoding.hidden, 0.5 * batch["return"]
    taken = torch.nn.functional.one_hot(batch["action"][0, 5], N_ACTIONS).double()
    predicted = model.dynamics(h[0, 5], taken, batch["emotion"][0, 5])
    for i, state in enumerate([batch["next_observation"][0, 5], predicted]):
        out = model.evaluate(batch[0:1], imagined_observation=state.unsqueeze(0))[0]
        expected = ((out["policy"] * out["values"]).sum() - (y[0, 5] - 0.5 * batch["reward"][0, 5]) / 0.9) ** 2
        torch.testing.assert_close(errors[i, 0, 5], expected)
    inside = torch.ones_like(errors, dtype=torch.bool)
    inside[:, 0, 5] = False
    torch.testing.assert_close(errors[inside], mean_errors[inside], rtol=0, atol=0)
    assert not torch.allclose(errors[:, 0, 5], mean_errors[:, 0, 5])
    grads = backward_of(policy_loss, batch)
    assert grads["value"] > 0 and grads["transformer"] > 0
    assert grads["dynamics"] == grads["action"] == grads["policy"] == 0


# ---------------------------------------------------------------------------------------------- the agent
@pytest.mark.parametrize("readout", ["mean", "policy"])
def test_the_agent_hands_the_readout_to_its_planner_and_loss_modules(readout):
    agent = EmotionAgent(
        obs_dim=4, n_actions=2, max_episode_steps=10, d_model=8, n_layers=1, n_heads=2, value_readout=readout
    )
    assert agent.planner.options["value_readout"] == readout
    assert agent.losses.action.value_readout == readout and agent.losses.value.value_readout == readout
    assert agent.hparams.value_readout == readout
