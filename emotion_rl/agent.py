"""The learner: four phases, four optimizers, one shared transformer (spec 2.2 - 2.4, 3.2).

Read it top to bottom: :meth:`EmotionAgent.training_step` runs the four phases of spec 2.3 in order, each a
fresh forward, a loss, and a step of its own optimizer:

1. :meth:`~EmotionAgent.phase1_dynamics` - dynamics heads learn the real next observation from
   ``(h_t, stopgrad(A_e(h_t)))`` (spec 2.2.3).
2. :meth:`~EmotionAgent.phase2_action` - action heads learn through the frozen dynamics heads (spec 2.2.4),
   with either the literal objective (zero gradient, SPEC_NOTES 7) or the section 4.3 objective
   ``max_a V(Z(h, a))`` (the default).
3. :meth:`~EmotionAgent.phase3_value` - value heads regress the actual discounted return of the selected
   emotion (spec 2.2.2).
4. :meth:`~EmotionAgent.phase4_policy` - the policy head imitates the stored MCTS visit distribution
   (spec 2.2.1).

Every phase also updates the shared transformer (spec 2.4, 3.2). Because the model is causal, one pass over a
batch of whole episodes gives ``h_t`` for every ``t`` (SPEC_NOTES 11): ``schedule="episode"`` runs each phase
once per batch; ``schedule="timestep"`` is the literal per-timestep loop of spec 2.3 (four optimizer steps per
timestep). Both compute the same per-step losses for the same parameters (tested).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import Tensor

from emotion_rl.model import EmotionModel
from emotion_rl.policy import EmotionPolicy, TemperatureSchedule
from emotion_rl.search import EmotionMCTS

PHASES = ("dynamics", "action", "value", "policy")
"""Optimizer order (spec 2.3): phase 1 dynamics, 2 action, 3 value, 4 policy."""

Phase2Objective = Literal["max_value", "literal"]
DynamicsAction = Literal["action_head", "taken"]
Schedule = Literal["episode", "timestep"]


@contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """Use ``module``'s parameters as constants inside the block: gradients still flow through to its inputs."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def masked_mean(per_step: Tensor, weight: Tensor) -> Tensor:
    """Mean of ``per_step`` ``[B, L]`` over the steps where ``weight`` is True."""
    weight = weight.to(per_step.dtype)
    return (per_step * weight).sum() / weight.sum().clamp(min=1)


class EmotionAgent(L.LightningModule):
    """Emotion-token MCTS agent as a LightningModule with manual optimisation (spec 2, 3, 5).

    Args:
        obs_dim, n_actions, max_episode_steps: read from the environment (the CLI links them from the
            datamodule). The model's context is ``max_episode_steps + 1`` (the longest real history plus one
            imagined state), so an episode never outgrows it, unless ``context_window`` is set.
        n_emotions, d_model, n_layers, n_heads, head_hidden: model size (:class:`~emotion_rl.EmotionModel`).
        num_simulations, c_puct, max_depth: planner (:class:`~emotion_rl.EmotionMCTS`; spec 1.2, 1.4).
        temperature_start, temperature_end, temperature_decay_frames: emotion sampling temperature (spec 3.4),
            linear in environment steps.
        head_lr, transformer_lr: learning rates of each head group and of the shared transformer (spec 2.5:
            3e-4 and 1e-4), as two parameter groups of each of the four Adam optimizers (spec 3.2).
        phase2_objective: ``"max_value"`` (section 4.3: raise ``V(Z(h, A(h)))`` through the frozen dynamics and
            the frozen model, SPEC_NOTES 7) or ``"literal"`` (spec 2.3's ``MSE(Z(h, A(h)), stopgrad(Z(h, A(h))))``,
            which is identically zero and never trains the action heads).
        dynamics_action: phase 1's action input: ``"action_head"`` (literal ``stopgrad(A_e(h))``) or ``"taken"``
            (one-hot of the action actually taken; SPEC_NOTES 8).
        schedule: ``"episode"`` (each phase once per batch of whole episodes) or ``"timestep"`` (spec 2.3's
            loop over timesteps, four optimizer steps per step; SPEC_NOTES 11).
        return_scale: value targets are ``return_scale * G`` (the value heads and the search work in those units).
        gradient_clip_val: optional gradient-norm clip applied in every phase.
        context_window: ``None``: the model's context holds the whole episode (``max_episode_steps + 1``). ``K``:
            it holds ``K`` real steps plus the imagined state, and the policy plans on the most recent ``K`` steps
            (``history_window``); train it on windows of ``K`` steps (``EmotionDataModule(context_window=K)``).
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
        temperature_start: float = 1.0,
        temperature_end: float = 0.1,
        temperature_decay_frames: int = 20_000,
        head_lr: float = 3e-4,
        transformer_lr: float = 1e-4,
        phase2_objective: Phase2Objective = "max_value",
        dynamics_action: DynamicsAction = "action_head",
        schedule: Schedule = "episode",
        return_scale: float = 1.0,
        gradient_clip_val: float | None = None,
        context_window: int | None = None,
    ) -> None:
        super().__init__()
        for name, value, allowed in (
            ("phase2_objective", phase2_objective, Phase2Objective.__args__),
            ("dynamics_action", dynamics_action, DynamicsAction.__args__),
            ("schedule", schedule, Schedule.__args__),
        ):
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not supported; choose one of {list(allowed)}")
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        if context_window is not None and context_window < 1:
            raise ValueError(f"context_window must be >= 1 or None, got {context_window}")
        if return_scale <= 0:
            raise ValueError(f"return_scale must be > 0, got {return_scale}")
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
        self.planner = EmotionMCTS(num_simulations=num_simulations, c_puct=c_puct, max_depth=max_depth)
        self.temperature = TemperatureSchedule(temperature_start, temperature_end, temperature_decay_frames)

    # ------------------------------------------------------------------ acting (spec 5 steps 1-3)
    def make_policy(self, greedy: bool = False, **kwargs) -> EmotionPolicy:
        """The planner as a TorchRL policy over this agent's model (greedy: argmax emotion and action)."""
        temperature = 0.0 if greedy else self.temperature
        return EmotionPolicy(self.model, self.planner, temperature=temperature, greedy=greedy, **kwargs)

    @torch.no_grad()
    def reanalyze(self, episodes: TensorDict, chunk: int = 256) -> Tensor:
        """Reanalyze (MuZero, seeds 003/004): fresh MCTS visit distributions for stored real histories. ``[B, L, E]``.

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

    # ------------------------------------------------------------------ the four phases (spec 2.2, 2.3)
    def phase1_dynamics(self, episodes: TensorDict) -> Tensor:
        """spec 2.2.3: ``||Z^e(h, stopgrad(a^e)) - s_next||^2`` per step, e = e_selected. ``[B, L]``."""
        h = self.model.encode(episodes).hidden
        emotion = episodes["emotion"]
        if self.hparams.dynamics_action == "action_head":
            action = torch.softmax(self.model.action_logits(h, emotion), dim=-1).detach()  # action head frozen
        else:
            action = F.one_hot(episodes["action"].clamp(min=0), self.hparams.n_actions).to(h.dtype)
        z_pred = self.model.dynamics(h, action, emotion)
        return (z_pred - episodes["next_observation"]).pow(2).sum(-1)

    def phase2_action(self, episodes: TensorDict) -> tuple[Tensor, Tensor]:
        """spec 2.2.4 / 4.3: train the action heads through the frozen dynamics heads. Returns (loss, value) ``[B, L]``.

        ``"literal"``: ``MSE(Z^e(stopgrad(h), A^e(h)), stopgrad(Z^e(h, A^e(h))))``: zero, with zero gradient.
        ``"max_value"``: ``-V(Z^e(stopgrad(h), A^e(h)))`` where V is the mean of the 8 values the frozen model
        gives the imagined next state (as the MCTS leaf reads it, spec 1.4), seeing the real steps ``0..t``.
        """
        encoding = self.model.encode(episodes)
        h = encoding.hidden
        emotion = episodes["emotion"]
        action = torch.softmax(self.model.action_logits(h, emotion), dim=-1)  # trainable: action heads + transformer
        if self.hparams.phase2_objective == "literal":
            z_target = self.model.dynamics(h, action, emotion).detach()  # dynamics frozen (stopgrad)
            with frozen(self.model.dynamics_heads):
                z_pred = self.model.dynamics(h.detach(), action, emotion)
            loss = (z_pred - z_target).pow(2).sum(-1)
            return loss, torch.zeros_like(loss)
        with frozen(self.model):  # the critic: dynamics, transformer and value heads all held fixed
            z_pred = self.model.dynamics(h.detach(), action, emotion)
            batch, length = emotion.shape
            steps = torch.arange(length, device=h.device)
            visible = (steps.view(1, -1) <= steps.view(-1, 1)).expand(batch, length, length)  # real 0..t
            positions = (steps + 1).expand(batch, length)
            imagined = self.model.encode_imagined(encoding.detach(), z_pred, positions, visible)
            value = self.model.emotion_values(imagined).mean(-1)
        return -value, value

    def phase3_value(self, episodes: TensorDict) -> Tensor:
        """spec 2.2.2: ``(V^e(s) - G)^2`` per step, e = e_selected, G the actual discounted return. ``[B, L]``."""
        h = self.model.encode(episodes).hidden
        value = self.model.emotion_values(h, episodes["emotion"])
        return (value - self.hparams.return_scale * episodes["return"]).pow(2)

    def phase4_policy(self, episodes: TensorDict) -> Tensor:
        """spec 2.2.1: ``-sum_e pi_MCTS(e) log pi(e|s)`` per step (log-softmax in place of log(p + eps)). ``[B, L]``."""
        h = self.model.encode(episodes).hidden
        log_policy = torch.log_softmax(self.model.policy_logits(h), dim=-1)
        return -(episodes["visit_distribution"] * log_policy).sum(-1)

    # ------------------------------------------------------------------ one update (spec 2.3)
    def _step(self, optimizer: torch.optim.Optimizer, phase: str, loss: Tensor) -> Tensor:
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
        if self.hparams.gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.gradient_clip_val)
        optimizer.step()
        return loss.detach()

    def update(self, episodes: TensorDict, weight: Tensor) -> dict[str, Tensor]:
        """The four phases of spec 2.3 in order, each a fresh forward and a step of its own optimizer.

        ``weight`` ``[B, L]`` selects the steps whose losses count (the valid steps, or one step ``t``).
        """
        opt_dynamics, opt_action, opt_value, opt_policy = self.optimizers()
        logs = {}
        loss = masked_mean(self.phase1_dynamics(episodes), weight)
        logs["train/phase1_dynamics_loss"] = self._step(opt_dynamics, "dynamics", loss)
        loss, imagined_value = self.phase2_action(episodes)
        logs["train/phase2_action_loss"] = self._step(opt_action, "action", masked_mean(loss, weight))
        logs["train/phase2_imagined_value"] = masked_mean(imagined_value.detach(), weight)
        loss = masked_mean(self.phase3_value(episodes), weight)
        logs["train/phase3_value_loss"] = self._step(opt_value, "value", loss)
        loss = masked_mean(self.phase4_policy(episodes), weight)
        logs["train/phase4_policy_loss"] = self._step(opt_policy, "policy", loss)
        return logs

    def training_step(self, dataloader_iter: Iterator) -> None:
        """Lightning's step: exactly one batch from the data iterator, then :meth:`train_batch`.

        Lightning's default fetcher would pull the next batch before this step runs (it prefetches one to detect
        the end of an unsized stream): that batch's collection would land in the checkpoint's replay and counters
        before it was trained on, and a resumed run would skip it. Pulling the batch here keeps every checkpoint at
        a batch boundary (exact resume, README).
        """
        batch, _batch_idx, _dataloader_idx = next(dataloader_iter)
        self.train_batch(batch.to(self.device))

    def train_batch(self, batch: TensorDict) -> None:
        """One training batch (README, "Data flow"): the four phases (spec 2.3) and the collection's logs."""
        episodes = batch["episodes"]
        mask = episodes["mask"]
        if self.hparams.schedule == "episode":
            logs = self.update(episodes, mask)
        else:  # spec 2.3 literally: for each episode, for each timestep t, four phases on sequence_t
            per_step: list[dict[str, Tensor]] = []
            for b in range(episodes.shape[0]):
                for t in range(int(mask[b].sum())):
                    prefix = episodes[b : b + 1, : t + 1]
                    only_t = torch.zeros(1, t + 1, dtype=torch.bool, device=mask.device)
                    only_t[0, t] = True
                    per_step.append(self.update(prefix, only_t))
            logs = {k: torch.stack([s[k] for s in per_step]).mean() for k in per_step[0]}
        self.log_dict(logs, batch_size=episodes.shape[0])
        self._log_collection(batch["stats"])

    def _log_collection(self, stats: TensorDict) -> None:
        """Episode returns (on the progress bar), environment steps, temperature and emotion usage: logged on the
        first batch after each collection (the later batches of one collection carry nothing new, and Lightning's
        ``log`` costs milliseconds a call)."""
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
