"""Environments, episode assembly, replay and the datamodule (spec 2.2.2, 3.3, 5)."""

from __future__ import annotations

import io
import math

import pytest
import torch
from tensordict import TensorDict
from torchrl.collectors import Collector
from torchrl.envs import Compose, GymEnv, InitTracker, TransformedEnv

from emotion_rl.data import (
    EPISODE_KEYS,
    EmotionDataModule,
    EpisodeAssembler,
    EpisodeReplay,
    PreviousReward,
    discounted_returns,
    evaluate_policy,
    make_env,
    probe_env,
)
from emotion_rl.policy import EmotionPolicy, TemperatureSchedule

from fakes import FakeModel, FakePlanner, register_counter

E, A = 8, 2
COUNTER_ID = "EmotionRLTest/Counter-v0"
UNBOUNDED_ID = "EmotionRLTest/Unbounded-v0"
IMAGE_ID = "EmotionRLTest/Image-v0"


register_counter(COUNTER_ID, 6, n_actions=A, max_length=8)  # 7-step episodes get truncated at 6
register_counter(UNBOUNDED_ID, None, n_actions=A)
register_counter(IMAGE_ID, 6, n_actions=A, image=True)


def fake_policy(greedy: bool) -> EmotionPolicy:
    # 13 of 20 visits on emotion (history length) % E; emotion e's logits favour action e % A
    planner = FakePlanner(n_actions=A, n_emotions=E, peak=13, row_shift=0, logit=4.0)
    return EmotionPolicy(FakeModel(), planner, temperature=TemperatureSchedule(1.0, 0.5, 100), greedy=greedy)


class FakePolicyDataModule(EmotionDataModule):
    def make_policy(self, greedy: bool):
        return fake_policy(greedy)


def collect(env_id: str, num_envs: int, steps: int, seed: int = 0, **kwargs) -> list[TensorDict]:
    env = make_env(env_id, num_envs=num_envs, seed=seed, **kwargs)
    policy = fake_policy(False)
    policy.action_spec = env.action_spec
    collector = Collector(env, policy, frames_per_batch=num_envs * steps, total_frames=-1)
    try:
        iterator = iter(collector)
        return [next(iterator).clone() for _ in range(3)]
    finally:
        collector.shutdown()


# ---------------------------------------------------------------------------------------------- environments
def test_previous_reward_carries_the_last_reward_to_the_next_root_and_zero_after_reset():
    env = make_env(COUNTER_ID, num_envs=3, seed=0)
    assert "prev_reward" in env.observation_spec.keys()
    td = env.rollout(40, break_when_any_done=False)
    is_init = td["is_init"][..., 0]
    prev_reward, reward = td["prev_reward"][..., 0], td["next", "reward"][..., 0]
    assert is_init[:, 1:].any(), "the rollout must contain partial resets"
    assert (prev_reward[is_init] == 0).all()
    following = ~is_init[:, 1:]
    assert torch.equal(prev_reward[:, 1:][following], reward[:, :-1][following])
    assert reward.unique().numel() > 3  # the counter env's rewards differ from step to step


def test_previous_reward_on_a_plain_gym_env():
    env = TransformedEnv(GymEnv(COUNTER_ID), Compose(InitTracker(), PreviousReward()))
    env.set_seed(1)
    td = env.rollout(20, break_when_any_done=False)
    is_init = td["is_init"][:, 0]
    assert is_init[1:].any() and (td["prev_reward"][is_init] == 0).all()
    following = ~is_init[1:]
    assert torch.equal(td["prev_reward"][1:][following], td["next", "reward"][:-1][following])
    assert (td["prev_reward"][1:][following] != 0).all()


def test_make_env_transitions_are_consistent_for_batched_cartpole():
    env = make_env("CartPole-v1", num_envs=3, seed=0)
    td = env.rollout(120, break_when_any_done=False)
    done = td["next", "done"][..., 0]
    assert done[:, :-1].any()
    following = ~done[:, :-1]
    assert torch.equal(td["next", "observation"][:, :-1][following], td["observation"][:, 1:][following])
    assert (td["next", "reward"] == 1).all()  # no fake zero-reward step after an autoreset
    starts = td["observation"][td["is_init"][..., 0]]
    assert (starts.abs() <= 0.05).all()  # every episode starts in CartPole's reset range
    assert (td["next", "observation"][done].abs().sum(-1) > 0).all()  # real terminal observations, not fillers


def test_make_env_seeding_is_deterministic():
    first = make_env("CartPole-v1", num_envs=2, seed=3).reset()["observation"]
    again = make_env("CartPole-v1", num_envs=2, seed=3).reset()["observation"]
    other = make_env("CartPole-v1", num_envs=2, seed=4).reset()["observation"]
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.equal(first[0], first[1])


def test_make_env_refuses_unsupported_spaces_naming_the_env():
    with pytest.raises(ValueError, match=r"Pendulum-v1.*Box.*Discrete"):
        make_env("Pendulum-v1")
    with pytest.raises(ValueError, match=r"Image-v0.*1-D continuous Box"):
        make_env(IMAGE_ID)
    with pytest.raises(ValueError, match="unknown gymnasium env id"):
        make_env("NoSuchEnv-v0")


def test_probe_env_reports_sizes_and_the_episode_limit():
    info = probe_env("CartPole-v1")
    assert (info.obs_dim, info.n_actions, info.max_episode_steps) == (4, 2, 500)
    assert probe_env("CartPole-v1", max_episode_steps=50).max_episode_steps == 50
    with pytest.raises(ValueError, match=r"Unbounded-v0.*max_episode_steps"):
        probe_env(UNBOUNDED_ID)
    assert probe_env(UNBOUNDED_ID, max_episode_steps=9).max_episode_steps == 9


def test_max_episode_steps_override_truncates_the_episodes():
    env = make_env("CartPole-v1", num_envs=1, seed=0, max_episode_steps=5)
    td = env.rollout(12, lambda td: td.set("action", torch.tensor([[1, 0]])), break_when_any_done=False)
    assert td["step_count"][..., 0].max() <= 4
    assert td["next", "truncated"].any()


# ---------------------------------------------------------------------------------------------- episodes
def test_discounted_returns_whole_episode_without_bootstrap():
    rewards = torch.tensor([1.0, 2.0, 3.0])
    assert discounted_returns(rewards, 0.5).tolist() == [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0]
    assert discounted_returns(rewards, 1.0).tolist() == [6.0, 5.0, 3.0]
    assert discounted_returns(rewards, 0.0).tolist() == [1.0, 2.0, 3.0]
    long = discounted_returns(torch.ones(500), 0.99)
    assert long[0].item() == pytest.approx((1 - 0.99**500) / (1 - 0.99), rel=1e-6)


def synthetic_batch(n_envs: int, steps: int, offset: int, init: list[list[int]], done: list[list[int]], one_hot=True):
    """A collector-like batch; observation[b, t] = [b, offset + t], reward = offset + t."""
    t = torch.arange(offset, offset + steps).float()
    obs = torch.stack([torch.stack([torch.full_like(t, b), t], -1) for b in range(n_envs)])
    action = (torch.arange(n_envs * steps).view(n_envs, steps) % A).long()
    is_init = torch.zeros(n_envs, steps, 1, dtype=torch.bool)
    is_done = torch.zeros(n_envs, steps, 1, dtype=torch.bool)
    for b, ts in enumerate(init):
        is_init[b, ts] = True
    for b, ts in enumerate(done):
        is_done[b, ts] = True
    visits = torch.softmax(torch.randn(n_envs, steps, E), -1)
    return TensorDict(
        {
            "observation": obs,
            "action": torch.nn.functional.one_hot(action, A) if one_hot else action,
            "emotion": (action + 3) % E,
            "visit_distribution": visits,
            "is_init": is_init,
            "next": {
                "observation": obs + torch.tensor([0.0, 1.0]),
                "reward": t.expand(n_envs, steps).unsqueeze(-1),
                "done": is_done,
            },
        },
        batch_size=[n_envs, steps],
    )


def test_episode_assembly_carries_partial_episodes_across_batches():
    assembler = EpisodeAssembler(max_len=8, gamma=0.5)
    # env 0: episode t=0..2 ends in batch 1, next one t=3..6 spans both batches; env 1: t=0..5 spans both batches
    first = assembler.ingest(synthetic_batch(2, 4, 0, init=[[0, 3], [0]], done=[[2], []]))
    assert first.batch_size == (1, 8)
    assert first["observation"][0, :3, 1].tolist() == [0, 1, 2]
    second = assembler.ingest(synthetic_batch(2, 4, 4, init=[[3], [2]], done=[[2], [1]]))
    assert second.batch_size == (2, 8)
    env0, env1 = second[0], second[1]
    assert env0["observation"][:, 0].eq(0).all() and env0["observation"][:4, 1].tolist() == [3, 4, 5, 6]
    assert env0["mask"].tolist() == [True] * 4 + [False] * 4
    assert env0["done"].tolist() == [False, False, False, True] + [False] * 4
    assert env0["reward"][:4].tolist() == [3, 4, 5, 6] and env0["reward"][4:].eq(0).all()
    assert env0["return"][:4].tolist() == discounted_returns(torch.tensor([3.0, 4, 5, 6]), 0.5).tolist()
    assert env0["return"][4:].eq(0).all()
    assert torch.equal(env0["next_observation"][:4, 1], env0["observation"][:4, 1] + 1)
    assert env1["observation"][:6, 1].tolist() == [0, 1, 2, 3, 4, 5] and env1["mask"].sum() == 6
    assert set(second.keys()) == set(EPISODE_KEYS)
    assert second["action"].dtype == torch.long and second["action"].shape == (2, 8)  # categorical from one-hot
    assert second["emotion"][0, :4].tolist() == ((second["action"][0, :4] + 3) % E).tolist()
    assert assembler.drain_finished() == ([3.0, 18.0, 15.0], [3, 4, 6])
    assert assembler.dropped_steps == 0
    # env 1's new episode (t=6, 7) is carried on
    third = assembler.ingest(synthetic_batch(2, 2, 8, init=[[], []], done=[[], [0]]))
    assert third["observation"][0, :3, 1].tolist() == [6, 7, 8] and third["mask"][0].sum() == 3


def test_episode_assembly_drops_episodes_whose_start_it_never_saw():
    assembler = EpisodeAssembler(max_len=8, gamma=1.0)
    assert assembler.ingest(synthetic_batch(1, 4, 0, init=[[2]], done=[[1]], one_hot=False)) is None
    assert assembler.dropped_steps == 2
    out = assembler.ingest(synthetic_batch(1, 2, 4, init=[[]], done=[[1]], one_hot=False))
    assert out["observation"][0, :4, 1].tolist() == [2, 3, 4, 5]
    # a reset without done (e.g. a collector reset) cuts the unfinished episode: it is dropped, not merged
    assert assembler.ingest(synthetic_batch(1, 4, 6, init=[[0, 2]], done=[[]], one_hot=False)) is None
    assert assembler.dropped_steps == 4  # steps 6, 7
    out = assembler.ingest(synthetic_batch(1, 4, 10, init=[[1, 3]], done=[[2]], one_hot=False))
    assert out["mask"].sum() == 2 and out["observation"][0, :2, 1].tolist() == [11, 12]
    assert assembler.dropped_steps == 7  # and the carried steps 8, 9 and step 10


def test_episode_longer_than_max_len_is_refused():
    assembler = EpisodeAssembler(max_len=3)
    with pytest.raises(RuntimeError, match="exceeds max_len 3"):
        assembler.ingest(synthetic_batch(1, 5, 0, init=[[0]], done=[[4]]))


def test_collected_episodes_are_whole_real_and_contiguous():
    assembler = EpisodeAssembler(max_len=6, gamma=0.9)
    episodes = [assembler.ingest(batch) for batch in collect(COUNTER_ID, num_envs=2, steps=5)]
    episodes = torch.cat([e for e in episodes if e is not None])
    assert episodes.batch_size[0] >= 3
    truncated = 0
    for episode in episodes:
        n = int(episode["mask"].sum())
        obs, next_obs = episode["observation"][:n], episode["next_observation"][:n]
        assert obs[:, 0].tolist() == list(range(n))  # starts at t = 0, no step missing or repeated
        assert torch.equal(obs[1:], next_obs[:-1])
        assert torch.equal(episode["reward"][:n], next_obs[:, 0] + 100 * episode["action"][:n])
        planned = int(obs[0, 1])
        assert n == min(planned, 6)
        truncated += planned > 6
        assert episode["done"][:n].tolist() == [False] * (n - 1) + [True]
        assert torch.allclose(episode["return"][:n], discounted_returns(episode["reward"][:n], 0.9))
        # spec 3.3: the stored distribution of step t is the one the search returned at step t (fake_policy's planner:
        # 13 of 20 visits on emotion (history length) % E, history length t + 1)
        expected = torch.full((n, E), 1 / 20)
        expected[torch.arange(n), (torch.arange(n) + 1) % E] = 13 / 20
        torch.testing.assert_close(episode["visit_distribution"][:n], expected)
        assert not episode["mask"][n:].any()


# ---------------------------------------------------------------------------------------------- replay
def make_episodes(lengths: list[int], max_len: int = 6) -> TensorDict:
    assembler = EpisodeAssembler(max_len=max_len)
    batch_steps = sum(lengths)
    init, done, t = [], [], 0
    for length in lengths:
        init.append(t)
        done.append(t + length - 1)
        t += length
    return assembler.ingest(synthetic_batch(1, batch_steps, 0, init=[init], done=[done]))


def test_replay_samples_whole_episodes_trimmed_to_the_longest():
    replay = EpisodeReplay(capacity_episodes=3)
    replay.extend(make_episodes([2, 3]))
    batch = replay.sample(16)
    assert batch.batch_size == (16, 3) and set(batch.keys()) == set(EPISODE_KEYS)
    assert set(batch["mask"].sum(-1).tolist()) == {2, 3}
    assert replay.sample(4, trim=False).batch_size == (4, 6)
    replay.extend(make_episodes([1, 1]))  # FIFO: the oldest is overwritten
    assert len(replay) == 3
    assert sorted(replay.buffer[:]["mask"].sum(-1).tolist()) == [1, 1, 3]


def test_replay_state_dict_round_trip_loads_with_weights_only():
    replay = EpisodeReplay(capacity_episodes=4)
    replay.extend(make_episodes([2, 3, 4]))
    buffer = io.BytesIO()
    torch.save(replay.state_dict(), buffer)
    buffer.seek(0)
    restored = EpisodeReplay(capacity_episodes=4)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert len(restored) == 3
    assert (restored.buffer[:].select(*EPISODE_KEYS) == replay.buffer[:].select(*EPISODE_KEYS)).all()
    restored.extend(make_episodes([5, 1]))  # the write cursor was restored too
    assert sorted(restored.buffer[:]["mask"].sum(-1).tolist()) == [1, 3, 4, 5]


# ---------------------------------------------------------------------------------------------- datamodule
def test_datamodule_exposes_env_sizes_and_validates_settings():
    dm = EmotionDataModule("CartPole-v1")
    assert (dm.obs_dim, dm.n_actions, dm.max_episode_steps) == (4, 2, 500)
    assert EmotionDataModule("CartPole-v1", time_limit=64).max_episode_steps == 64
    with pytest.raises(ValueError, match="num_envs"):
        EmotionDataModule(num_envs=0)
    with pytest.raises(ValueError, match="gamma"):
        EmotionDataModule(gamma=1.5)
    with pytest.raises(ValueError, match="Pendulum-v1"):
        EmotionDataModule("Pendulum-v1")


def test_training_stream_yields_episode_batches_and_stats():
    dm = FakePolicyDataModule(
        COUNTER_ID, num_envs=2, frames_per_batch=8, batch_size=5, updates_per_collection=2, warmup_episodes=2
    )
    stream = iter(dm.train_dataloader())
    batches = [next(stream) for _ in range(4)]
    for batch in batches:
        assert batch.batch_size == ()
        episodes = batch["episodes"]
        assert episodes.batch_size[0] == 5 and episodes.batch_size[1] <= 6 and set(episodes.keys()) == set(EPISODE_KEYS)
        assert episodes["mask"][:, 0].all()
        assert set(batch["stats"].keys()) == {"env_steps", "episodes", "episode_return", "emotion_usage", "temperature"}
    first, second = batches[0]["stats"], batches[1]["stats"]
    assert first["env_steps"].item() % 8 == 0 and first["episodes"].item() >= 2
    assert first["emotion_usage"].shape == (E,) and first["emotion_usage"].sum().item() == pytest.approx(1.0)
    assert math.isfinite(first["episode_return"].item())
    assert second["emotion_usage"].isnan().all() and second["episode_return"].isnan()  # nothing new since
    assert second["env_steps"] == first["env_steps"]
    assert batches[2]["stats"]["env_steps"] == first["env_steps"] + 8
    # temperature follows the env steps collected: TemperatureSchedule(1.0, 0.5, 100)
    steps = batches[2]["stats"]["env_steps"].item()
    assert batches[2]["stats"]["temperature"].item() == pytest.approx(1.0 - 0.5 * steps / 100)
    assert dm.env_steps == steps and len(dm.replay) == dm.episodes


def test_validation_plays_greedy_first_episodes_deterministically():
    dm = FakePolicyDataModule(COUNTER_ID, val_episodes=4)
    results = [next(iter(dm.val_dataloader())) for _ in range(2)]
    for result in results:
        assert result["episode_return"].shape == (4,) and result["episode_length"].shape == (4,)
        assert ((result["episode_length"] >= 2) & (result["episode_length"] <= 6)).all()
    assert torch.equal(results[0]["episode_return"], results[1]["episode_return"])
    assert len(list(dm.test_dataloader())) == 1


def test_evaluate_policy_counts_only_the_first_episode_of_each_env():
    env = make_env(COUNTER_ID, num_envs=3, seed=5)
    result = evaluate_policy(env, fake_policy(True), max_steps=50)
    lengths = result["episode_length"]
    # greedy: emotion (history length) % E -> action = emotion % 2 = (t + 1) % 2; reward t + 1 + 100 * action
    expected = torch.tensor([sum(t + 1 + 100 * ((t + 1) % 2) for t in range(n)) for n in lengths.tolist()])
    assert torch.equal(result["episode_return"], expected.float())


def test_datamodule_state_dict_round_trip_loads_with_weights_only():
    dm = FakePolicyDataModule(COUNTER_ID, num_envs=2, frames_per_batch=8, batch_size=2, warmup_episodes=1)
    stream = iter(dm.train_dataloader())
    for _ in range(3):
        next(stream)
    buffer = io.BytesIO()
    torch.save(dm.state_dict(), buffer)
    buffer.seek(0)
    restored = FakePolicyDataModule(COUNTER_ID, num_envs=2, frames_per_batch=8, batch_size=2, warmup_episodes=1)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert (restored.env_steps, restored.episodes, restored.stream_starts) == (dm.env_steps, dm.episodes, 1)
    assert len(restored.replay) == len(dm.replay) > 0
    batch = next(iter(restored.train_dataloader()))  # resumes: new env seed, temperature from the restored steps
    assert batch["stats"]["env_steps"].item() > dm.env_steps


def test_fit_with_the_emotion_agent_checkpoints_the_replay(tmp_path):
    """The datamodule drives a real EmotionAgent (real model and search); its state lands in the checkpoint."""
    import lightning as L

    from emotion_rl.agent import EmotionAgent

    torch.manual_seed(0)
    dm = EmotionDataModule(
        "CartPole-v1",
        num_envs=2,
        frames_per_batch=8,
        batch_size=2,
        warmup_episodes=1,
        val_episodes=2,
        time_limit=8,
    )
    agent = EmotionAgent(
        dm.obs_dim, dm.n_actions, dm.max_episode_steps, d_model=16, n_layers=1, n_heads=2, num_simulations=2
    )
    trainer = L.Trainer(
        max_steps=8,
        val_check_interval=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(agent, datamodule=dm)
    assert trainer.global_step == 8 and dm.env_steps >= 8 and len(dm.replay) >= 1
    assert "val/return_mean" in trainer.callback_metrics
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["EmotionDataModule"]
    restored = EmotionDataModule("CartPole-v1", time_limit=8)
    restored.load_state_dict(state)
    assert len(restored.replay) == len(dm.replay) and restored.env_steps == dm.env_steps


# ---------------------------------------------------------------------------------------------- context window
def test_replay_windows_are_the_recent_history_of_a_uniformly_drawn_step():
    replay = EpisodeReplay(capacity_episodes=4)
    replay.extend(make_episodes([2, 5]))
    replay.seed(3)
    stored = {int(ep["mask"].sum()): ep for ep in replay.buffer[:]}
    ends = set()
    for _ in range(40):
        windows = replay.sample_windows(8, window=3)
        assert windows.batch_size[0] == 8 and windows.batch_size[1] <= 3 and set(windows.keys()) == set(EPISODE_KEYS)
        for window in windows:
            valid = int(window["mask"].sum())
            assert valid >= 1 and window["mask"][:valid].all() and not window["mask"][valid:].any()  # left-aligned
            # a contiguous slice of one stored episode, ending at its step `end` and reaching back 3 steps at most
            matches = [
                (length, start)
                for length, episode in stored.items()
                for start in range(length - valid + 1)
                if torch.equal(episode["observation"][start : start + valid], window["observation"][:valid])
            ]
            assert len(matches) == 1, "the window is not one contiguous slice of a stored episode"
            length, start = matches[0]
            end = start + valid - 1
            assert valid == min(3, end + 1), "the window must hold the last 3 steps up to its end, or all from step 0"
            ends.add((length, end))
    assert ends == {(2, 0), (2, 1), (5, 0), (5, 1), (5, 2), (5, 3), (5, 4)}, "every stored step can end a window"


def test_replay_window_draws_resume_from_the_state_dict():
    replay = EpisodeReplay(capacity_episodes=4)
    replay.extend(make_episodes([2, 5, 4]))
    replay.seed(11)
    replay.sample_windows(4, window=2)
    buffer = io.BytesIO()
    torch.save(replay.state_dict(), buffer)
    buffer.seek(0)
    expected = [replay.sample_windows(4, window=2) for _ in range(3)]
    restored = EpisodeReplay(capacity_episodes=4)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for want in expected:
        got = restored.sample_windows(4, window=2)
        assert all(torch.equal(got[key], want[key]) for key in ("observation", "mask")), "window draws diverged"


def test_windowed_datamodule_streams_windows_and_checks_the_policy_and_settings():
    planner = FakePlanner(n_actions=A, n_emotions=E, peak=13, row_shift=0, logit=4.0)

    class WindowedDataModule(EmotionDataModule):
        def make_policy(self, greedy: bool):
            return EmotionPolicy(FakeModel(context_window=3), planner, greedy=greedy)

    dm = WindowedDataModule(
        UNBOUNDED_ID,
        num_envs=2,
        frames_per_batch=8,
        batch_size=5,
        warmup_episodes=1,
        context_window=3,
        time_limit=12,
    )
    stream = iter(dm.train_dataloader())
    for _ in range(3):
        episodes = next(stream)["episodes"]
        assert episodes.batch_size[0] == 5 and 1 <= episodes.batch_size[1] <= 3
        seen = [(h["mask"][b].sum().item(), h[b]) for h in planner.histories for b in range(h.batch_size[0])]
        # each window's last step saw, when the policy acted there, exactly this window as its history (a_t, e_t
        # and r_t of the last step were not known yet then; h_t never reads them)
        for window in episodes:
            n = int(window["mask"].sum())
            assert any(
                length == n
                and torch.equal(history["observation"][:n], window["observation"][:n])
                and all(torch.equal(history[k][: n - 1], window[k][: n - 1]) for k in ("action", "emotion", "reward"))
                for length, history in seen
            ), "a training window is not the history the policy planned on at its last step"
    with pytest.raises(ValueError, match=r"context_window=3 steps but the policy plans on 15"):
        FakePolicyDataModule(COUNTER_ID, context_window=3)._check_context(fake_policy(False))
    with pytest.raises(ValueError, match=r"reanalyze_fraction > 0 needs whole episodes"):
        EmotionDataModule(COUNTER_ID, context_window=3, reanalyze_fraction=0.5)
    with pytest.raises(ValueError, match="context_window"):
        EmotionDataModule(COUNTER_ID, context_window=0)
