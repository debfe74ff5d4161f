"""MP4 of greedy episodes: gymnasium's RecordVideo around a plain loop of ``EmotionAgent.predict`` (needs moviepy,
the ``video`` extra; the tests that write a video skip without it)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from emotion_rl import EmotionAgent, viz
from emotion_rl.data.envs import MissingDependencyError
from emotion_rl.viz.video import record_video

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "cartpole.ckpt"


@pytest.fixture(scope="module")
def agent() -> EmotionAgent:
    return EmotionAgent.load(SHIPPED)


def test_episodes_are_written_as_one_mp4_with_a_frame_per_reset_and_step(agent, tmp_path):
    moviepy = pytest.importorskip("moviepy")
    path = tmp_path / "video" / "cartpole.mp4"
    returns = record_video(agent, path, "CartPole-v1", seed=0, episodes=2, max_steps=12, fps=25)
    assert returns == [12.0, 12.0]  # the shipped model balances: each episode reaches the 12-step limit
    assert path.read_bytes()[4:8] == b"ftyp"  # an MP4 (ISO media) file
    clip = moviepy.VideoFileClip(str(path))
    try:
        assert clip.n_frames == 2 * (12 + 1) and clip.fps == 25 and tuple(clip.size) == (600, 400)
    finally:
        clip.close()
    assert sorted(p.name for p in path.parent.iterdir()) == ["cartpole.mp4"]  # no recorder folder left behind


def test_the_render_command_writes_an_mp4_for_an_mp4_path(tmp_path, capsys):
    pytest.importorskip("moviepy")
    out = tmp_path / "episodes.mp4"
    assert viz.main(["render", "--ckpt_path", str(SHIPPED), "--out", str(out), "--max_steps", "8"]) == 0
    assert out.is_file() and "1 greedy episode(s) of CartPole-v1, returns 8" in capsys.readouterr().out


def test_without_moviepy_the_extra_is_named_before_anything_is_played(agent, tmp_path, monkeypatch):
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "moviepy" else found(name, *a))
    with pytest.raises(MissingDependencyError, match=r'needs moviepy .*pip install -e "\.\[video\]"'):
        record_video(agent, tmp_path / "x.mp4")
    assert list(tmp_path.iterdir()) == []
