"""Union size U against k on selections from the full-size random-weight Keye text model.

`python -m kernels.sparse_attention.selections [--tokens 8192] [--layers 3]`: builds the first
`--layers` decoder layers at the 30B-A3B widths (32 / 4 × 128 heads, 128 experts, indexer 16 × 64,
top-2048) with `init_weights`' random weights, runs random token ids through them on the CPU, and
takes every layer's indexer outputs (a forward hook on `sa_indexer`) to the indexer's top-k
(`indexer_topk_ref`). The prefill kernel walks, per block of 8 queries, the union of their
selections, so U / k is its work per useful key (1 when neighbours pick the same keys, 8 when they
share none); the mean is over blocks whose queries all see more than k keys. The forward itself runs dense attention (the sparse reference gathers too much for this
machine's memory at these sizes); the selections are what each layer's indexer would pick from
those hidden states. Reference points at the same N: attention-sink + local window, uniform random.
"""

from __future__ import annotations

import argparse

import torch

from kernels._bench import format_table
from kernels.indexer.reference import indexer_topk_ref
from kernels.sparse_attention.bench import local_selection
from kernels.sparse_attention.kernel import default_block_q
from kernels.sparse_attention.union import build_block_union_torch

BLOCK_Q = default_block_q(32 // 4)  # the prefill kernel's block for Keye's 32 q / 4 kv heads: 8 queries


def union_stats(name: str, idx: torch.Tensor, topk: int) -> dict[str, object]:
    """U per block of BLOCK_Q queries (mean over the blocks whose queries all see more than k keys, max
    over all) and how local the picks are."""
    union = build_block_union_torch(idx, BLOCK_Q)
    counts = union.counts.float()
    full = counts[-(-topk // BLOCK_Q) :]  # block b's first query sees b * BLOCK_Q + 1 keys
    position = torch.arange(idx.shape[0])[:, None]
    picked = idx >= 0
    recent = picked & (position - idx < topk)
    return {
        "selection": name,
        "N": idx.shape[0],
        "U_mean": full.mean().item(),
        "U_max": counts.max().item(),
        "U/k": full.mean().item() / topk,
        "picks within k of the query": recent.sum().item() / max(1, picked.sum().item()),
    }


def model_selections(tokens: int, layers: int, seed: int) -> tuple[list[torch.Tensor], int]:
    """Per layer, the indexer's top-k [tokens, k] on random token ids through the random-weight model; and k."""
    from model_runtime.config import KeyeConfig
    from model_runtime.model import KeyeTextModel
    from model_runtime.vlm import init_weights

    config = KeyeConfig.full().text
    config.num_hidden_layers = layers
    torch.manual_seed(seed)
    model = init_weights(KeyeTextModel(config, attn_impl="dense"), seed=seed).eval()
    captured: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    hooks = [
        layer.self_attn.sa_indexer.register_forward_hook(lambda _m, _i, out: captured.append(out))
        for layer in model.layers
        if layer.self_attn.sa_indexer is not None
    ]
    ids = torch.randint(0, config.vocab_size, (tokens,), generator=torch.Generator().manual_seed(seed))
    positions = torch.arange(tokens).expand(3, -1)
    with torch.no_grad():
        model(model.embed_tokens(ids), positions)
    for hook in hooks:
        hook.remove()
    topk = config.sa.topk
    return [indexer_topk_ref(iq, iw, ik, topk, 0) for iq, iw, ik in captured], topk


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    selections, topk = model_selections(args.tokens, args.layers, args.seed)
    rows = [
        union_stats(f"random-weight model, layer {layer}", idx, topk) for layer, idx in enumerate(selections)
    ]
    rows.append(union_stats("sink + local window", local_selection(args.tokens, "cpu"), topk))
    position = torch.arange(args.tokens)[:, None]
    generator = torch.Generator().manual_seed(args.seed)
    uniform = (torch.rand(args.tokens, topk, generator=generator) * (position + 1)).long()
    rows.append(union_stats("uniform random (with repeats)", uniform, topk))
    print(format_table(rows, f"union size U vs k = {topk}, blocks of {BLOCK_Q} queries"))
    return rows


if __name__ == "__main__":
    main()
