"""Monte Carlo targets that see the time limit (docs/data.md, "The value after a truncation"):
``MonteCarlo(bootstrap_truncation=True)`` asks, when an episode cut by the time limit is stored, for the value of
the state after its last step (valued by the connected agent's model), which the data side stores discounted as each
step's ``bootstrap`` and the estimator adds to the return; without the option nothing is valued."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from emotion_rl import EmotionAgent, EmotionDataModule, EmotionMCTS, MonteCarlo
from emotion_rl.data.episodes import EpisodeAssembler, discounted_bootstrap, discounted_returns
from emotion_rl.data.selfplay import Bootstrapper
from emotion_rl.history import HISTORY_KEYS
from emotion_rl.losses.targets import value_after

from fakes import COUNTER_ID, synthetic_batch

GAMMA, SCALE = 0.9, 0.1


def agent(
    value: float | None = None, context_window: int | None = None, gamma: float = GAMMA, bootstrap_truncation=True
) -> EmotionAgent:
    """A tiny agent for 2-D observations and 2 actions, its Monte Carlo targets bootstrapped at a truncation (or not);
    with ``value``, every ``V^e`` is ``value`` in every state."""
    target = {"class_path": "emotion_rl.MonteCarlo", "init_args": {"bootstrap_truncation": bootstrap_truncation}}
    torch.manual_seed(0)
    out = EmotionAgent(
        2,
        2,
        max_episode_steps=8,
        context_window=context_window,
        d_model=16,
        n_layers=1,
        n_heads=2,
        planner=EmotionMCTS(2),
        value_loss={"class_path": "emotion_rl.ValueLoss", "init_args": {"return_scale": SCALE, "target": target}},
        gamma=gamma,
    )
    if value is not None:
        with torch.no_grad():
            out.model.value_heads.w2.zero_()
            out.model.value_heads.b2.fill_(value)
    return out


def cut_episodes() -> TensorDict:
    """Env 0: an episode of 4 steps cut by the time limit; env 1: one of 3 steps that terminated."""
    batch = synthetic_batch(2, 4, 0, init=[[0], [0]], done=[[3], [2]])
    truncated = torch.zeros(2, 4, 1, dtype=torch.bool)
    truncated[0, 3] = True
    batch.set(("next", "truncated"), truncated)
    batch.set(("next", "terminated"), batch.get(("next", "done")) & ~truncated)
    return batch


def test_monte_carlo_targets_add_the_discounted_value_after_a_truncation_and_nothing_after_a_termination():
    valuer = agent(value=0.7)  # V(s) = 0.7 in value units everywhere: 7.0 in reward units at return_scale 0.1
    assert isinstance(valuer, Bootstrapper)
    episodes = EpisodeAssembler(6, GAMMA, bootstrap=valuer.bootstrap).ingest(cut_episodes())
    rewards = [torch.arange(4.0), torch.arange(3.0)]  # synthetic_batch: reward t at step t
    returns = [discounted_returns(r, GAMMA) for r in rewards]
    torch.testing.assert_close(episodes["bootstrap"][0, :4], torch.tensor([GAMMA ** (4 - t) * 7.0 for t in range(4)]))
    assert episodes["bootstrap"][1].eq(0).all() and episodes["bootstrap"][0, 4:].eq(0).all()

    y, y_next = MonteCarlo(bootstrap_truncation=True).targets(episodes, valuer.model, GAMMA, SCALE)
    expected = SCALE * (returns[0] + torch.tensor([GAMMA ** (4 - t) * 7.0 for t in range(4)]))
    torch.testing.assert_close(y[0, :4], expected)
    torch.testing.assert_close(y[1, :3], SCALE * returns[1])  # terminated: the return alone
    assert y_next[0, 3].item() == pytest.approx(0.7, rel=1e-5)  # after the truncated last step: V(s_T), not 0
    assert y_next[1, 2].item() == 0.0  # after a termination: 0

    literal, literal_next = MonteCarlo().targets(episodes, valuer.model, GAMMA, SCALE)  # decision 19, the default
    torch.testing.assert_close(literal[0, :4], SCALE * returns[0])
    assert literal_next[0, 3].item() == pytest.approx(0.0, abs=1e-6)


def test_the_bootstrap_reads_the_last_context_window_steps_with_the_state_after_as_the_imagined_token():
    valuer = agent(context_window=3)
    torch.manual_seed(1)
    episodes = TensorDict(
        observation=torch.randn(2, 6, 2),
        action=torch.randint(0, 2, (2, 6)),
        emotion=torch.randint(0, 8, (2, 6)),
        reward=torch.randn(2, 6),
        next_observation=torch.randn(2, 6, 2),
        mask=torch.arange(6) < torch.tensor([[5], [2]]),
        batch_size=[2, 6],
    )
    values = value_after(episodes, valuer.model)
    with torch.no_grad():
        for row, (start, end) in enumerate([(2, 5), (0, 2)]):  # the last 3 steps, or the episode when shorter
            history = episodes[row : row + 1, start:end].select(*HISTORY_KEYS)
            after = episodes["next_observation"][row : row + 1, end - 1]
            expected = valuer.model.evaluate(history, imagined_observation=after)["value"]
            torch.testing.assert_close(values[row : row + 1], expected, msg=f"episode {row}")
    torch.testing.assert_close(valuer.bootstrap(episodes), values / SCALE)  # in reward units


def test_without_bootstrap_truncation_nothing_is_valued_and_every_bootstrap_is_zero():
    literal = agent(value=0.7, bootstrap_truncation=False)

    def refuse(*args, **kwargs):
        raise AssertionError("the model was asked for a value that no target reads")

    literal.model.evaluate = refuse
    assert literal.bootstrap(cut_episodes()) is None
    episodes = EpisodeAssembler(6, GAMMA, bootstrap=literal.bootstrap).ingest(cut_episodes())
    assert episodes["bootstrap"].eq(0).all()


def test_the_datamodule_stores_the_bootstrap_of_each_truncated_episode_with_the_agents_model():
    learner = agent(value=None)
    data = EmotionDataModule(COUNTER_ID, num_envs=2, frames_per_batch=16, batch_size=2, warmup_episodes=1, gamma=GAMMA)
    data.connect(learner)
    stream = data._training_batches()
    while len(data.replay) < 24:  # nothing trains, so the model that valued them is still this one
        next(stream)
    stored = data.replay.episodes()
    lengths = stored["mask"].sum(-1)
    last = stored["truncated"][torch.arange(len(lengths)), lengths - 1]
    last &= ~stored["terminated"][torch.arange(len(lengths)), lengths - 1]  # a terminal state at the limit: none
    assert last.any() and (~last).any(), "the check needs truncated and terminated episodes"
    values = learner.bootstrap(stored[last])
    expected = discounted_bootstrap(lengths[last], values, GAMMA, stored.batch_size[1])
    torch.testing.assert_close(stored["bootstrap"][last], expected)
    assert values.abs().min() > 0 and stored["bootstrap"][~last].eq(0).all()


def test_a_bootstrapped_monte_carlo_target_needs_the_stored_key_and_one_gamma_for_data_and_agent():
    episodes = EpisodeAssembler(6, GAMMA).ingest(cut_episodes()).exclude("bootstrap")
    with pytest.raises(ValueError, match="needs the batch's 'bootstrap' key"):
        MonteCarlo(bootstrap_truncation=True).targets(episodes, None, GAMMA, SCALE)
    data = EmotionDataModule(COUNTER_ID, gamma=0.98)
    with pytest.raises(ValueError, match=r"gamma=0.9 but the data's returns use gamma=0.98; give both the same"):
        data.connect(agent(gamma=0.9))
