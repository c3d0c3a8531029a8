"""The whole Keye-VL-2.0 model: vision tower + projector + LM, glued by placeholder tokens.

Visual tokens replace the `<|image_pad|>` / `<|video_pad|>` positions of the prompt one-to-one, in
order (spec §4.4). Attribute names (`visual`, `mlp_AR`, `model`, `lm_head`) are the checkpoint's
top-level prefixes, so the state dict already uses the official tensor names.

Legend: N = tokens, P = patches, M = visual tokens (P / 4), D = LM hidden, V = vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from model_runtime.config import KeyeConfig
from model_runtime.model import KeyeTextModel, Segment
from model_runtime.vision import Projector, VisionModel


class KeyeVL(nn.Module):
    def __init__(self, config: KeyeConfig, *, attn_impl: str = "reference", moe_impl: str = "reference"):
        super().__init__()
        self.config = config
        self.visual = VisionModel(config.vision)
        self.mlp_AR = Projector(config.vision, config.text.hidden_size, config.projector_ln_eps)
        self.model = KeyeTextModel(config.text, attn_impl=attn_impl, moe_impl=moe_impl)
        self.lm_head = nn.Linear(config.text.hidden_size, config.text.vocab_size, bias=False)
        if config.text.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def encode_vision(self, pixel_values: Tensor, grids: Sequence[tuple[int, int, int]]) -> Tensor:
        """pixel_values [P, 3, 14, 14] (normalised), one (1, h, w) grid per image/frame → [M, D]."""
        dtype = self.mlp_AR.linear_1.weight.dtype
        return self.mlp_AR(self.visual(pixel_values.to(dtype), grids), grids)

    def embed(
        self, input_ids: Tensor, visual_embeds: Tensor | None = None, visual_rows: Tensor | None = None
    ) -> Tensor:
        """input_ids [N] → [N, D]; placeholder positions take the visual tokens in order.

        `visual_rows` (the placeholders' positions, ascending) is for callers that know them on the host
        (training): counting placeholders on the device makes the host wait for the GPU every step."""
        embeds = self.model.embed_tokens(input_ids)  # [N, D]
        if visual_rows is not None:
            n_visual = 0 if visual_embeds is None else visual_embeds.shape[0]
            if visual_rows.shape[0] != n_visual:
                raise ValueError(
                    f"{visual_rows.shape[0]} visual rows but {n_visual} visual tokens were given"
                )
            if not n_visual:
                return embeds
            return embeds.index_copy(0, visual_rows, visual_embeds.to(embeds.dtype))
        is_visual = (input_ids == self.config.image_token_id) | (input_ids == self.config.video_token_id)
        n_slots = int(is_visual.sum())
        n_visual = 0 if visual_embeds is None else visual_embeds.shape[0]
        if n_slots != n_visual:
            raise ValueError(
                f"prompt has {n_slots} visual placeholders but {n_visual} visual tokens were given"
            )
        if n_slots:
            embeds = embeds.masked_scatter(is_visual[:, None], visual_embeds.to(embeds.dtype))
        return embeds

    def logits(self, hidden: Tensor) -> Tensor:
        """hidden [N, D] → fp32 logits [N, V]."""
        return self.lm_head(hidden).float()

    def forward(
        self,
        input_ids: Tensor,
        positions: Tensor,
        segments: Sequence[Segment] | None = None,
        pixel_values: Tensor | None = None,
        grids: Sequence[tuple[int, int, int]] | None = None,
    ) -> Tensor:
        """One call from ids to fp32 logits [N, V] (tests, training); the engine uses the parts."""
        visual = self.encode_vision(pixel_values, grids) if pixel_values is not None else None
        hidden = self.model(self.embed(input_ids, visual), positions, segments)
        return self.logits(hidden)


@torch.no_grad()
def init_weights(model: KeyeVL, seed: int = 0, std: float = 0.02) -> KeyeVL:
    """Random weights of sensible scale, reproducible from `seed` (norms 1, biases 0)."""
    generators: dict[torch.device, torch.Generator] = {}
    for name, param in model.named_parameters():
        if name.endswith("bias"):
            param.zero_()
        elif param.ndim == 1:  # RMSNorm / LayerNorm weights
            param.fill_(1.0)
        else:
            # Drawn where the parameter lives, so a full-size model on a GPU initialises in seconds.
            if param.device not in generators:
                generators[param.device] = torch.Generator(device=param.device).manual_seed(seed)
            param.normal_(0.0, std, generator=generators[param.device])
    return model
