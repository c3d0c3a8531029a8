"""Score rows in tile order: the layout the indexer's score tile can store without a transpose.

The score kernel's head-sum product leaves each warp 16 keys x 8 queries, a thread holding keys (r, r + 8) of
queries (c, c + 4) for lane 4 r + c. Row-major scores make each 32-bit store of that fragment touch four rows
(four L1 wavefronts; session 22 measured it +11 % slower than Triton's transpose through shared memory). In tile
order rows come in blocks of 8 and columns in groups of 16; each (block, group) pair is one 128-element chunk
holding its 8 rows' 16 keys as 64 contiguous bytes each, in column order:

    (t, s) -> (t // 8) * 8 * stride + (s // 16) * 128 + 16 * (t % 8) + s % 16

so each 32-bit store of the fragment covers four 32-byte sectors of 256 contiguous bytes (two lines), and a row's
group is one aligned 64-byte run for the select, read 16 bytes per thread. A buffer holds ceil(rows / 8) * 8 rows
of ceil(cols / 16) * 16 columns; `stride` is that padded row length. Offsets are shifts and masks: the compiler
cannot tell that columns are never negative, and signed division by 16 costs a sign fix per element.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

ROWS_PER_BLOCK = 8
COLS_PER_GROUP = 16


@triton.jit
def _row_offsets(row, stride_row, TILED: tl.constexpr):
    """Element offset of column 0 of `row` (scalar or block; int64 where offsets may pass 2**31)."""
    if TILED:
        return (row >> 3) * (8 * stride_row) + ((row & 7) << 4)
    return row * stride_row


@triton.jit
def _col_offsets(col, TILED: tl.constexpr):
    """Element offset of `col` from its row's column 0."""
    if TILED:
        return ((col >> 4) << 7) + (col & 15)
    return col


@triton.jit
def _group_offsets(group, TILED: tl.constexpr):
    """Element offset of the first column of 16-column group `group` from its row's column 0."""
    return group * (128 if TILED else 16)


@triton.jit
def _tile_col_offsets(s0, BLOCK_S: tl.constexpr, TILED: tl.constexpr):
    """Offsets of columns s0 .. s0 + BLOCK_S from their row's column 0, for s0 a multiple of 16: the part that
    varies with s0 is one scalar, the rest a per-thread constant the compiler keeps out of the tile loop."""
    if TILED:
        return s0 * 8 + _col_offsets(tl.arange(0, BLOCK_S), TILED)
    return s0 + tl.arange(0, BLOCK_S)


def tiled_shape(rows: int, cols: int) -> tuple[int, int]:
    """(rows, cols) of a buffer that holds a rows x cols score matrix in tile order."""
    blocks, groups = triton.cdiv(rows, ROWS_PER_BLOCK), triton.cdiv(cols, COLS_PER_GROUP)
    return blocks * ROWS_PER_BLOCK, groups * COLS_PER_GROUP


def to_tiled(scores: torch.Tensor) -> torch.Tensor:
    """A row-major [R, S] matrix copied into a tile-order buffer (`tiled_shape`; padding entries are 0)."""
    rows, cols = scores.shape
    padded = scores.new_zeros(tiled_shape(rows, cols))
    padded[:rows, :cols] = scores
    blocks, groups = padded.shape[0] // 8, padded.shape[1] // 16
    logical = padded.view(blocks, 8, groups, 2, 8)  # [block, row % 8, group, key half, key % 8]
    return logical.permute(0, 2, 1, 3, 4).contiguous().view(padded.shape)


def from_tiled(buffer: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The row-major [rows, cols] matrix a tile-order buffer holds."""
    blocks, groups = buffer.shape[0] // 8, buffer.shape[1] // 16
    chunks = buffer.view(blocks, groups, 8, 16)  # [block, group, row % 8, key % 16]
    return chunks.permute(0, 2, 1, 3).reshape(buffer.shape)[:rows, :cols]
