"""Convert a checkpoint saved before the planner and the losses became components (decision 23) so that the current
``EmotionAgent`` loads it: its flat hyper-parameters (``num_simulations``, ``phase2_objective``, ``return_scale``,
...) become the planner's and the four losses' class_path + init_args. Weights and everything else stay as they
are, except an EMA target network's copy (``target_model.*``, ``target_network.*``), which the Monte-Carlo targets
never read and which the agent no longer has. A checkpoint whose planner config still names its root flat
(``root_rule: gumbel``, ``gumbel_considered``, ...: before root rules became objects) gets the root rule's
class_path + init_args; one whose value loss still holds ``target_tau`` (the EMA rate of that target network)
loses it, and so do the arguments removed since at the value that trained as the current agent does
(``completed_value: child``, ``GumbelRoot``'s ``chooses: true``, ``PUCTRoot``'s Dirichlet noise at fraction 0).

    python benchmarks/convert_checkpoint.py models/cartpole.ckpt                 # rewrites the file in place
    python benchmarks/convert_checkpoint.py old.ckpt --out new.ckpt
    python benchmarks/convert_checkpoint.py run.ckpt --strip --out models/x.ckpt  # a model to ship

``--strip`` keeps what loading a model needs (the weights, the agent's and the datamodule's hyper-parameters, the
versions and step counts) and drops optimizer states, loops and replay: the file
loads with ``EmotionAgent.load`` and ``torch.load(weights_only=True)`` but cannot resume a run (models/README.md).

A checkpoint trained with an option that has since been removed (docs/results.md, "Options removed") is refused:
the current agent cannot reproduce it. The file is read with ``torch.load(weights_only=True)`` and written
atomically (a temporary file in the same folder, then a rename).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

REMOVED = {
    "action_entropy_coef": 0.0,
    "action_value_norm": False,
    "action_awr_coef": 0.0,
    "action_max_update": None,
    "shared_update": False,
    "action_coverage_coef": 0.0,
    "policy_balance_coef": 0.0,
    "value_readout": "mean",
    "tie_break": "lowest",
    "completed_value": "child",
    "dirichlet_fraction": 0.0,
}
"""Options of the old agent that no longer exist, with the value that trained as the current agent does."""
BOOTSTRAPPED = {"n_step": "NStep", "td_lambda": "TDLambda"}
"""The removed value targets that bootstrapped from an EMA target network: the old ``value_target`` and the class."""
KEPT = tuple(
    "obs_dim n_actions max_episode_steps context_window n_emotions d_model n_layers n_heads head_hidden "
    "imagined_action head_lr transformer_lr temperature_start temperature_end temperature_decay_frames schedule "
    "gradient_clip_val log_diagnostics diagnostics_interval".split()
)
"""The agent's own settings, unchanged."""
PLANNER = ("num_simulations", "c_puct", "max_depth", "q_transform")
"""The old agent's planner settings that ``EmotionMCTS`` still takes as they were."""
ACTION_LOSSES = {
    "max_value": "emotion_rl.MaxValueActionLoss",
    "literal": "emotion_rl.LiteralActionLoss",
    "assigned": "emotion_rl.AssignedActionLoss",
}


def planner_config(old: dict) -> dict:
    """``EmotionMCTS``'s config for the old planner settings ``old`` (flat, or an old planner's ``init_args``): the
    root's settings become a root rule (``GumbelRoot`` or ``PUCTRoot``) by class_path. A removed setting other than
    its inert value (random ties, the policy-weighted value readout, the parent completion, root noise) is
    refused."""
    for name in ("tie_break", "value_readout", "completed_value", "dirichlet_fraction"):
        if old.get(name, REMOVED[name]) != REMOVED[name]:
            raise ValueError(f"the checkpoint was trained with {name}={old[name]!r}, an option that was removed")
    if old.get("root_rule", "puct") == "gumbel":
        keys = {"considered": "gumbel_considered", "c_visit": "gumbel_c_visit", "c_scale": "gumbel_c_scale"}
        root = {"class_path": "emotion_rl.GumbelRoot", "init_args": {k: old[v] for k, v in keys.items() if v in old}}
    else:
        root = {"class_path": "emotion_rl.PUCTRoot", "init_args": {}}
    init_args = {name: old[name] for name in PLANNER if name in old}
    init_args.update(min_spread=0.0, root_rule=root)  # the literal normalisation: what the old search did
    return {"class_path": "emotion_rl.EmotionMCTS", "init_args": init_args}


def value_loss_config(config: dict) -> dict | None:
    """A current-form value loss ``config`` without ``target_tau`` (None: it holds none). ``target_tau`` only moved
    the EMA target network of a bootstrapped target; a removed target (``NStep``, ``TDLambda``) is refused."""
    init_args = config.get("init_args") or {}
    target = (init_args.get("target") or {}).get("class_path", "")
    if target.startswith("emotion_rl.") and target.rsplit(".", 1)[-1] in BOOTSTRAPPED.values():
        raise ValueError(f"the checkpoint was trained with value_loss.target={target}, an option that was removed")
    if "target_tau" not in init_args:
        return None
    return {**config, "init_args": {key: value for key, value in init_args.items() if key != "target_tau"}}


REMOVED_ARGUMENTS = {
    "EmotionMCTS": {"completed_value": "child"},
    "GumbelRoot": {"chooses": True},
    "PUCTRoot": {"dirichlet_fraction": 0.0, "dirichlet_alpha": None},
}
"""Arguments removed from a component (docs/results.md, "Options removed"), with the value that trained as the
current component does (None: any value, inert at the others' values)."""
REMOVED_CLASSES = ("TemperamentActionLoss",)
"""Components removed whole: a checkpoint that used one is refused."""
CANNOT = ' (docs/results.md, "Options removed"): the current agent cannot reproduce it; retrain without it'


def without_removed(config: dict, where: str) -> dict:
    """A component ``config`` (and its nested ones) without the removed arguments it holds at their inert values;
    a ``ValueError`` naming ``where`` for one at another value or a removed class."""
    name = config.get("class_path", "").rsplit(".", 1)[-1]
    if config.get("class_path", "").startswith("emotion_rl.") and name in REMOVED_CLASSES:
        raise ValueError(f"the checkpoint was trained with {where}={name}, an option that was removed{CANNOT}")
    removed = REMOVED_ARGUMENTS.get(name, {}) if config.get("class_path", "").startswith("emotion_rl.") else {}
    init_args = {}
    for key, value in (config.get("init_args") or {}).items():
        if key in removed:
            if removed[key] is not None and value != removed[key]:
                raise ValueError(
                    f"the checkpoint was trained with {name}({key}={value!r}), an option that was removed{CANNOT}"
                )
        elif isinstance(value, dict) and "class_path" in value:
            init_args[key] = without_removed(value, f"{where}.{key}")
        else:
            init_args[key] = value
    return {**config, "init_args": init_args} if "init_args" in config else config


def convert_current(old: dict) -> dict:
    """Hyper-parameters already in the component form, with what has changed since: a planner that takes the
    root's settings flat, a value loss that holds ``target_tau``, arguments and classes removed since."""
    new = dict(old)
    planner = old["planner"].get("init_args", {})
    if not (isinstance(planner.get("root_rule"), dict) or "root_rule" not in planner):
        new["planner"] = planner_config(planner)
    for name in ("planner", "dynamics_loss", "action_loss", "value_loss", "policy_loss"):
        if isinstance(new.get(name), dict):
            new[name] = without_removed(new[name], name)
    value_loss = value_loss_config(old["value_loss"]) if isinstance(old.get("value_loss"), dict) else None
    if value_loss is not None:
        new["value_loss"] = value_loss
    if new == old:
        raise ValueError("these hyper-parameters are already in the current form")
    return new


def convert_hparams(old: dict) -> dict:
    """The current agent's hyper-parameters for the old flat ``old`` (a ``ValueError`` naming a removed option that
    the checkpoint used). Settings the old checkpoint did not record take the old agent's defaults; ``target_tau``
    is dropped (the Monte-Carlo targets read no target network)."""
    if "planner" in old:  # components already
        return convert_current(old)
    for name, inert in REMOVED.items():
        if old.get(name, inert) != inert:
            raise ValueError(f"the checkpoint was trained with {name}={old[name]!r}, an option that was removed")
    objective = old.get("phase2_objective", "max_value")
    if objective not in ACTION_LOSSES:
        raise ValueError(f"the checkpoint was trained with phase2_objective={objective!r}, which was removed")
    target = old.get("value_target", "monte_carlo")
    if target != "monte_carlo":
        raise ValueError(f"the checkpoint was trained with value_target={target!r}, an option that was removed")
    new = {name: old[name] for name in KEPT if name in old}
    new["planner"] = planner_config(old)
    new["dynamics_loss"] = {
        "class_path": "emotion_rl.DynamicsLoss",
        "init_args": {
            "action_input": old.get("dynamics_action", "action_head"),
            "all_emotions": old.get("dynamics_all_emotions", False),
        },
    }
    new["action_loss"] = {
        "class_path": ACTION_LOSSES[objective],
        "init_args": {"update_transformer": old.get("phase2_updates_transformer", True)},
    }
    new["value_loss"] = {
        "class_path": "emotion_rl.ValueLoss",
        "init_args": {
            "return_scale": old.get("return_scale", 1.0),
            "target": {"class_path": "emotion_rl.MonteCarlo", "init_args": {}},
            "imagined_weight": old.get("imagined_value_weight", 0.0),
            "all_emotions": old.get("value_all_emotions", False),
        },
    }
    new["policy_loss"] = {"class_path": "emotion_rl.PolicyLoss", "init_args": {}}
    new["gamma"] = old.get("value_gamma", 0.99)
    return new


def is_current(checkpoint: dict) -> bool:
    """Whether ``checkpoint``'s hyper-parameters are already in the current form (nothing to convert)."""
    try:
        convert_hparams(checkpoint["hyper_parameters"])
    except ValueError as error:
        return "already in the current form" in str(error)
    return False


def convert(checkpoint: dict) -> dict:
    """``checkpoint`` with converted hyper-parameters and without an EMA target network's weights (a new dict;
    tensors shared)."""
    converted = dict(checkpoint)
    converted["hyper_parameters"] = convert_hparams(checkpoint["hyper_parameters"])
    converted["state_dict"] = {
        key: value
        for key, value in checkpoint["state_dict"].items()
        if not key.startswith(("target_model.", "target_network."))
    }
    return converted


SHIPPED_KEYS = (
    "state_dict",
    "hyper_parameters",
    "pytorch-lightning_version",
    "epoch",
    "global_step",
    "datamodule_hparams_name",
    "datamodule_hyper_parameters",
    "environment",  # the env record (emotion_rl/env_record.py)
)
"""What a shipped model keeps (``--strip``)."""


def strip(checkpoint: dict) -> dict:
    """``checkpoint`` reduced to ``SHIPPED_KEYS``."""
    return {key: checkpoint[key] for key in SHIPPED_KEYS if key in checkpoint}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: over the checkpoint)")
    parser.add_argument("--strip", action="store_true", help="keep only what loading needs (a model to ship)")
    args = parser.parse_args(argv)
    out = args.out or args.checkpoint
    try:
        checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        converted = strip(checkpoint) if args.strip and is_current(checkpoint) else convert(checkpoint)
        if args.strip:
            converted = strip(converted)
    except ValueError as error:
        print(f"convert_checkpoint: {args.checkpoint}: {error}", file=sys.stderr)
        return 2
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    torch.save(converted, temporary)
    os.replace(temporary, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
