"""What the speed benchmark's sections share: sizes, the CartPole-sized model and planner, synthetic inputs
(:mod:`emotion_rl.testing`, the same as the tests'), timing, tables, worker subprocesses and RSS readings."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tensordict import TensorDict

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from emotion_rl import testing  # noqa: E402
from emotion_rl.mcts.search import EmotionMCTS  # noqa: E402
from emotion_rl.model import EmotionModel  # noqa: E402

OBS_DIM, N_ACTIONS, N_EMOTIONS = 4, 2, 8  # CartPole-v1
CARTPOLE_MAX_STEPS = 500  # CartPole-v1's time limit: the agent's context is 500 + 1
CONFIG = ROOT / "configs" / "cartpole.yaml"
RESULTS = ROOT / "benchmarks" / "RESULTS_speed.md"
SCRIPT = ROOT / "benchmarks" / "speed.py"  # the entry point, also run as a worker subprocess
JSON_MARK = "SPEED_JSON "


@dataclass
class Sizes:
    planner_envs: tuple[int, ...]
    histories: tuple[int, ...]
    simulations: int
    literal_envs: int  # literal_search is timed on at most this many environments, then scaled per environment
    f64_rows: int  # rows checked against the literal reference on a float64 copy
    min_time: float  # seconds of repeated batched searches per configuration (at least min_reps)
    min_reps: int
    overhead_envs: tuple[int, ...]
    overhead_histories: tuple[int, ...]
    train_episodes: int
    train_length: int
    timestep_steps: int  # timesteps of the per-timestep schedule that are timed (the first k of one episode)
    episode_reps: int
    fit_envs: int
    fit_simulations: int
    fit_max_steps: int
    memory_envs: tuple[int, ...]
    memory_sims: tuple[int, ...]
    memory_histories: tuple[int, ...]
    rss_points: tuple[tuple[int, int, int], ...] = field(default_factory=tuple)  # (envs, sims, history)


FULL = Sizes(
    planner_envs=(1, 16, 64),
    histories=(16, 64, 128),
    simulations=50,
    literal_envs=16,
    f64_rows=4,
    min_time=1.5,
    min_reps=5,
    overhead_envs=(16, 64),
    overhead_histories=(64, 128),
    train_episodes=4,
    train_length=200,
    timestep_steps=200,
    episode_reps=5,
    fit_envs=16,
    fit_simulations=50,
    fit_max_steps=400,
    memory_envs=(16, 64),
    memory_sims=(25, 50, 100),
    memory_histories=(64, 128),
    rss_points=((16, 25, 128), (16, 50, 128), (64, 25, 128), (64, 50, 128)),
)
QUICK = Sizes(
    planner_envs=(1, 16),
    histories=(64,),
    simulations=50,
    literal_envs=2,
    f64_rows=2,
    min_time=0.2,
    min_reps=1,
    overhead_envs=(16, 64),
    overhead_histories=(64,),
    train_episodes=2,
    train_length=200,
    timestep_steps=10,
    episode_reps=1,
    fit_envs=16,
    fit_simulations=50,
    fit_max_steps=8,
    memory_envs=(4, 16),
    memory_sims=(10, 20),
    memory_histories=(16,),
)


def cartpole_model_config() -> dict:
    """The ``model:`` section of configs/cartpole.yaml, its base included (the agent's arguments, without the
    env-linked sizes)."""
    from omegaconf import OmegaConf

    from emotion_rl.cli import load_config

    return dict(OmegaConf.to_container(load_config(CONFIG).model, resolve=True))


def make_model(context_window: int = CARTPOLE_MAX_STEPS) -> EmotionModel:
    """``EmotionModel(obs_dim=4, n_actions=2)`` sized as in configs/cartpole.yaml (d_model 64, 2 layers, 4 heads)."""
    config = cartpole_model_config()
    sizes = {k: config[k] for k in ("n_emotions", "d_model", "n_layers", "n_heads", "head_hidden") if k in config}
    torch.manual_seed(0)
    return EmotionModel(OBS_DIM, N_ACTIONS, context_window=context_window, **sizes).eval()


def make_planner(num_simulations: int) -> EmotionMCTS:
    """``EmotionMCTS(num_simulations)`` with the config's ``c_puct`` and ``max_depth`` (1.0 and 3)."""
    planner = cartpole_model_config()["planner"]["init_args"]
    return EmotionMCTS(num_simulations, c_puct=planner.get("c_puct", 1.0), max_depth=planner.get("max_depth", 3))


def make_history(envs: int, length: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> TensorDict:
    """A random real history ``[envs, length]`` with CartPole's sizes (:func:`emotion_rl.testing.random_history`)."""
    return testing.random_history(envs, length, OBS_DIM, N_ACTIONS, seed=seed, n_emotions=N_EMOTIONS, dtype=dtype)


def make_episodes(batch: int, length: int, seed: int = 0) -> TensorDict:
    """Whole episodes ``[batch, length]`` with CartPole's sizes (:func:`emotion_rl.testing.random_episodes`)."""
    return testing.random_episodes([length] * batch, length, seed, torch.float32, OBS_DIM, N_ACTIONS, N_EMOTIONS)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def repeat_median(fn, min_time: float, min_reps: int) -> tuple[float, int, object]:
    """Median wall time of ``fn()`` over at least ``min_reps`` calls and ``min_time`` seconds (one warm-up first)."""
    fn()
    gc.collect()
    times, out = [], None
    while len(times) < min_reps or sum(times) < min_time:
        seconds, out = timed(fn)
        times.append(seconds)
    return statistics.median(times), len(times), out


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2 (the torch profiler's C++ start/stop lines)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


def fmt(x: float, digits: int = 3) -> str:
    if x != x:  # nan
        return "n/a"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}" if abs(x) < 100 else f"{x:.0f}"


class Table:
    def __init__(self, title: str, headers: list[str], notes: list[str] | None = None) -> None:
        self.title, self.headers, self.rows, self.notes = title, headers, [], list(notes or [])

    def add(self, *row) -> None:
        self.rows.append([str(c) for c in row])

    def text(self) -> str:
        widths = [
            max(len(h), *(len(r[i]) for r in self.rows)) if self.rows else len(h) for i, h in enumerate(self.headers)
        ]
        line = "  ".join(h.rjust(w) for h, w in zip(self.headers, widths, strict=True))
        out = [f"== {self.title}", line, "-" * len(line)]
        out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in self.rows]
        out += [f"   {n}" for n in self.notes]
        return "\n".join(out)

    def markdown(self) -> str:
        out = [f"### {self.title}", "", "| " + " | ".join(self.headers) + " |"]
        out.append("|" + "|".join(" --- " for _ in self.headers) + "|")
        out += ["| " + " | ".join(r) + " |" for r in self.rows]
        if self.notes:
            out.append("")
            out += [f"- {n}" for n in self.notes]
        return "\n".join(out)


def emit(table: Table, tables: list[Table]) -> None:
    print(table.text(), end="\n\n", flush=True)
    tables.append(table)


def run_worker(args: list[str], threads: int, timeout: float = 900) -> dict:
    """Run speed.py as a worker subprocess; returns its JSON line (stderr and stdout are kept on failure)."""
    cmd = [sys.executable, str(SCRIPT), "--threads", str(threads), *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(JSON_MARK):
            return json.loads(line[len(JSON_MARK) :])
    raise RuntimeError(f"worker {args} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def proc_status_mib(key: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, from /proc/self/status, in MiB.

    Not ``resource.getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries the spawning process's peak RSS over
    ``vfork``/``exec`` into it, so a subprocess started by a 2 GiB Python process reports at least 2 GiB.
    ``VmHWM`` belongs to the process's own address space (and can be reset, :func:`reset_peak_rss`).
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
