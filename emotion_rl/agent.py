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

from emotion_rl.losses import (
    ActionLoss,
    DynamicsAction,
    DynamicsLoss,
    PolicyLoss,
    ValueLoss,
    ValueTarget,
    action_loss_class,
    masked_mean,
    step_weight,
)
from emotion_rl.model import EmotionModel
from emotion_rl.policy import EmotionPolicy, TemperatureSchedule
from emotion_rl.search import EmotionMCTS

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


class EmotionAgent(L.LightningModule):
    """Emotion-token MCTS agent as a LightningModule with manual optimisation (spec 2, 3, 5).

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
        )
        self.planner = EmotionMCTS(**{name: self.hparams[name] for name in PLANNER_ARGUMENTS})
        self.temperature = TemperatureSchedule(temperature_start, temperature_end, temperature_decay_frames)
        if value_target != "monte_carlo" and target_tau < 1:  # the EMA target network (saved with the agent)
            self.target_model = copy.deepcopy(self.model).requires_grad_(False)
        self.losses = PhaseLosses(
            DynamicsLoss(self.model, action_input=dynamics_action, all_emotions=dynamics_all_emotions),
            action_loss_class(phase2_objective)(
                self.model,
                update_transformer=phase2_updates_transformer,
                normalize_value=action_value_norm,
                entropy_coef=action_entropy_coef,
                awr_coef=action_awr_coef,
                awr_beta=action_awr_beta,
                return_scale=return_scale,
                value_readout=value_readout,
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
            ),
            PolicyLoss(self.model),
        )

    # ------------------------------------------------------------------ acting (spec 5 steps 1-3)
    def make_policy(self, greedy: bool = False, **kwargs) -> EmotionPolicy:
        """The planner as a TorchRL policy over this agent's model (greedy: argmax emotion and action)."""
        temperature = 0.0 if greedy else self.temperature
        return EmotionPolicy(self.model, self.planner, temperature=temperature, greedy=greedy, **kwargs)

    @torch.no_grad()
    def reanalyze(self, episodes: TensorDict, chunk: int = 256) -> Tensor:
        """Reanalyze (as in MuZero): fresh MCTS visit distributions for stored real histories. ``[B, L, E]``.

        Step ``t`` of episode ``b`` gets ``planner.search(model, history_b[0..t])["visit_distribution"]`` with the
        current model: the same search the policy ran when it acted there (spec 1.3 - 1.6, the real prefix only;
        nothing imagined is stored). Steps beyond an episode's ``mask`` get zeros. All prefixes are searched as one
        batch, in chunks of ``chunk`` histories cut to their longest prefix.
        """
        batch, length = episodes.shape
        rows = episodes["mask"].nonzero()  # [R, 2]: (episode, step), in step order within each episode
        rows = rows[rows[:, 1].argsort(stable=True)]  # group short prefixes together
        out = torch.zeros(batch, length, self.hparams.n_emotions, device=episodes.device)
        real = episodes.select("observation", "action", "emotion", "reward")
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, rows.shape[0], chunk):
                b, t = rows[start : start + chunk].unbind(-1)
                longest = int(t.max()) + 1
                history = real[b, :longest].clone()
                history.set("mask", torch.arange(longest, device=t.device) <= t.unsqueeze(-1))
                out[b, t] = self.planner.search(self.model, history)["visit_distribution"].to(out.dtype)
        finally:
            self.model.train(was_training)
        return out

    # ------------------------------------------------------------------ one update (spec 2.3)
    def _step(
        self, optimizer: torch.optim.Optimizer, phase: str, loss: Tensor, max_update: float | None = None
    ) -> Tensor:
        """Backward and step ``optimizer``. A non-finite loss or gradient stops the run before this step changes a
        parameter (and so before any checkpoint could hold damaged weights)."""
        fix = (
            "the update was stopped before this phase changed any parameter. Lower the learning rates, set "
            "gradient_clip_val, or check the environment's observations and rewards."
        )
        if not torch.isfinite(loss):
            raise FloatingPointError(f"phase '{phase}' produced a non-finite loss ({loss.item()}); {fix}")
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads and not torch.isfinite(torch.nn.utils.get_total_norm(grads)):
            optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError(f"phase '{phase}' produced a non-finite gradient (loss {loss.item():.4g}); {fix}")
        if self.hparams.gradient_clip_val and self._trainer is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.gradient_clip_val)
        elif self.hparams.gradient_clip_val:  # no Trainer (a plain loop or a benchmark): the same norm clip
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.hparams.gradient_clip_val)
        if not max_update:
            optimizer.step()
            return loss.detach()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        before = [p.detach().clone() for p in params]
        optimizer.step()
        with torch.no_grad():  # scale this step back to a change of norm max_update at most
            change = torch._foreach_sub([p.detach() for p in params], before)
            scale = max_update / torch.linalg.vector_norm(torch.stack(torch._foreach_norm(change))).clamp(min=1e-12)
            if scale < 1:
                torch._foreach_lerp_([p.detach() for p in params], before, float(1 - scale))
        return loss.detach()

    def update(self, batch: TensorDict) -> dict[str, Tensor]:
        """The four phases of spec 2.3 in order, each a fresh forward and a step of its own optimizer.

        ``batch`` ``[B, L]``: the steps whose losses count are its ``weight`` (when present) or its ``mask``.
        """
        opt_dynamics, opt_action, opt_value, opt_policy = self.optimizers()
        logs = {}
        out = self.losses.dynamics(batch)  # phase 1: dynamics heads + transformer
        logs["train/phase1_dynamics_loss"] = self._step(opt_dynamics, "dynamics", out["loss_dynamics"])
        out = self.losses.action(batch)  # phase 2: action heads + transformer, through the frozen critic
        logs["train/phase2_action_loss"] = self._step(
            opt_action, "action", out["loss_action"], max_update=self.hparams.action_max_update
        )
        logs["train/phase2_imagined_value"] = out["imagined_value"]
        out = self.losses.value(batch)  # phase 3: value heads + transformer
        logs["train/phase3_value_loss"] = self._step(opt_value, "value", out["loss_value"])
        out = self.losses.policy(batch)  # phase 4: policy head + transformer
        logs["train/phase4_policy_loss"] = self._step(opt_policy, "policy", out["loss_policy"])
        if hasattr(self, "target_model"):  # EMA of the model, read by the bootstrapped value targets
            with torch.no_grad():
                target, online = list(self.target_model.parameters()), list(self.model.parameters())
                torch._foreach_lerp_(target, online, self.hparams.target_tau)
        return logs

    @torch.no_grad()
    def diagnostics(self, batch: TensorDict) -> dict[str, Tensor]:
        """Per batch: each action head's entropy and how often the heads' argmax actions agree (pairs of emotions);
        the values read at imagined tokens: their error on ``y_{t+1}`` (true and predicted next state) and their
        bias against the value at the real next token (mean over emotions)."""
        mask, weight = batch["mask"], step_weight(batch)
        encoding = self.model.encode(batch)
        log_probs = torch.log_softmax(self.model.action_logits(encoding.hidden), dim=-1)  # [B, L, E, A]
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        n = self.hparams.n_emotions
        logs = {f"diagnostics/action_entropy_{e}": masked_mean(entropy[..., e], weight) for e in range(n)}
        best = log_probs.argmax(-1)
        pairs = ((best.unsqueeze(-1) == best.unsqueeze(-2)).sum((-1, -2)) - n).to(entropy.dtype)
        logs["diagnostics/action_agreement"] = masked_mean(pairs / max(n * (n - 1), 1), weight)
        value_loss = self.losses.value
        _, next_targets = value_loss.targets(batch)
        errors = value_loss.imagined_errors(batch, encoding, next_targets)
        logs["diagnostics/imagined_value_error_true"] = masked_mean(errors[0], weight)
        logs["diagnostics/imagined_value_error_predicted"] = masked_mean(errors[1], weight)
        imagined, _ = value_loss.imagined_values(batch, encoding)
        real_next = self.model.emotion_values(encoding.hidden[:, 1:]).mean(-1)
        has_next = mask[:, 1:] & mask[:, :-1]
        logs["diagnostics/imagined_value_bias"] = masked_mean(imagined[:, :-1].mean(-1) - real_next, has_next)
        return logs

    def training_step(self, dataloader_iter: Iterator) -> None:
        """Lightning's step: exactly one batch from the data iterator, then :meth:`train_batch`.

        Lightning's default fetcher would pull the next batch before this step runs (it prefetches one to detect
        the end of an unsized stream): that batch's collection would land in the checkpoint's replay and counters
        before it was trained on, and a resumed run would skip it. Pulling the batch here keeps every checkpoint at
        a batch boundary (exact resume, docs/resuming.md).
        """
        batch, _batch_idx, _dataloader_idx = next(dataloader_iter)
        self.train_batch(batch.to(self.device))

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
        if self.hparams.log_diagnostics and not bool(batch["stats"]["emotion_usage"].isnan().all()):
            self.log_dict(self.diagnostics(episodes), batch_size=episodes.shape[0])  # once per collection
        if self._trainer is not None and bool(batch["stats"].get("total_frames_reached", torch.tensor(False))):
            self.trainer.should_stop = True  # data.total_frames env steps were collected and trained on

    def _log_collection(self, stats: TensorDict) -> None:
        """Episode returns (on the progress bar), environment steps, temperature, emotion usage and the search's
        improvement over the prior (``search/kl_visits_prior``: mean KL(visits || prior) at the root;
        ``search/argmax_agreement``: share of states whose most visited emotion is the prior's favourite): logged on
        the first batch after each collection (the later batches of one collection carry nothing new, and
        Lightning's ``log`` costs milliseconds a call)."""
        if bool(stats["emotion_usage"].isnan().all()):
            return
        episode_return = stats["episode_return"]
        if torch.isfinite(episode_return):
            self.log("episode/return", episode_return, prog_bar=True, batch_size=1)
        self.log("episode/env_steps", stats["env_steps"].float(), batch_size=1)
        self.log("episode/count", stats["episodes"].float(), batch_size=1)
        self.log("train/temperature", stats["temperature"].float(), batch_size=1)
        for k, usage in enumerate(stats["emotion_usage"].unbind(-1)):
            self.log(f"emotion/usage_{k}", usage, batch_size=1)
        for key in ("kl_visits_prior", "argmax_agreement"):
            value = stats.get(key, None)
            if value is not None and bool(torch.isfinite(value)):
                self.log(f"search/{key}", value.float(), batch_size=1)

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
