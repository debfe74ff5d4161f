"""Emotions that differ (docs/training.md): heads assigned to cover the actions, values from every emotion that
would have acted alike, and the imagined action the search's dynamics read. Every option is off by default; each
test breaks when its option stops doing its job."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from emotion_rl.losses import AssignedActionLoss, ValueLoss, imagined_next
from emotion_rl.mcts.search_model import FusedSearchModel, PlainSearchModel
from emotion_rl.model import EmotionModel

from conftest import N_ACTIONS, N_EMOTIONS, OBS_DIM, random_episodes, random_history


def make_model(**kwargs) -> EmotionModel:
    torch.manual_seed(0)
    return EmotionModel(OBS_DIM, N_ACTIONS, d_model=16, n_layers=1, n_heads=2, context_window=12, **kwargs).double()


@pytest.fixture
def episodes():
    return random_episodes([12, 7, 3], max_len=12, dtype=torch.float64)


def train(loss_module, episodes, steps: int, lr: float = 1e-2) -> None:
    optimizer = torch.optim.Adam(loss_module.model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss_module(episodes)[f"loss_{loss_module.name}"].backward()
        optimizer.step()


# ------------------------------------------------------------------------------------------------ coverage
def test_assigned_heads_prefer_action_e_mod_a_at_every_state(episodes):
    model = make_model()
    loss_module = AssignedActionLoss(model)
    train(loss_module, episodes, steps=40)
    with torch.no_grad():
        best = model.action_logits(model.encode(episodes).hidden).argmax(-1)  # [B, L, E]
    expected = (torch.arange(N_EMOTIONS) % N_ACTIONS).expand_as(best)
    assert torch.equal(best[episodes["mask"]], expected[episodes["mask"]])
    out = loss_module(episodes)
    assert float(out["imagined_value"]) == 0.0


def test_assigned_heads_are_refused_with_fewer_emotions_than_actions():
    """Emotion e stands for action e mod n_actions: with E < A some action could never be taken (issue 26)."""
    with pytest.raises(ValueError, match=r"n_emotions=2 < n_actions=3.*at least 3"):
        AssignedActionLoss(make_model(n_emotions=2))
    AssignedActionLoss(make_model(n_emotions=N_ACTIONS))  # one emotion per action is enough


# ------------------------------------------------------------------------------------------------ values
def test_value_of_every_emotion_weighted_by_its_heads_probability_of_the_taken_action(episodes):
    model = make_model()
    loss_module = ValueLoss(model, 0.99, return_scale=0.5, all_emotions=True)
    encoding = model.encode(episodes)
    weights = loss_module.emotion_weights(episodes, encoding)
    b, t = 1, 3
    e, a = int(episodes["emotion"][b, t]), int(episodes["action"][b, t])
    probs = torch.softmax(model.action_logits(encoding.hidden[b, t]), -1)[:, a]
    expected = (probs / probs[e]).clamp(max=1.0)
    torch.testing.assert_close(weights[b, t], expected.detach())
    assert weights[b, t, e] == 1.0
    per_step = loss_module.per_step(episodes)["loss"]
    values = model.emotion_values(encoding.hidden[b, t])
    target = 0.5 * episodes["return"][b, t]
    torch.testing.assert_close(per_step[b, t], (expected * (values - target).pow(2)).sum())
    single = ValueLoss(model, 0.99, return_scale=0.5).per_step(episodes)["loss"]
    torch.testing.assert_close(single[b, t], (values[e] - target).pow(2))


# ------------------------------------------------------------------------------------------------ imagined action
def test_one_hot_imagined_action_feeds_the_dynamics_the_argmax_action_in_every_search_path():
    model = make_model(imagined_action="one_hot")
    history = random_history(3, 5)
    out = model.evaluate(history)
    best = F.one_hot(out["action_logits"].argmax(-1), N_ACTIONS).double()
    encoding = model.encode(history)
    torch.testing.assert_close(out["dynamics"], model.dynamics(encoding.last_hidden, best))
    soft = make_model()  # same weights, literal softmax
    assert not torch.allclose(soft.evaluate(history)["dynamics"], out["dynamics"])
    imagined = torch.randn(3, OBS_DIM, dtype=torch.float64)
    with torch.no_grad():
        results = []
        for adapter in (FusedSearchModel(model), PlainSearchModel(model)):
            root, state = adapter.root(history)
            results.append((root.dynamics, adapter.expand(state, imagined).dynamics))
    for fused, plain in zip(*results, strict=True):
        torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="imagined_action"):
        make_model(imagined_action="sampled")


def test_imagined_next_of_several_streams_equals_one_stream_each(episodes):
    model = make_model()
    encoding = model.encode(episodes)
    a, b = torch.randn(2, *episodes["observation"].shape, dtype=torch.float64)
    together = imagined_next(model, encoding, a, b)
    torch.testing.assert_close(together[1], imagined_next(model, encoding, b)[0])
