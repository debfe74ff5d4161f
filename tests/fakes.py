"""Test doubles shared by the policy and data tests: a recognisable environment, a parameter-only model, a fake
planner and agent, and synthetic collector batches."""

from __future__ import annotations

import gymnasium
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from tensordict import TensorDict
from torch import nn
from torchrl.collectors import Collector
from torchrl.data import Composite, OneHot, Unbounded
from torchrl.envs import EnvBase

from emotion_rl.data.envs import make_env
from emotion_rl.data.episodes import EpisodeAssembler
from emotion_rl.policy import EmotionPolicy, TemperatureSchedule


class CounterEnv(gymnasium.Env):
    """Observation ``[t, planned length]``, reward ``t + 1 + 100 * action``: every transition is recognisable.

    Each episode plans a length drawn from ``2 .. max_length - 1`` at reset; a registration time limit below that
    truncates the longer ones. ``image=True`` declares a 2-D observation space (for the refusal tests only).
    ``nan_at=k``: step ``k`` of every episode returns a NaN in its ``nan_in`` (``"observation"`` or ``"reward"``).
    """

    def __init__(
        self,
        n_actions: int = 2,
        max_length: int = 8,
        image: bool = False,
        render_mode=None,
        nan_at: int | None = None,
        nan_in: str = "observation",
    ) -> None:
        shape = (2, 2) if image else (2,)
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, shape, np.float32)
        self.action_space = gymnasium.spaces.Discrete(n_actions)
        self.max_length = max_length
        self.render_mode = render_mode
        self.nan_at, self.nan_in = nan_at, nan_in

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.length = 0, int(self.np_random.integers(2, self.max_length))
        return np.array([0, self.length], np.float32), {}

    def step(self, action):
        reward = float(self.t + 1 + 100 * int(action))
        self.t += 1
        observation = np.array([self.t, self.length], np.float32)
        if self.t == self.nan_at:
            if self.nan_in == "reward":
                reward = float("nan")
            else:
                observation[1] = np.nan
        return observation, reward, self.t >= self.length, False, {}


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
    on the others; emotion e's action logits favour action ``e % n_actions`` by ``+-logit``; the ``prior`` is
    uniform.
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
            policy_target=counts.float() / counts.sum(-1, keepdim=True),
            prior=torch.full((n, e), 1.0 / e),
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
            "observations": replay.episodes()["observation"].clone(),
            "global_step": trainer.global_step,
            "world_size": trainer.world_size,
        }
        torch.save(report, f"{self.folder}/rank{trainer.global_rank}.pt")


class FakeAgent:
    """A ``SelfPlayAgent``: its policies come from ``make_policy(greedy)``."""

    def __init__(self, make_policy) -> None:
        self._make_policy = make_policy

    def make_policy(self, greedy: bool = False):
        return self._make_policy(greedy)


# ---------------------------------------------------------------------------------------------- data test helpers
E, A = 8, 2
COUNTER_ID = "EmotionRLTest/Counter-v0"
UNBOUNDED_ID = "EmotionRLTest/Unbounded-v0"
IMAGE_ID = "EmotionRLTest/Image-v0"
register_counter(COUNTER_ID, 6, n_actions=A, max_length=8)  # 7-step episodes get truncated at 6
register_counter(UNBOUNDED_ID, None, n_actions=A)
register_counter(IMAGE_ID, 6, n_actions=A, image=True)
MODULE_ID = "fakes:EmotionRLTest/ModuleCounter-v0"  # gymnasium's module:EnvId form (this module registers it)
register_counter(MODULE_ID.partition(":")[2], 6, n_actions=A, max_length=8)
NAN_OBSERVATION_ID = "fakes:EmotionRLTest/NanObservation-v0"  # step 3 of every episode: observation [3, nan]
register_counter(NAN_OBSERVATION_ID.partition(":")[2], 6, n_actions=A, max_length=8, nan_at=3)
NAN_REWARD_ID = "fakes:EmotionRLTest/NanReward-v0"  # step 2 of every episode: reward nan
register_counter(NAN_REWARD_ID.partition(":")[2], 6, n_actions=A, max_length=8, nan_at=2, nan_in="reward")


class CountdownEnv(EnvBase):
    """A small TorchRL env (no gymnasium): observation ``[t, length, 1]``, reward ``1 + action``; each episode lasts
    a length drawn from ``2 .. max_length`` at reset (seeded), then terminates. Actions one-hot over ``n_actions``."""

    def __init__(self, n_actions: int = 2, max_length: int = 6, device: str = "cpu") -> None:
        super().__init__(device=device, batch_size=torch.Size([]))
        self.n_actions, self.max_length = n_actions, max_length
        self.observation_spec = Composite(observation=Unbounded(shape=(3,), dtype=torch.float32))
        self.action_spec = OneHot(n_actions)
        self.reward_spec = Unbounded(shape=(1,))
        self.rng = torch.Generator().manual_seed(0)
        self.t, self.length = 0, 2

    def _observation(self) -> torch.Tensor:
        return torch.tensor([self.t, self.length, 1.0])

    def _reset(self, tensordict):
        self.t, self.length = 0, int(torch.randint(2, self.max_length + 1, (), generator=self.rng))
        done = torch.zeros(1, dtype=torch.bool)
        return TensorDict({"observation": self._observation(), "done": done, "terminated": done.clone()}, [])

    def _step(self, tensordict):
        self.t += 1
        reward = 1.0 + float(tensordict.get("action").long().argmax(-1))
        done = torch.tensor([self.t >= self.length])
        return TensorDict(
            {"observation": self._observation(), "reward": torch.tensor([reward]), "done": done, "terminated": done},
            [],
        )

    def _set_seed(self, seed: int | None) -> None:
        self.rng.manual_seed(int(seed or 0))


class DoubleObservation(gymnasium.ObservationWrapper):
    """A gymnasium wrapper for the ``env_wrappers`` test: observations times two."""

    def observation(self, observation):
        return observation * 2


def make_countdown(n_actions: int = 2, max_length: int = 6) -> CountdownEnv:
    """The ``env_factory`` of the TorchRL-env tests: ``fakes:make_countdown``."""
    return CountdownEnv(n_actions, max_length)


def fake_policy(greedy: bool) -> EmotionPolicy:
    # 13 of 20 visits on emotion (history length) % E; emotion e's logits favour action e % A
    planner = FakePlanner(n_actions=A, n_emotions=E, peak=13, row_shift=0, logit=4.0)
    return EmotionPolicy(FakeModel(), planner, temperature=TemperatureSchedule(1.0, 0.5, 100), greedy=greedy)


def collect(env_id: str, num_envs: int, steps: int, seed: int = 0, **kwargs) -> list[TensorDict]:
    env = make_env(env_id, num_envs=num_envs, seed=seed, **kwargs)
    policy = fake_policy(False)
    policy.action_spec = env.action_spec
    collector = Collector(env, policy, frames_per_batch=num_envs * steps, total_frames=-1)
    try:
        iterator = iter(collector)
        return [next(iterator).clone() for _ in range(3)]
    finally:
        collector.shutdown()


def synthetic_batch(n_envs: int, steps: int, offset: int, init: list[list[int]], done: list[list[int]], one_hot=True):
    """A collector-like batch; observation[b, t] = [b, offset + t], reward = offset + t."""
    t = torch.arange(offset, offset + steps).float()
    obs = torch.stack([torch.stack([torch.full_like(t, b), t], -1) for b in range(n_envs)])
    action = (torch.arange(n_envs * steps).view(n_envs, steps) % A).long()
    is_init = torch.zeros(n_envs, steps, 1, dtype=torch.bool)
    is_done = torch.zeros(n_envs, steps, 1, dtype=torch.bool)
    for b, ts in enumerate(init):
        is_init[b, ts] = True
    for b, ts in enumerate(done):
        is_done[b, ts] = True
    visits = torch.softmax(torch.randn(n_envs, steps, E), -1)
    return TensorDict(
        {
            "observation": obs,
            "action": torch.nn.functional.one_hot(action, A) if one_hot else action,
            "emotion": (action + 3) % E,
            "policy_target": visits,
            "is_init": is_init,
            "next": {
                "observation": obs + torch.tensor([0.0, 1.0]),
                "reward": t.expand(n_envs, steps).unsqueeze(-1),
                "done": is_done,
            },
        },
        batch_size=[n_envs, steps],
    )


def make_episodes(lengths: list[int], max_len: int = 6) -> TensorDict:
    assembler = EpisodeAssembler(max_len=max_len)
    batch_steps = sum(lengths)
    init, done, t = [], [], 0
    for length in lengths:
        init.append(t)
        done.append(t + length - 1)
        t += length
    return assembler.ingest(synthetic_batch(1, batch_steps, 0, init=[init], done=[done]))
