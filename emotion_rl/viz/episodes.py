"""Episodes played by an agent: recording them, GIFs, and what the model's heads said at every step (spec 2.1).

Episodes are played through :func:`emotion_rl.data.rollout.play` (TorchRL's rollout over :func:`make_env`'s env); a
rendered episode keeps gymnasium's ``rgb_array`` frame of the state each step acted in.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium
import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.envs import EnvBase

try:
    from PIL import Image, ImageDraw
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(f"emotion_rl.viz needs pillow ({error}); install it with: pip install -e '.[viz]'") from error

from emotion_rl.data.envs import make_env
from emotion_rl.data.episodes import discounted_returns
from emotion_rl.data.rollout import play
from emotion_rl.history import NONE, last_index, windowed_history
from emotion_rl.model import evaluating
from emotion_rl.viz.style import CARTPOLE_OBSERVATION, Figure, emotion_color

__all__ = [
    "EpisodeRecord",
    "episode_outputs",
    "play_episode",
    "plot_emotion_actions",
    "plot_emotion_map",
    "plot_emotion_values",
    "render_episode",
]


@dataclass
class EpisodeRecord:
    """One played episode: ``observation`` ``[T, obs]`` (the state each step acted in), ``action``, ``emotion``
    ``[T]``, ``reward`` ``[T]``, the search's ``policy_target`` ``[T, E]``, and the rendered ``frames``
    (``rgb_array`` images, one per step, showing the state the step acted in) when rendering was asked for."""

    observation: torch.Tensor
    action: torch.Tensor
    emotion: torch.Tensor
    reward: torch.Tensor
    policy_target: torch.Tensor
    terminated: bool
    frames: list[np.ndarray] = field(default_factory=list)

    @property
    def length(self) -> int:
        return int(self.action.shape[0])

    @property
    def episode_return(self) -> float:
        return float(self.reward.double().sum())

    def history(self, t: int | None = None, window: int | None = None) -> TensorDict:
        """The real history the agent saw at step ``t`` (default: the last step), ``[1, T]`` in the public
        layout (emotion_rl.history): entries ``0..t``, with ``a_t = e_t = NONE`` and ``r_t = 0`` not yet known.
        ``window``: an agent with a context window (``context_window``) saw only the last ``window`` entries."""
        t = self.length - 1 if t is None else int(t)
        if not 0 <= t < self.length:
            raise IndexError(f"step {t} is outside the episode (0..{self.length - 1})")
        start = 0 if window is None else max(0, t - int(window) + 1)
        action, emotion, reward = (
            self.action[start : t + 1].clone(),
            self.emotion[start : t + 1].clone(),
            self.reward[start : t + 1].clone(),
        )
        action[-1], emotion[-1], reward[-1] = NONE, NONE, 0.0
        return TensorDict(
            observation=self.observation[start : t + 1].unsqueeze(0).clone(),
            action=action.unsqueeze(0),
            emotion=emotion.unsqueeze(0),
            reward=reward.unsqueeze(0),
            batch_size=[1, t + 1 - start],
        )


def _as_policy(agent, greedy: bool, seed: int):  # noqa: ANN001 - an EmotionAgent or a TorchRL policy
    if hasattr(agent, "make_policy"):
        return agent.make_policy(greedy=greedy, generator=torch.Generator().manual_seed(seed))
    return agent


class _Rendering(TensorDictModuleBase):
    """``policy`` that first keeps the frame of the state it is asked to act in (``env``'s first gymnasium env)."""

    def __init__(self, policy: TensorDictModuleBase, env: EnvBase, frames: list[np.ndarray]) -> None:
        super().__init__()
        self.policy, self.env, self.frames = policy, env, frames
        self.in_keys, self.out_keys = list(policy.in_keys), list(policy.out_keys)

    @property
    def action_spec(self):  # noqa: ANN201 - forwarded to the policy, which encodes actions as the env's spec says
        return self.policy.action_spec

    @action_spec.setter
    def action_spec(self, value) -> None:  # noqa: ANN001
        self.policy.action_spec = value

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        gym_env = self.env.base_env._envs[0]._env  # TransformedEnv(SerialEnv([GymEnv])): the gymnasium env
        gym_env.unwrapped.render_mode = "rgb_array"  # make_env builds it without a render mode
        self.frames.append(_render(gym_env))
        return self.policy(tensordict)


def play_episode(
    agent,  # noqa: ANN001 - EmotionAgent (anything with make_policy) or an EmotionPolicy-like module
    env_id: str = "CartPole-v1",
    seed: int = 0,
    max_steps: int | None = None,
    greedy: bool = True,
    render: bool = False,
) -> EpisodeRecord:
    """Play one episode of ``env_id`` (seeded by ``seed``) with the agent's planner (spec 5: search, emotion,
    action at every step), through :func:`emotion_rl.data.rollout.play`.

    ``greedy``: argmax emotion and action (the evaluation policy); otherwise the agent's temperature and action
    sampling, seeded by ``seed``. The episode ends at termination, at the env's time limit, or after
    ``max_steps`` (default: the env's limit; a policy plans on its last ``context_window`` steps, decision 15).
    ``render`` keeps one ``rgb_array`` frame per step (the state the step acted in).
    """
    policy = _as_policy(agent, greedy, seed)
    if max_steps is None:
        max_steps = gymnasium.spec(env_id).max_episode_steps
    env = make_env(env_id, 1, seed=seed, categorical_action_encoding=True)
    frames: list[np.ndarray] = []
    try:
        if hasattr(policy, "reset_histories"):
            policy.reset_histories()
        steps = play(env, _Rendering(policy, env, frames) if render else policy, max_steps)[0]
    finally:
        env.close()
    return EpisodeRecord(
        observation=steps["observation"],
        action=steps["action"].reshape(-1).long(),
        emotion=steps["emotion"].reshape(-1).long(),
        reward=steps["next", "reward"].reshape(-1),
        policy_target=steps["policy_target"].float(),
        terminated=bool(steps["next", "terminated"][-1]),
        frames=frames,
    )


def _render(env: gymnasium.Env) -> np.ndarray:
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # rgb_array frames need no display (pygame, headless)
    try:
        frame = env.render()
    except gymnasium.error.DependencyNotInstalled as error:
        raise RuntimeError(f"rendering {env.spec.id} needs pygame: pip install -e '.[viz]' ({error})") from error
    if frame is None:
        raise RuntimeError(f"{env.spec.id} returned no rgb_array frame")
    return np.asarray(frame)


def render_episode(
    agent,  # noqa: ANN001 - EmotionAgent or an EmotionPolicy-like module
    path: str | os.PathLike = "episode.gif",
    env_id: str = "CartPole-v1",
    seed: int = 0,
    max_steps: int | None = None,
    greedy: bool = True,
    fps: int = 30,
    scale: float = 0.5,
) -> EpisodeRecord:
    """Play one episode (:func:`play_episode`) and write it as an animated GIF, one frame per step.

    Each frame is gymnasium's ``rgb_array`` image of the state the step acted in (CartPole draws with pygame),
    scaled by ``scale``, with a band in the chosen emotion's colour and the text ``t, emotion, action, return``.
    Returns the episode (``len(frames) == length``).
    """
    record = play_episode(agent, env_id, seed=seed, max_steps=max_steps, greedy=greedy, render=True)
    images = []
    running = 0.0
    for t, frame in enumerate(record.frames):
        image = Image.fromarray(frame)
        if scale != 1:
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
        draw = ImageDraw.Draw(image)
        emotion, action = int(record.emotion[t]), int(record.action[t])
        color = tuple(round(255 * c) for c in emotion_color(emotion)[:3])
        band = max(4, image.height // 25)
        draw.rectangle([0, 0, image.width, band], fill=color)
        draw.text((4, band + 2), f"t={t}  emotion {emotion}  action {action}  return {running:.0f}", fill=(0, 0, 0))
        running += float(record.reward[t])
        images.append(image.convert("P", palette=Image.Palette.ADAPTIVE))
    if not images:
        raise RuntimeError("the episode has no frames")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # every frame differs (its text), so Pillow keeps them all: frame count == episode length
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0)
    return record


# ---------------------------------------------------------------------------------------------------- emotions
@torch.no_grad()
def episode_outputs(model: torch.nn.Module, record: EpisodeRecord) -> TensorDict:
    """The model's four outputs (spec 2.1) at every step of a played episode, ``[T]``: ``policy`` ``[T, E]``,
    ``values`` ``[T, E]``, ``action_logits`` ``[T, E, A]``, ``dynamics`` ``[T, E, obs]``; one causal pass gives
    ``h_t`` for every step (decision 11), the same ``h_t`` the search saw. An episode longer than the model's
    context (an agent with ``context_window``) is read as the policy read it: ``h_t`` from the window of the last
    ``context_window`` real steps ending at ``t``, all windows in one batch."""
    with evaluating(model) as (_, dtype):
        length, window = record.length, model.context_window
        steps = torch.arange(length)
        # short: one row, the whole episode (entry t's action, emotion and reward only feed token t + 1); long: row t
        # holds the window ending at t
        ends = steps[-1:] if length <= window else steps
        episode = TensorDict(
            observation=record.observation.to(dtype),
            action=record.action,
            emotion=record.emotion,
            reward=record.reward.to(dtype),
            batch_size=[length],
        )
        history = windowed_history(episode.expand(ends.numel(), length), ends, min(window, length))
        hidden = model.encode(history).hidden
        hidden = hidden[0] if length <= window else hidden[steps, last_index(history["mask"])]
        return model.heads(hidden)


def _stack(records: Iterable[EpisodeRecord], key: str) -> torch.Tensor:
    return torch.cat([getattr(r, key) for r in records])


def plot_emotion_map(
    records: Sequence[EpisodeRecord],
    dims: tuple[int, int] = (2, 3),
    labels: Sequence[str] = CARTPOLE_OBSERVATION,
) -> Figure:
    """Which emotion the agent chose where: every step's state (observation entries ``dims``) coloured by the
    emotion chosen there, next to how often each emotion was chosen."""
    obs = _stack(records, "observation").double().numpy()
    emotion = _stack(records, "emotion").numpy()
    n_emotions = records[0].policy_target.shape[-1]
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax, ax_count = fig.subplots(1, 2, width_ratios=[2, 1])
    for e in range(n_emotions):
        chosen = emotion == e
        if chosen.any():
            ax.scatter(obs[chosen, dims[0]], obs[chosen, dims[1]], s=8, color=emotion_color(e), label=f"e{e}")
    name = [labels[d] if d < len(labels) else f"observation[{d}]" for d in dims]
    ax.set(
        xlabel=name[0],
        ylabel=name[1],
        title=f"Emotion chosen per state ({len(emotion)} steps, {len(records)} episodes)",
    )
    ax.legend(fontsize=7, markerscale=2, ncol=2)
    counts = np.bincount(emotion, minlength=n_emotions)
    ax_count.bar(range(n_emotions), counts / max(counts.sum(), 1), color=[emotion_color(e) for e in range(n_emotions)])
    ax_count.set(xlabel="emotion", ylabel="fraction of steps", title="Emotion usage in these episodes")
    ax_count.set_xticks(range(n_emotions), [f"e{e}" for e in range(n_emotions)])
    return fig


def plot_emotion_actions(
    model: torch.nn.Module,
    records: Sequence[EpisodeRecord],
    dim: int = 2,
    labels: Sequence[str] = CARTPOLE_OBSERVATION,
    action_names: Sequence[str] | None = ("push left", "push right"),
    title: str | None = None,
) -> Figure:
    """Each emotion's action head ``softmax(A^e(h))`` (spec 2.1) over the states of ``records``: the mean action
    distribution per emotion, and the probability of the last action against observation entry ``dim``."""
    outputs = [episode_outputs(model, r) for r in records]
    probs = torch.cat([o["action_logits"].softmax(-1) for o in outputs]).double().numpy()  # [S, E, A]
    obs = _stack(records, "observation").double().numpy()
    n_states, n_emotions, n_actions = probs.shape
    names = (
        list(action_names) if action_names and len(action_names) == n_actions else [f"a{a}" for a in range(n_actions)]
    )
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    ax_bar, ax_state = fig.subplots(1, 2)
    mean = probs.mean(0)
    bottom = np.zeros(n_emotions)
    for a in range(n_actions):
        ax_bar.bar(
            range(n_emotions),
            mean[:, a],
            bottom=bottom,
            color=f"C{a}",
            alpha=0.4 + 0.6 * a / max(n_actions - 1, 1),
            label=names[a],
        )
        bottom += mean[:, a]
    ax_bar.set_xticks(range(n_emotions), [f"e{e}" for e in range(n_emotions)])
    ax_bar.set(
        xlabel="emotion", ylabel="mean action probability", title=f"Action distribution per emotion ({n_states} states)"
    )
    ax_bar.set_ylim(0, 1)
    ax_bar.legend(fontsize=7)
    order = np.argsort(obs[:, dim])
    for e in range(n_emotions):
        ax_state.plot(obs[order, dim], probs[order, e, -1], ".", ms=3, color=emotion_color(e), label=f"e{e}")
    xlabel = labels[dim] if dim < len(labels) else f"observation[{dim}]"
    ax_state.set(xlabel=xlabel, ylabel=f"P({names[-1]} | emotion)", title=f"P({names[-1]}) per emotion vs state")
    ax_state.set_ylim(-0.02, 1.02)
    ax_state.legend(fontsize=7, ncol=4, markerscale=3)
    if title:
        fig.suptitle(title)
    return fig


def plot_emotion_values(
    model: torch.nn.Module, records: Sequence[EpisodeRecord], return_scale: float = 1.0, gamma: float = 0.99
) -> Figure:
    """The value heads ``V^e(h)`` (spec 2.1) over the states of ``records``, per emotion, in return units (values
    divided by ``return_scale``), next to the actual discounted return of the steps where the emotion was chosen."""
    outputs = [episode_outputs(model, r) for r in records]
    values = torch.cat([o["values"] for o in outputs]).double().numpy() / return_scale  # [S, E]
    emotion = _stack(records, "emotion").numpy()
    returns = np.concatenate([discounted_returns(r.reward, gamma).double().numpy() for r in records])
    n_emotions = values.shape[1]
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax = fig.subplots()
    parts = ax.boxplot(
        [values[:, e] for e in range(n_emotions)],
        positions=range(n_emotions),
        widths=0.5,
        showfliers=False,
        patch_artist=True,
    )
    for e, box in enumerate(parts["boxes"]):
        box.set_facecolor(emotion_color(e))
        box.set_alpha(0.6)
    chosen_mean = [returns[emotion == e].mean() if (emotion == e).any() else np.nan for e in range(n_emotions)]
    ax.plot(
        range(n_emotions), chosen_mean, "k*", ms=9, label=f"actual discounted return where chosen (gamma {gamma:g})"
    )
    ax.set_xticks(range(n_emotions), [f"e{e}" for e in range(n_emotions)])
    ax.set(
        xlabel="emotion",
        ylabel="value / return_scale (return units)",
        title=f"Value per emotion V^e over {len(values)} visited states",
    )
    ax.legend(fontsize=7)
    return fig
