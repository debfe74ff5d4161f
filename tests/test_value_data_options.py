"""The data-side options of values that see far and true, set from the command line as a screen sets them
(``benchmarks/learning.py --variant NAME=--a.b=1,--c.d=2``), build what they name; the shipped config takes the
two that passed their screens (the floor and the bootstrap at truncation) and leaves the others off."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from emotion_rl.cli import main

from conftest import CONFIG, TINY

_spec = importlib.util.spec_from_file_location(
    "learning", Path(__file__).resolve().parents[1] / "benchmarks/learning.py"
)
learning = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(learning)

VARIANTS = {
    "mc_literal": "--model.value_loss.init_args.target.init_args.bootstrap_truncation=false",
    "novelty_norm": "--data.novelty_weight=1.0,--data.novelty_normalize=true,--data.novelty_clip=3.0",
    "novelty_decay": "--data.novelty_weight=1.0,--data.novelty_decay_frames=20000",
    "fresh": "--data.replay_capacity_steps=10000",
    "rr64": "--data.updates_per_collection=null,--data.replay_ratio=64",
}


def built(variant: str):
    _, overrides = learning.parse_variant(f"{variant}={VARIANTS[variant]}")
    return main([f"--config={CONFIG}", *TINY, "--trainer.logger=false", *overrides], run=False)


def test_the_shipped_config_takes_the_screened_options_and_leaves_the_others_off():
    cli = main([f"--config={CONFIG}", *TINY, "--trainer.logger=false"], run=False)
    data, agent = cli.datamodule, cli.model
    assert agent.losses.value.target.bootstrap_truncation is True and agent.planner.min_spread == 0.1  # screened
    assert (data.novelty.weight, data.novelty.normalize, data.novelty.decay_frames) == (0.0, False, 0)
    assert data.replay.capacity_steps is None and data.replay_capacity_steps is None
    assert data.updates_per_collection == 8 and data.rate.ratio == 2 * 32 * 8 / 16  # TINY: batch 2, 16 frames


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_option_is_set_by_its_override_string(variant):
    cli = built(variant)
    data, agent = cli.datamodule, cli.model
    if variant == "mc_literal":  # decision 19's literal returns, selectable
        assert agent.losses.value.target.bootstrap_truncation is False
    elif variant == "novelty_norm":
        assert (data.novelty.weight, data.novelty.normalize, data.novelty.clip) == (1.0, True, 3.0)
    elif variant == "novelty_decay":
        assert data.novelty.weight_at(10_000) == pytest.approx(0.5)
    elif variant == "fresh":
        assert data.replay.capacity_steps == 10_000
    elif variant == "rr64":
        assert data.updates_per_collection == pytest.approx(64 * 16 / (2 * 32)) and data.rate.ratio == 64


def test_a_replay_ratio_next_to_the_shipped_updates_per_collection_is_refused_in_one_line(capsys):
    _, overrides = learning.parse_variant("rr=--data.replay_ratio=64")
    with pytest.raises(SystemExit):
        main([f"--config={CONFIG}", *TINY, "--trainer.logger=false", *overrides], run=False)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("emotion_rl: error: EmotionDataModule: replay_ratio=64.0 asks for 16 batches")
    assert "updates_per_collection=8 gives 32" in error and "updates_per_collection: null" in error


def test_a_short_fit_with_every_option_on_trains_and_logs_what_they_measure(tmp_path):
    """All the options at once, through the command line: MC targets that bootstrap at the time limit (TINY's limit
    is 40 steps), a standardised decaying novelty bonus, a replay bounded in steps, a replay ratio."""
    overrides = [o for variant in VARIANTS for o in learning.parse_variant(f"{variant}={VARIANTS[variant]}")[1]]
    cli = main(
        [
            "fit",
            f"--config={CONFIG}",
            *TINY,
            *dict.fromkeys(overrides),
            "--data.replay_ratio=16",  # 4 batches per collection of 16 env steps in TINY
            "--data.replay_capacity_steps=120",
            "--trainer.max_steps=48",
            "--trainer.val_check_interval=1000",
            "--trainer.enable_checkpointing=false",
            "--trainer.callbacks=[]",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )
    data = cli.datamodule
    assert cli.trainer.global_step == 48 and data.updates_per_collection == 4
    assert 0 < data.replay.stored_steps <= 120
    stored = data.replay.episodes()
    assert stored["novelty"].abs().sum() > 0 and stored["novelty"].abs().max() <= 3.0 + 1e-6
    metrics = (tmp_path / "cartpole" / "version_0" / "metrics.csv").read_text()
    for name in ("replay/ratio", "replay/stored_steps", "episode/end_truncated", "search/root_selected"):
        assert name in metrics
