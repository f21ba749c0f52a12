"""Matrices on the wire: one binary buffer per answer, never JSON lists.

uint8 with one float32 scale per row: value = byte / 255 * scale[row]. Attention
rows sum to 1 and are mostly near 0, so a per-row scale keeps the small ones
readable at a quarter of float32's size (a 1024 x 1024 tile is 1 MiB + 4 KiB).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError


def encode_rows_uint8(matrix: torch.Tensor) -> tuple[dict, list[bytes]]:
    """[rows, cols] float -> (meta, [values, scales]); both buffers contiguous."""
    m = matrix.detach().float().cpu()
    if m.ndim != 2:
        raise InputError(f"expected a 2-D matrix, got shape {tuple(m.shape)}")
    scales = m.abs().amax(dim=1).clamp_min(1e-12)
    values = torch.round(m / scales[:, None] * 255).clamp(0, 255).to(torch.uint8)
    meta = {"shape": list(m.shape), "dtype": "uint8", "scale": "per_row"}
    return meta, [
        np.ascontiguousarray(values.numpy()).tobytes(),
        np.ascontiguousarray(scales.numpy().astype(np.float32)).tobytes(),
    ]
