"""Emotions that differ (docs/training.md): coverage of the actions by the heads, heads trained by policy
improvement, load balancing, values from every emotion that would have acted alike, and the imagined action the
search's dynamics read. Every option is off by default; each test breaks when its option stops doing its job."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from emotion_rl.losses import (
    AssignedActionLoss,
    ImprovementActionLoss,
    MaxValueActionLoss,
    PolicyLoss,
    ValueLoss,
    head_information,
    imagined_next,
)
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
def test_head_information_is_zero_for_identical_heads_and_log_a_for_deterministic_heads_covering_the_actions():
    same = torch.randn(5, 1, N_ACTIONS).expand(5, N_EMOTIONS, N_ACTIONS)
    torch.testing.assert_close(head_information(same), torch.zeros(5), atol=1e-6, rtol=0)
    covering = 50.0 * F.one_hot(torch.arange(N_EMOTIONS) % N_ACTIONS, N_ACTIONS).double()  # 3, 3, 2 heads
    shares = torch.bincount(torch.arange(N_EMOTIONS) % N_ACTIONS).double() / N_EMOTIONS
    torch.testing.assert_close(head_information(covering), -(shares * shares.log()).sum())
    two = 50.0 * F.one_hot(torch.arange(N_EMOTIONS) % 2, 2).double()  # deterministic, evenly over 2 actions
    torch.testing.assert_close(head_information(two), torch.tensor(math.log(2), dtype=torch.float64))
    half = 50.0 * F.one_hot(torch.arange(N_EMOTIONS) % 2, N_ACTIONS).double()  # two of three actions covered
    assert head_information(half) < head_information(covering)


def test_coverage_term_spreads_the_heads_over_the_actions(episodes):
    model = make_model()
    with torch.no_grad():  # every head starts as head 0: nothing to choose between
        for w in (model.action_heads.w1, model.action_heads.b1, model.action_heads.w2, model.action_heads.b2):
            w.copy_(w[0:1].expand_as(w) + 1e-3 * torch.randn_like(w))

    def information() -> float:
        with torch.no_grad():
            return float(head_information(model.action_logits(model.encode(episodes).hidden)).mean())

    before = information()
    train(MaxValueActionLoss(model, coverage_coef=1.0), episodes, steps=30)
    after = information()
    assert before < 0.05 and after > 0.5, (before, after)


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


# ------------------------------------------------------------------------------------------------ improvement
def test_improvement_values_are_the_model_evaluating_each_actions_imagined_next_state(episodes):
    model = make_model()
    loss_module = ImprovementActionLoss(model)
    encoding = model.encode(episodes)
    emotion = episodes["emotion"]
    q = loss_module.action_values(encoding, emotion)
    b, t = 0, 4
    for a in range(N_ACTIONS):
        action = F.one_hot(torch.tensor(a), N_ACTIONS).double()
        with torch.no_grad():
            state = model.dynamics(encoding.hidden[b, t], action, emotion[b, t])
            expected = model.evaluate(episodes[b : b + 1, : t + 1], imagined_observation=state.unsqueeze(0))
        torch.testing.assert_close(q[b, t, a], expected["values"][0].mean())


def fixed_action_values(loss_module, favoured: int):
    def action_values(encoding, emotion):
        q = torch.zeros(*emotion.shape, N_ACTIONS, dtype=encoding.hidden.dtype)
        q[..., favoured] = 1.0
        return q + 0.01 * torch.randn_like(q)

    loss_module.action_values = action_values


@pytest.mark.parametrize("mixture", ["prior", "uniform"])
def test_improvement_raises_the_mixtures_probability_of_the_better_action(episodes, mixture):
    model = make_model()
    loss_module = ImprovementActionLoss(model, mixture=mixture)
    fixed_action_values(loss_module, favoured=1)

    def mixture_probability() -> float:
        with torch.no_grad():
            h = model.encode(episodes).hidden
            w = torch.softmax(model.policy_logits(h), -1) if mixture == "prior" else torch.full((N_EMOTIONS,), 0.125)
            mix = (w.unsqueeze(-1) * torch.softmax(model.action_logits(h), -1)).sum(-2)
            return float(mix[..., 1][episodes["mask"]].mean())

    before = mixture_probability()
    train(loss_module, episodes, steps=10)
    assert mixture_probability() > before + 0.1


def test_improvement_keeps_a_deterministic_head_on_its_own_action(episodes):
    """Responsibilities: a head that proposes only action 0 owns none of the better action 1, so it keeps action
    0 while the mixture moves to action 1 (a loss that made every head imitate the best action would collapse)."""
    model = make_model()
    with torch.no_grad():
        model.action_heads.w2[0].zero_()
        model.action_heads.b2[0].copy_(torch.tensor([8.0, -8.0, -8.0], dtype=torch.float64))
    loss_module = ImprovementActionLoss(model, mixture="uniform")
    fixed_action_values(loss_module, favoured=1)
    train(loss_module, episodes, steps=10)
    with torch.no_grad():
        probs = torch.softmax(model.action_logits(model.encode(episodes).hidden), -1)[episodes["mask"]]
    assert (probs[:, 0].argmax(-1) == 0).all(), "head 0 was pulled off its own action"
    assert probs[:, 1:, 1].mean() > probs[:, 1:, 0].mean()  # the others moved to the better action


def test_improvement_loss_is_the_documented_m_step(episodes):
    model = make_model()
    loss_module = ImprovementActionLoss(model, scale=3.0)
    fixed_action_values(loss_module, favoured=2)
    torch.manual_seed(1)
    loss = loss_module.per_step(episodes)["loss"]
    torch.manual_seed(1)
    with torch.no_grad():
        h = model.encode(episodes).hidden
        q = loss_module.action_values(model.encode(episodes), episodes["emotion"])
        log_p = torch.log_softmax(model.action_logits(h), -1)
        w = torch.softmax(model.policy_logits(h), -1)
        joint = w.unsqueeze(-1) * log_p.exp()
        mix = joint.sum(-2)
        advantage = q - (mix * q).sum(-1, keepdim=True)
        mask = episodes["mask"]
        spread = advantage.pow(2).mean(-1)[mask].mean().sqrt()
        improved = torch.softmax(mix.log() + 3.0 * advantage / spread, -1)
        target = improved.unsqueeze(-2) * joint / mix.unsqueeze(-2)
        expected = -(target * log_p).sum((-1, -2))
    torch.testing.assert_close(target.sum((-1, -2)), torch.ones_like(expected))  # a distribution over (e, a)
    torch.testing.assert_close(loss[mask], expected[mask])
    assert (loss[mask] > 0).all()  # a cross-entropy: bounded below


def test_improvement_settings_reach_the_loss_and_bad_ones_are_refused():
    from emotion_rl import EmotionAgent

    agent = EmotionAgent(
        obs_dim=OBS_DIM,
        n_actions=N_ACTIONS,
        max_episode_steps=8,
        d_model=8,
        n_layers=1,
        n_heads=2,
        phase2_objective="improvement",
        improvement_scale=5.0,
        improvement_mixture="uniform",
        action_coverage_coef=0.3,
    )
    action = agent.losses.action
    assert isinstance(action, ImprovementActionLoss)
    assert (action.scale, action.mixture, action.coverage_coef) == (5.0, "uniform", 0.3)
    with pytest.raises(ValueError, match="mixture"):
        ImprovementActionLoss(make_model(), mixture="best")
    with pytest.raises(ValueError, match="coverage_coef"):
        MaxValueActionLoss(make_model(), coverage_coef=-1.0)


# ------------------------------------------------------------------------------------------------ load balancing
def test_balance_term_is_zero_for_uniform_usage_and_spreads_a_collapsed_prior(episodes):
    model = make_model()
    base = PolicyLoss(model).per_step(episodes)["loss"]
    with torch.no_grad():
        model.policy_head.weight.zero_()
        model.policy_head.bias.zero_()  # the prior is uniform everywhere
    uniform = PolicyLoss(model, balance_coef=2.0).per_step(episodes)["loss"]
    torch.testing.assert_close(uniform, PolicyLoss(model).per_step(episodes)["loss"])
    with torch.no_grad():
        model.policy_head.bias[0] = 6.0  # collapsed onto emotion 0
    plain = PolicyLoss(model).per_step(episodes)["loss"]
    balanced = PolicyLoss(model, balance_coef=2.0).per_step(episodes)["loss"]
    gap = balanced - plain
    assert (gap > 0.5).all() and torch.allclose(gap, gap[0, 0].expand_as(gap))  # one batch-level number
    model.zero_grad()
    PolicyLoss(model, balance_coef=2.0)(episodes)["loss_policy"].backward()
    balanced_grad = model.policy_head.bias.grad[0].item()
    model.zero_grad()
    PolicyLoss(model)(episodes)["loss_policy"].backward()
    assert balanced_grad > model.policy_head.bias.grad[0].item()  # the balance term pushes emotion 0 down
    assert base.shape == episodes.batch_size


# ------------------------------------------------------------------------------------------------ values
def test_value_of_every_emotion_weighted_by_its_heads_probability_of_the_taken_action(episodes):
    model = make_model()
    loss_module = ValueLoss(model, return_scale=0.5, all_emotions=True)
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
    single = ValueLoss(model, return_scale=0.5).per_step(episodes)["loss"]
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
