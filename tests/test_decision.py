"""The greedy decision (decision 26): per action, the emotions that take it pooled; the literal one unchanged."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict

from emotion_rl import EmotionAgent, EmotionMCTS, GumbelRoot
from emotion_rl.decision import decide_by_action, pooled_action_values, root_q
from emotion_rl.policy import EmotionPolicy

from fakes import FakeModel

# Emotion e takes action e % 2 (the assigned heads on CartPole). Emotion 0 holds the single best value, yet the
# emotions that take action 1 are better on average: 0.3 for action 0 against 0.5 for action 1.
VALUES = torch.tensor([[0.9, 0.5, 0.1, 0.5, 0.1, 0.5, 0.1, 0.5]])


class ValuesPlanner:
    """A planner without a tree: prior on emotion 0, the ``VALUES`` at the root, emotion e's head takes e % 2."""

    def search(self, model, history, generator=None, explore=False) -> TensorDict:
        n = history.batch_size[0]
        logits = torch.full((n, 8, 2), -5.0)
        logits[:, torch.arange(8), torch.arange(8) % 2] = 5.0
        prior = torch.full((n, 8), 0.02)
        prior[:, 0] = 0.86
        return TensorDict(
            visit_counts=torch.zeros(n, 8, dtype=torch.long),
            policy_target=prior,
            prior=prior,
            values=VALUES.expand(n, 8),
            action_logits=logits,
            batch_size=[n],
        )


def test_pooled_values_average_the_emotions_that_take_each_action_and_mark_untaken_actions():
    actions = torch.tensor([[0, 1, 0, 1, 0, 1, 0, 1], [2, 2, 2, 2, 2, 2, 2, 0]])
    pooled = pooled_action_values(torch.cat([VALUES, VALUES]), actions, 3)
    assert pooled[0].tolist() == pytest.approx([0.3, 0.5, -math.inf])
    assert pooled[1].tolist() == pytest.approx([0.5, -math.inf, (0.9 + 0.5 + 0.1 + 0.5 + 0.1 + 0.5 + 0.1) / 7])


def test_decision_keeps_the_searched_emotion_when_it_takes_the_best_action_else_the_best_emotion_that_does():
    actions = (torch.arange(8) % 2).unsqueeze(0)
    emotion, action = decide_by_action(VALUES, actions, torch.tensor([3]), 2)
    assert (emotion.item(), action.item()) == (3, 1)  # emotion 3 takes action 1: kept
    emotion, action = decide_by_action(VALUES, actions, torch.tensor([0]), 2)
    assert (emotion.item(), action.item()) == (1, 1)  # emotion 0 takes action 0: the first best of 1, 3, 5, 7


def observation(n: int) -> TensorDict:
    return TensorDict(
        observation=torch.zeros(n, 4),
        is_init=torch.ones(n, 1, dtype=torch.bool),
        prev_reward=torch.zeros(n, 1),
        batch_size=[n],
    )


@pytest.mark.parametrize(("decision", "action", "emotion"), [("emotion", 0, 0), ("action", 1, 1)])
def test_greedy_policy_acts_by_its_decision(decision, action, emotion):
    policy = EmotionPolicy(FakeModel(), ValuesPlanner(), greedy=True, context_window=4, greedy_decision=decision)
    out = policy(observation(2))
    assert out["action"].tolist() == [action, action] and out["emotion"].tolist() == [emotion, emotion]
    assert policy.histories().emotion[:, 0].tolist() == [emotion, emotion]  # the history records what acted


def test_exploring_policy_is_the_same_under_either_decision():
    outs = []
    for decision in ("emotion", "action"):
        generator = torch.Generator().manual_seed(0)
        policy = EmotionPolicy(
            FakeModel(), ValuesPlanner(), temperature=1.0, context_window=4, generator=generator,
            greedy_decision=decision,
        )  # fmt: skip
        outs.append(policy(observation(16)))
    assert torch.equal(outs[0]["emotion"], outs[1]["emotion"]) and torch.equal(outs[0]["action"], outs[1]["action"])


def test_a_search_decides_on_its_completed_q_and_an_agents_policy_takes_the_decision_it_is_given():
    planner = EmotionMCTS(num_simulations=6, q_transform="minmax_completed", root_rule=GumbelRoot())
    agent = EmotionAgent(4, 2, 10, d_model=16, n_layers=1, n_heads=2, planner=planner)
    assert agent.make_policy(greedy=True).greedy_decision == "emotion"  # the agent acts as spec 5 step 3 writes
    assert agent.make_policy(greedy=True, greedy_decision="action").greedy_decision == "action"
    torch.manual_seed(0)
    history = TensorDict(
        observation=torch.randn(3, 2, 4),
        action=torch.tensor([[1, -1]] * 3),
        emotion=torch.tensor([[2, -1]] * 3),
        reward=torch.tensor([[1.0, 0.0]] * 3),
        mask=torch.ones(3, 2, dtype=torch.bool),
        batch_size=[3, 2],
    )
    result = planner.search(agent.model, history)
    tree = result["tree"]
    visits = tree["child_visits"][:, 0]
    q = tree["child_value_sum"][:, 0] / visits.clamp_min(1)
    expected = torch.where(visits > 0, q, tree["child_value"][:, 0])
    assert torch.equal(root_q(result), expected.to(root_q(result).dtype))
    with pytest.raises(ValueError, match="greedy_decision='visits' is not supported"):
        EmotionPolicy(agent.model, planner, greedy=True, greedy_decision="visits")
