"""Vision tower and projector: per-frame independence, position table, the 2×2 merge order."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model_runtime.config import KeyeConfig
from model_runtime.vision import Projector, rope_cos_sin
from model_runtime.vlm import KeyeVL, init_weights


def test_frames_are_encoded_independently() -> None:
    model = init_weights(KeyeVL(KeyeConfig.tiny()), seed=1).eval()
    torch.manual_seed(0)
    a, b, c = torch.randn(16, 3, 14, 14), torch.randn(16, 3, 14, 14), torch.randn(24, 3, 14, 14)
    with torch.no_grad():
        together = model.encode_vision(torch.cat([a, b, c]), [(1, 4, 4), (1, 4, 4), (1, 4, 6)])
        alone = [model.encode_vision(x, [g]) for x, g in ((a, (1, 4, 4)), (b, (1, 4, 4)), (c, (1, 4, 6)))]
    assert together.shape == (4 + 4 + 6, model.config.text.hidden_size)
    torch.testing.assert_close(together, torch.cat(alone), atol=1e-5, rtol=1e-5)


def test_position_table_at_its_native_grid_is_used_as_is() -> None:
    model = init_weights(KeyeVL(KeyeConfig.tiny()), seed=2)
    emb = model.visual.vision_model.embeddings
    g = emb.grid
    zeros = torch.zeros(g * g, 3, 14, 14)
    with torch.no_grad():
        out = emb(zeros, g, g)  # patch embedding of zeros = bias = 0
    torch.testing.assert_close(out, emb.position_embedding.weight)


def test_projector_merges_2x2_neighbours_in_order() -> None:
    vision = KeyeConfig.tiny().vision
    proj = Projector(vision, text_hidden=8)
    proj.pre_norm, proj.linear_1, proj.linear_2 = nn.Identity(), nn.Identity(), nn.Identity()
    h, w, c = 4, 6, vision.hidden_size
    features = (100.0 + torch.arange(h * w, dtype=torch.float32))[:, None].expand(h * w, c)  # GELU(x)≈x here
    out = proj(features, [(1, h, w)])  # [(h/2)·(w/2), 4C]
    assert out.shape == (6, 4 * c)
    token_1_2 = out[1 * 3 + 2].view(4, c)[:, 0]  # merged row 1, col 2 → patches (2,4), (2,5), (3,4), (3,5)
    assert token_1_2.tolist() == [100 + 2 * 6 + 4, 100 + 2 * 6 + 5, 100 + 3 * 6 + 4, 100 + 3 * 6 + 5]


def test_2d_rope_angles_follow_row_and_column() -> None:
    vision = KeyeConfig.tiny().vision  # head_dim 16 → 4 frequencies for rows, 4 for columns
    cos, _ = rope_cos_sin(3, 5, vision)
    quarter = vision.head_dim // 4
    inv_freq = 1.0 / vision.rope_theta ** (torch.arange(0, 2 * quarter, 2).float() / (2 * quarter))
    patch = 2 * 5 + 3  # row 2, col 3
    expected = torch.cat([2 * inv_freq, 3 * inv_freq]).repeat(2).cos()
    torch.testing.assert_close(cos[patch], expected)


def test_placeholder_rows_given_by_the_host_embed_like_the_counted_ones() -> None:
    """Training passes the placeholders' rows (no device count); the result must not differ, and a
    count that disagrees with the visual tokens is refused."""
    config = KeyeConfig.tiny()
    model = init_weights(KeyeVL(config), seed=2).eval()
    ids = torch.tensor([5, config.video_token_id, config.video_token_id, 7, config.image_token_id, 9])
    visual = torch.randn(3, config.text.hidden_size)
    with torch.no_grad():
        counted = model.embed(ids, visual)
        given = model.embed(ids, visual, torch.tensor([1, 2, 4]))
        assert torch.equal(counted, given)
        assert torch.equal(given[[1, 2, 4]], visual) and torch.equal(given[0], model.embed(ids[:1])[0])
        assert torch.equal(
            model.embed(ids[:1], None, torch.tensor([], dtype=torch.long)), model.embed(ids[:1])
        )
    with pytest.raises(ValueError, match="2 visual rows but 3 visual tokens"):
        model.embed(ids, visual, torch.tensor([1, 2]))
