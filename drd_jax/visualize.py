"""Colour maps for label maps and depth (used by `experiments.segment` and reproduce figures).

All functions are NumPy-only and return ``uint8`` RGB images (H, W, 3).
"""

from __future__ import annotations

import numpy as np

__all__ = ["IGNORE_COLOR", "class_palette", "colorize_depth", "colorize_labels"]

IGNORE_COLOR = (0, 0, 0)  # void / ignore (255) pixels


def class_palette(num_classes: int) -> np.ndarray:
    """``(num_classes, 3)`` uint8 colours, the PASCAL VOC bit-interleaving scheme shifted by one.

    Class ``k`` (0-based, as the model predicts) gets VOC colour ``k + 1``, so no class is black:
    black is kept for void pixels (:data:`IGNORE_COLOR`). Deterministic and distinct for up to 255
    classes.
    """
    if not 1 <= num_classes <= 255:
        raise ValueError(f"num_classes must be in 1..255, got {num_classes}")
    palette = np.zeros((num_classes, 3), np.uint8)
    for k in range(num_classes):
        c, r, g, b = k + 1, 0, 0, 0
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette[k] = (r, g, b)
    return palette


def colorize_labels(
    labels: np.ndarray, palette: np.ndarray, *, ignore_index: int = 255
) -> np.ndarray:
    """Label map ``(H, W)`` of 0-based class ids -> ``(H, W, 3)`` uint8; ``ignore_index`` is black.

    Raises ``ValueError`` for a class id outside the palette (other than ``ignore_index``).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (H, W), got shape {labels.shape}")
    ignore = labels == ignore_index
    ids = np.where(ignore, 0, labels).astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= len(palette)):
        raise ValueError(
            f"label ids must be in 0..{len(palette) - 1} (or {ignore_index} = void), "
            f"got {ids.min()}..{ids.max()}"
        )
    out = palette[ids]
    out[ignore] = IGNORE_COLOR
    return out


def colorize_depth(depth: np.ndarray, *, max_depth: float | None = None) -> np.ndarray:
    """Depth ``(H, W)`` in metres -> ``(H, W, 3)`` uint8, near = bright, invalid (<=0, NaN) black.

    ``max_depth`` (metres) fixes the scale; default: the largest valid depth of the image.
    """
    depth = np.asarray(depth, np.float32)
    if depth.ndim == 3 and depth.shape[-1] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {depth.shape}")
    valid = np.isfinite(depth) & (depth > 0)
    top = max_depth if max_depth else (float(depth[valid].max()) if valid.any() else 1.0)
    t = np.clip(np.where(valid, depth, top) / max(top, 1e-6), 0.0, 1.0)
    # A perceptually ordered ramp: near = yellow-white, far = dark blue.
    stops = np.array([[255, 255, 200], [250, 170, 60], [200, 60, 80], [90, 30, 120], [20, 20, 60]])
    pos = t * (len(stops) - 1)
    lo = np.floor(pos).astype(np.int64).clip(0, len(stops) - 2)
    frac = (pos - lo)[..., None]
    rgb = stops[lo] * (1.0 - frac) + stops[lo + 1] * frac
    out = rgb.round().astype(np.uint8)
    out[~valid] = 0
    return out
