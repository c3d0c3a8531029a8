"""Keye's SigLIP vision tower and the `mlp_AR` projector that turns patches into LM tokens (spec §3).

Each image or video frame is encoded on its own (attention never crosses frames): 14×14 patches are
embedded, a learned 27×27 position table is bilinearly resized to the frame's patch grid and added, and
every layer also applies 2-D RoPE (row, col) to q and k. The projector concatenates 2×2 neighbouring
patches and maps them to the LM width, so one LM token stands for a 28×28 pixel block.

Legend: P = patches (all frames), F = frames in a group, L = patches per frame, C = vision width,
h/w = patch grid of a frame, Dh = vision head dim.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model_runtime.config import VisionConfig


class VisionModel(nn.Module):
    """`visual`: holds `vision_model` so parameter names match the checkpoint's `visual.vision_model.*`."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.vision_model = SiglipVisionTransformer(config)

    def forward(self, pixel_values: Tensor, grids: Sequence[tuple[int, int, int]]) -> Tensor:
        return self.vision_model(pixel_values, grids)


class SiglipVisionTransformer(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.embeddings = VisionEmbeddings(config)
        self.encoder = VisionEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: Tensor, grids: Sequence[tuple[int, int, int]]) -> Tensor:
        """pixel_values [P, 3, 14, 14], grids = (1, h, w) per image/frame in order → features [P, C].

        Consecutive frames of the same grid are stacked and run as one batch.
        """
        n_patches = sum(t * h * w for t, h, w in grids)
        if n_patches != pixel_values.shape[0]:
            raise ValueError(f"grids cover {n_patches} patches, got {pixel_values.shape[0]}")
        outputs, offset = [], 0
        for (h, w), n_frames in _runs_of_equal_grids(grids):
            n = n_frames * h * w
            x = self.embeddings(pixel_values[offset : offset + n], h, w)
            x = x.view(n_frames, h * w, -1)  # [F, L, C]
            x = self.encoder(x, rope_cos_sin(h, w, self.config, x.device))
            outputs.append(self.post_layernorm(x).reshape(n, -1))
            offset += n
        return torch.cat(outputs)  # [P, C]


class VisionEmbeddings(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        c, p = config.hidden_size, config.patch_size
        self.grid = config.position_grid
        self.patch_embedding = nn.Conv2d(config.num_channels, c, kernel_size=p, stride=p)
        self.position_embedding = nn.Embedding(self.grid * self.grid, c)
        # Present in the checkpoint, unused on the interpolation path the model takes (spec §3.1).
        self.packing_position_embedding = nn.Embedding(config.packing_position_embedding_size, c)

    def forward(self, patches: Tensor, h: int, w: int) -> Tensor:
        """patches [F·h·w, 3, p, p] → [F·h·w, C] with the position table resized to h × w added."""
        weight = self.patch_embedding.weight
        x = F.linear(patches.to(weight.dtype).flatten(1), weight.flatten(1), self.patch_embedding.bias)
        table = self.position_embedding.weight.view(self.grid, self.grid, -1).permute(2, 0, 1)  # [C, g, g]
        pos = F.interpolate(table[None].float(), size=(h, w), mode="bilinear", align_corners=False)
        pos = pos[0].flatten(1).T.to(x.dtype)  # [h·w, C] raster order
        return (x.view(-1, h * w, x.shape[-1]) + pos).flatten(0, 1)


class VisionEncoder(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(VisionLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        for layer in self.layers:
            x = layer(x, rope)
        return x


class VisionLayer(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        c, eps = config.hidden_size, config.layer_norm_eps
        self.layer_norm1 = nn.LayerNorm(c, eps=eps)
        self.self_attn = VisionAttention(config)
        self.layer_norm2 = nn.LayerNorm(c, eps=eps)
        self.mlp = VisionMLP(config)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x), rope)
        return x + self.mlp(self.layer_norm2(x))


class VisionAttention(nn.Module):
    """Full bidirectional attention within each frame, with 2-D RoPE on q and k."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        c = config.hidden_size
        self.n_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.q_proj, self.k_proj = nn.Linear(c, c), nn.Linear(c, c)
        self.v_proj, self.out_proj = nn.Linear(c, c), nn.Linear(c, c)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        n_frames, length, c = x.shape
        cos, sin = rope  # [L, Dh]

        def heads(t: Tensor) -> Tensor:
            return t.view(n_frames, length, self.n_heads, self.head_dim).transpose(1, 2)  # [F, heads, L, Dh]

        q = _rotate(heads(self.q_proj(x)), cos, sin)
        k = _rotate(heads(self.k_proj(x)), cos, sin)
        out = F.scaled_dot_product_attention(q, k, heads(self.v_proj(x)), scale=self.head_dim**-0.5)
        return self.out_proj(out.transpose(1, 2).reshape(n_frames, length, c))


class VisionMLP(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        if config.hidden_act not in ("gelu_pytorch_tanh", "gelu"):
            raise ValueError(f"unsupported vision hidden_act {config.hidden_act!r}")
        self.approximate = "tanh" if config.hidden_act == "gelu_pytorch_tanh" else "none"

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))


class Projector(nn.Module):
    """`mlp_AR`: 2×2 patch merge → LayerNorm → Linear → GELU (erf) → Linear to the LM width (§3.2)."""

    def __init__(self, vision: VisionConfig, text_hidden: int, ln_eps: float = 1e-5):
        super().__init__()
        self.merge = vision.spatial_merge_size
        merged = vision.hidden_size * self.merge**2
        self.pre_norm = nn.LayerNorm(merged, eps=ln_eps)
        self.linear_1 = nn.Linear(merged, merged)
        self.linear_2 = nn.Linear(merged, text_hidden)

    def forward(self, features: Tensor, grids: Sequence[tuple[int, int, int]]) -> Tensor:
        """features [P, C] in per-frame raster order → LM tokens [P / 4, D], raster over each merged grid."""
        m, out, offset = self.merge, [], 0
        for (h, w), t in _runs_of_equal_grids(grids):  # one reshape per run of same-size frames
            n = t * h * w
            x = features[offset : offset + n].view(t, h // m, m, w // m, m, -1)  # [t, h/2, di, w/2, dj, C]
            x = x.permute(0, 1, 3, 2, 4, 5)  # [t, h/2, w/2, di, dj, C]: dj fastest
            out.append(x.reshape(t * (h // m) * (w // m), -1))
            offset += n
        x = self.pre_norm(out[0] if len(out) == 1 else torch.cat(out))
        return self.linear_2(F.gelu(self.linear_1(x)))


# ---- helpers ----------------------------------------------------------------------------------------


def rope_cos_sin(
    h: int, w: int, config: VisionConfig, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """2-D RoPE for an h × w patch grid: angles [row·f, col·f] over Dh/4 frequencies each → [L, Dh]."""
    quarter = config.head_dim // 4
    half = 2 * quarter
    inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, half, 2, dtype=torch.float32) / half)  # [Dh/4]
    rows = torch.arange(h).repeat_interleave(w).float()  # [L] raster order: idx // w
    cols = torch.arange(w).repeat(h).float()  # idx % w
    angles = torch.cat([rows[:, None] * inv_freq, cols[:, None] * inv_freq], dim=-1)  # [L, Dh/2]
    emb = torch.cat([angles, angles], dim=-1)  # [L, Dh]
    return emb.cos().to(device, non_blocking=True), emb.sin().to(device, non_blocking=True)  # no sync


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [..., L, Dh] rotated with rotate-half pairing (lane j with j + Dh/2)."""
    xf = x.float()
    half = xf.shape[-1] // 2
    rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


def _runs_of_equal_grids(grids: Sequence[tuple[int, int, int]]) -> list[tuple[tuple[int, int], int]]:
    """[(1, h, w), …] → [((h, w), frames in the run), …] grouping consecutive frames of one size."""
    runs: list[tuple[tuple[int, int], int]] = []
    for t, h, w in grids:
        if runs and runs[-1][0] == (h, w):
            runs[-1] = ((h, w), runs[-1][1] + t)
        else:
            runs.append(((h, w), t))
    return runs
