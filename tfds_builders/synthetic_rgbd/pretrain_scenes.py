"""The stand-in pretraining domain of ``synthetic_rgbd`` (configs ``pretrain``, ``pretrain_tiny``).

What ImageNet is to the paper's networks, this domain is to ours: RGB images of other things, on
which a backbone is trained before it ever sees the target (``experiments.fidelity
.standin_backbone``; FIDELITY.md, "The 'Initialization' protocol"). It shares nothing with the
room scenes of ``scenes.py`` but the texture kinds and the lighting model:

* **other classes**: ``backdrop`` and five flat cut-out shapes, ``ring`` (an annulus), ``cross``
  (a plus sign), ``star`` (five points), ``crescent`` and ``ell`` (an L); none is a rectangle, an
  ellipse or a triangle, the silhouettes of the target's box, pole, ball and cone, and there is no
  wall or floor;
* **other colours**: a palette of 8 saturated colours (:data:`PALETTE`), each at least
  :data:`MIN_PALETTE_DISTANCE` (RGB, 0..255) from every colour of the target's ``scenes.PALETTE``;
* **another layout**: a tabletop seen from above. The backdrop fills the frame (no horizon, no
  perspective); 3–6 shapes (radius 20–40 % of the shorter side) lie anywhere on it at any
  rotation and overlap in painter's order;
* **cues as strong as the target's**: as in the calibrated ``default`` (colour and texture
  preference 0.9, a palette colour of its own per object class), a shape takes its class's
  colour and texture with probability 0.9 (:data:`COLOUR_BIAS`, :data:`TEXTURE_BIAS`), the
  backdrop one of its three colours; a shape never takes the backdrop's palette colour.

Depth is recorded because every ``synthetic_rgbd`` example has it (a flat table 0.8–1.2 m away,
each shape 1–5 cm above what it lies on; no sensor model), but the stand-in is trained on RGB
alone (``mode='baseline'``) and never reads it. Every example is a pure function of
``(seed, split, index)`` (``scenes.example_rng``).
"""

from __future__ import annotations

import numpy as np

from tfds_builders.synthetic_rgbd import scenes

CLASS_NAMES: tuple[str, ...] = ("backdrop", "ring", "cross", "star", "crescent", "ell")
NUM_CLASSES = len(CLASS_NAMES)
BACKDROP, RING, CROSS, STAR, CRESCENT, ELL = range(1, NUM_CLASSES + 1)
SHAPE_CLASSES: tuple[int, ...] = (RING, CROSS, STAR, CRESCENT, ELL)

# Saturated colours (RGB, 0..255), none within MIN_PALETTE_DISTANCE of a target palette colour.
PALETTE = np.array(
    [
        (210, 40, 170),  # 0 magenta
        (40, 200, 210),  # 1 cyan
        (240, 230, 40),  # 2 yellow
        (120, 50, 200),  # 3 violet
        (245, 130, 20),  # 4 orange
        (140, 230, 60),  # 5 lime
        (250, 160, 200),  # 6 pink
        (0, 128, 128),  # 7 teal
    ],
    dtype=np.float32,
)
MIN_PALETTE_DISTANCE = 60.0
# A class preference as strong as the target's: a surface takes its class's palette colour(s)
# with probability COLOUR_BIAS (else any other) and its texture with probability TEXTURE_BIAS
# (else any kind; the backdrop has no preferred texture).
COLOUR_BIAS = 0.9  # as the target's `default` (scenes.SceneParams.colour_bias)
TEXTURE_BIAS = 0.9
PREFERRED_COLOURS = {
    BACKDROP: (5, 6, 7),
    RING: (0,),
    CROSS: (1,),
    STAR: (2,),
    CRESCENT: (3,),
    ELL: (4,),
}
PREFERRED_TEXTURE = {  # the backdrop has none: 5 kinds of texture, 5 shapes
    RING: "stripes",
    CROSS: "flat",
    STAR: "checker",
    CRESCENT: "noise",
    ELL: "blotches",
}
NUM_SHAPES = (3, 6)  # inclusive range of shapes per scene
SHAPE_RADIUS = (0.2, 0.4)  # a shape's outer radius / the image's shorter side
TABLE_DEPTH = (0.8, 1.2)  # metres
SHAPE_THICKNESS = (0.01, 0.05)  # metres


def _colour(rng: np.random.Generator, k: int) -> np.ndarray:
    c = PALETTE[k] * rng.uniform(0.85, 1.15) + rng.normal(0.0, 8.0, size=3)
    return np.clip(c, 0.0, 255.0).astype(np.float32)


def _colour_index(rng: np.random.Generator, cls: int, avoid: int = -1) -> int:
    """A palette index for a surface of class ``cls``, never ``avoid`` (the backdrop's)."""
    preferred = [k for k in PREFERRED_COLOURS[cls] if k != avoid]
    if preferred and rng.random() < COLOUR_BIAS:
        return int(rng.choice(preferred))
    return int(rng.choice([k for k in range(len(PALETTE)) if k != avoid]))


def _appearance(rng: np.random.Generator, cls: int, k: int, num_fields: int) -> scenes._Appearance:
    """A surface of class ``cls`` and palette colour ``k``."""
    c0 = _colour(rng, k)
    if rng.random() < 0.5:
        c1 = _colour(rng, int(rng.integers(len(PALETTE))))
    else:
        c1 = np.clip(c0 * rng.uniform(0.55, 0.85), 0, 255).astype(np.float32)
    if cls in PREFERRED_TEXTURE and rng.random() < TEXTURE_BIAS:
        kind = PREFERRED_TEXTURE[cls]
    else:
        kind = scenes.TEXTURES[int(rng.integers(len(scenes.TEXTURES)))]
    return scenes.textured_appearance(rng, kind, c0, c1, num_fields)


def shape_mask(rng: np.random.Generator, cls: int, u: np.ndarray, v: np.ndarray, r: float):
    """Mask of a shape of class ``cls`` with outer radius ``r`` (pixels) in its own coordinates
    ``(u, v)`` (pixels from its centre, already rotated); its proportions are drawn from ``rng``."""
    rho = np.sqrt(u * u + v * v)
    if cls == RING:
        return (rho <= r) & (rho >= r * rng.uniform(0.45, 0.7))
    if cls == CROSS:
        t = r * rng.uniform(0.22, 0.35)  # half the arm width
        return ((np.abs(u) <= t) & (np.abs(v) <= r)) | ((np.abs(v) <= t) & (np.abs(u) <= r))
    if cls == STAR:
        inner = rng.uniform(0.38, 0.55)  # inner vertices' radius / r
        sector = 2 * np.pi / 5
        t = np.mod(np.arctan2(v, u), sector) / sector  # 0 and 1 at a point, 0.5 between two
        return rho <= r * (inner + (1.0 - inner) * np.abs(1.0 - 2.0 * t))
    if cls == CRESCENT:
        bite, shift = rng.uniform(0.75, 0.95), rng.uniform(0.35, 0.6)
        return (rho <= r) & ((u - shift * r) ** 2 + v * v > (bite * r) ** 2)
    if cls == ELL:
        t = r * rng.uniform(0.25, 0.35)  # half the bar width
        upright = (u >= -r) & (u <= -r + 2 * t) & (np.abs(v) <= r)
        foot = (v >= r - 2 * t) & (v <= r) & (np.abs(u) <= r)
        return upright | foot
    raise ValueError(f"no shape for class {cls}")


def make_scene(rng: np.random.Generator, height: int, width: int) -> dict[str, np.ndarray]:
    """One tabletop scene: ``image`` uint8 (H, W, 3), ``depth`` float32 (H, W) metres, ``label``
    uint8 (H, W) in 1..NUM_CLASSES (:data:`CLASS_NAMES`; no void pixels)."""
    if height < 8 or width < 8:
        raise ValueError(f"height and width must be >= 8, got {height}x{width}")
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    num_fields = 3
    fields = [scenes._smooth_field(rng, height, width, cells) for cells in (4, 8, 16)]
    backdrop_colour = _colour_index(rng, BACKDROP)
    apps = [_appearance(rng, BACKDROP, backdrop_colour, num_fields)]
    classes = [BACKDROP]
    surface = np.zeros((height, width), np.int32)
    depth = np.full((height, width), rng.uniform(*TABLE_DEPTH), np.float32)
    for _ in range(int(rng.integers(NUM_SHAPES[0], NUM_SHAPES[1] + 1))):
        cls = int(rng.choice(SHAPE_CLASSES))
        r = rng.uniform(*SHAPE_RADIUS) * min(height, width)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        angle = rng.uniform(0.0, 2 * np.pi)
        ca, sa = np.cos(angle), np.sin(angle)
        u = (xx - cx) * ca + (yy - cy) * sa
        v = -(xx - cx) * sa + (yy - cy) * ca
        mask = shape_mask(rng, cls, u, v, r)
        app = _appearance(rng, cls, _colour_index(rng, cls, backdrop_colour), num_fields)
        thickness = rng.uniform(*SHAPE_THICKNESS)
        if not mask.any():
            continue
        surface[mask] = len(apps)  # painter's order: on top of what it overlaps
        depth = np.where(mask, depth - thickness, depth).astype(np.float32)
        apps.append(app)
        classes.append(cls)
    label = np.asarray(classes, np.uint8)[surface]

    flat_surface = surface.reshape(-1)
    image = np.empty((height * width, 3), np.float32)
    for sid, app in enumerate(apps):
        idx = np.flatnonzero(flat_surface == sid)
        if idx.size:
            image[idx] = app.render(yy.reshape(-1), xx.reshape(-1), fields, idx)
    image = image.reshape(height, width, 3)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = ((xx - width / 2) * np.cos(theta) + (yy - height / 2) * np.sin(theta)) / max(
        height, width
    )
    shade = 1.0 + rng.uniform(0, 0.3) * 2 * ramp + 0.08 * fields[0]
    image = image * shade[..., None] + rng.normal(0.0, rng.uniform(3.0, 10.0), size=image.shape)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    depth = (np.round(depth * 1000.0) / 1000.0).astype(np.float32)
    return {"image": image, "depth": depth, "label": label}


def make_example(seed: int, split: str, index: int, height: int, width: int) -> dict:
    """Scene ``index`` of ``split``: :func:`make_scene` with ``scenes.example_rng``'s generator."""
    return make_scene(scenes.example_rng(seed, split, index), height, width)
