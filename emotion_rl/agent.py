"""The learner: four phases, four optimizers, one shared transformer (spec 2.3, 3.2; docs/training.md).

:meth:`EmotionAgent.update` runs the four phases of spec 2.3 in order, each a loss module of
:mod:`emotion_rl.losses` (a fresh forward) and a step of its own optimizer. ``schedule="episode"`` runs each phase
once per batch of whole episodes or windows; ``schedule="timestep"`` is spec 2.3's per-timestep loop (decision 11).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator
from typing import Literal, NamedTuple

import lightning as L
import torch
from tensordict import TensorDict
from torch import Tensor

from emotion_rl.data.reanalyze import reanalyze
from emotion_rl.diagnostics import DiagnosticsSchedule, collection_metrics, learning_diagnostics
from emotion_rl.losses import (
    ActionLoss,
    DynamicsAction,
    DynamicsLoss,
    ImprovementActionLoss,
    PolicyLoss,
    ValueLoss,
    ValueTarget,
    action_loss_class,
    step_weight,
)
from emotion_rl.mcts.search import EmotionMCTS
from emotion_rl.model import EmotionModel
from emotion_rl.policy import EmotionPolicy, TemperatureSchedule
from emotion_rl.predict import LoadAndPredict

PLANNER_ARGUMENTS = tuple(inspect.signature(EmotionMCTS).parameters)
"""The agent's hyper-parameters that configure its planner: every argument of :class:`EmotionMCTS`."""

PHASES = ("dynamics", "action", "value", "policy")
"""Optimizer order (spec 2.3): phase 1 dynamics, 2 action, 3 value, 4 policy."""

Schedule = Literal["episode", "timestep"]


class PhaseLosses(NamedTuple):
    """The four loss modules, in phase order (a plain tuple: the model's weights are saved once, by the agent)."""

    dynamics: DynamicsLoss
    action: ActionLoss
    value: ValueLoss
    policy: PolicyLoss


class EmotionAgent(LoadAndPredict, L.LightningModule):
    """Emotion-token MCTS agent as a LightningModule with manual optimisation (spec 2, 3, 5); ``load`` and
    ``predict`` act with a trained one in a plain gymnasium loop (:class:`~emotion_rl.predict.LoadAndPredict`).

    Args:
        obs_dim, n_actions, max_episode_steps: read from the environment (the CLI links them from the
            datamodule). The model's context is ``max_episode_steps + 1`` (the longest real history plus one
            imagined state), so an episode never outgrows it, unless ``context_window`` is set.
        n_emotions, d_model, n_layers, n_heads, head_hidden: model size (:class:`~emotion_rl.EmotionModel`).
        num_simulations, c_puct, max_depth: planner (:class:`~emotion_rl.EmotionMCTS`; spec 1.2, 1.4).
        q_transform, completed_value, tie_break: the planner's selection options, literal by default (docs/search.md).
        dirichlet_alpha, dirichlet_fraction: Dirichlet noise at the root when acting (off at fraction 0).
        root_rule, gumbel_considered, gumbel_c_visit, gumbel_c_scale: ``"puct"`` (spec 1.2) or a Gumbel MuZero root.
        value_readout: the value of a state, for the planner and phases 2 and 3: ``"mean"`` of the ``E`` values
            (spec 1.4) or ``"policy"`` (``sum_e pi(e | s) V^e(s)``; beyond the specification, docs/search.md).
        temperature_start, temperature_end, temperature_decay_frames: emotion sampling temperature (spec 3.4),
            linear in environment steps.
        head_lr, transformer_lr: learning rates of each head group and of the shared transformer (spec 2.5:
            3e-4 and 1e-4), as two parameter groups of each of the four Adam optimizers (spec 3.2).
        phase2_objective: phase 2's loss class (:mod:`emotion_rl.losses`): ``"max_value"`` (section 4.3,
            decision 7), ``"literal"`` (spec 2.2.4: zero gradient) or the dotted path of an ``ActionLoss`` subclass.
        dynamics_action: phase 1's action input: ``"action_head"`` (literal ``stopgrad(A_e(h))``) or ``"taken"``
            (decision 8).
        schedule: ``"episode"`` (each phase once per batch) or ``"timestep"`` (spec 2.3's loop over timesteps,
            four optimizer steps per step; decision 11).
        return_scale: value targets are ``return_scale * G`` (the value heads and the search work in those units).
        gradient_clip_val: optional gradient-norm clip applied in every phase.
        context_window: ``None``: the model's context holds the whole episode (``max_episode_steps + 1``). ``K``:
            it holds ``K`` real steps plus the imagined state, and the policy plans on the most recent ``K`` steps
            (it always slides); train it on windows of ``K`` steps (``EmotionDataModule(context_window=K)``).

    Learning options, all off by default (docs/training.md, "Options"; the loss modules hold their meaning):
        imagined_value_weight: phase 3 also trains the values at imagined tokens (``ValueLoss.imagined_weight``).
        action_entropy_coef, action_value_norm, action_awr_coef, action_awr_beta: phase 2's entropy bonus,
            objective normalisation and advantage-weighted log-likelihood (``ActionLoss``).
        action_max_update: bound on the L2 norm of the parameter change of each phase-2 step (a bounded actor
            step; gradient clipping would not bound an Adam step).
        phase2_updates_transformer: ``False``: phase 2 moves the action heads only.
        dynamics_all_emotions: every dynamics head learns every transition (``DynamicsLoss.all_emotions``).
        value_target, value_n_step, value_lambda, value_gamma: phase 3's targets (``ValueLoss``); ``value_gamma``
            must be the datamodule's ``gamma``. target_tau: EMA rate of the target network the bootstrapped targets
            read (1: the model itself).
        log_diagnostics: log action-head entropies and agreement and imagined-token value errors once per collection
            (on its first training batch: one extra forward pass per collection).
        diagnostics_interval: env steps between two diagnostics (on the first collection that reaches the next
            multiple); 0: every collection. Logging only: the training is the same.
        shared_update: spec 2.5's alternative to the alternating phases: one forward and one backward of the four
            losses together, the transformer updated once per batch (:meth:`shared_update`).

    Emotions that differ (beyond the specification, all off by default; docs/training.md):
        imagined_action: the action vector behind the dynamics the search imagines (``EmotionModel``):
            ``"softmax"`` (spec 2.1) or ``"one_hot"`` of the head's argmax (what phase 1 learns from with ``taken``).
        action_coverage_coef: phase 2 also raises ``I(e; a | s)`` over every head (``ActionLoss.coverage_coef``).
        improvement_scale, improvement_mixture: ``phase2_objective="improvement"``'s settings
            (``ImprovementActionLoss``); ``"assigned"`` is the fixed assignment of action ``e mod A`` to emotion e.
        policy_balance_coef: phase 4's load balancing of emotion usage (``PolicyLoss.balance_coef``).
        value_all_emotions: phase 3 trains every ``V^e`` on each step, weighted by its head's probability of the
            action taken (``ValueLoss.all_emotions``).
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        max_episode_steps: int,
        n_emotions: int = 8,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        head_hidden: int | None = None,
        num_simulations: int = 50,
        c_puct: float = 1.0,
        max_depth: int = 3,
        q_transform: str = "literal",
        completed_value: str = "child",
        tie_break: str = "lowest",
        dirichlet_alpha: float = 0.3,
        dirichlet_fraction: float = 0.0,
        root_rule: str = "puct",
        gumbel_considered: int = 8,
        gumbel_c_visit: float = 50.0,
        gumbel_c_scale: float = 0.1,
        value_readout: str = "mean",
        temperature_start: float = 1.0,
        temperature_end: float = 0.1,
        temperature_decay_frames: int = 20_000,
        head_lr: float = 3e-4,
        transformer_lr: float = 1e-4,
        phase2_objective: str = "max_value",
        dynamics_action: DynamicsAction = "action_head",
        schedule: Schedule = "episode",
        return_scale: float = 1.0,
        gradient_clip_val: float | None = None,
        context_window: int | None = None,
        imagined_value_weight: float = 0.0,
        action_entropy_coef: float = 0.0,
        action_value_norm: bool = False,
        action_awr_coef: float = 0.0,
        action_awr_beta: float = 1.0,
        action_max_update: float | None = None,
        phase2_updates_transformer: bool = True,
        dynamics_all_emotions: bool = False,
        value_target: ValueTarget = "monte_carlo",
        value_n_step: int = 5,
        value_lambda: float = 0.95,
        value_gamma: float = 0.99,
        target_tau: float = 0.005,
        log_diagnostics: bool = False,
        diagnostics_interval: int = 0,
        shared_update: bool = False,
        imagined_action: str = "softmax",
        action_coverage_coef: float = 0.0,
        improvement_scale: float = 2.0,
        improvement_mixture: str = "prior",
        policy_balance_coef: float = 0.0,
        value_all_emotions: bool = False,
    ) -> None:
        super().__init__()
        if schedule not in Schedule.__args__:
            raise ValueError(f"schedule={schedule!r} is not supported; choose one of {list(Schedule.__args__)}")
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        if context_window is not None and context_window < 1:
            raise ValueError(f"context_window must be >= 1 or None, got {context_window}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.model = EmotionModel(
            obs_dim,
            n_actions,
            n_emotions=n_emotions,
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            head_hidden=head_hidden,
            context_window=context_window or max_episode_steps,
            imagined_action=imagined_action,
        )
        self.planner = EmotionMCTS(**{name: self.hparams[name] for name in PLANNER_ARGUMENTS})
        self.diagnostics_schedule = DiagnosticsSchedule(diagnostics_interval)
        self.temperature = TemperatureSchedule(temperature_start, temperature_end, temperature_decay_frames)
        if value_target != "monte_carlo" and target_tau < 1:  # the EMA target network (saved with the agent)
            self.target_model = copy.deepcopy(self.model).requires_grad_(False)
        action_loss = action_loss_class(phase2_objective)
        improvement = dict(scale=improvement_scale, mixture=improvement_mixture)
        self.losses = PhaseLosses(
            DynamicsLoss(self.model, action_input=dynamics_action, all_emotions=dynamics_all_emotions),
            action_loss(
                self.model,
                update_transformer=phase2_updates_transformer,
                normalize_value=action_value_norm,
                entropy_coef=action_entropy_coef,
                awr_coef=action_awr_coef,
                awr_beta=action_awr_beta,
                return_scale=return_scale,
                value_readout=value_readout,
                coverage_coef=action_coverage_coef,
                **(improvement if issubclass(action_loss, ImprovementActionLoss) else {}),
            ),
            ValueLoss(
                self.model,
                return_scale=return_scale,
                target=value_target,
                gamma=value_gamma,
                n=value_n_step,
                lam=value_lambda,
                target_model=getattr(self, "target_model", None),
                imagined_weight=imagined_value_weight,
                value_readout=value_readout,
                all_emotions=value_all_emotions,
            ),
            PolicyLoss(self.model, balance_coef=policy_balance_coef),
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
        self.manual_backward(loss)
        grads = [p.grad for p in params if p.grad is not None]
        if grads and not torch.isfinite(torch.nn.utils.get_total_norm(grads)):
            for p in params:
                p.grad = None
            raise FloatingPointError(
                f"phase '{phase}' produced a non-finite gradient (loss {loss.item():.4g}); {self.FIX}"
            )

    def _clip(self, optimizer: torch.optim.Optimizer | None, params: list[torch.nn.Parameter]) -> None:
        """``gradient_clip_val``: one norm clip over ``params`` (through ``optimizer`` under a Trainer)."""
        if not self.hparams.gradient_clip_val:
            return
        if optimizer is not None and self._trainer is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.gradient_clip_val)
        else:  # no Trainer (a plain loop or a benchmark), or a clip over several optimizers' parameters
            torch.nn.utils.clip_grad_norm_(params, self.hparams.gradient_clip_val)

    @staticmethod
    def _bounded_step(optimizer: torch.optim.Optimizer, max_update: float | None = None) -> None:
        """``optimizer.step()``, scaled back to a parameter change of L2 norm ``max_update`` at most when given."""
        if not max_update:
            optimizer.step()
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        before = [p.detach().clone() for p in params]
        optimizer.step()
        with torch.no_grad():
            change = torch._foreach_sub([p.detach() for p in params], before)
            scale = max_update / torch.linalg.vector_norm(torch.stack(torch._foreach_norm(change))).clamp(min=1e-12)
            if scale < 1:
                torch._foreach_lerp_([p.detach() for p in params], before, float(1 - scale))

    def _step(
        self, optimizer: torch.optim.Optimizer, phase: str, loss: Tensor, max_update: float | None = None
    ) -> Tensor:
        """One phase of the alternating update: backward, clip and step ``optimizer``."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self._backward(phase, loss, params)
        self._clip(optimizer, params)
        self._bounded_step(optimizer, max_update)
        return loss.detach()

    def update(self, batch: TensorDict) -> dict[str, Tensor]:
        """The four phases of spec 2.3 in order, each a step of its own optimizer (or, with ``shared_update``,
        spec 2.5's single update: :meth:`shared_update`).

        ``batch`` ``[B, L]``: the steps whose losses count are its ``weight`` (when present) or its ``mask``.
        Each phase reads the model as the previous phases left it. The one forward two phases share: phase 2 does
        not move the transformer when ``phase2_updates_transformer`` is off, so its encoding of the batch is the
        one phase 3 would compute, and phase 3 reuses it.
        """
        if self.hparams.shared_update:
            logs = self.shared_update(batch)
        else:
            opt_dynamics, opt_action, opt_value, opt_policy = self.optimizers()
            logs = {}
            out = self.losses.dynamics(batch)  # phase 1: dynamics heads + transformer
            logs["train/phase1_dynamics_loss"] = self._step(opt_dynamics, "dynamics", out["loss_dynamics"])
            shared = None if self.hparams.phase2_updates_transformer else self.model.encode(batch)
            out = self.losses.action(batch, shared)  # phase 2: action heads (+ transformer), frozen critic
            logs["train/phase2_action_loss"] = self._step(
                opt_action, "action", out["loss_action"], max_update=self.hparams.action_max_update
            )
            logs["train/phase2_imagined_value"] = out["imagined_value"]
            out = self.losses.value(batch, shared)  # phase 3: value heads + transformer
            logs["train/phase3_value_loss"] = self._step(opt_value, "value", out["loss_value"])
            out = self.losses.policy(batch)  # phase 4: policy head + transformer
            logs["train/phase4_policy_loss"] = self._step(opt_policy, "policy", out["loss_policy"])
        if hasattr(self, "target_model"):  # EMA of the model, read by the bootstrapped value targets
            with torch.no_grad():
                target, online = list(self.target_model.parameters()), list(self.model.parameters())
                torch._foreach_lerp_(target, online, self.hparams.target_tau)
        return logs

    def shared_update(self, batch: TensorDict) -> dict[str, Tensor]:
        """spec 2.5's alternative to four transformer updates: one forward of the transformer, the four losses on
        it with the same stop-gradients as the alternating phases, one backward of their sum; each optimizer then
        steps its own head group, and the transformer moves once, by the summed gradient (through the dynamics
        optimizer, which holds its Adam state). ``gradient_clip_val`` clips that one gradient over every parameter.
        """
        optimizers = self.optimizers()
        encoding = self.model.encode(batch)
        outs = [
            self.losses.dynamics(batch, encoding),
            self.losses.action(batch, encoding),  # detaches h_t itself unless phase2_updates_transformer
            self.losses.value(batch, encoding),
            self.losses.policy(batch, encoding),
        ]
        losses = [out[f"loss_{phase}"] for out, phase in zip(outs, PHASES, strict=True)]
        params = list(self.model.parameters())
        for phase, loss in zip(PHASES, losses, strict=True):  # name the phase of a non-finite loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"phase '{phase}' produced a non-finite loss ({loss.item()}); {self.FIX}")
        self._backward("shared", torch.stack(losses).sum(), params)
        self._clip(None, params)
        transformer = self.model.transformer_parameters()
        for index, optimizer in enumerate(optimizers):
            self._bounded_step(optimizer, self.hparams.action_max_update if PHASES[index] == "action" else None)
            if index == 0:  # the transformer moved once; the other optimizers step their heads only
                for p in transformer:
                    p.grad = None
        logs = {
            f"train/phase{i + 1}_{phase}_loss": loss.detach()
            for i, (phase, loss) in enumerate(zip(PHASES, losses, strict=True))
        }
        logs["train/phase2_imagined_value"] = outs[1]["imagined_value"]
        return logs

    def diagnostics(self, batch: TensorDict) -> dict[str, Tensor]:
        """:func:`~emotion_rl.diagnostics.learning_diagnostics` of this agent's model on ``batch``."""
        return learning_diagnostics(self.model, self.losses.value, batch)

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
            self.log_dict(self.diagnostics(episodes), batch_size=episodes.shape[0])
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
        self.log(f"{stage}/return_mean", returns.mean(), prog_bar=True)
        self.log(f"{stage}/return_std", returns.std(unbiased=False))
        self.log(f"{stage}/length_mean", batch["episode_length"].float().mean())

    # ------------------------------------------------------------------ optimizers (spec 3.2)
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Four Adams (spec 3.2), each one head group (``head_lr``) plus the shared transformer (``transformer_lr``)."""
        transformer = self.model.transformer_parameters()
        heads = self.model.head_parameters()
        return [
            torch.optim.Adam(
                [
                    {"params": heads[phase], "lr": self.hparams.head_lr},
                    {"params": transformer, "lr": self.hparams.transformer_lr},
                ]
            )
            for phase in PHASES
        ]
