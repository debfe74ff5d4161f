"""Acting: temperature schedule and emotion selection (spec 3.4), the policy's real histories (spec 1.6, 3.1, 5)."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from torchrl.collectors import Collector
from torchrl.data import Categorical, OneHot

from emotion_rl.data.envs import make_env
from emotion_rl.mcts.search import EmotionMCTS
from emotion_rl.model import EmotionModel
from emotion_rl.policy import EmotionPolicy, TemperatureSchedule, select_emotion

from fakes import FakeModel, FakePlanner, register_counter

E, A = 8, 3
COUNTER_ID = "EmotionRLTest/PolicyCounter-v0"


register_counter(COUNTER_ID, 10, n_actions=A, max_length=6)


class RecordingPlanner(FakePlanner):
    """Favours emotion ``(t + b) % E`` (t = history length, b = row); emotion e's logits favour action ``e % A``."""

    def __init__(self) -> None:
        super().__init__(n_actions=A, n_emotions=E, peak=10, row_shift=1, logit=5.0)


def step_input(obs, is_init, prev_reward) -> TensorDict:
    obs = torch.as_tensor(obs, dtype=torch.float32)
    n = obs.shape[0]
    return TensorDict(
        observation=obs,
        is_init=torch.as_tensor(is_init).view(n, 1),
        prev_reward=torch.as_tensor(prev_reward, dtype=torch.float32).view(n, 1),
        batch_size=[n],
    )


# ---------------------------------------------------------------------------------------------- temperature
def test_temperature_schedule_is_linear_then_constant():
    schedule = TemperatureSchedule(start=1.0, end=0.1, decay_frames=100)
    assert schedule(0) == pytest.approx(1.0)
    assert schedule(50) == pytest.approx(0.55)
    assert schedule(100) == pytest.approx(0.1)
    assert schedule(10_000) == pytest.approx(0.1)
    assert schedule(torch.tensor(25)) == pytest.approx(0.775)
    assert TemperatureSchedule(2.0, 0.5, decay_frames=0)(0) == 0.5
    default = TemperatureSchedule()
    assert default(0) == 1.0 and default(10**9) == pytest.approx(0.1)  # spec 3.4's example values


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"start": -0.1}, "start"),
        ({"end": -1.0}, "end"),
        ({"end": float("nan")}, "end"),
        ({"decay_frames": -5}, "decay_frames"),
        ({"decay_frames": 2.5}, "decay_frames"),
    ],
)
def test_temperature_schedule_refuses_bad_settings_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        TemperatureSchedule(**kwargs)


# ---------------------------------------------------------------------------------------------- select_emotion
def test_temperature_zero_is_argmax_with_ties_to_the_lowest_index():
    dist = torch.tensor(
        [
            [0.1, 0.2, 0.3, 0.4, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.5, 0.0, 0.0, 0.5, 0.0, 0.0],
            [0.125] * 8,
        ]
    )
    assert select_emotion(dist, 0.0).tolist() == [3, 2, 0]
    batched = dist.expand(2, 3, 8)
    assert select_emotion(batched, 0).shape == (2, 3)


def test_temperature_one_samples_the_visit_distribution():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0, 0.0, 0.0, 0.0])
    n = 20_000
    generator = torch.Generator().manual_seed(0)
    draws = select_emotion(probs.expand(n, E), 1.0, generator=generator)
    freq = torch.bincount(draws, minlength=E).double() / n
    sigma = (probs.double() * (1 - probs.double()) / n).sqrt()
    assert ((freq - probs.double()).abs() <= 5 * sigma + 1e-12).all(), freq
    assert freq[4:].sum() == 0  # zero visits, zero probability


def test_temperature_sharpens_as_the_power_one_over_t():
    counts = torch.tensor([1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # raw counts work as well as normalised ones
    n = 20_000
    generator = torch.Generator().manual_seed(1)
    draws = select_emotion(counts.expand(n, E), 0.5, generator=generator)
    expected = torch.tensor([1.0, 4.0]) / 5  # dist ** 2, normalised
    freq = torch.bincount(draws, minlength=E).double()[:2] / n
    assert torch.allclose(freq, expected.double(), atol=0.02)


def test_low_temperature_concentrates_on_the_most_visited_emotion():
    dist = torch.tensor([0.3, 0.4, 0.1, 0.2, 0.0, 0.0, 0.0, 0.0])
    generator = torch.Generator().manual_seed(2)
    hot = select_emotion(dist.expand(5000, E), 1.0, generator=generator)
    cold = select_emotion(dist.expand(5000, E), 0.1, generator=generator)
    assert (hot == 1).double().mean() < 0.5
    assert (cold == 1).double().mean() > 0.9


@pytest.mark.parametrize("temperature", [1e-8, 1e-300, 5e-324])
def test_tiny_temperatures_do_not_overflow(temperature):
    dist = torch.tensor([[0.2, 0.3, 0.5, 0, 0, 0, 0, 0], [0.4, 0.1, 0.4, 0.1, 0, 0, 0, 0]])
    generator = torch.Generator().manual_seed(3)
    draws = select_emotion(dist.repeat(200, 1, 1), temperature, generator=generator)
    assert (draws[:, 0] == 2).all()
    assert set(draws[:, 1].tolist()) == {0, 2}  # a tie at the top: both, never the others


def test_high_temperature_keeps_zero_visit_emotions_at_zero():
    dist = torch.tensor([0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    generator = torch.Generator().manual_seed(4)
    draws = select_emotion(dist.expand(5000, E), 100.0, generator=generator)
    assert set(draws.tolist()) == {0, 1}


def test_select_emotion_refuses_bad_inputs():
    with pytest.raises(ValueError, match="temperature"):
        select_emotion(torch.ones(2, E), -1.0)
    with pytest.raises(ValueError, match="temperature"):
        select_emotion(torch.ones(2, E), math.inf)
    with pytest.raises(ValueError, match="positive sum"):
        select_emotion(torch.zeros(2, E), 1.0)


# ---------------------------------------------------------------------------------------------- the policy
def test_policy_keeps_real_per_env_histories_and_restarts_them_on_is_init():
    planner = RecordingPlanner()
    policy = EmotionPolicy(FakeModel(), planner, greedy=True)
    out1 = policy(step_input([[1, 1], [2, 2]], [True, True], [0.0, 0.0]))
    first = planner.histories[-1]
    assert first.batch_size == (2, 1)
    assert first["mask"].all()
    assert first["observation"].tolist() == [[[1, 1]], [[2, 2]]]
    assert first["action"].tolist() == [[-1], [-1]] and first["emotion"].tolist() == [[-1], [-1]]
    assert first["reward"].tolist() == [[0.0], [0.0]]
    # greedy: argmax emotion (t + b) % E with t = 1, then emotion e's favourite action e % A
    assert out1["emotion"].tolist() == [1, 2]
    assert out1["action"].tolist() == [1, 2]

    out2 = policy(step_input([[3, 3], [4, 4]], [False, False], [1.5, -2.0]))
    second = planner.histories[-1]
    assert second.batch_size == (2, 2) and second["mask"].all()
    assert second["observation"][:, :, 0].tolist() == [[1, 3], [2, 4]]
    assert second["action"].tolist() == [[1, -1], [2, -1]]
    assert second["emotion"].tolist() == [[1, -1], [2, -1]]
    assert second["reward"].tolist() == [[1.5, 0.0], [-2.0, 0.0]]
    assert out2["emotion"].tolist() == [2, 3]

    policy(step_input([[5, 5], [6, 6]], [True, False], [7.0, 0.5]))  # env 0 was reset
    third = planner.histories[-1]
    assert third["mask"].tolist() == [[True, False, False], [True, True, True]]
    assert third["observation"][0, 0].tolist() == [5, 5]
    assert third["action"][0, 0].item() == -1 and third["reward"][0, 0].item() == 0.0
    assert third["observation"][1, :, 0].tolist() == [2, 4, 6]
    assert third["reward"][1].tolist() == [-2.0, 0.5, 0.0]
    assert third["action"][1].tolist() == [2, out2["action"][1].item(), -1]
    assert policy.history_lengths.tolist() == [1, 3]


def test_planner_cannot_write_imagined_states_into_the_real_history():
    class ScribblingPlanner(RecordingPlanner):
        def search(self, model, history, generator=None, explore=False):
            result = super().search(model, history)
            history.observation.fill_(-99.0)  # a planner that (wrongly) writes into its input
            history.action.fill_(0)
            return result

    policy = EmotionPolicy(FakeModel(), ScribblingPlanner(), greedy=True)
    policy(step_input([[1, 1]], [True], [0.0]))
    policy(step_input([[2, 2]], [False], [1.0]))
    history = policy.histories()
    assert history.observation[0, :, 0].tolist() == [1, 2]
    assert history.action[0].tolist() == [1, 2]  # the policy's own choices, not the planner's scribbles


def test_real_search_leaves_only_real_observations_in_the_history():
    torch.manual_seed(0)
    model = EmotionModel(2, A, d_model=16, n_layers=1, n_heads=2, context_window=15)
    policy = EmotionPolicy(model, EmotionMCTS(num_simulations=4, max_depth=3), temperature=1.0)
    observations = torch.randn(5, 3, 2)
    policy(step_input(observations[0], [True] * 3, [0.0] * 3))
    for t in range(1, 5):
        policy(step_input(observations[t], [False] * 3, [float(t)] * 3))
    history = policy.histories()
    assert history.mask.all() and history.batch_size == (3, 5)
    assert torch.equal(history.observation, observations.transpose(0, 1))  # nothing imagined, in order
    assert history.reward[:, :4].eq(torch.arange(1, 5).float()).all()
    assert (history.action[:, :4] >= 0).all() and (history.emotion[:, :4] >= 0).all()


def test_context_window_defaults_to_the_models_and_a_longer_episode_slides():
    planner = RecordingPlanner()
    policy = EmotionPolicy(FakeModel(context_window=3), planner)
    assert policy.context_window == 3
    policy(step_input([[0, 0], [0, 0]], [True, True], [0.0, 0.0]))
    for t in range(1, 6):  # env 0 runs 6 steps; env 1 restarts at t = 4 and stays short
        policy(step_input([[t, t], [t, t]], [False, t == 4], [float(t), float(t)]))
    history = policy.histories()
    assert policy.history_lengths.tolist() == [3, 2]
    assert history.observation[0, :, 0].tolist() == [3.0, 4.0, 5.0]  # the window: the last three steps
    assert history.observation[1, :2, 0].tolist() == [4.0, 5.0]
    assert history.reward[0, :2].tolist() == [4.0, 5.0]  # r_3 and r_4 stay with s_3 and s_4
    assert history.action[0, :2].ge(0).all() and history.emotion[0, :2].ge(0).all()
    assert max(h.batch_size[1] for h in planner.histories) == 3, "the planner saw more than the window"
    assert EmotionPolicy(FakeModel(context_window=3), planner, context_window=2).context_window == 2


def test_action_encoding_follows_the_action_spec():
    one_hot = EmotionPolicy(
        FakeModel(), RecordingPlanner(), greedy=True, action_spec=OneHot(A, shape=(2, A), dtype=torch.long)
    )
    out = one_hot(step_input([[1, 1], [2, 2]], [True, True], [0.0, 0.0]))
    assert out["action"].shape == (2, A) and out["action"].dtype == torch.long
    assert out["action"].argmax(-1).tolist() == [1, 2] and out["action"].sum(-1).tolist() == [1, 1]

    categorical = EmotionPolicy(FakeModel(), RecordingPlanner(), greedy=True, action_spec=Categorical(A, shape=(2,)))
    out = categorical(step_input([[1, 1], [2, 2]], [True, True], [0.0, 0.0]))
    assert out["action"].shape == (2,) and out["action"].tolist() == [1, 2]
    assert out["emotion"].dtype == torch.long
    assert out["policy_target"].shape == (2, E) and out["visit_counts"].shape == (2, E)


def test_the_policy_writes_the_planners_prior():
    class PriorPlanner(RecordingPlanner):
        def search(self, model, history, generator=None, explore=False):
            result = super().search(model, history)
            result["prior"] = torch.arange(1.0, E + 1, dtype=torch.float64).expand(2, E) / (E * (E + 1) / 2)
            return result

    policy = EmotionPolicy(FakeModel(), PriorPlanner(), temperature=1.0)
    assert "prior" in policy.out_keys
    out = policy(step_input([[1, 1], [2, 2]], [True, True], [0.0, 0.0]))
    assert out["prior"].dtype == torch.float32 and out["prior"].shape == (2, E)
    assert out["prior"][0].tolist() == pytest.approx([(k + 1) / (E * (E + 1) / 2) for k in range(E)])


def test_frames_drive_the_temperature_and_greedy_is_temperature_zero():
    schedule = TemperatureSchedule(1.0, 0.0, decay_frames=8)
    policy = EmotionPolicy(FakeModel(), RecordingPlanner(), temperature=schedule)
    assert "frames" in dict(policy.named_buffers())
    assert policy.temperature == 1.0
    policy(step_input([[1, 1], [2, 2]], [True, True], [0.0, 0.0]))
    assert policy.frames.item() == 2 and policy.temperature == pytest.approx(0.75)
    policy(step_input([[1, 1], [2, 2]], [False, False], [0.0, 0.0]))
    assert policy.frames.item() == 4 and policy.temperature == pytest.approx(0.5)
    assert EmotionPolicy(FakeModel(), RecordingPlanner(), temperature=schedule, greedy=True).temperature == 0.0
    assert EmotionPolicy(FakeModel(), RecordingPlanner(), temperature=0.3).temperature == pytest.approx(0.3)
    with pytest.raises(ValueError, match="temperature"):
        EmotionPolicy(FakeModel(), RecordingPlanner(), temperature=-1.0)


def test_policy_accepts_an_unbatched_env_and_requires_prev_reward():
    policy = EmotionPolicy(FakeModel(), RecordingPlanner(), greedy=True)
    td = TensorDict(observation=torch.ones(2), is_init=torch.ones(1, dtype=torch.bool), prev_reward=torch.zeros(1))
    out = policy(td)
    assert out["emotion"].shape == () and out["policy_target"].shape == (E,)
    with pytest.raises(KeyError, match="PreviousReward"):
        policy(TensorDict(observation=torch.ones(1, 2), is_init=torch.ones(1, 1, dtype=torch.bool), batch_size=[1]))


@pytest.mark.parametrize("categorical", [False, True])
def test_histories_match_the_collected_data_in_a_real_collector(categorical):
    """End to end: the planner saw exactly each env's real episode prefix, with r_{t-1} and a/e of earlier steps."""
    env = make_env(COUNTER_ID, num_envs=3, seed=0, categorical_action_encoding=categorical)
    planner = RecordingPlanner()
    policy = EmotionPolicy(FakeModel(), planner, temperature=1.0, action_spec=env.action_spec)
    collector = Collector(env, policy, frames_per_batch=3 * 12, total_frames=-1)
    try:
        batch = next(iter(collector))
    finally:
        collector.shutdown()
    records = planner.histories[-12:]  # the collector runs the policy once more at construction
    action = batch["action"].argmax(-1) if not categorical else batch["action"]
    assert (action >= 0).all() and (
        batch["next", "reward"][..., 0] == batch["next", "observation"][..., 0] + 100 * action
    ).all()
    for b in range(3):
        start = 0
        for t in range(12):
            if batch["is_init"][b, t, 0]:
                start = t
            seen = records[t][b]
            length = int(seen["mask"].sum())
            assert length == t - start + 1
            assert torch.equal(seen["observation"][:length], batch["observation"][b, start : t + 1])
            assert seen["action"][:length].tolist() == action[b, start:t].tolist() + [-1]
            assert seen["emotion"][:length].tolist() == batch["emotion"][b, start:t].tolist() + [-1]
            assert seen["reward"][:length].tolist() == batch["next", "reward"][b, start:t, 0].tolist() + [0.0]


def test_history_follows_the_model_dtype_and_eval_mode_is_restored():
    class ModeRecordingPlanner(RecordingPlanner):
        def search(self, model, history, generator=None, explore=False):
            self.training_during_search = model.training
            return super().search(model, history)

    planner = ModeRecordingPlanner()
    model = FakeModel().double().train()
    policy = EmotionPolicy(model, planner, greedy=True)
    out = policy(step_input([[1, 1]], [True], [0.0]))
    assert planner.histories[-1]["observation"].dtype == torch.float64
    assert planner.histories[-1]["reward"].dtype == torch.float64
    assert planner.training_during_search is False and model.training
    assert out["observation"].dtype == torch.float32


def test_torchrl_deterministic_exploration_makes_any_policy_act_greedily():
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    n = 64
    obs, init, reward = torch.zeros(n, 2), torch.ones(n, dtype=torch.bool), torch.zeros(n)
    greedy = EmotionPolicy(FakeModel(), RecordingPlanner(), greedy=True)(step_input(obs, init, reward))
    exploring = EmotionPolicy(
        FakeModel(), RecordingPlanner(), temperature=1.0, generator=torch.Generator().manual_seed(0)
    )
    assert exploring.temperature == 1.0 and not exploring.acting_greedily
    sampled = exploring(step_input(obs, init, reward))
    assert not torch.equal(sampled["emotion"], greedy["emotion"]), "temperature 1 should draw other emotions"
    for kind in (ExplorationType.DETERMINISTIC, ExplorationType.MODE):
        policy = EmotionPolicy(FakeModel(), RecordingPlanner(), temperature=1.0, generator=torch.Generator())
        with set_exploration_type(kind):
            assert policy.acting_greedily and policy.temperature == 0.0
            out = policy(step_input(obs, init, reward))
        assert torch.equal(out["emotion"], greedy["emotion"]) and torch.equal(out["action"], greedy["action"])
    with set_exploration_type(ExplorationType.RANDOM):
        assert not exploring.acting_greedily


def test_set_histories_continues_real_episodes_in_another_policy_without_touching_the_first():
    policy = EmotionPolicy(FakeModel(context_window=4), RecordingPlanner(), greedy=True)
    policy(step_input([[0, 0], [5, 5]], [True, True], [0.0, 0.0]))
    policy(step_input([[1, 1], [6, 6]], [False, False], [1.0, 2.0]))
    policy(step_input([[7, 7], [8, 8]], [True, False], [0.0, 3.0]))  # env 0 restarted: histories of 1 and 3 steps
    before = policy.histories()

    fork = EmotionPolicy(FakeModel(context_window=4), RecordingPlanner(), greedy=True)
    fork.set_histories(before[[1, 0]])  # in another order
    assert fork.history_lengths.tolist() == [3, 1]
    for t in range(3):  # the fork slides past its window like the original would
        fork(step_input([[10 + t, 0], [20 + t, 0]], [False, False], [4.0 + t, -1.0]))
    after = fork.histories()
    assert fork.history_lengths.tolist() == [4, 4]
    assert after.observation[0, :, 0].tolist() == [8.0, 10.0, 11.0, 12.0]  # env 1's last real step, then the fork's
    assert after.reward[0, :3].tolist() == [4.0, 5.0, 6.0] and after.action[0, 0] == before.action[1, 2]
    assert after.observation[1, :, 0].tolist() == [7.0, 20.0, 21.0, 22.0]
    again = policy.histories()  # the original is untouched
    for name in ("observation", "action", "emotion", "reward", "mask"):
        assert torch.equal(getattr(again, name), getattr(before, name))

    with pytest.raises(ValueError, match="exceed the context window of 2"):
        EmotionPolicy(FakeModel(context_window=2), RecordingPlanner()).set_histories(before)
    empty = before.clone()
    empty.mask[0] = False
    with pytest.raises(ValueError, match="at least one step"):
        fork.set_histories(empty)
