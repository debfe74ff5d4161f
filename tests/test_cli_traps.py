"""The command line's traps: refused subcommands and arguments, errors with or without traceback, the progress bar."""

from __future__ import annotations

import pytest

from emotion_rl import cli
from emotion_rl.agent import EmotionAgent
from emotion_rl.cli import BatchProgressBar, ConfigurationError, main

from conftest import CONFIG, TINY


def _fit(tmp_path, *extra: str) -> list[str]:
    return ["fit", f"--config={CONFIG}", *TINY, f"--trainer.logger.init_args.save_dir={tmp_path}", *extra]


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", f"--config={CONFIG}"],  # an agent acts through environments: nothing to predict
        ["fit", f"--config={CONFIG}", "--optimizer=torch.optim.SGD"],  # the agent owns its four optimizers
        ["fit", f"--config={CONFIG}", "--lr_scheduler=torch.optim.lr_scheduler.StepLR"],
    ],
)
def test_refused_at_parse_time_with_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_progress_bar_can_be_switched_off(tmp_path):
    fitted = main(_fit(tmp_path, "--trainer.max_steps=8", "--trainer.enable_progress_bar=false"))
    assert fitted.trainer.global_step == 8
    assert fitted.trainer.progress_bar_callback is None


def test_progress_bar_counts_batches_to_the_end(tmp_path):
    fitted = main(_fit(tmp_path, "--trainer.max_steps=12", "--trainer.val_check_interval=100"))
    bar = fitted.trainer.progress_bar_callback
    assert isinstance(bar, BatchProgressBar)
    assert bar.total_train_batches == 3  # 12 optimizer steps = 3 batches of four phases
    assert bar.train_progress_bar.n == bar.train_progress_bar.total == 3  # ends at 100%


def test_a_user_error_while_running_is_one_line(tmp_path, monkeypatch, capsys):
    def refuse(self, batch):  # noqa: ANN001
        raise ConfigurationError("a setting the user can fix")

    monkeypatch.setattr(EmotionAgent, "train_batch", refuse)
    with pytest.raises(SystemExit) as exit_info:
        main(_fit(tmp_path, "--trainer.max_steps=4"))
    assert exit_info.value.code == 2
    assert "emotion_rl: error: a setting the user can fix" in capsys.readouterr().err


def test_a_bug_while_running_keeps_its_traceback(tmp_path, monkeypatch):
    def bug(self, batch):  # noqa: ANN001
        raise ValueError("a bug, not a setting")

    monkeypatch.setattr(EmotionAgent, "train_batch", bug)
    with pytest.raises(ValueError, match="a bug, not a setting"):
        main(_fit(tmp_path, "--trainer.max_steps=4"))


def test_console_script_returns_zero(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "main", lambda: calls.append(True))
    assert cli.console() == 0 and calls == [True]
