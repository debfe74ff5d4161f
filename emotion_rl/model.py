"""The emotion model: a causal transformer over the real history and its four heads (spec 2.1).

Token layout (SPEC_NOTES "Sequence layout"). The real sequence ``[s_0, a_0, e_0, r_0, s_1, ..., s_t]`` is read
as tokens ``(a_{i-1}, e_{i-1}, r_{i-1}, s_i)``: token ``i`` carries the state ``s_i`` and what led to it, never
the action taken at ``s_i``. ``-1`` in an action or emotion field means "none" (the first step's missing
predecessor and the dummy of an appended imagined state, spec 1.5) and maps to a reserved embedding.
One causal pass over an episode therefore gives, at every ``t``, the same ``h_t`` that inference computes at
step ``t``.

Imagined states (spec 1.5, SPEC_NOTES 5) are always "real history + ONE imagined token". The real history is
encoded once (:meth:`EmotionModel.encode`, which keeps every layer's keys and values) and any number of
imagined tokens then attend to that cache (:meth:`EmotionModel.evaluate_imagined`): one token of work per
expansion. The same "imagined stream" runs for all ``t`` at once in training (phase 2, spec 4.3), where
imagined token ``t`` sees real tokens ``0..t`` and itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import Tensor, nn

NONE = -1
"""Value of an action or emotion field that means "none" (SPEC_NOTES "Sequence layout")."""

OUTPUT_KEYS = ("policy", "values", "action_logits", "dynamics")


class PerEmotionMLP(nn.Module):
    """One small MLP per emotion, batched: ``[..., in]`` or ``[..., E, in]`` -> ``[..., E, out]``.

    The per-emotion heads of spec 2.1 (value, action, dynamics: one head per emotion) as stacked weights,
    so all eight run in one ``einsum``.
    """

    def __init__(self, n_emotions: int, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(n_emotions, in_dim, hidden))
        self.b1 = nn.Parameter(torch.zeros(n_emotions, hidden))
        self.w2 = nn.Parameter(torch.empty(n_emotions, hidden, out_dim))
        self.b2 = nn.Parameter(torch.zeros(n_emotions, out_dim))
        for w in (self.w1, self.w2):
            bound = 1.0 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """One input per emotion, ``[..., E, in]`` -> ``[..., E, out]``."""
        hidden = F.gelu(torch.einsum("...ei,eih->...eh", x, self.w1) + self.b1)
        return torch.einsum("...eh,eho->...eo", hidden, self.w2) + self.b2

    def forward_shared(self, x: Tensor) -> Tensor:
        """One input for all emotions, ``[..., in]`` -> ``[..., E, out]``."""
        hidden = F.gelu(torch.einsum("...i,eih->...eh", x, self.w1) + self.b1)
        return torch.einsum("...eh,eho->...eo", hidden, self.w2) + self.b2


class Block(nn.Module):
    """Pre-norm transformer block with causal self-attention; exposes its keys and values for the cache."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(n, t, 3, self.n_heads, d // self.n_heads).unbind(2)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [N, H, T, dh]

    def _merge(self, x: Tensor, attended: Tensor) -> Tensor:
        n, _, t, _ = attended.shape
        x = x + self.proj(attended.transpose(1, 2).reshape(n, t, -1))
        return x + self.mlp(self.ln2(x))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Real tokens ``[N, T, d]``, causal. Returns the new stream and this layer's keys and values."""
        q, k, v = self._split(x)
        return self._merge(x, F.scaled_dot_product_attention(q, k, v, is_causal=True)), k, v

    def forward_imagined(self, x: Tensor, keys: Tensor, values: Tensor, visible: Tensor) -> Tensor:
        """Imagined tokens ``[N, Q, d]``: each attends to the real keys it may see and to itself only.

        ``keys``/``values`` ``[N, H, T, dh]`` are the real tokens' (the cache), ``visible`` ``[N, Q, T]`` says
        which real tokens each imagined query sees. Imagined tokens never see each other (SPEC_NOTES 5: an
        imagined sequence is the real one plus ONE imagined state).
        """
        q, k_self, v_self = self._split(x)  # [N, H, Q, dh]
        scale = 1.0 / math.sqrt(q.shape[-1])
        real_scores = (q @ keys.transpose(-1, -2)) * scale  # [N, H, Q, T]
        real_scores = real_scores.masked_fill(~visible.unsqueeze(1), float("-inf"))
        self_scores = (q * k_self).sum(-1, keepdim=True) * scale  # [N, H, Q, 1]
        weights = torch.softmax(torch.cat([real_scores, self_scores], dim=-1), dim=-1)
        attended = weights[..., :-1] @ values + weights[..., -1:] * v_self
        return self._merge(x, attended)


@dataclass
class Encoding:
    """A real history encoded once (spec 1.3 step 2): hidden states and every layer's key/value cache.

    Batch dimensions are flattened to one (``N = prod(batch_shape)``).
    """

    hidden: Tensor  # [N, T, d], after the final norm
    keys: list[Tensor]  # per layer [N, H, T, dh]
    values: list[Tensor]
    length: Tensor  # [N] number of valid entries (right padding)
    batch_shape: torch.Size

    @property
    def last_hidden(self) -> Tensor:
        """``h_t`` at each row's last valid entry, ``[N, d]``."""
        index = (self.length - 1).view(-1, 1, 1).expand(-1, 1, self.hidden.shape[-1])
        return self.hidden.gather(1, index).squeeze(1)

    def detach(self) -> Encoding:
        """The same encoding cut from the graph (a frozen real prefix)."""
        return Encoding(
            self.hidden.detach(),
            [k.detach() for k in self.keys],
            [v.detach() for v in self.values],
            self.length,
            self.batch_shape,
        )


class EmotionModel(nn.Module):
    """Causal transformer with four outputs (spec 2.1): policy, value, action and dynamics per emotion.

    Args:
        obs_dim: observation size (the spec's 16 is an example; read it from the environment, SPEC_NOTES 12).
        n_actions: number of discrete actions (the spec's 4 is an example).
        n_emotions: size of the emotion set (spec 1.2: 8).
        d_model, n_layers, n_heads: transformer size.
        head_hidden: hidden width of each per-emotion head (defaults to ``d_model``).
        context_length: positions the model can read. A history of ``T`` real steps plus one imagined state
            needs ``T + 1 <= context_length``; longer histories are refused with a message giving both lengths.
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        n_emotions: int = 8,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        head_hidden: int | None = None,
        context_length: int = 512,
    ) -> None:
        super().__init__()
        for name, value in dict(
            obs_dim=obs_dim,
            n_actions=n_actions,
            n_emotions=n_emotions,
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            context_length=context_length,
        ).items():
            if value < 1:
                raise ValueError(f"EmotionModel: {name} must be >= 1, got {value}")
        self.obs_dim, self.n_actions, self.n_emotions = obs_dim, n_actions, n_emotions
        self.context_length = context_length
        head_hidden = head_hidden or d_model
        # --- the shared transformer (every optimizer updates it, spec 3.2) ---
        self.obs_embed = nn.Linear(obs_dim, d_model)
        self.action_embed = nn.Embedding(n_actions + 1, d_model)  # index 0 = "none"
        self.emotion_embed = nn.Embedding(n_emotions + 1, d_model)  # index 0 = "none"
        self.reward_embed = nn.Linear(1, d_model)
        self.position_embed = nn.Embedding(context_length, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.final_norm = nn.LayerNorm(d_model)
        # --- the four heads (spec 2.1) ---
        self.policy_head = nn.Linear(d_model, n_emotions)
        self.value_heads = PerEmotionMLP(n_emotions, d_model, head_hidden, 1)
        self.action_heads = PerEmotionMLP(n_emotions, d_model, head_hidden, n_actions)
        self.dynamics_heads = PerEmotionMLP(n_emotions, d_model + n_actions, head_hidden, obs_dim)

    # ------------------------------------------------------------------ parameter groups (spec 3.2)
    def transformer_parameters(self) -> list[nn.Parameter]:
        """The shared history encoder: embeddings, blocks and final norm."""
        modules = [self.obs_embed, self.action_embed, self.emotion_embed, self.reward_embed]
        modules += [self.position_embed, self.blocks, self.final_norm]
        return [p for m in modules for p in m.parameters()]

    def head_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Each phase's head group (spec 3.2): dynamics, action, value, policy."""
        return {
            "dynamics": list(self.dynamics_heads.parameters()),
            "action": list(self.action_heads.parameters()),
            "value": list(self.value_heads.parameters()),
            "policy": list(self.policy_head.parameters()),
        }

    # ------------------------------------------------------------------ tokens
    def _embed(self, observation: Tensor, prev_action: Tensor, prev_emotion: Tensor, prev_reward: Tensor) -> Tensor:
        """Token ``(a_{i-1}, e_{i-1}, r_{i-1}, s_i)`` embedding, without position."""
        return (
            self.obs_embed(observation)
            + self.action_embed(prev_action + 1)
            + self.emotion_embed(prev_emotion + 1)
            + self.reward_embed(prev_reward.unsqueeze(-1))
        )

    def _check_history(self, history: TensorDict) -> None:
        t = history.batch_size[-1] if history.batch_dims else 0
        if history.batch_dims < 1 or t < 1:
            raise ValueError(f"history needs batch size [*B, T] with T >= 1, got {tuple(history.batch_size)}")
        if t + 1 > self.context_length:
            raise ValueError(
                f"history of {t} steps does not fit the model's context_length={self.context_length} "
                f"(it needs {t} + 1 positions: the real steps and one imagined state). Raise context_length "
                f"to at least {t + 1} or keep a shorter history."
            )
        obs = history.get("observation")
        if obs.shape[-1] != self.obs_dim:
            raise ValueError(f"observation has size {obs.shape[-1]}, the model was built for obs_dim={self.obs_dim}")

    # ------------------------------------------------------------------ encoding
    def encode(self, history: TensorDict) -> Encoding:
        """Encode the real history once (spec 1.3 step 2) and keep every layer's keys and values.

        Row ``n``'s result is read at its last valid entry (``mask`` key, valid prefix; all entries without it).
        """
        self._check_history(history)
        batch_shape, t = history.batch_size[:-1], history.batch_size[-1]
        flat = history.reshape(-1, t)
        obs = flat.get("observation")
        action = flat.get("action").long()
        emotion = flat.get("emotion").long()
        reward = flat.get("reward").to(obs.dtype)
        none = torch.full_like(action[:, :1], NONE)
        prev_action = torch.cat([none, action[:, :-1]], dim=1)
        prev_emotion = torch.cat([none, emotion[:, :-1]], dim=1)
        prev_reward = torch.cat([torch.zeros_like(reward[:, :1]), reward[:, :-1]], dim=1)
        positions = torch.arange(t, device=obs.device)
        x = self._embed(obs, prev_action, prev_emotion, prev_reward) + self.position_embed(positions)
        keys, values = [], []
        for block in self.blocks:
            x, k, v = block(x)
            keys.append(k)
            values.append(v)
        if "mask" in flat.keys():
            length = flat.get("mask").long().sum(-1)
        else:
            length = torch.full((flat.shape[0],), t, dtype=torch.long, device=obs.device)
        return Encoding(self.final_norm(x), keys, values, length, batch_shape)

    def encode_imagined(
        self,
        encoding: Encoding,
        imagined_observation: Tensor,
        positions: Tensor,
        visible: Tensor,
        rows: Tensor | None = None,
    ) -> Tensor:
        """Hidden states of imagined tokens attending to a real prefix (spec 1.5, SPEC_NOTES 5).

        Args:
            encoding: the real history, encoded once.
            imagined_observation: ``[N, Q, obs_dim]`` imagined states (``N`` = rows used).
            positions: ``[N, Q]`` position of each imagined token (one past the real prefix it extends).
            visible: ``[N, Q, T]`` real tokens each imagined token sees.
            rows: ``[N]`` rows of ``encoding`` to extend (default: all rows, in order).

        The imagined token is ``(none, none, 0.0, s_imagined)``: the dummy a, e, r of spec 1.5.
        """
        n, q = imagined_observation.shape[:2]
        none = torch.full((n, q), NONE, dtype=torch.long, device=imagined_observation.device)
        x = self._embed(imagined_observation, none, none, torch.zeros_like(none, dtype=imagined_observation.dtype))
        x = x + self.position_embed(positions)
        for block, k, v in zip(self.blocks, encoding.keys, encoding.values, strict=True):
            if rows is not None:
                k, v = k[rows], v[rows]
            x = block.forward_imagined(x, k, v, visible)
        return self.final_norm(x)

    # ------------------------------------------------------------------ heads (spec 2.1)
    def policy_logits(self, hidden: Tensor) -> Tensor:
        """Policy head: emotion logits ``[..., E]``."""
        return self.policy_head(hidden)

    def emotion_values(self, hidden: Tensor) -> Tensor:
        """Value heads: ``V^e(s)`` for every emotion, ``[..., E]``."""
        return self.value_heads.forward_shared(hidden).squeeze(-1)

    def action_logits(self, hidden: Tensor) -> Tensor:
        """Action heads: ``A^e(s)`` for every emotion, ``[..., E, n_actions]``."""
        return self.action_heads.forward_shared(hidden)

    def dynamics(self, hidden: Tensor, action: Tensor) -> Tensor:
        """Dynamics heads ``Z^e(h, a) = f_e(concat(h, a))`` (spec 2.5), ``[..., E, obs_dim]``.

        ``action`` is one action vector per emotion, ``[..., E, n_actions]``: a probability vector over the
        actions (the action head's softmax, or a one-hot of the taken action). Gradients flow to ``action``.
        """
        hidden = hidden.unsqueeze(-2).expand(*action.shape[:-1], hidden.shape[-1])
        return self.dynamics_heads(torch.cat([hidden, action], dim=-1))

    def heads(self, hidden: Tensor) -> TensorDict:
        """The four outputs of spec 2.1 from ``h``: one forward, every emotion."""
        action_logits = self.action_logits(hidden)
        return TensorDict(
            policy=torch.softmax(self.policy_logits(hidden), dim=-1),
            values=self.emotion_values(hidden),
            action_logits=action_logits,
            dynamics=self.dynamics(hidden, torch.softmax(action_logits, dim=-1)),
            batch_size=hidden.shape[:-1],
        )

    # ------------------------------------------------------------------ public entry points
    def evaluate_imagined(self, encoding: Encoding, imagined_observation: Tensor, rows: Tensor) -> TensorDict:
        """Outputs at "real history of row ``rows[n]`` + one imagined state" for each ``n`` (spec 1.4 expansion).

        ``imagined_observation`` is ``[N, obs_dim]``; the result has batch size ``[N]``.
        """
        length = encoding.length[rows]
        t = encoding.hidden.shape[1]
        visible = torch.arange(t, device=length.device) < length.unsqueeze(-1)
        hidden = self.encode_imagined(
            encoding, imagined_observation.unsqueeze(1), length.unsqueeze(1), visible.unsqueeze(1), rows=rows
        )
        return self.heads(hidden.squeeze(1))

    def evaluate(self, history: TensorDict, imagined_observation: Tensor | None = None) -> TensorDict:
        """The four outputs at the last step of ``history`` (spec 2.1), or at an appended imagined state (1.5).

        Args:
            history: TensorDict ``[*B, T]`` with ``observation``, ``action``, ``emotion``, ``reward`` (entry i:
                s_i, a_i, e_i, r_i; -1 = none) and optionally ``mask`` (valid prefix). The last valid entry's
                action, emotion and reward are not read.
            imagined_observation: ``[*B, obs_dim]``; when given, the outputs are those of
                ``history + [dummy a, dummy e, dummy r, imagined state]``.

        Returns:
            TensorDict ``[*B]``: ``policy`` (probabilities ``[*B, E]``), ``values`` ``[*B, E]``,
            ``action_logits`` ``[*B, E, n_actions]``, ``dynamics`` ``[*B, E, obs_dim]``.
        """
        encoding = self.encode(history)
        if imagined_observation is None:
            out = self.heads(encoding.last_hidden)
        else:
            rows = torch.arange(encoding.hidden.shape[0], device=encoding.hidden.device)
            out = self.evaluate_imagined(encoding, imagined_observation.reshape(-1, self.obs_dim), rows)
        return out.reshape(encoding.batch_shape)
