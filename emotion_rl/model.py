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
expansion. The planner uses a lean form of the same computation (:meth:`EmotionModel.expansion_cache` once per
search, then :meth:`EmotionModel.evaluate_expansion` per simulation): the cache laid out for batched matrix
products, the four heads fused into a few matrix products, no TensorDict (tested equal to
:meth:`EmotionModel.evaluate_imagined`). The same "imagined stream" runs for all ``t`` at once in training
(phase 2, spec 4.3), where imagined token ``t`` sees real tokens ``0..t`` and itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

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

    def forward_selected(self, x: Tensor, emotion: Tensor) -> Tensor:
        """Only emotion ``emotion[...]``'s head on each input: ``[..., in]``, ``[...]`` -> ``[..., out]``.

        Equal to picking that emotion from :meth:`forward_shared`, at an eighth of the work: the inputs are grouped
        by emotion and each group goes through its own head (the training phases need one emotion per step, spec
        2.2). ``emotion`` values below 0 (padding) use emotion 0.
        """
        flat_x = x.reshape(-1, x.shape[-1])
        flat_e = emotion.reshape(-1).clamp(min=0)
        order = flat_e.argsort(stable=True)
        counts = torch.bincount(flat_e, minlength=self.w1.shape[0]).tolist()
        groups = flat_x[order].split(counts)
        outputs = [
            F.gelu(group @ self.w1[e] + self.b1[e]) @ self.w2[e] + self.b2[e]
            for e, group in enumerate(groups)
            if counts[e]
        ]
        out = flat_x.new_empty(flat_x.shape[0], self.w2.shape[-1])
        out = out.index_copy(0, order, torch.cat(outputs)) if outputs else out
        return out.view(*emotion.shape, -1)


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
        n, _, q_len, _ = q.shape
        # One attention over [real keys, imagined keys]: query i sees the real keys it may see and imagined key i.
        itself = torch.eye(q_len, dtype=torch.bool, device=x.device).expand(n, q_len, q_len)
        mask = torch.cat([visible, itself], dim=-1).unsqueeze(1)  # [N, 1, Q, T + Q]
        keys = torch.cat([keys, k_self], dim=2)
        values = torch.cat([values, v_self], dim=2)
        return self._merge(x, F.scaled_dot_product_attention(q, keys, values, attn_mask=mask))


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


class Expansion(NamedTuple):
    """The model outputs an expansion needs (spec 1.4), for ``n`` imagined states: plain tensors, no TensorDict."""

    policy: Tensor  # [n, E] probabilities
    values: Tensor  # [n, E]
    action_logits: Tensor  # [n, E, n_actions]
    dynamics: Tensor  # [n, E, obs_dim]


class LayerWeights(NamedTuple):
    """One block's weights for :meth:`EmotionModel.evaluate_expansion`; ``qkv`` rows ordered (head, q/k/v, dh)."""

    ln1: tuple[Tensor, Tensor, float]
    qkv_weight: Tensor  # [3d, d]
    qkv_bias: Tensor  # [3d]
    proj_weight: Tensor
    proj_bias: Tensor
    ln2: tuple[Tensor, Tensor, float]
    fc1_weight: Tensor
    fc1_bias: Tensor
    fc2_weight: Tensor
    fc2_bias: Tensor


@dataclass
class ExpansionCache:
    """Everything an expansion (spec 1.4, 1.5) needs that does not depend on the imagined state, built once per search.

    An imagined sequence is the real history plus ONE imagined token (SPEC_NOTES 5), so per row only the real
    keys and values, which real tokens are visible, and the imagined token's embedding without its observation
    are needed. ``kv`` has one spare slot ``T`` per row for the imagined token's own key and value, so that one
    batched matrix product attends to ``[real ; own]``. The weights are the model's values rearranged (copies,
    made per search, so the cache follows training): ``qkv`` with rows ordered head by head, the first layer of
    the policy, value, action and dynamics heads concatenated into one matrix, and every per-emotion layer after
    it as one block-diagonal matrix, so that each is one plain row-major matrix product (the zero blocks add
    exact zeros). Inference only: a call writes into the spare slot.
    """

    kv: Tensor  # [L, 2, N, H, T + 1, dh] real keys/values; slot T is scratch for the imagined token's own
    length: Tensor  # [N] valid real steps per row
    token_bias: Tensor  # [N, d] embedding of (none, none, 0.0, .) + position + obs_embed bias
    obs_weight: Tensor  # [obs_dim, d] obs_embed.weight transposed
    layers: list[LayerWeights]  # per block: plain tensors (no nn.Module attribute look-ups per call)
    final_norm: tuple[Tensor, Tensor, float]
    head_weight: Tensor  # [d, E + E * 3 * hidden]: policy | per emotion (value, action) hidden | dynamics h-part
    head_bias: Tensor  # [E + E * 3 * hidden]
    va_weight: Tensor  # [E * 2 * hidden, E * (1 + n_actions)] block-diagonal second layers of value and action
    va_bias: Tensor  # [E * (1 + n_actions)]
    dyn_action_weight: Tensor  # [E * n_actions, E * hidden] block-diagonal action part of the dynamics' first layer
    dyn_weight: Tensor  # [E * hidden, E * obs_dim] block-diagonal second layers of the dynamics heads
    dyn_bias: Tensor  # [E * obs_dim]
    attention: list[tuple[Tensor, Tensor, Tensor]]  # per layer, every row: spare slots [2, N, H, dh], keys^T, values
    mask: Tensor  # [N * H, 1, T + 1] additive: 0 where visible (valid real prefix and slot T), -inf elsewhere


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
        x, length, batch_shape = self._tokens(history)
        keys, values = [], []
        for block in self.blocks:
            x, k, v = block(x)
            keys.append(k)
            values.append(v)
        return Encoding(self.final_norm(x), keys, values, length, batch_shape)

    def _tokens(self, history: TensorDict) -> tuple[Tensor, Tensor, torch.Size]:
        """Embedded real tokens with positions ``[N, T, d]``, valid lengths ``[N]`` and the batch shape."""
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
        if "mask" in flat.keys():
            length = flat.get("mask").long().sum(-1)
        else:
            length = torch.full((flat.shape[0],), t, dtype=torch.long, device=obs.device)
        return x, length, batch_shape

    def search_prefix(self, history: TensorDict) -> tuple[Tensor, ExpansionCache, torch.Size]:
        """Encode the real history for a search (spec 1.3 step 2): ``h_t`` ``[N, d]``, the expansion cache, and
        the batch shape.

        The same computation as :meth:`encode` followed by :meth:`expansion_cache` (equal up to float rounding,
        tested), minus what a search never reads: the last block's attention output and MLP are computed at each
        row's last valid step only (every step's keys and values are still needed), and the keys and values are
        written straight into the cache.
        """
        x, length, batch_shape = self._tokens(history)
        n, t, d = x.shape
        n_heads = self.blocks[0].n_heads
        kv = x.new_empty(len(self.blocks), 2, n, n_heads, t + 1, d // n_heads)
        rows, last = torch.arange(n, device=x.device), length - 1
        for layer, block in enumerate(self.blocks):
            q, k, v = block._split(x)
            kv[layer, 0, :, :, :t] = k
            kv[layer, 1, :, :, :t] = v
            if layer + 1 < len(self.blocks):
                x = block._merge(x, F.scaled_dot_product_attention(q, k, v, is_causal=True))
            else:  # only h_t is read: the last valid step's query
                visible = (torch.arange(t, device=x.device) < length.unsqueeze(-1)).view(n, 1, 1, t)
                attended = F.scaled_dot_product_attention(q[rows, :, last].unsqueeze(2), k, v, attn_mask=visible)
                x = block._merge(x[rows, last].unsqueeze(1), attended)
        return self.final_norm(x[:, 0]), self._expansion_cache(kv, length), batch_shape

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
        return self._imagined_stream(encoding.keys, encoding.values, imagined_observation, positions, visible, rows)

    def _imagined_stream(
        self,
        keys: list[Tensor],
        values: list[Tensor],
        imagined_observation: Tensor,
        positions: Tensor,
        visible: Tensor,
        rows: Tensor | None = None,
    ) -> Tensor:
        """:meth:`encode_imagined` on per-layer real keys and values ``[N, H, T, dh]``."""
        n, q = imagined_observation.shape[:2]
        none = torch.full((n, q), NONE, dtype=torch.long, device=imagined_observation.device)
        x = self._embed(imagined_observation, none, none, torch.zeros_like(none, dtype=imagined_observation.dtype))
        x = x + self.position_embed(positions)
        for block, k, v in zip(self.blocks, keys, values, strict=True):
            if rows is not None:
                k, v = k[rows], v[rows]
            x = block.forward_imagined(x, k, v, visible)
        return self.final_norm(x)

    def evaluate_children(self, cache: ExpansionCache, observation: Tensor) -> Expansion:
        """Outputs at "real history of row ``n`` + imagined state ``observation[n, q]``" for ``Q`` states per row
        (spec 1.4 expansion, 1.5), each imagined state on its own (SPEC_NOTES 5): ``[N, Q, ...]`` outputs.

        The planner evaluates the root's 8 children with it in one call (:func:`emotion_rl.search.prefetch_root`):
        the general imagined stream of :meth:`encode_imagined` (several queries per row, no key/value copy).
        """
        n, q = observation.shape[:2]
        t = cache.kv.shape[4] - 1
        keys = [kv[0, :, :, :t] for kv in cache.kv]
        values = [kv[1, :, :, :t] for kv in cache.kv]
        positions = cache.length.unsqueeze(1).expand(n, q)
        visible = (torch.arange(t, device=observation.device) < cache.length.unsqueeze(-1)).unsqueeze(1).expand(n, q, t)
        hidden = self._imagined_stream(keys, values, observation, positions, visible)
        action_logits = self.action_logits(hidden)
        return Expansion(
            torch.softmax(self.policy_logits(hidden), dim=-1),
            self.emotion_values(hidden),
            action_logits,
            self.dynamics(hidden, torch.softmax(action_logits, dim=-1)),
        )

    # ------------------------------------------------------------------ heads (spec 2.1)
    def policy_logits(self, hidden: Tensor) -> Tensor:
        """Policy head: emotion logits ``[..., E]``."""
        return self.policy_head(hidden)

    def emotion_values(self, hidden: Tensor, emotion: Tensor | None = None) -> Tensor:
        """Value heads: ``V^e(s)`` for every emotion, ``[..., E]``; with ``emotion`` ``[...]``, that one, ``[...]``."""
        if emotion is not None:
            return self.value_heads.forward_selected(hidden, emotion).squeeze(-1)
        return self.value_heads.forward_shared(hidden).squeeze(-1)

    def action_logits(self, hidden: Tensor, emotion: Tensor | None = None) -> Tensor:
        """Action heads: ``A^e(s)`` for every emotion, ``[..., E, n_actions]``; with ``emotion``, that one's."""
        if emotion is not None:
            return self.action_heads.forward_selected(hidden, emotion)
        return self.action_heads.forward_shared(hidden)

    def dynamics(self, hidden: Tensor, action: Tensor, emotion: Tensor | None = None) -> Tensor:
        """Dynamics heads ``Z^e(h, a) = f_e(concat(h, a))`` (spec 2.5), ``[..., E, obs_dim]``.

        ``action`` is one action vector per emotion, ``[..., E, n_actions]``: a probability vector over the
        actions (the action head's softmax, or a one-hot of the taken action). Gradients flow to ``action``.
        With ``emotion`` ``[...]``: that emotion's head only, on ``action`` ``[..., n_actions]``, ``[..., obs_dim]``.
        """
        if emotion is not None:
            return self.dynamics_heads.forward_selected(torch.cat([hidden, action], dim=-1), emotion)
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

    def expansion_cache(self, encoding: Encoding) -> ExpansionCache:
        """Prepare :meth:`evaluate_expansion` for one search over ``encoding`` (spec 1.3 step 2, SPEC_NOTES 5).

        Costs a few copies of the key/value cache and of the head weights, once per search.
        """
        n, t, d = encoding.hidden.shape
        n_heads = self.blocks[0].n_heads
        kv = encoding.hidden.new_empty(len(self.blocks), 2, n, n_heads, t + 1, d // n_heads)
        for layer, (k, v) in enumerate(zip(encoding.keys, encoding.values, strict=True)):
            kv[layer, 0, :, :, :t] = k
            kv[layer, 1, :, :, :t] = v
        return self._expansion_cache(kv, encoding.length)

    def _expansion_cache(self, kv: Tensor, length: Tensor) -> ExpansionCache:
        """The cache around a key/value array ``[L, 2, N, H, T + 1, dh]`` whose first ``T`` slots are filled."""
        n_layers, _, n, n_heads, t1, dh = kv.shape
        t, d = t1 - 1, n_heads * dh
        kv[:, :, :, :, t] = 0.0
        visible = torch.arange(t + 1, device=kv.device) < length.unsqueeze(-1)
        visible[:, t] = True  # the imagined token sees itself
        mask = torch.zeros(n, 1, 1, t + 1, dtype=kv.dtype, device=kv.device)
        mask.masked_fill_(~visible.view(n, 1, 1, t + 1), float("-inf"))
        mask = mask.expand(n, n_heads, 1, t + 1).reshape(n * n_heads, 1, t + 1)
        slots = kv.select(4, t)
        flat_kv = kv.view(n_layers, 2, n * n_heads, t1, dh)
        attention = [(slots[i], flat_kv[i, 0].transpose(1, 2), flat_kv[i, 1]) for i in range(n_layers)]
        none = self.action_embed.weight[0] + self.emotion_embed.weight[0] + self.reward_embed.bias
        token_bias = self.position_embed(length) + (none + self.obs_embed.bias)
        layers = []
        for block in self.blocks:
            fc1, _, fc2 = block.mlp
            layers.append(
                LayerWeights(
                    ln1=(block.ln1.weight, block.ln1.bias, block.ln1.eps),
                    qkv_weight=block.qkv.weight.view(3, n_heads, dh, d).transpose(0, 1).reshape(3 * d, d),
                    qkv_bias=block.qkv.bias.view(3, n_heads, dh).transpose(0, 1).reshape(3 * d),
                    proj_weight=block.proj.weight,
                    proj_bias=block.proj.bias,
                    ln2=(block.ln2.weight, block.ln2.bias, block.ln2.eps),
                    fc1_weight=fc1.weight,
                    fc1_bias=fc1.bias,
                    fc2_weight=fc2.weight,
                    fc2_bias=fc2.bias,
                )
            )
        e = self.n_emotions
        value, action, dyn = self.value_heads, self.action_heads, self.dynamics_heads
        hidden = value.w1.shape[-1]
        va_first = torch.stack([value.w1, action.w1], dim=1)  # [E, 2, d, hidden]
        head_weight = torch.cat(
            [
                self.policy_head.weight.t(),
                va_first.permute(2, 0, 1, 3).reshape(d, e * 2 * hidden),
                dyn.w1[:, :d].permute(1, 0, 2).reshape(d, e * hidden),
            ],
            dim=1,
        )
        head_bias = torch.cat(
            [self.policy_head.bias, torch.stack([value.b1, action.b1], dim=1).reshape(-1), dyn.b1.reshape(-1)]
        )
        va_weight = value.w2.new_zeros(e, 2 * hidden, e, 1 + self.n_actions)
        dyn_action_weight = dyn.w1.new_zeros(e, self.n_actions, e, hidden)
        dyn_weight = dyn.w2.new_zeros(e, hidden, e, self.obs_dim)
        diagonal = torch.arange(e, device=kv.device)  # block (i, i) of each block-diagonal matrix
        va_weight[diagonal, :hidden, diagonal, :1] = value.w2
        va_weight[diagonal, hidden:, diagonal, 1:] = action.w2
        dyn_action_weight[diagonal, :, diagonal] = dyn.w1[:, d:]
        dyn_weight[diagonal, :, diagonal] = dyn.w2
        va_bias = torch.cat([value.b2, action.b2], dim=-1).reshape(-1)
        return ExpansionCache(
            kv=kv,
            length=length,
            token_bias=token_bias,
            obs_weight=self.obs_embed.weight.t(),
            layers=layers,
            final_norm=(self.final_norm.weight, self.final_norm.bias, self.final_norm.eps),
            head_weight=head_weight.contiguous(),
            head_bias=head_bias,
            va_weight=va_weight.view(e * 2 * hidden, -1),
            va_bias=va_bias,
            dyn_action_weight=dyn_action_weight.view(e * self.n_actions, -1),
            dyn_weight=dyn_weight.view(e * hidden, -1),
            dyn_bias=dyn.b2.reshape(-1),
            attention=attention,
            mask=mask,
        )

    def evaluate_expansion(self, cache: ExpansionCache, observation: Tensor) -> Expansion:
        """spec 1.4 expansion, 1.5: outputs at "real history of row ``n`` + imagined state ``observation[n]``" for
        every row of the cache (lean form; the planner passes every row, with no gather of the key/value cache).

        The same computation as :meth:`evaluate_imagined` (equal up to float rounding, tested) in about 40
        tensor operations for the whole batch: per layer one product for q, k, v, the token's own k, v written
        into the cache's spare slot, one product over ``[real ; own]`` keys with an additive mask, one over the
        values; then the four heads in four products (policy and every first layer at once; value and action
        second layers at once; the dynamics heads' action part; their second layer), each over every emotion.

        Args:
            cache: :meth:`expansion_cache` of the search's encoding.
            observation: ``[N, obs_dim]`` imagined states, one per row of the cache.
        """
        attention, mask, x = cache.attention, cache.mask, cache.token_bias
        n_heads, dh = cache.kv.shape[3], cache.kv.shape[5]
        n, d = x.shape
        scale = 1.0 / math.sqrt(dh)
        x = torch.addmm(x, observation, cache.obs_weight)
        for w, (slot, keys_t, values) in zip(cache.layers, attention, strict=True):
            ln_weight, ln_bias, eps = w.ln1
            qkv = F.linear(torch.layer_norm(x, (d,), ln_weight, ln_bias, eps), w.qkv_weight, w.qkv_bias)
            slot.copy_(qkv.view(n, n_heads, 3, dh).narrow(2, 1, 2).permute(2, 0, 1, 3))
            scores = torch.baddbmm(mask, qkv.view(n * n_heads, 3, dh).narrow(1, 0, 1), keys_t, alpha=scale)
            attended = torch.bmm(torch.softmax(scores, dim=-1), values).view(n, d)
            x = x + F.linear(attended, w.proj_weight, w.proj_bias)
            ln_weight, ln_bias, eps = w.ln2
            y = F.gelu(F.linear(torch.layer_norm(x, (d,), ln_weight, ln_bias, eps), w.fc1_weight, w.fc1_bias))
            x = x + F.linear(y, w.fc2_weight, w.fc2_bias)
        ln_weight, ln_bias, eps = cache.final_norm
        h = torch.layer_norm(x, (d,), ln_weight, ln_bias, eps)
        e = self.n_emotions
        width = cache.va_weight.shape[0]
        first = torch.addmm(cache.head_bias, h, cache.head_weight)  # [n, E + E * 3 * hidden]
        va = torch.addmm(cache.va_bias, F.gelu(first.narrow(1, e, width)), cache.va_weight).view(n, e, -1)
        values, action_logits = va.select(2, 0), va.narrow(2, 1, self.n_actions)
        action_probs = torch.softmax(action_logits, dim=-1).view(n, -1)  # [n, E * n_actions]
        dyn_first = first.narrow(1, e + width, first.shape[1] - e - width)
        dyn_hidden = F.gelu(torch.addmm(dyn_first, action_probs, cache.dyn_action_weight))
        dynamics = torch.addmm(cache.dyn_bias, dyn_hidden, cache.dyn_weight).view(n, e, -1)
        return Expansion(torch.softmax(first.narrow(1, 0, e), dim=-1), values, action_logits, dynamics)

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
