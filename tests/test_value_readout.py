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

from emotion_rl.losses import MaxValueActionLoss, ValueLoss
from emotion_rl.model import EmotionModel

from conftest import N_ACTIONS, random_episodes


def evaluated(model: EmotionModel, history: TensorDict, state: torch.Tensor | None = None) -> TensorDict:
    """``model.evaluate`` on one real history, with an imagined ``state`` appended when given (spec 1.5)."""
    imagined = None if state is None else state.unsqueeze(0)
    return model.evaluate(history.unsqueeze(0), imagined_observation=imagined)[0]


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
