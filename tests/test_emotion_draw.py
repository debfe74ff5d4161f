"""What chooses the emotion the agent acts on (decision 25; docs/search.md, "The policy"): a root rule that chooses
it itself (the Gumbel root) acts with its choice and the temperature does nothing; the log says what acted."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from emotion_rl import EmotionPolicy
from emotion_rl.data.selfplay import CollectionStats, SelfPlayCounters
from emotion_rl.diagnostics import collection_metrics

from fakes import FakeModel, FakePlanner

E, A = 8, 2


def step(n: int) -> TensorDict:
    return TensorDict(
        observation=torch.zeros(n, 2),
        is_init=torch.ones(n, 1, dtype=torch.bool),
        prev_reward=torch.zeros(n, 1),
        batch_size=[n],
    )


class ChoosingPlanner(FakePlanner):
    """Its root chooses emotion 1 itself (``selected_emotion``), while its policy target is all on emotion 5."""

    def search(self, model, history, generator=None, **options) -> TensorDict:
        result = super().search(model, history, generator, **options)
        n = result.batch_size[0]
        result["policy_target"] = torch.nn.functional.one_hot(torch.full((n,), 5), E).float()
        result["selected_emotion"] = torch.full((n,), 1)
        return result


@pytest.mark.parametrize("greedy", [False, True])
def test_the_root_rules_choice_acts_and_the_policy_says_so(greedy):
    policy = EmotionPolicy(FakeModel(), ChoosingPlanner(A, E), temperature=1.0, greedy=greedy)
    out = policy(step(3))
    assert out["emotion"].tolist() == [1, 1, 1]  # a temperature draw from the one-hot target could only give 5
    assert out["root_selected"].all()
    plain = EmotionPolicy(FakeModel(), FakePlanner(A, E), temperature=1.0)(step(2))  # no root choice: a draw
    assert not plain["root_selected"].any()


def test_the_temperature_is_logged_only_when_a_draw_chose_and_the_share_the_root_chose_always():
    def collected(root_selected: list[bool]) -> TensorDict:
        n = len(root_selected)
        return TensorDict(
            policy_target=torch.full((1, n, E), 1 / E),
            emotion=torch.zeros(1, n, dtype=torch.long),
            root_selected=torch.tensor([root_selected]),
            batch_size=[1, n],
        )

    stats = CollectionStats()
    stats.add(collected([True, True, True]))  # the Gumbel root chose every emotion
    logs = collection_metrics(stats.take([], SelfPlayCounters(), 0.7))
    assert "train/temperature" not in logs and logs["search/root_selected"].item() == 1.0
    stats.add(collected([True, False, False, False]))  # a draw chose three of four
    logs = collection_metrics(stats.take([], SelfPlayCounters(), 0.7))
    assert logs["train/temperature"].item() == pytest.approx(0.7) and logs["search/root_selected"].item() == 0.25
