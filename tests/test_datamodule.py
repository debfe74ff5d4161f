"""The datamodule: settings, the self-play stream, evaluation, state, the agent connection."""

from __future__ import annotations

import io
import logging
import math
from types import SimpleNamespace

import pytest
import torch
from tensordict import TensorDict

from emotion_rl import EmotionMCTS
from emotion_rl.cli import main
from emotion_rl.data.datamodule import EmotionDataModule
from emotion_rl.data.selfplay import CollectionStats, SelfPlayCounters, search_improvement
from emotion_rl.history import EPISODE_KEYS
from emotion_rl.policy import EmotionPolicy

from conftest import CONFIG, TINY
from fakes import COUNTER_ID, UNBOUNDED_ID, A, E, FakeAgent, FakeModel, FakePlanner, fake_policy, make_episodes


def fake_datamodule(*args, **kwargs) -> EmotionDataModule:
    """A datamodule connected to an agent whose policies plan with :class:`FakePlanner` (fakes.fake_policy)."""
    return EmotionDataModule(*args, **kwargs).connect(FakeAgent(fake_policy))


def _kl_of_fake_planner() -> float:
    """KL(visits || uniform) of fakes.fake_policy's planner: 13 visits on one emotion, 1 on each of the others."""
    visits = torch.tensor([13.0] + [1.0] * (E - 1))
    visits /= visits.sum()
    return float((visits * (visits * E).log()).sum())


def test_collection_stats_measure_how_far_the_search_moved_from_the_prior():
    """Hand-made batch [2 envs, 2 steps]: KL(visits || prior) with 0 * log 0 = 0, and argmax agreement."""
    visits = torch.tensor([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], [[0.0, 0.0, 1.0], [0.2, 0.3, 0.5]]])
    prior = torch.tensor([[[0.5, 0.25, 0.25], [0.25, 0.5, 0.25]], [[0.0, 0.5, 0.5], [0.2, 0.3, 0.5]]])
    batch = TensorDict(
        policy_target=visits,
        prior=prior,
        emotion=torch.tensor([[0, 1], [2, 2]]),
        batch_size=[2, 2],
    )
    kl, agree = search_improvement(visits, prior)
    expected_kl = [[math.log(2), 0.5 * math.log(2) + 0.5 * math.log(1.0)], [math.log(2), 0.0]]
    assert kl.flatten().tolist() == pytest.approx(sum(expected_kl, []), abs=1e-9)
    assert agree.tolist() == [[1.0, 0.0], [0.0, 1.0]]  # argmax ties go to the first: [.5, .5, 0] -> 0, [0, .5, .5] -> 1

    stats = CollectionStats()
    stats.add(batch)
    stats.add(batch[:1])  # a second collector batch before the training batch: means over all six states
    counters = SelfPlayCounters(env_steps=6)
    taken = stats.take([], counters, temperature=1.0)
    flat_kl = kl.flatten().tolist() + kl[0].tolist()
    assert taken["kl_target_prior"].item() == pytest.approx(sum(flat_kl) / 6, rel=1e-6)
    assert taken["argmax_agreement"].item() == pytest.approx(3 / 6)
    again = stats.take([], counters, temperature=1.0)  # nothing new collected
    assert again["kl_target_prior"].isnan() and again["argmax_agreement"].isnan()
    # a zero prior where the visits are positive stays finite (epsilon), and a batch without prior counts nothing
    assert math.isfinite(search_improvement(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))[0].item())
    stats.add(batch.exclude("prior"))
    assert stats.take([], counters, temperature=1.0)["kl_target_prior"].isnan()


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
    dm = fake_datamodule(
        COUNTER_ID, num_envs=2, frames_per_batch=8, batch_size=5, updates_per_collection=2, warmup_episodes=2
    )
    stream = iter(dm.train_dataloader())
    batches = [next(stream) for _ in range(4)]
    for batch in batches:
        assert batch.batch_size == ()
        episodes = batch["episodes"]
        assert episodes.batch_size[0] == 5 and episodes.batch_size[1] <= 6 and set(episodes.keys()) == set(EPISODE_KEYS)
        assert episodes["mask"][:, 0].all()
        keys = {"env_steps", "episodes", "episode_return", "emotion_usage", "temperature", "total_frames_reached"}
        keys |= {
            "kl_target_prior",
            "argmax_agreement",
            "action_changed",
            "emotion_changed",
            "surprise",
            "root_selected",
        }
        keys |= {"stored_steps", "stored_episodes", "replay_ratio", "endings"}
        keys |= {"root_q_gap", "root_action_gap"}  # per collected state, for the diagnostics
        assert set(batch["stats"].keys()) == keys and not batch["stats"]["total_frames_reached"]
    first, second = batches[0]["stats"], batches[1]["stats"]
    assert first["env_steps"].item() % 8 == 0 and first["episodes"].item() >= 2
    assert first["emotion_usage"].shape == (E,) and first["emotion_usage"].sum().item() == pytest.approx(1.0)
    assert math.isfinite(first["episode_return"].item())
    assert second["emotion_usage"].isnan().all() and second["episode_return"].isnan()  # nothing new since
    # FakePlanner: uniform prior, 13 of 20 visits on one emotion -> a known KL, and argmax ties go to emotion 0
    assert first["kl_target_prior"].item() == pytest.approx(_kl_of_fake_planner(), rel=1e-5)
    assert 0.0 <= first["argmax_agreement"].item() <= 1.0
    assert second["kl_target_prior"].isnan() and second["argmax_agreement"].isnan()
    # uniform prior: its favourite is emotion 0, whose greedy action is 0; emotion e's is e % A
    usage = first["emotion_usage"]
    assert first["emotion_changed"].item() == pytest.approx(1.0 - usage[0].item(), abs=1e-6)
    assert first["action_changed"].item() == pytest.approx(usage[torch.arange(E) % A != 0].sum().item(), abs=1e-6)
    assert second["action_changed"].isnan() and second["emotion_changed"].isnan()
    assert first["surprise"].isnan()  # the fake planner imagines nothing (no dynamics): no surprise measured
    assert second["env_steps"] == first["env_steps"]
    assert batches[2]["stats"]["env_steps"] == first["env_steps"] + 8
    # the replay's size and the effective replay ratio: valid step-samples trained so far per env step collected
    assert first["stored_episodes"].item() >= 2 and first["stored_steps"].item() >= 2 * first["stored_episodes"].item()
    trained = torch.cumsum(torch.stack([b["episodes"]["mask"].sum() for b in batches]), 0)
    for batch, steps in zip(batches, trained, strict=True):
        assert batch["stats"]["replay_ratio"].item() == pytest.approx(steps.item() / batch["stats"]["env_steps"].item())
    # temperature follows the env steps collected: TemperatureSchedule(1.0, 0.5, 100)
    steps = batches[2]["stats"]["env_steps"].item()
    assert batches[2]["stats"]["temperature"].item() == pytest.approx(1.0 - 0.5 * steps / 100)
    assert dm.env_steps == steps and len(dm.replay) == dm.episodes


def test_validation_plays_greedy_first_episodes_deterministically():
    dm = fake_datamodule(COUNTER_ID, val_episodes=4)
    results = [next(iter(dm.val_dataloader())) for _ in range(2)]
    for result in results:
        assert result["episode_return"].shape == (4,) and result["episode_length"].shape == (4,)
        assert ((result["episode_length"] >= 2) & (result["episode_length"] <= 6)).all()
    assert torch.equal(results[0]["episode_return"], results[1]["episode_return"])
    assert len(list(dm.test_dataloader())) == 1


def test_datamodule_state_dict_round_trip_loads_with_weights_only():
    dm = fake_datamodule(COUNTER_ID, num_envs=2, frames_per_batch=8, batch_size=2, warmup_episodes=1)
    stream = iter(dm.train_dataloader())
    for _ in range(3):
        next(stream)
    buffer = io.BytesIO()
    torch.save(dm.state_dict(), buffer)
    buffer.seek(0)
    restored = fake_datamodule(COUNTER_ID, num_envs=2, frames_per_batch=8, batch_size=2, warmup_episodes=1)
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
        dm.obs_dim, dm.n_actions, dm.max_episode_steps, d_model=16, n_layers=1, n_heads=2, planner=EmotionMCTS(2)
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


def test_windowed_datamodule_streams_windows_and_checks_the_policy_and_settings():
    planner = FakePlanner(n_actions=A, n_emotions=E, peak=13, row_shift=0, logit=4.0)

    def windowed_policy(greedy: bool) -> EmotionPolicy:
        return EmotionPolicy(FakeModel(context_window=3), planner, greedy=greedy)

    dm = EmotionDataModule(
        UNBOUNDED_ID,
        num_envs=2,
        frames_per_batch=8,
        batch_size=5,
        warmup_episodes=1,
        context_window=3,
        time_limit=12,
    ).connect(FakeAgent(windowed_policy))
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
        fake_datamodule(COUNTER_ID, context_window=3)._check_context(fake_policy(False))
    with pytest.raises(ValueError, match=r"reanalyze_fraction > 0 needs whole episodes"):
        EmotionDataModule(COUNTER_ID, context_window=3, reanalyze_fraction=0.5)
    with pytest.raises(ValueError, match="context_window"):
        EmotionDataModule(COUNTER_ID, context_window=0)


# ---------------------------------------------------------------------------------------------- the agent
def test_the_agent_is_connected_explicitly_or_taken_from_the_trainer_and_checked():
    with pytest.raises(RuntimeError, match="no agent: call connect"):
        EmotionDataModule(COUNTER_ID).make_policy(greedy=True)
    with pytest.raises(TypeError, match=r"connected agent \(object\) has no make_policy"):
        EmotionDataModule(COUNTER_ID).connect(object())
    with pytest.raises(TypeError, match=r"reanalyze_fraction > 0 needs an agent with reanalyze"):
        EmotionDataModule(COUNTER_ID, reanalyze_fraction=0.5).connect(FakeAgent(fake_policy))

    agent = FakeAgent(fake_policy)
    dm = EmotionDataModule(COUNTER_ID)
    dm.trainer = SimpleNamespace(lightning_module=agent, global_rank=0)
    dm.setup("fit")  # nothing connected: the trainer's module is connected
    assert dm.agent is agent and dm.make_policy(greedy=True).greedy
    dm.trainer = SimpleNamespace(lightning_module=object(), global_rank=0)
    with pytest.raises(TypeError, match=r"trainer's LightningModule \(object\) has no make_policy"):
        dm.setup("fit")
    explicit = EmotionDataModule(COUNTER_ID).connect(agent)
    explicit.trainer = SimpleNamespace(lightning_module=FakeAgent(fake_policy), global_rank=0)
    with pytest.raises(ValueError, match="another LightningModule than the agent connected"):
        explicit.setup("fit")


def test_whole_episode_batches_refuse_a_policy_that_plans_on_fewer_steps():
    short = EmotionPolicy(FakeModel(context_window=3), FakePlanner(n_actions=A))  # plans on 3 real steps
    with pytest.raises(
        ValueError, match=r"histories of up to 3 steps but EmotionRLTest/Counter-v0's episodes last up to 6"
    ):
        fake_datamodule(COUNTER_ID)._check_context(short)
    fake_datamodule(COUNTER_ID)._check_context(fake_policy(False))  # 15 >= 6: accepted


def test_window_weighting_is_off_by_default_and_uniform_batches_carry_a_weight():
    default = EmotionDataModule(COUNTER_ID, batch_size=8, context_window=3)
    uniform = EmotionDataModule(COUNTER_ID, batch_size=8, context_window=3, window_weighting="uniform")
    assert default.window_weighting == "end"
    for dm in (default, uniform):
        dm.replay.extend(make_episodes([2, 5]))
    assert "weight" not in default._sample_batch().keys()
    batch = uniform._sample_batch()
    assert torch.equal(batch["weight"] > 0, batch["mask"]) and batch["weight"].max() > 1
    with pytest.raises(ValueError, match="window_weighting must be one of"):
        EmotionDataModule(COUNTER_ID, window_weighting="steps")


def test_total_frames_ends_the_stream_after_the_collection_that_reaches_it_and_logs_the_warm_up(caplog):
    dm = fake_datamodule(
        COUNTER_ID,
        num_envs=2,
        frames_per_batch=8,
        batch_size=2,
        updates_per_collection=2,
        warmup_episodes=3,
        total_frames=20,
    )
    with caplog.at_level(logging.INFO):
        batches = list(dm.train_dataloader())
    assert "emotion_rl: warm-up: " in caplog.text and "/3 episodes stored" in caplog.text
    flags = [bool(batch["stats"]["total_frames_reached"]) for batch in batches]
    assert flags[-1] and not any(flags[:-1]) and len(batches) % 2 == 0  # the whole last collection is trained
    assert dm.env_steps == 24 and batches[-1]["stats"]["env_steps"] == 24  # 3 collections of 8 reach 20
    assert list(dm.train_dataloader()) == [], "a spent budget collects nothing more"
    with pytest.raises(ValueError, match="total_frames"):
        EmotionDataModule(COUNTER_ID, total_frames=0)


def test_a_torchrl_env_factory_trains_end_to_end_through_the_cli_and_total_frames_stops_it(tmp_path):
    cli = main(
        [
            "fit",
            f"--config={CONFIG}",
            *TINY,
            "--data.env_factory=fakes:make_countdown",
            "--data.env_kwargs={n_actions: 3, max_length: 6}",
            "--data.time_limit=5",
            "--data.total_frames=64",
            "--trainer.max_steps=4000",
            "--trainer.val_check_interval=1000",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )
    data, agent = cli.datamodule, cli.model
    assert (data.obs_dim, data.n_actions, data.max_episode_steps) == (3, 3, 5)
    assert (agent.hparams.obs_dim, agent.hparams.n_actions) == (3, 3)
    assert data.env_steps == 64 and data.episodes > 0  # 4 collections of 16 steps
    assert cli.trainer.global_step == 4 * 8 * 4  # 8 batches per collection (the first already stores 2 episodes)


def test_validation_records_why_the_greedy_episodes_ended():
    dm = fake_datamodule(COUNTER_ID, val_episodes=16)
    result = next(iter(dm.val_dataloader()))
    env = dm.make_env(16, dm.seed + 10_000)  # the evaluation's envs: each first episode's planned length at reset
    planned = env.reset()["observation"][:, 1]
    env.close()
    # CounterEnv ends an episode itself at its planned length; the registration's time limit (6) cuts the longer ones
    assert torch.equal(result["episode_length"], planned.clamp(max=6).long())
    truncated = (planned > 6).float().mean()
    assert 0 < truncated < 1
    assert result["end_truncated"].item() == pytest.approx(truncated.item())
    assert result["end_terminated"].item() == pytest.approx(1.0 - truncated.item())
