"""Procedural RGB-D segmentation scenes (pure numpy; no TensorFlow, no download).

A scene is a room seen by a Kinect-like camera: a back ``wall`` (2.8-4.5 m away), a ``floor`` plane
that meets it, and a few objects standing on the floor (``box``, ``ball``, ``pole``, ``cone``)
at well-separated depths, plus some unlabelled clutter (label 0 = void). The geometry is exact
(z-buffer), so every label boundary between two objects, or an object and the wall, is also a depth
jump of at least ``SceneParams.min_gap`` metres; the appearance is deliberately unreliable:

* every class draws its colour and texture from one shared palette and texture bank, with only a
  weak class preference (the colour cue an RGB-only network can still learn);
* textures live in image coordinates, so a *camouflaged* object (one that copies the appearance of
  the surface behind it, up to a small colour shift) continues the background pattern seamlessly;
* some surfaces are painted in two tones split by a random line (a colour edge with no label edge);
* wall and floor carry flat *decals* shaped like the object classes (object-looking pictures with
  no depth edge), and a soft shadow band and an illumination gradient cross everything;
* pixel noise on top.

The depth map models a structured-light sensor: depth-dependent noise, no reading (0) in the
projector shadow to the left of depth discontinuities, in a few dropout holes, and sometimes in a
few columns at the left border.

See README.md for the recipe and the reasoning. Everything is drawn from the ``np.random.Generator``
passed in, so a scene is a pure function of its generator state; ``example_rng`` derives that
generator from ``(seed, split, index)`` so that examples do not depend on generation order.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Label values as stored (docs/method.md, Data): 0 = void, 1..NUM_CLASSES the classes below.
VOID_LABEL = 0
CLASS_NAMES: tuple[str, ...] = ("wall", "floor", "box", "ball", "pole", "cone")
NUM_CLASSES = len(CLASS_NAMES)
WALL, FLOOR, BOX, BALL, POLE, CONE = range(1, NUM_CLASSES + 1)
OBJECT_CLASSES: tuple[int, ...] = (BOX, BALL, POLE, CONE)

SPLIT_IDS = {"train": 0, "test": 1, "validation": 2}
_BOX_TURN = 0.1  # metres: depth difference between a box face's centre and its side edges

# Shared palette (RGB, 0..255): every class can take every colour.
PALETTE = np.array(
    [
        (196, 178, 150),  # 0 beige
        (128, 128, 128),  # 1 grey
        (122, 84, 54),  # 2 brown
        (58, 78, 126),  # 3 dark blue
        (84, 124, 74),  # 4 green
        (164, 66, 56),  # 5 red
        (214, 214, 204),  # 6 off-white
        (198, 168, 66),  # 7 ochre
    ],
    dtype=np.float32,
)
TEXTURES = ("flat", "stripes", "checker", "noise", "blotches")

# Weak class bias: preferred palette entries and texture of every class (index = label).
_PREFERRED_COLOURS = {
    WALL: (0, 6),
    FLOOR: (2, 1),
    BOX: (2, 7),
    BALL: (5, 3),
    POLE: (1, 6),
    CONE: (7, 5),
    VOID_LABEL: (4, 1),
}
# Disjoint preferences (``SceneParams.class_colours = 'distinct'``): every object class has a
# palette entry of its own, so colour alone can tell the classes apart where the bias holds.
_DISTINCT_COLOURS = {
    WALL: (0, 6),
    FLOOR: (1, 2),
    BOX: (7,),
    BALL: (5,),
    POLE: (3,),
    CONE: (4,),
    VOID_LABEL: (4, 1),
}
_CLASS_COLOURS = {"shared": _PREFERRED_COLOURS, "distinct": _DISTINCT_COLOURS}
_PREFERRED_TEXTURE = {
    WALL: "noise",
    FLOOR: "checker",
    BOX: "stripes",
    BALL: "flat",
    POLE: "noise",
    CONE: "blotches",
    VOID_LABEL: "blotches",
}


@dataclasses.dataclass(frozen=True)
class SceneParams:
    """Knobs of the generator. The defaults are the ``synthetic_rgbd`` recipe."""

    num_objects: tuple[int, int] = (4, 8)  # inclusive range of foreground objects
    num_decals: tuple[int, int] = (0, 2)  # object-shaped pictures on wall/floor
    clutter_prob: float = 0.6  # probability of one void-labelled clutter blob
    colour_bias: float = 0.7  # probability of a class's preferred colours (else uniform)
    class_colours: str = "shared"  # 'shared' (preferences overlap) or 'distinct' (disjoint)
    texture_bias: float = 0.7  # probability of a class's preferred texture (else uniform)
    camouflage_prob: float = 0.2  # object copies the appearance of the surface behind it
    camouflage_shift: float = 12.0  # max per-channel colour shift of a camouflaged object
    two_tone_prob: float = 0.25  # surface split by a line into two appearances
    shadow_prob: float = 0.5  # a soft shadow band across the scene
    illumination: float = 0.3  # max strength of the illumination gradient
    pixel_noise: tuple[float, float] = (3.0, 10.0)  # std of RGB noise (0..255 units)
    focal: float = 0.81  # focal length in units of the image width (NYUv2: 518/640)
    wall_depth: tuple[float, float] = (2.8, 4.5)  # metres
    horizon: tuple[float, float] = (0.35, 0.6)  # row of the wall/floor crease / image height
    camera_height: tuple[float, float] = (1.0, 1.5)  # metres above the floor
    object_depth: tuple[float, float] = (1.0, 4.0)  # metres, silhouette depth of an object
    min_gap: float = 0.3  # metres between the depth intervals of any two objects
    wall_gap: float = 0.5  # metres between any object and the wall
    # Scale of the world the depth sensor sees: the output depth (readings and their noise) is
    # multiplied by it, as for a miniature of the scene with the same image. < 1 gives the depth
    # differences between neighbouring pixels of a larger image (FIDELITY.md, calibration).
    depth_scale: float = 1.0

    def __post_init__(self):
        if self.class_colours not in _CLASS_COLOURS:
            raise ValueError(
                f"class_colours must be one of {sorted(_CLASS_COLOURS)}, got {self.class_colours!r}"
            )


@dataclasses.dataclass(frozen=True)
class DepthSensor:
    """Kinect-like sensor model for the depth map."""

    baseline: float = 0.075  # metres between projector and camera (shadow width)
    shadow_prob: float = 0.5  # probability that a frame has projector shadows (else filled)
    noise_a: float = 0.0012  # depth std = a + b (z - 0.4)^2, metres
    noise_b: float = 0.0019
    holes: tuple[int, int] = (0, 3)  # dropout holes per scene
    border_prob: float = 0.5  # probability of a few invalid columns at the left border
    dropout: float = 0.003  # probability of an isolated missing pixel


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of example ``index`` of ``split``: independent of any other example."""
    if split not in SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    return np.random.default_rng(np.random.SeedSequence([seed, SPLIT_IDS[split], index]))


def make_example(
    seed: int,
    split: str,
    index: int,
    height: int,
    width: int,
    params: SceneParams | None = None,
    sensor: DepthSensor | None = None,
) -> dict[str, np.ndarray]:
    """Scene ``index`` of ``split``: ``make_scene`` with the generator of ``example_rng``."""
    return make_scene(example_rng(seed, split, index), height, width, params, sensor)


# ----------------------------------------------------------------------------------------------
# Appearance: a surface's colour as a function of image coordinates.


@dataclasses.dataclass
class _Appearance:
    kind: str
    c0: np.ndarray  # (3,) base colour
    c1: np.ndarray  # (3,) second colour
    freq: float  # stripes/checker frequency (radians per pixel / cells per pixel)
    angle: float
    phase: float
    amplitude: float  # noise amplitude
    field: int  # index of the scene noise field used by noise/blotches
    threshold: float  # blotch threshold
    split: tuple[float, float, float, _Appearance] | None = None  # (nx, ny, d, other side)
    shading: tuple[float, float, float, float] | None = None  # ball: (cy, cx, radius, strength)

    def render(self, yy: np.ndarray, xx: np.ndarray, fields: list[np.ndarray], idx) -> np.ndarray:
        """Colours (n, 3) at the pixels ``idx`` (flat indices) with coordinates yy, xx."""
        y, x = yy[idx], xx[idx]
        if self.split is not None:
            nx, ny, d, other = self.split
            side = (x * nx + y * ny) > d
            out = self._render_plain(y, x, fields, idx)
            if side.any():
                out[side] = other.render(yy, xx, fields, idx[side])
            return out
        return self._render_plain(y, x, fields, idx)

    def _render_plain(self, y, x, fields, idx) -> np.ndarray:
        c0, c1 = self.c0[None], self.c1[None]
        ca, sa = np.cos(self.angle), np.sin(self.angle)
        u = x * ca + y * sa
        if self.kind == "flat":
            return np.repeat(c0, y.size, axis=0)
        if self.kind == "stripes":
            t = 0.5 + 0.5 * np.sin(self.freq * u + self.phase)
            return c0 + (c1 - c0) * t[:, None]
        if self.kind == "checker":
            v = -x * sa + y * ca
            cell = np.floor(u * self.freq + self.phase) + np.floor(v * self.freq + self.phase)
            t = (cell % 2).astype(np.float32)
            return c0 + (c1 - c0) * t[:, None]
        field = fields[self.field].reshape(-1)[idx]
        if self.kind == "noise":
            return c0 + self.amplitude * field[:, None]
        if self.kind == "blotches":
            t = np.clip((field - self.threshold) * 3.0 + 0.5, 0.0, 1.0)
            return c0 + (c1 - c0) * t[:, None]
        raise ValueError(f"unknown texture {self.kind!r}")


def _colour(rng: np.random.Generator, cls: int, bias: float, preferred: dict) -> np.ndarray:
    if rng.random() < bias:
        k = int(rng.choice(preferred[cls]))
    else:
        k = int(rng.integers(len(PALETTE)))
    c = PALETTE[k] * rng.uniform(0.8, 1.2) + rng.normal(0.0, 10.0, size=3)
    return np.clip(c, 0.0, 255.0).astype(np.float32)


def textured_appearance(
    rng: np.random.Generator, kind: str, c0: np.ndarray, c1: np.ndarray, num_fields: int
) -> _Appearance:
    """An appearance of texture ``kind`` in colours ``c0``/``c1`` (RGB, 0..255) with its texture
    parameters drawn from ``rng`` (frequency, angle, phase, amplitude, noise field, threshold)."""
    return _Appearance(
        kind=kind,
        c0=c0,
        c1=c1,
        freq=float(rng.uniform(0.25, 0.9)) if kind == "stripes" else float(rng.uniform(0.05, 0.2)),
        angle=float(rng.uniform(0.0, np.pi)),
        phase=float(rng.uniform(0.0, 2 * np.pi)),
        amplitude=float(rng.uniform(15.0, 45.0)),
        field=int(rng.integers(num_fields)),
        threshold=float(rng.uniform(-0.3, 0.3)),
    )


def _appearance(
    rng: np.random.Generator, cls: int, p: SceneParams, num_fields: int, allow_split: bool = True
) -> _Appearance:
    preferred = _CLASS_COLOURS[p.class_colours]
    c0 = _colour(rng, cls, p.colour_bias, preferred)
    if rng.random() < 0.5:
        c1 = _colour(rng, cls, p.colour_bias, preferred)
    else:
        c1 = np.clip(c0 * rng.uniform(0.55, 0.85), 0, 255).astype(np.float32)
    if rng.random() < p.texture_bias:
        kind = _PREFERRED_TEXTURE[cls]
    else:
        kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
    app = textured_appearance(rng, kind, c0, c1, num_fields)
    if allow_split and rng.random() < p.two_tone_prob:
        other = _appearance(rng, cls, p, num_fields, allow_split=False)
        app.split = (0.0, 0.0, 0.0, other)  # the line is placed by the caller
    return app


def _place_split(app: _Appearance, rng: np.random.Generator, cy: float, cx: float) -> None:
    """Put the two-tone split line of ``app`` through (or near) the point (cy, cx)."""
    if app.split is None:
        return
    theta = rng.uniform(0.0, 2 * np.pi)
    nx, ny = float(np.cos(theta)), float(np.sin(theta))
    d = cx * nx + cy * ny + rng.normal(0.0, 3.0)
    app.split = (nx, ny, d, app.split[3])


def _smooth_field(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish smooth random field: bilinear interpolation of a coarse grid."""
    gh = max(2, int(round(cells * height / max(height, width)))) + 1
    gw = max(2, int(round(cells * width / max(height, width)))) + 1
    grid = rng.normal(0.0, 1.0, size=(gh, gw)).astype(np.float32)
    ys = np.linspace(0.0, gh - 1.0, height, dtype=np.float32)
    xs = np.linspace(0.0, gw - 1.0, width, dtype=np.float32)
    y0 = np.minimum(ys.astype(np.int64), gh - 2)
    x0 = np.minimum(xs.astype(np.int64), gw - 2)
    wy = (ys - y0)[:, None]
    wx = (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - wx) + grid[y0][:, x0 + 1] * wx
    bottom = grid[y0 + 1][:, x0] * (1 - wx) + grid[y0 + 1][:, x0 + 1] * wx
    return top * (1 - wy) + bottom * wy


# ----------------------------------------------------------------------------------------------
# Shapes: masks (and depth offsets) in image coordinates.


def _shape_mask(kind: int, yy, xx, cy, cx, a, b, angle):
    """Mask of a shape centred at (cy, cx) with half-width a and half-height b (pixels)."""
    ca, sa = np.cos(angle), np.sin(angle)
    u = (xx - cx) * ca + (yy - cy) * sa
    v = -(xx - cx) * sa + (yy - cy) * ca
    if kind in (BOX, POLE):
        mask = (np.abs(u) <= a) & (np.abs(v) <= b)
        rel = np.abs(u) / a
    elif kind == BALL:
        r2 = (u / a) ** 2 + (v / b) ** 2
        mask = r2 <= 1.0
        rel = np.sqrt(np.minimum(r2, 1.0))
    elif kind == CONE:
        half = a * (v + b) / (2 * b)
        mask = (np.abs(v) <= b) & (np.abs(u) <= half)
        rel = np.abs(u) / np.maximum(half, 1e-3)
    else:
        raise ValueError(f"no shape for class {kind}")
    return mask, rel


def _object_geometry(rng: np.random.Generator, cls: int, z: float, f: float):
    """Half-sizes in pixels, rotation and depth bulge (metres) of an object at depth z."""
    if cls == BOX:  # the front face may be turned by up to BOX_TURN metres either way
        w, h = rng.uniform(0.45, 1.1), rng.uniform(0.4, 1.0)
        angle, bulge = rng.uniform(-0.12, 0.12), 2 * _BOX_TURN
    elif cls == BALL:
        r = rng.uniform(0.2, 0.45)
        w = h = 2 * r
        angle, bulge = 0.0, r
    elif cls == POLE:
        w, h = rng.uniform(0.08, 0.18), rng.uniform(1.0, 2.2)
        angle, bulge = rng.uniform(-0.05, 0.05), w / 2
    else:  # CONE
        w, h = rng.uniform(0.45, 1.0), rng.uniform(0.55, 1.2)
        angle, bulge = 0.0, w / 4
    return 0.5 * f * w / z, 0.5 * f * h / z, float(angle), float(bulge)


# ----------------------------------------------------------------------------------------------


def make_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    params: SceneParams | None = None,
    sensor: DepthSensor | None = None,
) -> dict[str, np.ndarray]:
    """One scene: ``image`` uint8 (H, W, 3), ``depth`` float32 (H, W) metres (0 = no reading),
    ``label`` uint8 (H, W) in 0..NUM_CLASSES (0 = void)."""
    if height < 8 or width < 8:
        raise ValueError(f"height and width must be >= 8, got {height}x{width}")
    p = params or SceneParams()
    s = sensor or DepthSensor()
    f = p.focal * width
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    num_fields = 3
    fields = [_smooth_field(rng, height, width, cells) for cells in (4, 8, 16)]

    # --- Geometry: z-buffer of wall, floor and objects. -------------------------------------
    z_wall = rng.uniform(*p.wall_depth)
    tilt = rng.uniform(-0.4, 0.4)
    depth = (z_wall + tilt * (xx / width - 0.5)).astype(np.float32)
    z_wall_min = z_wall - abs(tilt) / 2
    # Floor: a camera at height h above it, looking horizontally: the floor at depth z is on row
    # v + f h / z (v = horizon of the floor plane), cut off where it meets the wall.
    horizon = rng.uniform(*p.horizon) * height  # row where floor meets wall (mid-image)
    a_floor = f * rng.uniform(*p.camera_height)
    vanish = horizon - a_floor / z_wall
    with np.errstate(divide="ignore"):
        floor_depth = np.where(yy > vanish + 0.5, a_floor / np.maximum(yy - vanish, 1e-3), np.inf)
    surface = np.zeros((height, width), np.int32)  # 0 = wall, 1 = floor, 2.. = objects
    on_floor = floor_depth < depth
    depth = np.where(on_floor, floor_depth, depth).astype(np.float32)
    surface[on_floor] = 1

    surfaces_cls = [WALL, FLOOR]
    apps = [_appearance(rng, WALL, p, num_fields), _appearance(rng, FLOOR, p, num_fields)]
    _place_split(apps[0], rng, rng.uniform(0, horizon), rng.uniform(0, width))
    _place_split(apps[1], rng, rng.uniform(horizon, height), rng.uniform(0, width))

    # Decals: object-shaped pictures painted flat on the wall or floor (label and depth unchanged).
    decals = []
    for _ in range(int(rng.integers(p.num_decals[0], p.num_decals[1] + 1))):
        cls = int(rng.choice(OBJECT_CLASSES))
        z = rng.uniform(2.0, 5.0)
        a, b, angle, _ = _object_geometry(rng, cls, z, f)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        mask, _ = _shape_mask(cls, yy, xx, cy, cx, a, b, angle)
        app = _appearance(rng, cls, p, num_fields)
        _place_split(app, rng, cy, cx)
        decals.append((mask, app))

    # Objects: sampled far to near with disjoint depth intervals [z - bulge, z].
    intervals: list[tuple[float, float]] = []
    objects = []
    n_obj = int(rng.integers(p.num_objects[0], p.num_objects[1] + 1))
    z_max = min(p.object_depth[1], z_wall_min - p.wall_gap)
    for _ in range(n_obj):
        cls = int(rng.choice(OBJECT_CLASSES))
        for _attempt in range(20):
            z = rng.uniform(p.object_depth[0], z_max)
            a, b, angle, bulge = _object_geometry(rng, cls, z, f)
            lo, hi = z - bulge, z
            if all(lo > h + p.min_gap or hi < l - p.min_gap for l, h in intervals):
                break
        else:
            continue
        intervals.append((lo, hi))
        objects.append((cls, z, a, b, angle, bulge))
    if rng.random() < p.clutter_prob:
        for _attempt in range(20):
            z = rng.uniform(p.object_depth[0], z_max)
            lo, hi = z - 0.1, z
            if all(lo > h + p.min_gap or hi < l - p.min_gap for l, h in intervals):
                intervals.append((lo, hi))
                objects.append((VOID_LABEL, z, 0.0, 0.0, 0.0, 0.1))
                break

    for cls, z, a, b, angle, bulge in sorted(objects, key=lambda o: -o[1]):
        # Stand on the floor: the bottom of the shape is on the row where the floor is at depth z.
        bottom = vanish + a_floor / z
        cx = rng.uniform(0.0, width)
        if cls == VOID_LABEL:  # clutter: union of a few small ellipses, a rough 10 cm bump
            r = 0.5 * f * rng.uniform(0.2, 0.45) / z
            mask = np.zeros((height, width), bool)
            for _ in range(int(rng.integers(2, 5))):
                ey = bottom - rng.uniform(0.3, 1.5) * r
                ex = cx + rng.uniform(-1.0, 1.0) * r
                ea, eb = r * rng.uniform(0.4, 1.0), r * rng.uniform(0.4, 1.0)
                m, _ = _shape_mask(BALL, yy, xx, ey, ex, ea, eb, 0.0)
                mask |= m
            obj_depth = np.full((height, width), z, np.float32) - 0.1 * fields[2].clip(0, 1)
        else:
            cy = bottom - b
            mask, rel = _shape_mask(cls, yy, xx, cy, cx, a, b, angle)
            if cls == BOX:  # planar front face, slightly turned
                turn = rng.uniform(-_BOX_TURN, _BOX_TURN)
                obj_depth = z - abs(turn) + turn * np.clip((xx - cx) / a, -1, 1)
            else:  # ball: sphere; pole: cylinder; cone: rounded front
                obj_depth = z - bulge * np.sqrt(np.clip(1.0 - rel**2, 0.0, 1.0))
        mask &= obj_depth < depth
        if not mask.any():
            continue
        sid = len(surfaces_cls)
        surfaces_cls.append(cls)
        depth = np.where(mask, obj_depth, depth).astype(np.float32)
        surface_behind = surface.copy()
        surface[mask] = sid
        # Appearance: camouflage copies the surface behind the object's centre of mass.
        ys, xs = np.nonzero(mask)
        my, mx = int(ys.mean()), int(xs.mean())
        if cls != VOID_LABEL and rng.random() < p.camouflage_prob:
            behind = apps[surface_behind[my, mx]]
            shift = rng.uniform(-p.camouflage_shift, p.camouflage_shift, size=3)
            app = dataclasses.replace(behind, c0=behind.c0 + shift, c1=behind.c1 + shift)
            if behind.split is not None:
                nx, ny, d, other = behind.split
                other = dataclasses.replace(other, c0=other.c0 + shift, c1=other.c1 + shift)
                app.split = (nx, ny, d, other)
        else:
            app = _appearance(rng, cls, p, num_fields)
            _place_split(app, rng, my + 0.5, mx + 0.5)
        if cls == BALL:
            app = dataclasses.replace(app, shading=(cy, cx, a, rng.uniform(0.1, 0.35)))
        apps.append(app)

    label = np.asarray(surfaces_cls, np.uint8)[surface]

    # --- Appearance. --------------------------------------------------------------------------
    flat_surface = surface.reshape(-1)
    image = np.empty((height * width, 3), np.float32)
    for sid, app in enumerate(apps):
        idx = np.flatnonzero(flat_surface == sid)
        if idx.size:
            image[idx] = app.render(yy.reshape(-1), xx.reshape(-1), fields, idx)
    for mask, app in decals:  # painted on wall/floor only
        idx = np.flatnonzero(mask.reshape(-1) & (flat_surface <= 1))
        if idx.size:
            image[idx] = app.render(yy.reshape(-1), xx.reshape(-1), fields, idx)
    image = image.reshape(height, width, 3)
    shade = np.ones((height, width), np.float32)
    for sid, app in enumerate(apps):  # ball shading (a 3-D cue RGB keeps)
        if app.shading is not None:
            cy, cx, r, strength = app.shading
            d2 = ((yy - cy) ** 2 + (xx - cx + 0.3 * r) ** 2) / (r * r)
            shade = np.where(surface == sid, 1.0 - strength * np.clip(d2, 0, 1.5), shade)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = ((xx - width / 2) * np.cos(theta) + (yy - height / 2) * np.sin(theta)) / max(
        height, width
    )
    shade = shade * (1.0 + rng.uniform(0, p.illumination) * 2 * ramp + 0.08 * fields[0])
    if rng.random() < p.shadow_prob:
        phi = rng.uniform(0, 2 * np.pi)
        dist = (xx - rng.uniform(0, width)) * np.cos(phi) + (yy - rng.uniform(0, height)) * np.sin(
            phi
        )
        darkness = rng.uniform(0.2, 0.45)
        shade = shade * (1.0 - darkness * np.clip(dist / 2.0 + 0.5, 0.0, 1.0))
    image = image * shade[..., None]
    image = image + rng.normal(0.0, rng.uniform(*p.pixel_noise), size=image.shape)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)

    # --- Depth sensor. -----------------------------------------------------------------------
    true_depth = depth
    noisy = true_depth + rng.normal(0.0, 1.0, size=depth.shape) * (
        s.noise_a + s.noise_b * (true_depth - 0.4) ** 2
    )
    valid = np.ones((height, width), bool)
    # Projector shadow: pixel x gets no reading when a nearer surface at x + k (k pixels to the
    # right) hides it from the projector, i.e. k < f * baseline * (1/z_near - 1/z_far).
    inv = 1.0 / true_depth
    max_shift = int(np.ceil(f * s.baseline * (inv.max() - inv.min())))
    if rng.random() >= s.shadow_prob:
        max_shift = 0
    for k in range(1, min(max_shift, width - 1) + 1):
        disparity = f * s.baseline * (inv[:, k:] - inv[:, :-k])
        valid[:, :-k] &= ~(disparity > k)
    for _ in range(int(rng.integers(s.holes[0], s.holes[1] + 1))):
        hy, hx = rng.uniform(0, height), rng.uniform(0, width)
        hr = rng.uniform(0.01, 0.04) * width
        valid &= ((yy - hy) ** 2 + (xx - hx) ** 2) > hr * hr
    if rng.random() < s.border_prob:
        valid[:, : int(rng.integers(1, max(2, width // 40) + 1))] = False
    valid &= rng.random(size=valid.shape) >= s.dropout
    # Readings are quantised to millimetres, like the sensor's integer output.
    scaled = np.maximum(noisy, 0.0) * p.depth_scale
    depth_out = np.where(valid, np.round(scaled * 1000.0) / 1000.0, 0.0)
    depth_out = depth_out.astype(np.float32)
    return {"image": image, "depth": depth_out, "label": label}
