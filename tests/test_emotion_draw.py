"""What chooses the emotion the agent acts on (docs/search.md, "The policy"): under a root rule that chooses it itself
(the Gumbel root) the temperature does nothing unless ``emotion_draw="temperature"``, and the log says what acted."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from emotion_rl import EmotionAgent, EmotionMCTS, EmotionPolicy, GumbelRoot
from emotion_rl.cli import main
from emotion_rl.data.selfplay import CollectionStats, SelfPlayCounters
from emotion_rl.diagnostics import collection_metrics

from conftest import CONFIG
from fakes import FakeModel, FakePlanner

E, A = 8, 2


class ChoosingPlanner(FakePlanner):
    """Its root chooses emotion 1 itself (``selected_emotion``), while its policy target is all on emotion 5."""

    def search(self, model, history, generator=None, **options) -> TensorDict:
        result = super().search(model, history, generator, **options)
        n = result.batch_size[0]
        result["policy_target"] = torch.nn.functional.one_hot(torch.full((n,), 5), E).float()
        result["selected_emotion"] = torch.full((n,), 1)
        return result


def step(n: int) -> TensorDict:
    return TensorDict(
        observation=torch.zeros(n, 2),
        is_init=torch.ones(n, 1, dtype=torch.bool),
        prev_reward=torch.zeros(n, 1),
        batch_size=[n],
    )


@pytest.mark.parametrize(
    ("emotion_draw", "greedy", "acted", "root_selected"),
    [
        ("search", False, 1, True),
        ("temperature", False, 5, False),
        ("search", True, 1, True),
        ("temperature", True, 1, True),
    ],
)
def test_the_root_rules_choice_acts_unless_the_emotion_is_drawn_with_the_temperature(
    emotion_draw, greedy, acted, root_selected
):
    policy = EmotionPolicy(
        FakeModel(), ChoosingPlanner(A, E), temperature=1.0, greedy=greedy, emotion_draw=emotion_draw
    )
    policy.generator = torch.Generator().manual_seed(0)
    out = policy(step(3))
    assert out["emotion"].tolist() == [acted] * 3  # the target is one-hot: a temperature draw can only give 5
    assert out["root_selected"].tolist() == [root_selected] * 3
    plain = EmotionPolicy(FakeModel(), FakePlanner(A, E), temperature=1.0)(step(2))  # no root choice: a draw
    assert not plain["root_selected"].any()
    with pytest.raises(ValueError, match="emotion_draw must be one of"):
        EmotionPolicy(FakeModel(), FakePlanner(A, E), emotion_draw="gumbel")


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


def test_the_agent_hands_its_emotion_draw_to_its_policies_and_the_command_line_sets_it():
    torch.manual_seed(0)
    agent = EmotionAgent(
        2, 2, 8, d_model=16, n_layers=1, n_heads=2, planner=EmotionMCTS(4, root_rule=GumbelRoot(considered=4))
    )
    assert agent.make_policy().emotion_draw == "search" and agent.hparams.emotion_draw == "search"
    drawn = EmotionAgent(2, 2, 8, d_model=16, n_layers=1, n_heads=2, emotion_draw="temperature")
    assert drawn.make_policy().emotion_draw == "temperature" and drawn.make_policy(greedy=True).greedy
    with pytest.raises(ValueError, match="emotion_draw='gumbel' is not supported"):
        EmotionAgent(2, 2, 8, emotion_draw="gumbel")
    cli = main([f"--config={CONFIG}", "--trainer.logger=false", "--model.emotion_draw=temperature"], run=False)
    assert cli.model.make_policy().emotion_draw == "temperature"
