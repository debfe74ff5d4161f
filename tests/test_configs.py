"""The shipped configs compose: configs/base.yaml holds the shared settings, each environment's file only what it
changes, and ``--config configs/<env>.yaml`` alone gives the merged result (``__include__``, emotion_rl.cli)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
import yaml

from emotion_rl.cli import INCLUDE_KEY, config_layers, load_config, main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BASE = CONFIGS / "base.yaml"
ENVS = ("cartpole", "acrobot", "mountaincar", "lunarlander")

ENV_KEYS = {"data.env_id", "trainer.max_steps", "trainer.val_check_interval", "trainer.logger.init_args.name"}
"""What the base leaves to each environment's config, which must set all of it."""
OVERRIDES = {
    "cartpole": set(),
    "acrobot": set(),
    "mountaincar": set(),
    "lunarlander": {
        "model.value_loss.init_args.return_scale",
        "data.gamma",
    },  # returns of order +-100 over up to 1000 steps
}
"""The base's settings each environment's config changes on purpose (each with a comment in the file)."""


def leaves(tree: dict, prefix: str = "") -> dict:
    """``{"a.b.c": value}`` for every non-mapping value of a nested mapping (a list is one value)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out.update(leaves(value, f"{name}.") if isinstance(value, dict) and value else {name: value})
    return out


def printed(*argv: str) -> dict:
    """The configuration ``fit --print_config`` prints (the merged, resolved result), as a mapping."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        main(["fit", *argv, "--print_config"])
    assert exited.value.code == 0
    return yaml.safe_load(out.getvalue())


@pytest.fixture(scope="module")
def merged() -> dict:
    """The printed configuration of the base alone and of each environment's config (parsing only, no env built)."""
    return {"base": leaves(printed(f"--config={BASE}"))} | {
        name: leaves(printed(f"--config={CONFIGS / f'{name}.yaml'}")) for name in ENVS
    }


def test_every_config_in_configs_is_the_base_or_an_environment_that_includes_it():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(("base", *ENVS))
    assert INCLUDE_KEY not in yaml.safe_load(BASE.read_text())
    for name in ENVS:
        assert [path.name for path, _ in config_layers(CONFIGS / f"{name}.yaml")] == ["base.yaml", f"{name}.yaml"]


@pytest.mark.parametrize("name", ENVS)
def test_an_environment_config_holds_only_what_its_environment_changes(name):
    own = leaves(yaml.safe_load((CONFIGS / f"{name}.yaml").read_text()))
    assert own.pop(INCLUDE_KEY) == "base.yaml"
    assert ENV_KEYS <= set(own), f"{name}.yaml must set {sorted(ENV_KEYS - set(own))}"
    extra = set(own) - ENV_KEYS - OVERRIDES[name]
    assert not extra, (
        f"{name}.yaml sets {sorted(extra)}: put shared settings in base.yaml, or list a deliberate override"
    )


@pytest.mark.parametrize("name", ENVS)
def test_an_environment_config_carries_every_base_setting_unless_it_overrides_it_on_purpose(merged, name):
    base_keys = set(leaves(yaml.safe_load(BASE.read_text())))
    assert {"model.planner.init_args.q_transform", "model.gradient_clip_val", "data.window_weighting"} <= base_keys
    assert "data.seed" in base_keys
    base, env = merged["base"], merged[name]
    differ = {key for key in base_keys if env[key] != base[key]}
    assert differ == OVERRIDES[name], f"{name}: differs from the base in {sorted(differ)}"
    assert OVERRIDES[name] <= base_keys  # an override overrides something
    assert env["trainer.logger.init_args.name"] == name
    assert not any(INCLUDE_KEY in key for key in env)  # the key is not a setting: never printed


def test_the_cartpole_config_merges_to_the_settings_it_always_had(merged):
    cartpole = merged["cartpole"]
    planner, value = "model.planner.init_args", "model.value_loss.init_args"
    assert cartpole[f"{planner}.q_transform"] == "minmax_completed" and cartpole[f"{value}.imagined_weight"] == 1.0
    assert cartpole[f"{planner}.root_rule.class_path"] == "emotion_rl.GumbelRoot"
    assert cartpole["model.imagined_action"] == "one_hot"
    assert cartpole["model.dynamics_loss.init_args.all_emotions"] is True
    assert cartpole["model.dynamics_loss.init_args.action_input"] == "taken"
    assert cartpole["model.action_loss.class_path"] == "emotion_rl.AssignedActionLoss"
    assert cartpole["model.action_loss.init_args.update_transformer"] is False
    assert (
        cartpole[f"{value}.all_emotions"] is True and cartpole[f"{value}.target.class_path"] == "emotion_rl.MonteCarlo"
    )
    assert cartpole["model.gradient_clip_val"] == 1.0 and cartpole["model.log_diagnostics"] is True
    assert cartpole["data.window_weighting"] == "uniform" and cartpole["data.context_window"] == 32
    assert (cartpole["trainer.max_steps"], cartpole["trainer.val_check_interval"]) == (12000, 250)
    assert (cartpole[f"{value}.return_scale"], cartpole["data.gamma"], cartpole["data.seed"]) == (0.02, 0.98, 0)


def test_an_include_chain_composes_and_the_command_line_still_overrides_and_interpolates(tmp_path):
    (tmp_path / "variant.yaml").write_text(
        f"{INCLUDE_KEY}: {CONFIGS / 'acrobot.yaml'}\nmodel:\n  planner:\n    init_args:\n      num_simulations: 8\n"
    )
    (tmp_path / "mine.yaml").write_text(f"{INCLUDE_KEY}: [variant.yaml]\ndata:\n  batch_size: 16\n")
    result = leaves(printed(f"--config={tmp_path / 'mine.yaml'}", "--seed_everything=7", "--model.planner.c_puct=2"))
    planner = "model.planner.init_args"
    assert result["data.env_id"] == "Acrobot-v1" and result[f"{planner}.q_transform"] == "minmax_completed"
    assert (result[f"{planner}.num_simulations"], result["data.batch_size"], result[f"{planner}.c_puct"]) == (
        8,
        16,
        2.0,
    )
    assert result["data.seed"] == 7  # ${..seed_everything} from base.yaml, resolved after the command line
    merged = load_config(tmp_path / "mine.yaml")
    planner = merged.model.planner.init_args
    assert (merged.data.env_id, planner.num_simulations, planner.q_transform) == (
        "Acrobot-v1",
        8,
        "minmax_completed",
    )


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"a.yaml": f"{INCLUDE_KEY}: nothing.yaml\n"},
            r"config '.*a\.yaml': __include__ 'nothing\.yaml' does not exist",
        ),
        (
            {"a.yaml": f"{INCLUDE_KEY}: b.yaml\n", "b.yaml": f"{INCLUDE_KEY}: [a.yaml]\n"},
            r"circular __include__: .*a\.yaml -> .*b\.yaml -> .*a\.yaml",
        ),
        ({"a.yaml": f"{INCLUDE_KEY}: a.yaml\n"}, r"circular __include__: .*a\.yaml -> .*a\.yaml"),
        ({"a.yaml": f"{INCLUDE_KEY}: 3\n"}, r"config '.*a\.yaml': __include__ must be a path or a list of paths"),
    ],
    ids=["missing", "circular", "itself", "not_a_path"],
)
def test_a_missing_or_circular_include_is_one_line_naming_the_file(tmp_path, capsys, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(SystemExit) as exited:
        main(["fit", f"--config={tmp_path / 'a.yaml'}", "--print_config"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.startswith("emotion_rl: error: config '"), err
    assert err.strip().count("\n") == 0 and "usage:" not in err and "Traceback" not in err, err
    assert re.search(message, err), err
