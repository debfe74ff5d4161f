"""End to end through the CLI: fit on CartPole with the shipped config (tiny settings), checkpoint, validate."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import pytest
import torch

from emotion_rl.checkpoint import AtomicCheckpointIO
from emotion_rl.cli import main

from conftest import CONFIG, TINY
from fakes import register_counter


def _rows(metrics: Path) -> list[dict[str, str]]:
    with open(metrics) as f:
        return list(csv.DictReader(f))


def test_fit_writes_finite_losses_and_a_checkpoint_that_validate_reads_back(tmp_path):
    logs = str(tmp_path / "runs")
    main(
        [
            "fit",
            f"--config={CONFIG}",
            *TINY,
            "--trainer.max_steps=24",  # 6 batches of four phases
            "--trainer.val_check_interval=3",
            "--trainer.log_every_n_steps=1",
            f"--trainer.logger.init_args.save_dir={logs}",
        ]
    )
    version = Path(logs) / "cartpole" / "version_0"
    saved = (version / "config.yaml").read_text()  # the run's config: merged with base.yaml, usable on its own
    assert "__include__" not in saved and "q_transform: minmax_completed" in saved
    rows = _rows(version / "metrics.csv")
    for key in (
        "train/phase1_dynamics_loss",
        "train/phase2_action_loss",
        "train/phase3_value_loss",
        "train/phase4_policy_loss",
    ):
        values = [float(r[key]) for r in rows if r.get(key)]
        assert values, f"{key} was never logged"
        assert all(math.isfinite(v) for v in values), key
    assert any(r.get("val/return_mean") for r in rows), "no greedy evaluation was logged during fit"
    assert any(r.get("episode/return") for r in rows)
    assert any(r.get("emotion/usage_0") for r in rows)
    kl = [float(r["search/kl_target_prior"]) for r in rows if r.get("search/kl_target_prior")]
    agreement = [float(r["search/argmax_agreement"]) for r in rows if r.get("search/argmax_agreement")]
    assert kl and all(math.isfinite(v) and v >= 0 for v in kl), "search/kl_target_prior was not logged"
    assert agreement and all(0 <= v <= 1 for v in agreement), "search/argmax_agreement was not logged"
    for key in ("search/action_changed", "search/emotion_changed"):
        shares = [float(r[key]) for r in rows if r.get(key)]
        assert shares and all(0 <= v <= 1 for v in shares), f"{key} was not logged"

    last = version / "checkpoints" / "last.ckpt"
    assert last.exists()
    checkpoint = torch.load(last, weights_only=True)  # plain tensors and containers only
    assert checkpoint["global_step"] == 24
    assert len(checkpoint["optimizer_states"]) == 4
    assert "EmotionDataModule" in checkpoint  # the replay buffer travels with the checkpoint

    cli = main(
        [
            "validate",
            f"--config={CONFIG}",
            *TINY,
            f"--trainer.logger.init_args.save_dir={logs}",
            f"--ckpt_path={last}",
        ]
    )
    metrics = cli.trainer.callback_metrics
    assert "val/return_mean" in metrics and 1 <= float(metrics["val/return_mean"]) <= 40
    restored = cli.model.model.state_dict()
    for key, value in checkpoint["state_dict"].items():
        assert torch.equal(restored[key.removeprefix("model.")], value), key

    cli = main(
        ["test", f"--config={CONFIG}", *TINY, f"--trainer.logger.init_args.save_dir={logs}", f"--ckpt_path={last}"]
    )
    assert 1 <= float(cli.trainer.callback_metrics["test/return_mean"]) <= 40


def test_config_interpolates_with_omegaconf(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", f"--config={CONFIG}", "--seed_everything=7", "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "seed_everything: 7" in printed
    assert "  seed: 7" in printed  # data.seed: ${..seed_everything}, resolved after the command-line override


def test_a_bad_setting_exits_with_its_name_and_no_traceback(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", f"--config={CONFIG}", *TINY, "--model.value_loss.return_scale=-1", "--trainer.max_steps=4"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "return_scale" in err and "Traceback" not in err


IMAGE_ENV = register_counter("CliImage-v0", time_limit=10, image=True)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("--model.planner.num_simulations=0", "num_simulations"),
        ("--model.planner.max_depth=0", "max_depth"),
        ("--model.planner.c_puct=-0.5", "c_puct"),
        ("--model.temperature_start=-1", "start"),
        ("--model.action_loss=mse", "action_loss"),
        ("--model.n_emotions=1", r"AssignedActionLoss.*n_emotions=1 < n_actions=2.*at least 2"),  # issue 26
        ("--data.env_id=Pendulum-v1", r"Pendulum-v1.*Box.*supported.*Discrete"),
        ("--data.env_id=NoSuchEnv-v0", "unknown gymnasium env id 'NoSuchEnv-v0'"),
        (f"--data.env_id={IMAGE_ENV}", r"CliImage-v0.*\(2, 2\).*supported: a 1-D continuous Box"),
    ],
)
def test_bad_input_is_refused_before_training_with_its_name_and_no_traceback(tmp_path, capsys, override, named):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", f"--config={CONFIG}", *TINY, override, f"--trainer.logger.init_args.save_dir={tmp_path}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(named, err), err
    assert "Traceback" not in err
    assert not (tmp_path / "cartpole").exists(), "the run started (logs were written) before the refusal"


def test_a_truncated_checkpoint_is_refused_by_fit_and_validate_without_a_traceback(tmp_path, capsys):
    path = tmp_path / "last.ckpt"
    torch.save({"global_step": 1, "state_dict": {"w": torch.zeros(10_000)}}, path)
    path.write_bytes(path.read_bytes()[:2000])
    for command in ("fit", "validate"):
        with pytest.raises(SystemExit) as exit_info:
            main(
                [
                    command,
                    f"--config={CONFIG}",
                    *TINY,
                    f"--trainer.logger.init_args.save_dir={tmp_path}",
                    f"--ckpt_path={path}",
                ]
            )
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"checkpoint '{path}' is truncated or corrupt" in err and "Traceback" not in err, err


def test_ckpt_path_last_without_an_earlier_run(tmp_path, capsys):
    """``fit --ckpt_path last`` with nothing to resume starts afresh and says so; ``validate`` is refused."""
    logs = [f"--trainer.logger.init_args.save_dir={tmp_path}"]
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", f"--config={CONFIG}", *TINY, *logs, "--ckpt_path=last"])
    assert exit_info.value.code == 2
    assert "no last.ckpt was found" in capsys.readouterr().err
    cli = main(["fit", f"--config={CONFIG}", *TINY, *logs, "--trainer.max_steps=4", "--ckpt_path=last"])
    assert "starting a new run" in capsys.readouterr().err
    assert cli.trainer.global_step == 4
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO), "the CLI must write atomically"


def test_the_datamodule_context_window_is_linked_into_the_agent():
    cli = main([f"--config={CONFIG}", *TINY, "--data.context_window=5"], run=False)
    assert cli.datamodule.context_window == 5 and cli.model.hparams.context_window == 5
    assert cli.model.model.context_window == 5


def test_a_wandb_logger_given_on_the_command_line_logs_the_run_offline(tmp_path, monkeypatch):
    """Weights & Biases through Lightning's logger setting, as the docs show it (skipped where wandb is not
    installed: it is not a dependency)."""
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cli = main(
        [
            "fit",
            f"--config={CONFIG}",
            *TINY,
            "--trainer.max_steps=8",
            "--trainer.log_every_n_steps=1",
            "--trainer.logger=lightning.pytorch.loggers.WandbLogger",
            "--trainer.logger.init_args.project=emotion-rl-test",
            "--trainer.logger.init_args.offline=true",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )
    logger = cli.trainer.logger
    assert isinstance(logger, WandbLogger)
    summary = dict(logger.experiment.summary)
    logger.experiment.finish()
    assert "train/phase1_dynamics_loss" in summary
    assert list(tmp_path.rglob("*.wandb")), "no offline run file was written"
