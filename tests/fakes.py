"""Test doubles shared by the policy and data tests: a recognisable environment and a parameter-only model."""

from __future__ import annotations

import gymnasium
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from tensordict import TensorDict
from torch import nn


class CounterEnv(gymnasium.Env):
    """Observation ``[t, planned length]``, reward ``t + 1 + 100 * action``: every transition is recognisable.

    Each episode plans a length drawn from ``2 .. max_length - 1`` at reset; a registration time limit below that
    truncates the longer ones. ``image=True`` declares a 2-D observation space (for the refusal tests only).
    """

    def __init__(self, n_actions: int = 2, max_length: int = 8, image: bool = False, render_mode=None) -> None:
        shape = (2, 2) if image else (2,)
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, shape, np.float32)
        self.action_space = gymnasium.spaces.Discrete(n_actions)
        self.max_length = max_length
        self.render_mode = render_mode

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.length = 0, int(self.np_random.integers(2, self.max_length))
        return np.array([0, self.length], np.float32), {}

    def step(self, action):
        reward = float(self.t + 1 + 100 * int(action))
        self.t += 1
        return np.array([self.t, self.length], np.float32), reward, self.t >= self.length, False, {}


def register_counter(env_id: str, time_limit: int | None, **kwargs) -> str:
    """Register a :class:`CounterEnv` variant once per process and return its id."""
    if env_id not in gymnasium.registry:
        gymnasium.register(env_id, entry_point=CounterEnv, max_episode_steps=time_limit, kwargs=kwargs)
    return env_id


class FakeModel(nn.Module):
    """Stands in for the model where a fake planner never calls it: a context window and one parameter."""

    def __init__(self, context_window: int = 15) -> None:
        super().__init__()
        self.context_window = context_window
        self.weight = nn.Parameter(torch.zeros(1))


class FakePlanner:
    """A planner with recognisable outputs that records the histories it is given.

    Row ``b`` of a history of length ``t`` gets ``peak`` visits on emotion ``(t + row_shift * b) % n_emotions`` and 1
    on the others; emotion e's action logits favour action ``e % n_actions`` by ``+-logit``.
    """

    def __init__(self, n_actions: int, n_emotions: int = 8, peak: int = 10, row_shift: int = 1, logit: float = 5.0):
        self.n_actions, self.n_emotions = n_actions, n_emotions
        self.peak, self.row_shift, self.logit = peak, row_shift, logit
        self.histories: list[TensorDict] = []

    def search(self, model, history, generator=None, **options) -> TensorDict:
        self.histories.append(history.clone().to_tensordict())  # a History or a TensorDict, kept as a TensorDict
        n, e, a = history.batch_size[0], self.n_emotions, self.n_actions
        favourite = (history.get("mask").sum(-1) + self.row_shift * torch.arange(n)) % e
        counts = torch.ones(n, e, dtype=torch.long)
        counts[torch.arange(n), favourite] = self.peak
        logits = torch.full((n, e, a), -self.logit)
        logits[:, torch.arange(e), torch.arange(e) % a] = self.logit
        return TensorDict(
            visit_counts=counts,
            visit_distribution=counts.float() / counts.sum(-1, keepdim=True),
            action_logits=logits,
            batch_size=[n],
        )


class RankReport(Callback):
    """Writes, at the end of ``fit``, each rank's parameters and the replay it collected to ``<folder>/rank<r>.pt``."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_end(self, trainer, pl_module) -> None:
        replay = trainer.datamodule.replay
        report = {
            "parameters": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()},
            "observations": replay.buffer[: len(replay)]["observation"].clone(),
            "global_step": trainer.global_step,
            "world_size": trainer.world_size,
        }
        torch.save(report, f"{self.folder}/rank{trainer.global_rank}.pt")
