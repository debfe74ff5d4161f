"""The learner: four phases, four optimizers, one shared transformer (spec 2.3, 3.2; docs/training.md).

:meth:`EmotionAgent.update` runs the four phases of spec 2.3 in order, each a loss module of
:mod:`emotion_rl.losses` (a fresh forward) and a step of its own optimizer. ``schedule="episode"`` runs each phase
once per batch of whole episodes or windows; ``schedule="timestep"`` is spec 2.3's per-timestep loop (decision 11).

The planner and the four losses are given to the agent as objects (decision 23): a config names each by
``class_path`` + ``init_args`` (jsonargparse builds them, as LightningCLI builds optimizers), Python code passes
instances, classes or ``functools.partial``; the hyper-parameters hold them as plain configs
(:func:`emotion_rl.config.to_config`), from which a checkpoint rebuilds them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import lightning as L
import torch
from tensordict import TensorDict
from torch import Tensor

from emotion_rl.config import instantiate, to_config
from emotion_rl.data.reanalyze import reanalyze
from emotion_rl.diagnostics import DiagnosticsSchedule, collection_metrics, learning_diagnostics
from emotion_rl.losses import ActionLoss, DynamicsLoss, MaxValueActionLoss, PolicyLoss, ValueLoss, step_weight
from emotion_rl.mcts.search import EmotionMCTS
from emotion_rl.model import EmotionModel, ImaginedAction
from emotion_rl.policy import EmotionPolicy, TemperatureSchedule
from emotion_rl.predict import LoadAndPredict

PHASES = ("dynamics", "action", "value", "policy")
"""Optimizer order (spec 2.3): phase 1 dynamics, 2 action, 3 value, 4 policy."""

COMPONENTS = ("planner", "dynamics_loss", "action_loss", "value_loss", "policy_loss")
"""The agent's arguments that are components (class_path + init_args), not plain values."""

Schedule = Literal["episode", "timestep"]


class PhaseLosses(NamedTuple):
    """The four loss modules, in phase order (a plain tuple: the model's weights are saved once, by the agent)."""

    dynamics: DynamicsLoss
    action: ActionLoss
    value: ValueLoss
    policy: PolicyLoss


def build(component: Any, *args: Any) -> Any:
    """``component(*args)``, or the component its config (class_path + init_args) describes, built with ``args``."""
    return instantiate(component, *args) if isinstance(component, Mapping) else component(*args)


def check_settings(settings: Mapping[str, Any]) -> None:
    """Refuse :class:`EmotionAgent` settings that cannot work, before anything is built, naming the fix."""
    if settings["schedule"] not in Schedule.__args__:
        raise ValueError(f"schedule={settings['schedule']!r} is not supported; choose one of {list(Schedule.__args__)}")
    if settings["max_episode_steps"] < 1:
        raise ValueError(f"max_episode_steps must be >= 1, got {settings['max_episode_steps']}")
    if settings["context_window"] is not None and settings["context_window"] < 1:
        raise ValueError(f"context_window must be >= 1 or None, got {settings['context_window']}")


class EmotionAgent(LoadAndPredict, L.LightningModule):
    """Emotion-token MCTS agent as a LightningModule with manual optimisation (spec 2, 3, 5); ``load`` and
    ``predict`` act with a trained one in a plain gymnasium loop (:class:`~emotion_rl.predict.LoadAndPredict`).

    Every component argument (``planner``, ``*_loss``) also takes its config (class_path + init_args), the form the
    hyper-parameters and checkpoints hold it in.

    Args:
        obs_dim: observation size, read from the environment (the CLI links it from the datamodule).
        n_actions: number of discrete actions, read from the environment (linked from the datamodule).
        max_episode_steps: the environment's longest episode (linked from the datamodule); without a
            ``context_window`` the model's context holds ``max_episode_steps + 1`` tokens (the longest real history
            plus one imagined state), so an episode never outgrows it.
        context_window: ``K`` real steps in the model's context (plus the imagined state); the policy plans on the
            most recent ``K`` steps. Linked from the datamodule, which then trains on windows of ``K`` steps.
            ``None``: the whole episode.
        n_emotions: number of emotions ``E`` (spec 1.2: 8).
        d_model: width of the shared transformer.
        n_layers: number of transformer blocks.
        n_heads: attention heads per block.
        head_hidden: hidden width of each emotion's head MLPs (default ``d_model``).
        imagined_action: the action vector behind the dynamics the search imagines: ``"softmax"`` of the action
            head (spec 2.1) or ``"one_hot"`` of its argmax (the input phase 1 learns from with the taken action).
        planner: the search that acts and gives phase 4 its targets; any object with
            ``search(model, history, generator=None, explore=False)``. Default: ``EmotionMCTS()``, spec 1's search.
        dynamics_loss: phase 1's loss (spec 2.2.3), a factory called with the model (default ``DynamicsLoss``).
        action_loss: phase 2's loss (spec 2.2.4), a factory called with the model (default
            ``MaxValueActionLoss``, section 4.3).
        value_loss: phase 3's loss (spec 2.2.2), a factory called with the model and ``gamma`` (default
            ``ValueLoss``, Monte Carlo targets).
        policy_loss: phase 4's loss (spec 2.2.1), a factory called with the model (default ``PolicyLoss``).
        gamma: the discount of the value targets; the CLI links it from ``data.gamma`` (one discount for the
            returns and the targets).
        head_lr: learning rate of each optimizer's head group (spec 2.5: 3e-4).
        transformer_lr: learning rate of the shared transformer in each of the four Adams (spec 2.5: 1e-4).
        temperature_start: emotion sampling temperature at the start of training (spec 3.4).
        temperature_end: the temperature after ``temperature_decay_frames`` environment steps.
        temperature_decay_frames: environment steps of the linear temperature decay.
        schedule: ``"episode"`` (each phase once per batch) or ``"timestep"`` (spec 2.3's loop over timesteps,
            four optimizer steps per step; decision 11).
        gradient_clip_val: gradient-norm clip applied in every phase before its step (``None``: off).
        log_diagnostics: log action-head entropies and agreement and imagined-token value errors (one extra
            forward pass each time; docs/training.md, "Diagnostics").
        diagnostics_interval: env steps between two diagnostics (on the first collection that reaches the next
            multiple); 0: every collection. Logging only: the training is the same.
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        max_episode_steps: int,
        context_window: int | None = None,
        n_emotions: int = 8,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        head_hidden: int | None = None,
        imagined_action: ImaginedAction = "softmax",
        planner: EmotionMCTS | None = None,
        dynamics_loss: Callable[[EmotionModel], DynamicsLoss] = DynamicsLoss,
        action_loss: Callable[[EmotionModel], ActionLoss] = MaxValueActionLoss,
        value_loss: Callable[[EmotionModel, float], ValueLoss] = ValueLoss,
        policy_loss: Callable[[EmotionModel], PolicyLoss] = PolicyLoss,
        gamma: float = 0.99,
        head_lr: float = 3e-4,
        transformer_lr: float = 1e-4,
        temperature_start: float = 1.0,
        temperature_end: float = 0.1,
        temperature_decay_frames: int = 20_000,
        schedule: Schedule = "episode",
        gradient_clip_val: float | None = None,
        log_diagnostics: bool = False,
        diagnostics_interval: int = 0,
    ) -> None:
        settings = {name: value for name, value in locals().items() if name not in ("self", "__class__")}
        super().__init__()
        check_settings(settings)
        planner = EmotionMCTS() if planner is None else planner
        settings["planner"] = planner
        # plain values only (the checkpoint loads with weights_only=True); a component is kept as its config
        self.save_hyperparameters({**settings, **{name: to_config(settings[name]) for name in COMPONENTS}})
        self.automatic_optimization = False
        sizes = ("n_emotions", "d_model", "n_layers", "n_heads", "head_hidden", "imagined_action")
        self.model = EmotionModel(
            obs_dim,
            n_actions,
            context_window=context_window or max_episode_steps,
            **{name: settings[name] for name in sizes},
        )
        self.planner = instantiate(planner) if isinstance(planner, Mapping) else planner
        self.diagnostics_schedule = DiagnosticsSchedule(diagnostics_interval)
        self.temperature = TemperatureSchedule(temperature_start, temperature_end, temperature_decay_frames)
        self.losses = PhaseLosses(
            build(dynamics_loss, self.model),
            build(action_loss, self.model),
            build(value_loss, self.model, gamma),
            build(policy_loss, self.model),
        )
        # outputs a loss learns of its own (PhaseLoss.own_heads): trained by its phase's optimizer, saved with the agent
        self.loss_heads = torch.nn.ModuleDict(
            {phase: loss.own_heads() for phase, loss in zip(PHASES, self.losses, strict=True) if loss.own_heads()}
        )

    # ------------------------------------------------------------------ acting (spec 5 steps 1-3)
    def make_policy(self, greedy: bool = False, **kwargs) -> EmotionPolicy:
        """The planner as a TorchRL policy over this agent's model (greedy: argmax emotion and action)."""
        temperature = 0.0 if greedy else self.temperature
        return EmotionPolicy(self.model, self.planner, temperature=temperature, greedy=greedy, **kwargs)

    def reanalyze(self, episodes: TensorDict, chunk: int = 256) -> Tensor:
        """Fresh search targets ``[B, L, E]`` for stored episodes with the current model
        (:func:`~emotion_rl.data.reanalyze.reanalyze`)."""
        return reanalyze(self.planner, self.model, episodes, chunk)

    def bootstrap(self, episodes: TensorDict) -> Tensor | None:
        """What the value estimator asks to store with episodes ``[K, L]`` cut by the time limit, when they are
        stored: ``[K]`` in reward units (``MonteCarlo(bootstrap_truncation=True)``: the value of the state after
        each one's last step), or ``None`` when it asks for nothing (``Bootstrapper``; docs/data.md, "The value
        after a truncation"). A value loss without ``bootstrap`` asks for nothing."""
        ask = getattr(self.losses.value, "bootstrap", None)
        return ask(episodes) if callable(ask) else None

    # ------------------------------------------------------------------ one update (spec 2.3)
    FIX = (
        "the update was stopped before this phase changed any parameter. Lower the learning rates, set "
        "gradient_clip_val, or check the environment's observations and rewards."
    )

    def _backward(self, phase: str, loss: Tensor, params: list[torch.nn.Parameter]) -> None:
        """Gradients of ``loss`` on ``params`` (cleared first). A non-finite loss or gradient stops the run before
        any parameter changes (and so before any checkpoint could hold damaged weights)."""
        if not torch.isfinite(loss):
            raise FloatingPointError(f"phase '{phase}' produced a non-finite loss ({loss.item()}); {self.FIX}")
        for p in params:
            p.grad = None
        if self._trainer is not None:
            self.manual_backward(loss)
        else:  # a plain loop (examples/train_minimal.py, a benchmark)
            loss.backward()
        grads = [p.grad for p in params if p.grad is not None]
        if grads and not torch.isfinite(torch.nn.utils.get_total_norm(grads)):
            for p in params:
                p.grad = None
            raise FloatingPointError(
                f"phase '{phase}' produced a non-finite gradient (loss {loss.item():.4g}); {self.FIX}"
            )

    def _clip(self, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> None:
        """``gradient_clip_val``: one norm clip over ``params`` (through ``optimizer`` under a Trainer)."""
        if not self.hparams.gradient_clip_val:
            return
        if self._trainer is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.gradient_clip_val)
        else:  # no Trainer (a plain loop or a benchmark)
            torch.nn.utils.clip_grad_norm_(params, self.hparams.gradient_clip_val)

    def _step(self, optimizer: torch.optim.Optimizer, phase: str, loss: Tensor) -> Tensor:
        """One phase of the alternating update: backward, clip and step ``optimizer``."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self._backward(phase, loss, params)
        self._clip(optimizer, params)
        optimizer.step()
        return loss.detach()

    def update(self, batch: TensorDict, optimizers: Sequence[torch.optim.Optimizer] | None = None) -> dict[str, Tensor]:
        """The four phases of spec 2.3 in order, each a step of its own optimizer.

        ``batch`` ``[B, L]``: the steps whose losses count are its ``weight`` (when present) or its ``mask``.
        ``optimizers``: the four optimizers in phase order; default the Trainer's (a loop without a Trainer passes
        :meth:`configure_optimizers`'s). Each phase reads the model as the previous phases left it. The one forward
        two phases share: a phase 2 that does not move the transformer (``update_transformer`` off) encodes the
        batch as phase 3 would, and phase 3 reuses that encoding.
        """
        opt_dynamics, opt_action, opt_value, opt_policy = self.optimizers() if optimizers is None else optimizers
        logs = {}
        out = self.losses.dynamics(batch)  # phase 1: dynamics heads + transformer
        logs["train/phase1_dynamics_loss"] = self._step(opt_dynamics, "dynamics", out["loss_dynamics"])
        shared = None if getattr(self.losses.action, "update_transformer", True) else self.model.encode(batch)
        out = self.losses.action(batch, shared)  # phase 2: action heads (+ transformer), frozen critic
        logs["train/phase2_action_loss"] = self._step(opt_action, "action", out["loss_action"])
        logs["train/phase2_imagined_value"] = out["imagined_value"]
        out = self.losses.value(batch, shared)  # phase 3: value heads + transformer
        logs["train/phase3_value_loss"] = self._step(opt_value, "value", out["loss_value"])
        out = self.losses.policy(batch)  # phase 4: policy head + transformer
        logs["train/phase4_policy_loss"] = self._step(opt_policy, "policy", out["loss_policy"])
        return logs

    def diagnostics(self, batch: TensorDict, stats: TensorDict | None = None) -> dict[str, Tensor]:
        """:func:`~emotion_rl.diagnostics.learning_diagnostics` of this agent's model on ``batch`` (and the search's
        root gaps that the collection's ``stats`` carry)."""
        return learning_diagnostics(self.model, self.losses.value, batch, stats)

    def training_step(self, dataloader_iter: Iterator) -> None:
        """Lightning's step: exactly one batch from the data iterator, then :meth:`train_batch`.

        Lightning's default fetcher would pull the next batch before this step runs (it prefetches one to detect
        the end of an unsized stream): that batch's collection would land in the checkpoint's replay and counters
        before it was trained on, and a resumed run would skip it. Pulling the batch here keeps every checkpoint at
        a batch boundary (exact resume, docs/resuming.md). The batch comes from the replay on the CPU in float32: it
        moves to the model's device and float type (:meth:`batch_to_model`).
        """
        batch, _batch_idx, _dataloader_idx = next(dataloader_iter)
        self.train_batch(self.batch_to_model(batch))

    def batch_to_model(self, batch: TensorDict) -> TensorDict:
        """``batch`` on the model's device, its floating tensors in the model's float type (e.g. float64 under
        ``--trainer.precision 64-true``); integer and bool tensors keep their type."""
        dtype = next(p.dtype for p in self.model.parameters() if p.is_floating_point())
        batch = batch.to(self.device)
        return batch.apply(lambda x: x.to(dtype) if x.is_floating_point() and x.dtype != dtype else x)

    def train_batch(self, batch: TensorDict) -> None:
        """One training batch (docs/data.md): the four phases (spec 2.3) and the collection's logs."""
        episodes = batch["episodes"]
        if self.hparams.schedule == "episode":
            logs = self.update(episodes)
        else:  # spec 2.3 literally: for each episode, for each timestep t, four phases on sequence_t
            per_step: list[dict[str, Tensor]] = []
            mask = episodes["mask"]
            for b in range(episodes.shape[0]):
                for t in range(int(mask[b].sum())):
                    prefix = episodes[b : b + 1, : t + 1]  # sequence_t: a new TensorDict (views)
                    only_t = torch.zeros(1, t + 1, dtype=torch.bool, device=mask.device)
                    only_t[0, t] = True  # only step t's losses count
                    prefix.set("weight", step_weight(prefix) * only_t if "weight" in prefix.keys() else only_t)
                    per_step.append(self.update(prefix))
            logs = {k: torch.stack([s[k] for s in per_step]).mean() for k in per_step[0]}
        self.log_dict(logs, batch_size=episodes.shape[0])
        self._log_collection(batch["stats"])
        if self.hparams.log_diagnostics and self.diagnostics_schedule.due(batch["stats"]):
            self.log_dict(self.diagnostics(episodes, batch["stats"]), batch_size=episodes.shape[0])
        if self._trainer is not None and bool(batch["stats"].get("total_frames_reached", torch.tensor(False))):
            self.trainer.should_stop = True  # data.total_frames env steps were collected and trained on

    def _log_collection(self, stats: TensorDict) -> None:
        """The collection's metrics (:func:`~emotion_rl.diagnostics.collection_metrics`), the return on the progress
        bar: on the first batch after each collection only (the later batches of one collection carry nothing new,
        and Lightning's ``log`` costs milliseconds a call)."""
        if bool(stats["emotion_usage"].isnan().all()):
            return
        logs = collection_metrics(stats)
        if "episode/return" in logs:
            self.log("episode/return", logs.pop("episode/return"), prog_bar=True, batch_size=1)
        self.log_dict(logs, batch_size=1)

    # ------------------------------------------------------------------ evaluation
    def validation_step(self, batch: TensorDict, batch_idx: int) -> None:
        self._log_evaluation("val", batch)

    def test_step(self, batch: TensorDict, batch_idx: int) -> None:
        self._log_evaluation("test", batch)

    def _log_evaluation(self, stage: str, batch: TensorDict) -> None:
        """Greedy evaluation episodes played by the datamodule: mean return over ``val_episodes`` episodes."""
        returns = batch["episode_return"].float()
        size = returns.numel()  # one batch of episodes per evaluation
        self.log(f"{stage}/return_mean", returns.mean(), prog_bar=True, batch_size=size)
        self.log(f"{stage}/return_std", returns.std(unbiased=False), batch_size=size)
        self.log(f"{stage}/length_mean", batch["episode_length"].float().mean(), batch_size=size)
        for key in batch.keys():
            if key.startswith("end_"):  # why the greedy episodes ended (the datamodule's EpisodeEndings)
                self.log(f"{stage}/{key}", batch[key].float(), batch_size=size)

    # ------------------------------------------------------------------ optimizers (spec 3.2)
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Four Adams (spec 3.2), each one head group (``head_lr``; with the heads its loss learns of its own) plus
        the shared transformer (``transformer_lr``)."""
        transformer = self.model.transformer_parameters()
        heads = self.model.head_parameters()
        for phase, own in self.loss_heads.items():
            heads[phase] = [*heads[phase], *own.parameters()]
        return [
            torch.optim.Adam(
                [
                    {"params": heads[phase], "lr": self.hparams.head_lr},
                    {"params": transformer, "lr": self.hparams.transformer_lr},
                ]
            )
            for phase in PHASES
        ]
