"""The built-in default data set: synthetic scenes generated from a seed.

Every dtlabel command works out of the box on this data set. Nothing is downloaded or shipped as
files: :func:`render_scene` draws one ``(image, mask)`` pair from an integer seed, deterministically
(same seed and size -> identical arrays; across machines, masks match exactly while images may
differ by rounding in OpenCV's resize/blur/JPEG code paths of other versions or CPUs).

Classes (``CLASS_NAMES``, index = mask value)
----------------------------------------------
0. ``background`` - everything that is not one of the objects below, including clutter.
1. ``disc``     - a filled ellipse (aspect 0.6-1) with smooth, sphere-like radial shading from a
   random light direction.
2. ``box``      - a rotated rectangle (aspect 0.45-1) filled with parallel stripes (random period,
   orientation, phase and edge sharpness).
3. ``triangle`` - a jittered triangle with a checkerboard of random cell size and rotation.
4. ``star``     - a 5- or 6-pointed star with a polka-dot pattern (random spacing and dot size).
5. ``ring``     - an elliptic annulus (hole 45-70 % of the radius, the background shows through)
   with radial spokes (random count and phase).
6. ``cross``    - a rotated plus sign with a grid-line lattice (random spacing and line width).

Textures scale with the object, so they stay visible at 32x32 as well as at 256x256. Shapes are the
primary cue, textures a secondary one; colour is deliberately a weak cue: each class has a
preferred hue but draws it from a ~220 degree wide window (and, one time in five, from the whole
hue circle), with random saturation and brightness, so the classes' colours overlap heavily.

Scene composition
-----------------
* Background: a two-colour linear gradient, smooth value noise, or both, plus (often) a
  low-contrast texture of the same families the objects use (stripes, checker, grain), so texture
  alone does not identify objects either.
* Clutter (labeled ``background``): thin straight lines, short polylines and small speckles.
* 1-5 objects, class chosen uniformly, in random z-order; objects occlude each other and may be
  partly outside the frame. The mask holds the class of the topmost object at each pixel centre.

Photometric augmentations (applied to the image only)
------------------------------------------------------
global brightness, contrast and gamma; a directional shading ramp; Gaussian blur (skipped about
40 % of the time); Gaussian sensor noise; JPEG artifacts (about 30 % of images, quality 40-90).

Objects are rendered at 3x resolution and reduced with ``cv2.INTER_AREA`` (anti-aliased edges,
composited over the smooth background at output resolution); the mask is sampled at the centre
sub-pixel of each 3x3 block, i.e. at the pixel centre, so it is exactly aligned with the image.
Object colours that would nearly vanish into the background under them are pushed lighter or
darker, so labeled objects stay visible (blur, noise and lighting can still make some hard).
Only ``np.random.default_rng(seed)`` is used as a source of randomness. Cost: about 3 ms per
64x64 scene on one CPU core (about 12 ms at 128x128).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["CLASS_NAMES", "STYLES", "render_scene"]

CLASS_NAMES: list[str] = ["background", "disc", "box", "triangle", "star", "ring", "cross"]

_SS = 3  # supersampling factor (odd, so the centre sub-pixel of a block is the pixel centre)
_SHIFT = 4  # fixed-point bits for cv2 polygon filling
_MIN_SIZE = 8

# Per-class size multipliers, so that thin shapes (star, ring, cross) get a similar pixel share.
_SIZE_MULT = {1: 0.85, 2: 0.9, 3: 1.2, 4: 1.25, 5: 1.1, 6: 1.0}

FloatArray = np.ndarray


# --------------------------------------------------------------------------------------- colours


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """HSV in [0, 1] -> RGB float32 in [0, 1]."""
    h = (h % 1.0) * 6.0
    i = int(h) % 6
    f = h - int(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, dtype=np.float32)


def _random_colour(rng: np.random.Generator, cls: int | None = None) -> np.ndarray:
    """A colour; object classes prefer a hue window of +-0.3 around their own centre."""
    if cls is None or rng.random() < 0.2:
        hue = rng.random()
    else:
        hue = (cls - 1) / 6.0 + rng.uniform(-0.3, 0.3)
    sat = rng.uniform(0.15, 0.9)
    val = rng.uniform(0.3, 1.0)
    return _hsv_to_rgb(hue, sat, val)


def _colour_pair(rng: np.random.Generator, cls: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Two colours for a two-tone texture: a base and a second tone at random contrast."""
    c1 = _random_colour(rng, cls)
    if rng.random() < 0.5:  # a darker (mostly) or lighter shade of the same colour
        c2 = c1 * rng.uniform(0.25, 0.6) if rng.random() < 0.7 else c1 + 0.5 * (1 - c1)
    else:
        c2 = _random_colour(rng, cls)
    contrast = rng.uniform(0.6, 1.0)
    return c1, (c1 + (c2 - c1) * contrast).astype(np.float32)


# -------------------------------------------------------------------------------------- geometry


def _rot(pts: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return pts @ np.array([[c, s], [-s, c]], dtype=np.float64)


def _ellipse_pts(a: float, b: float, angle: float, n: int = 48) -> np.ndarray:
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    return _rot(np.stack([a * np.cos(t), b * np.sin(t)], axis=1), angle)


def _shape_polygons(
    rng: np.random.Generator, cls: int, r: float
) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, float]]:
    """Polygons (filled, holes) relative to the object centre, in output pixels, and params."""
    angle = rng.uniform(0, 2 * math.pi)
    params: dict[str, float] = {"angle": angle}
    holes: list[np.ndarray] = []
    if cls == 1:  # disc
        a, b = r, r * rng.uniform(0.6, 1.0)
        params.update(a=a, b=b)
        polys = [_ellipse_pts(a, b, angle)]
    elif cls == 2:  # box
        hw, hh = r * rng.uniform(0.75, 0.95), r * rng.uniform(0.45, 0.95)
        polys = [_rot(np.array([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]]), angle)]
    elif cls == 3:  # triangle
        base = angle + np.arange(3) * 2 * math.pi / 3 + rng.uniform(-0.25, 0.25, 3)
        rad = r * rng.uniform(0.9, 1.1, 3)
        polys = [np.stack([rad * np.cos(base), rad * np.sin(base)], axis=1)]
    elif cls == 4:  # star
        k = int(rng.integers(5, 7))
        inner = rng.uniform(0.38, 0.5)
        t = angle + np.arange(2 * k) * math.pi / k
        rad = np.where(np.arange(2 * k) % 2 == 0, r, r * inner)
        polys = [np.stack([rad * np.cos(t), rad * np.sin(t)], axis=1)]
    elif cls == 5:  # ring
        a, b = r, r * rng.uniform(0.7, 1.0)
        hole = rng.uniform(0.45, 0.7)
        params.update(a=a, b=b)
        polys = [_ellipse_pts(a, b, angle)]
        holes = [_ellipse_pts(a * hole, b * hole, angle)]
    else:  # cross
        w = r * rng.uniform(0.28, 0.42)
        ln = r * rng.uniform(0.9, 1.05)
        pts = np.array(
            [[w, w], [ln, w], [ln, -w], [w, -w], [w, -ln], [-w, -ln],
             [-w, -w], [-ln, -w], [-ln, w], [-w, w], [-w, ln], [w, ln]]
        )
        polys = [_rot(pts, angle)]
    return polys, holes, params


def _to_fixed(pts: np.ndarray, ox: int, oy: int) -> np.ndarray:
    """Output-pixel coordinates -> hi-res fixed-point cv2 coordinates relative to (ox, oy)."""
    hi = pts * _SS - 0.5 - np.array([ox, oy])
    return np.round(hi * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)


# -------------------------------------------------------------------------------------- textures


def _stripes(x: FloatArray, period: float, phase: float, sharp: float) -> FloatArray:
    return np.clip(0.5 + 0.5 * sharp * np.sin(x * (2 * math.pi / period) + phase), 0.0, 1.0)


def _checker(x: FloatArray, y: FloatArray, cell: float) -> FloatArray:
    return ((np.floor(x / cell) + np.floor(y / cell)) % 2).astype(np.float32)


def _value_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> FloatArray:
    """Smooth random noise in [0, 1] with features about ``cell`` hi-res pixels wide."""
    gh = max(2, int(math.ceil(shape[0] / cell)) + 1)
    gw = max(2, int(math.ceil(shape[1] / cell)) + 1)
    grid = rng.random((gh, gw), dtype=np.float32)
    return cv2.resize(grid, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def _object_texture(
    rng: np.random.Generator, cls: int, r: float, xl: FloatArray, yl: FloatArray,
    params: dict[str, float],
) -> FloatArray:
    """Class-typical texture value t in [0, 1] at local coordinates (output pixels)."""
    ta = rng.uniform(0, 2 * math.pi)
    c, s = math.cos(ta), math.sin(ta)
    xr, yr = xl * c + yl * s, -xl * s + yl * c
    if cls == 1:  # disc: sphere-like shading in the ellipse frame
        ca, sa = math.cos(params["angle"]), math.sin(params["angle"])
        u = (xl * ca + yl * sa) / params["a"]
        v = (-xl * sa + yl * ca) / params["b"]
        z = np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, 1.0))
        elev = rng.uniform(0.4, 1.1)
        lx, ly, lz = math.cos(ta) * math.cos(elev), math.sin(ta) * math.cos(elev), math.sin(elev)
        shade = np.clip(u * lx + v * ly + z * lz, 0.0, 1.0)
        return shade ** rng.uniform(0.8, 2.0)
    if cls == 2:  # box: stripes
        return _stripes(xr, r * rng.uniform(0.3, 0.55), rng.uniform(0, 6.3), rng.uniform(1.5, 6.0))
    if cls == 3:  # triangle: checker
        return _checker(xr + rng.uniform(0, r), yr + rng.uniform(0, r), r * rng.uniform(0.28, 0.45))
    if cls == 4:  # star: dots on a square lattice
        sp = r * rng.uniform(0.26, 0.38)
        dx = (xr / sp + rng.random()) % 1.0 - 0.5
        dy = (yr / sp + rng.random()) % 1.0 - 0.5
        rad = rng.uniform(0.22, 0.34)
        return np.clip((rad - np.sqrt(dx * dx + dy * dy)) * sp * 2.0 + 0.5, 0.0, 1.0)
    if cls == 5:  # ring: radial spokes
        k = int(rng.integers(5, 11))
        theta = np.arctan2(yl, xl)
        return np.clip(0.5 + 2.5 * np.sin(k * theta + rng.uniform(0, 6.3)), 0.0, 1.0)
    # cross: grid lines
    sp = r * rng.uniform(0.3, 0.45)
    lw = rng.uniform(0.18, 0.3)
    fx = (xr / sp + rng.random()) % 1.0
    fy = (yr / sp + rng.random()) % 1.0
    return ((fx < lw) | (fy < lw)).astype(np.float32)


# ------------------------------------------------------------------------------------ background


def _background(rng: np.random.Generator, h: int, w: int, flat: bool = False) -> FloatArray:
    """Background (h, w, 3) float32 in [0, 1], at output resolution (it is smooth or faint); ``flat``:
    a two-colour gradient only."""
    yy = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    xx = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    kind = 0 if flat else rng.integers(0, 3)
    c1, c2 = _random_colour(rng), _random_colour(rng)
    if kind in (0, 2):  # linear gradient between two colours
        a = rng.uniform(0, 2 * math.pi)
        t = np.clip(0.5 + 0.5 * (xx * math.cos(a) + yy * math.sin(a)), 0, 1)
    else:  # smooth noise blending two colours
        t = _value_noise(rng, (h, w), rng.uniform(0.15, 0.45) * min(h, w))
    img = c1 + (c2 - c1) * t[..., None]
    if kind == 2:  # plus a little smooth colour noise
        cell = rng.uniform(0.15, 0.5) * min(h, w)
        gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
        grid = rng.random((gh, gw, 3), dtype=np.float32) - 0.5
        img = img + cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC) * rng.uniform(0.2, 0.5)
    img = np.ascontiguousarray(img, dtype=np.float32)
    if not flat and rng.random() < 0.3:  # faint texture of the kinds objects use
        a = rng.uniform(0, 2 * math.pi)
        xs = np.arange(w, dtype=np.float32)[None, :]
        ys = np.arange(h, dtype=np.float32)[:, None]
        xr = xs * math.cos(a) + ys * math.sin(a)
        yr = -xs * math.sin(a) + ys * math.cos(a)
        kind_t = rng.integers(0, 3)
        scale = max(3.0, min(h, w) * rng.uniform(0.05, 0.14))
        if kind_t == 0:
            t = _stripes(xr, scale, rng.uniform(0, 6.3), rng.uniform(1, 4))
        elif kind_t == 1:
            t = _checker(xr, yr, scale / 2 + 0.5)
        else:
            t = _value_noise(rng, (h, w), rng.uniform(1.0, 3.0))
        img = img + (t[..., None] - 0.5) * _random_colour(rng) * rng.uniform(0.05, 0.2)
    return img


def _clutter(rng: np.random.Generator, img: FloatArray) -> None:
    """Draw unlabeled distractors (thin lines, polylines, speckles) into ``img`` (output res)."""
    h, w = img.shape[:2]
    one = 1 << _SHIFT

    def fixed(p: np.ndarray) -> np.ndarray:  # output pixel coords (centre at i+0.5) -> cv2
        return np.round((p - 0.5) * one).astype(np.int32).reshape(-1, 1, 2)

    n = int(rng.integers(0, 2 + int(4 * h * w / 4096) + 1))
    for _ in range(n):
        col = tuple(float(c) for c in _random_colour(rng))
        kind = rng.random()
        if kind < 0.35:  # thin straight line
            p = fixed(rng.uniform([0, 0], [w, h], size=(2, 2))).reshape(-1, 2)
            cv2.line(img, tuple(map(int, p[0])), tuple(map(int, p[1])), col, 1, cv2.LINE_AA, _SHIFT)
        elif kind < 0.55:  # short polyline
            start = rng.uniform([0, 0], [w, h])
            steps = rng.normal(0, 0.08 * min(h, w), size=(int(rng.integers(3, 6)), 2))
            cv2.polylines(img, [fixed(start + np.cumsum(steps, axis=0))], False, col, 1,
                          cv2.LINE_AA, _SHIFT)
        else:  # speckle: a small soft dot
            cx, cy = rng.uniform([0, 0], [w, h])
            rad = rng.uniform(0.6, 1.4)
            xa, xb = max(0, int(cx - 2 * rad)), min(w, int(cx + 2 * rad) + 1)
            ya, yb = max(0, int(cy - 2 * rad)), min(h, int(cy + 2 * rad) + 1)
            d2 = ((np.arange(xa, xb) + 0.5 - cx)[None, :] ** 2
                  + (np.arange(ya, yb) + 0.5 - cy)[:, None] ** 2)
            alpha = np.clip(1.5 * np.exp(-d2 / (2 * rad * rad)), 0, 1).astype(np.float32)[..., None]
            patch = img[ya:yb, xa:xb]
            patch += (np.array(col, dtype=np.float32) - patch) * alpha


# ----------------------------------------------------------------------------------- photometric


def _photometric(rng: np.random.Generator, img: FloatArray, flat: bool = False) -> np.ndarray:
    """Lighting, blur, noise and JPEG on an output-resolution float image -> uint8 RGB (``flat``:
    lighting only)."""
    h, w = img.shape[:2]
    mean = img.mean(axis=(0, 1), keepdims=True)
    img = (img - mean) * rng.uniform(0.7, 1.25) + mean
    img = img * rng.uniform(0.75, 1.2)
    a = rng.uniform(0, 2 * math.pi)
    yy = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    xx = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    ramp = 1.0 + rng.uniform(0.0, 0.35) * (xx * math.cos(a) + yy * math.sin(a))
    img = np.clip(img * ramp[..., None], 0.0, 1.0) ** rng.uniform(0.75, 1.35)
    if not flat and rng.random() < 0.35:
        sigma = rng.uniform(0.3, 0.7) * min(h, w) / 64.0
        img = cv2.GaussianBlur(img, (0, 0), sigmaX=max(sigma, 0.3))
    if not flat:
        img = img + rng.normal(0.0, rng.uniform(0.0, 5.0) / 255.0, size=img.shape).astype(np.float32)
    out = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if not flat and rng.random() < 0.15:
        quality = int(rng.integers(40, 91))
        ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    return np.ascontiguousarray(out)


# ---------------------------------------------------------------------------------------- public


STYLES = ("photo", "flat")


def render_scene(seed: int, size: tuple[int, int] = (64, 64), style: str = "photo") -> tuple[np.ndarray, np.ndarray]:
    """Render scene number ``seed`` of the default data set.

    Args:
        seed: any non-negative integer; the same seed, size and style always give identical arrays.
        size: ``(H, W)`` of the output, each at least 8.
        style: ``photo`` (the default: backgrounds with noise and faint textures, blur, sensor noise,
            JPEG) or ``flat`` (two-colour gradient backgrounds, lighting only: the same shapes,
            textures, occlusion and clutter in a distribution a small generative model learns sooner).

    Returns:
        ``(image, mask)``: image ``(H, W, 3) uint8`` RGB and mask ``(H, W) uint8`` with class ids
        in ``[0, len(CLASS_NAMES))`` (see ``CLASS_NAMES``).
    """
    h, w = int(size[0]), int(size[1])
    if h < _MIN_SIZE or w < _MIN_SIZE:
        raise ValueError(f"render_scene: size must be at least {_MIN_SIZE}x{_MIN_SIZE}, got {size}")
    if style not in STYLES:
        raise ValueError(f"render_scene: style must be one of {STYLES}, got {style!r}")
    flat = style == "flat"
    rng = np.random.default_rng(seed)
    hh, ww = h * _SS, w * _SS
    bg = _background(rng, h, w, flat)
    _clutter(rng, bg)
    # objects are drawn at _SS x resolution into a premultiplied RGB + coverage layer
    layer = np.zeros((hh, ww, 4), dtype=np.float32)
    lab = np.zeros((hh, ww), dtype=np.uint8)

    short = min(h, w)
    for _ in range(int(rng.choice([1, 2, 3, 4], p=[0.2, 0.35, 0.3, 0.15]))):
        cls = int(rng.integers(1, len(CLASS_NAMES)))
        r = short * rng.uniform(0.18, 0.38) * _SIZE_MULT[cls]
        cx, cy = rng.uniform(-0.05, 1.05) * w, rng.uniform(-0.05, 1.05) * h
        polys, holes, params = _shape_polygons(rng, cls, r)
        c1, c2 = _colour_pair(rng, cls)
        allpts = np.concatenate(polys) + (cx, cy)
        x0 = max(0, int(math.floor(allpts[:, 0].min() * _SS)) - 1)
        y0 = max(0, int(math.floor(allpts[:, 1].min() * _SS)) - 1)
        x1 = min(ww, int(math.ceil(allpts[:, 0].max() * _SS)) + 2)
        y1 = min(hh, int(math.ceil(allpts[:, 1].max() * _SS)) + 2)
        if x1 <= x0 or y1 <= y0:  # entirely outside the frame
            continue
        m = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
        cv2.fillPoly(m, [_to_fixed(p + (cx, cy), x0, y0) for p in polys], 1, cv2.LINE_8, _SHIFT)
        if holes:
            cv2.fillPoly(m, [_to_fixed(p + (cx, cy), x0, y0) for p in holes], 0, cv2.LINE_8, _SHIFT)
        sel = m.astype(bool)
        if not sel.any():
            continue
        # keep objects visible: push their colours away from a too similar background
        under = bg[y0 // _SS : y1 // _SS + 1, x0 // _SS : x1 // _SS + 1].reshape(-1, 3).mean(0)
        if np.abs(0.5 * (c1 + c2) - under).sum() < 0.6:
            if under.mean() < 0.5:
                c1, c2 = c1 + (1 - c1) * 0.6, c2 + (1 - c2) * 0.6
            else:
                c1, c2 = c1 * 0.4, c2 * 0.4
        iy, ix = np.nonzero(sel)
        xl = (ix + (x0 + 0.5)).astype(np.float32) / _SS - np.float32(cx)
        yl = (iy + (y0 + 0.5)).astype(np.float32) / _SS - np.float32(cy)
        t = _object_texture(rng, cls, r, xl, yl, params).astype(np.float32)
        rgba = np.empty((t.size, 4), dtype=np.float32)
        rgba[:, :3] = c1 + (c2 - c1) * t[:, None]
        rgba[:, 3] = 1.0
        layer[iy + y0, ix + x0] = rgba
        lab[iy + y0, ix + x0] = cls

    small = cv2.resize(layer, (w, h), interpolation=cv2.INTER_AREA)
    img = small[..., :3] + (1.0 - small[..., 3:]) * bg
    mask = np.ascontiguousarray(lab[_SS // 2 :: _SS, _SS // 2 :: _SS])
    return _photometric(rng, img, flat), mask
