"""Video of the agent: greedy episodes in a plain gymnasium loop through ``EmotionAgent.predict``, recorded to MP4
by gymnasium's ``RecordVideo`` (which writes with moviepy: ``pip install -e ".[video]"``)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import gymnasium
from gymnasium.wrappers import RecordVideo

from emotion_rl.data.envs import MissingDependencyError

__all__ = ["record_video"]


def record_video(
    agent,  # noqa: ANN001 - anything with EmotionAgent.predict's signature
    path: str | os.PathLike = "episodes.mp4",
    env_id: str = "CartPole-v1",
    seed: int = 0,
    episodes: int = 1,
    max_steps: int | None = None,
    fps: int | None = None,
    deterministic: bool = True,
) -> list[float]:
    """Play ``episodes`` episodes of ``env_id`` with ``agent.predict`` and write them, one after the other, as one
    MP4 at ``path``; returns each episode's return.

    The env is ``gymnasium.make(env_id, render_mode="rgb_array")`` (with ``max_episode_steps=max_steps`` when given),
    reset with ``seed`` before the first episode; the recording holds the frame of every reset and every step.
    ``fps``: the env's ``render_fps`` by default (gymnasium's). ``deterministic``: the greedy evaluation policy.
    Raises :class:`~emotion_rl.data.envs.MissingDependencyError` naming the extra to install when moviepy is missing,
    before anything is played.
    """
    if importlib.util.find_spec("moviepy") is None:
        raise MissingDependencyError(
            'writing MP4 needs moviepy (gymnasium\'s RecordVideo writes with it): pip install -e ".[video]"'
        )
    if episodes < 1:
        raise ValueError(f"record_video: episodes must be >= 1, got {episodes}")
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # rgb_array frames need no display (pygame, headless)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"max_episode_steps": max_steps} if max_steps else {}
    env = gymnasium.make(env_id, render_mode="rgb_array", **kwargs)
    limit = env.spec.max_episode_steps if env.spec is not None and env.spec.max_episode_steps else 10**6
    returns: list[float] = []
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".video-") as temporary:
        folder = Path(temporary) / "recording"  # a new folder: RecordVideo warns about an existing one
        recorder = RecordVideo(
            env,
            str(folder),
            episode_trigger=lambda episode: episode == 0,  # start with the first episode ...
            video_length=episodes * (limit + 1),  # ... and go on through the next ones (finite: across resets)
            name_prefix="episodes",
            fps=fps,
            disable_logger=True,
        )
        try:
            for episode in range(episodes):
                observation, _ = recorder.reset(seed=seed if episode == 0 else None)
                state, reward, done, total = None, None, False, 0.0
                while not done:
                    action, state = agent.predict(observation, state, deterministic=deterministic, reward=reward)
                    observation, reward, terminated, truncated, _ = recorder.step(action)
                    total, done = total + float(reward), bool(terminated or truncated)
                returns.append(total)
        finally:
            recorder.close()  # writes the video
        written = sorted(folder.glob("*.mp4"))
        if not written:
            raise RuntimeError(f"gymnasium's RecordVideo wrote no video for {env_id}")
        shutil.move(str(written[0]), path)
    return returns
