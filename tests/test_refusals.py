"""What cannot work is refused at the boundary, in one line that says what is wrong, before anything is written:
non-finite data from an environment, a fit without an end, abbreviated options, a file that is no checkpoint, and a
checkpoint used with another environment's config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from emotion_rl.cli import main
from emotion_rl.data.datamodule import EmotionDataModule
from emotion_rl.data.envs import FiniteCheck, NonFiniteError, make_env
from emotion_rl.policy import EmotionPolicy

from conftest import CONFIG, TINY
from fakes import NAN_OBSERVATION_ID, NAN_REWARD_ID, A, E, FakeAgent, FakeModel, FakePlanner

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "cartpole.ckpt"


def _one_line_error(capsys) -> str:
    """The CLI's refusal: exactly one ``emotion_rl: error:`` line on stderr, no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------- non-finite data
@pytest.mark.parametrize(
    ("env_id", "named"),
    [
        (NAN_OBSERVATION_ID, r"non-finite observation \[3, nan\] at step 3 of an episode \(env 0 of 2\)"),
        (NAN_REWARD_ID, r"non-finite reward nan at step 2 of an episode \(env 0 of 2\)"),
    ],
)
def test_a_non_finite_observation_or_reward_is_refused_before_the_planner_or_the_replay_reads_it(env_id, named):
    planner = FakePlanner(n_actions=A, n_emotions=E)
    agent = FakeAgent(lambda greedy: EmotionPolicy(FakeModel(), planner, temperature=1.0, greedy=greedy))
    data = EmotionDataModule(env_id, num_envs=2, frames_per_batch=16, batch_size=2, warmup_episodes=1, seed=0)
    data.connect(agent)
    with pytest.raises(NonFiniteError) as refused:
        next(iter(data.train_dataloader()))
    message = str(refused.value)
    assert message.startswith(f"env '{env_id}' returned a") and re.search(named, message), message
    assert "\n" not in message
    assert len(data.replay) == 0 and data.env_steps == 0, "data from the collection was stored"
    seen = [h["observation"] for h in planner.histories]
    assert seen and all(torch.isfinite(obs).all() for obs in seen), "the planner was given a non-finite observation"


def test_a_non_finite_reset_observation_is_refused_at_step_0():
    env = make_env("CartPole-v1", 2, seed=0)
    reset = env.reset()
    reset["observation"][1, 2] = float("inf")
    with pytest.raises(NonFiniteError, match=r"'CartPole-v1' returned a non-finite observation .*inf.* at step 0"):
        check = next(t for t in env.transform if isinstance(t, FiniteCheck))
        check._reset(reset, reset)  # as a reset that returned this observation calls it


def test_the_cli_refuses_non_finite_data_in_one_line_and_checkpoints_nothing(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                f"--config={CONFIG}",
                *TINY,
                f"--data.env_id={NAN_REWARD_ID}",
                "--trainer.max_steps=8",
                f"--trainer.logger.init_args.save_dir={tmp_path}",
            ]
        )
    assert exit_info.value.code == 2
    line = _one_line_error(capsys)
    assert f"env '{NAN_REWARD_ID}' returned a non-finite reward nan at step 2" in line, line
    assert not list(tmp_path.rglob("*.ckpt")), "a checkpoint was written"


# ------------------------------------------------------------------------------------------- fit without an end
def test_a_fit_with_neither_max_steps_nor_total_frames_is_refused_before_anything_is_built(tmp_path, capsys):
    base = str(ROOT / "configs" / "base.yaml")  # shared settings: no budget (each environment's config sets one)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", f"--config={base}", *TINY, f"--trainer.logger.init_args.save_dir={tmp_path}"])
    assert exit_info.value.code == 2
    line = _one_line_error(capsys)
    assert "fit would never end" in line and "trainer.max_steps" in line and "data.total_frames" in line, line
    assert _files(tmp_path) == []
    # either budget is an end
    cli = main(
        ["fit", f"--config={base}", *TINY, "--data.total_frames=16", f"--trainer.logger.init_args.save_dir={tmp_path}"]
    )
    assert cli.datamodule.env_steps >= 16


# ------------------------------------------------------------------------------------------- abbreviations
@pytest.mark.parametrize(
    ("given", "said"),
    [
        (["--data.num_env", "4"], "--data.num_env 4 (did you mean --data.num_envs? options are never abbreviated)"),
        (  # the planner's settings moved under model.planner: no option starts so, none is close enough
            ["--model.num_simulation", "10"],
            "--model.num_simulation 10 (options are never abbreviated: give the full name)",
        ),
    ],
)
def test_an_abbreviated_option_is_refused_and_the_full_name_suggested(given, said, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", f"--config={CONFIG}", *TINY, *given, f"--trainer.logger.init_args.save_dir={tmp_path}"])
    assert exit_info.value.code == 2
    assert _one_line_error(capsys) == f"error: unrecognized arguments: {said}"
    assert _files(tmp_path) == []


# ------------------------------------------------------------------------------------------- not a checkpoint
def test_random_bytes_given_as_a_checkpoint_are_called_no_checkpoint(tmp_path, capsys):
    path = tmp_path / "random.ckpt"
    path.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist()))
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "validate",
                f"--config={CONFIG}",
                *TINY,
                f"--trainer.logger.init_args.save_dir={tmp_path}",
                f"--ckpt_path={path}",
            ]
        )
    assert exit_info.value.code == 2
    line = _one_line_error(capsys)
    assert f"'{path}' is not a checkpoint: it starts with the bytes" in line and "run code" not in line, line
    assert _files(tmp_path) == [path]


# ------------------------------------------------------------------------------------------- another environment
ACROBOT = str(ROOT / "configs" / "acrobot.yaml")


@pytest.mark.parametrize("command", ["validate", "test", "fit"])
def test_a_checkpoint_with_another_environments_config_is_refused_naming_both(tmp_path, capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                command,
                f"--config={ACROBOT}",
                *TINY,
                f"--trainer.logger.init_args.save_dir={tmp_path}",
                f"--ckpt_path={SHIPPED}",
                "--trainer.max_steps=8",
            ]
        )
    assert exit_info.value.code == 2
    line = _one_line_error(capsys)
    assert f"checkpoint '{SHIPPED}' was trained on CartPole-v1 (observation size 4, 2 actions" in line, line
    assert "this config's environment is Acrobot-v1 (observation size 6, 3 actions" in line, line
    assert "they differ in env_id, obs_dim, n_actions" in line and "leave out --config" in line, line
    assert _files(tmp_path) == []


def test_a_time_limit_counts_for_fit_but_not_for_evaluating_a_model_with_a_context_window(tmp_path, capsys):
    """``--data.time_limit 40`` on the shipped CartPole model (context window 32): validate plays shorter episodes;
    fit is refused (its replay would hold episodes of another length than the checkpoint's)."""
    logs = f"--trainer.logger.init_args.save_dir={tmp_path}"
    with pytest.raises(SystemExit):
        main(["fit", f"--config={CONFIG}", *TINY, logs, f"--ckpt_path={SHIPPED}", "--trainer.max_steps=8"])
    line = _one_line_error(capsys)
    assert "episodes of up to 500 steps" in line and "episodes of up to 40 steps" in line, line
    assert "they differ in max_episode_steps" in line and "context window 32" in line, line
    cli = main(["validate", f"--config={CONFIG}", *TINY, logs, f"--ckpt_path={SHIPPED}", "--data.val_episodes=1"])
    assert float(cli.trainer.callback_metrics["val/length_mean"]) == 40
