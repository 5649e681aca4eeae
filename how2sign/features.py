"""Keypoint selection, normalisation and augmentation (plain numpy).

Every keypoint source (OpenPose JSON, .pose files in OpenPose or MediaPipe Holistic layout) is first
brought into the OpenPose 137-point layout, one (T, 137, 3) float32 array of [x_px, y_px, confidence]:

    0..24    BODY_25 body   (pose_keypoints_2d)
    25..94   face, 70 pts   (face_keypoints_2d: 68 dlib-style landmarks + 2 pupils)
    95..115  left hand, 21  (hand_left_keypoints_2d)
    116..136 right hand, 21 (hand_right_keypoints_2d)

`normalise` turns that into the model's input features: the selected points, shoulder-centred and
scaled by shoulder width, as channels [x, y, visible]. Missing points are exactly (0, 0, 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .rules import NON_NEGATIVE, UNIT, Rule

# Bump whenever selection, normalisation or the stored dtype changes: packed caches record it and are
# rebuilt when it differs.
FEATURE_VERSION = 1

# Frame rate assumed when a keypoint source does not record one (How2Sign's OpenPose JSON).
DEFAULT_FPS = 24.0

NUM_BODY = 25
NUM_FACE = 70
NUM_HAND = 21
BODY_OFFSET = 0
FACE_OFFSET = NUM_BODY  # 25
LEFT_HAND_OFFSET = FACE_OFFSET + NUM_FACE  # 95
RIGHT_HAND_OFFSET = LEFT_HAND_OFFSET + NUM_HAND  # 116
NUM_POINTS = RIGHT_HAND_OFFSET + NUM_HAND  # 137

# (JSON key, number of points), in the order they are concatenated into the 137-point array.
OPENPOSE_COMPONENTS: tuple[tuple[str, int], ...] = (
    ("pose_keypoints_2d", NUM_BODY),
    ("face_keypoints_2d", NUM_FACE),
    ("hand_left_keypoints_2d", NUM_HAND),
    ("hand_right_keypoints_2d", NUM_HAND),
)

BODY_25 = (
    "Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist", "MidHip", "RHip",
    "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar", "LBigToe", "LSmallToe",
    "LHeel", "RBigToe", "RSmallToe", "RHeel",
)  # fmt: skip
NOSE, NECK, R_SHOULDER, L_SHOULDER = 0, 1, 2, 5

# Face landmark groups, as indices into the 70 face points (dlib 68 numbering + pupils 68, 69).
FACE_EYEBROWS = tuple(range(17, 27))
FACE_OUTER_LIPS = tuple(range(48, 60))

# Default selection (76 points), as indices into the 137:
#   body upper half: nose, neck, shoulders, elbows, wrists (0-7) and eyes, ears (15-18)   12 points
#   reduced face: both eyebrows (face 17-26) and the outer lip contour (face 48-59)       22 points
#   both hands, all 21 points each                                                        42 points
# Legs, feet and hips are left out: How2Sign frames the signer from the waist up.
DEFAULT_POINTS: tuple[int, ...] = (
    tuple(range(0, 8))
    + tuple(range(15, 19))
    + tuple(FACE_OFFSET + i for i in FACE_EYEBROWS + FACE_OUTER_LIPS)
    + tuple(range(LEFT_HAND_OFFSET, LEFT_HAND_OFFSET + NUM_HAND))
    + tuple(range(RIGHT_HAND_OFFSET, RIGHT_HAND_OFFSET + NUM_HAND))
)


def check_points(points: Sequence[int]) -> tuple[int, ...]:
    """Validate a point selection: non-empty, unique indices in [0, 137)."""
    pts = tuple(int(p) for p in points)
    if not pts:
        raise ValueError("point selection is empty")
    if len(set(pts)) != len(pts):
        raise ValueError("point selection has duplicate indices")
    bad = [p for p in pts if not 0 <= p < NUM_POINTS]
    if bad:
        raise ValueError(f"point indices out of range 0..{NUM_POINTS - 1}: {bad[:5]}")
    return pts


def select_points(kp: np.ndarray, points: Sequence[int] = DEFAULT_POINTS) -> np.ndarray:
    """(T, 137, C) -> (T, P, C): the selected points, in selection order."""
    return kp[:, list(check_points(points)), :]


def missing_mask(kp: np.ndarray) -> np.ndarray:
    """(T, N, 3) -> (T, N) bool: a point is missing when confidence <= 0, x = y = 0 or not finite."""
    x, y, c = kp[..., 0], kp[..., 1], kp[..., 2]
    finite = np.isfinite(x) & np.isfinite(y) & np.isfinite(c)
    return ~finite | (c <= 0) | ((x == 0) & (y == 0))


def reference_frame(kp: np.ndarray, missing: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-clip centre (2,) and scale from 137-point keypoints, in that order of preference:

    1. some frame has both shoulders: centre = mean shoulder midpoint, scale = mean shoulder width,
       both over those frames (pose-format's normalize() with the shoulders as reference);
    2. some frame has the neck and one shoulder: centre = mean neck, scale = 2 x mean neck-shoulder
       distance over those frames;
    3. anything is seen: centre = middle of the bounding box of all seen points over the clip,
       scale = half its larger side;
    4. nothing is seen: centre 0, scale 1 (every output point is missing anyway).
    A rule whose scale is not positive falls through to the next one.
    """
    xy = kp[..., :2].astype(np.float64)
    seen = ~missing
    both = seen[:, R_SHOULDER] & seen[:, L_SHOULDER]
    if both.any():
        r, left = xy[both, R_SHOULDER], xy[both, L_SHOULDER]
        scale = float(np.linalg.norm(r - left, axis=-1).mean())
        if scale > 1e-6:
            return ((r + left) / 2).mean(axis=0), scale
    for shoulder in (R_SHOULDER, L_SHOULDER):
        ok = seen[:, NECK] & seen[:, shoulder]
        if ok.any():
            neck = xy[ok, NECK]
            scale = 2.0 * float(np.linalg.norm(neck - xy[ok, shoulder], axis=-1).mean())
            if scale > 1e-6:
                return neck.mean(axis=0), scale
    if seen.any():
        pts = xy[seen]
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        scale = float((hi - lo).max()) / 2
        return (lo + hi) / 2, scale if scale > 1e-6 else 1.0
    return np.zeros(2), 1.0


def normalise(kp: np.ndarray, points: Sequence[int] = DEFAULT_POINTS) -> np.ndarray:
    """(T, 137, 3) [x_px, y_px, confidence] -> (T, P, 3) float32 [x, y, visible].

    Coordinates are centred and scaled per clip (see `reference_frame`), so clips filmed at 1280x720
    and 1920x1080 give the same features. Missing points are (0, 0, 0).
    """
    kp = np.asarray(kp, dtype=np.float32)
    if kp.ndim != 3 or kp.shape[1:] != (NUM_POINTS, 3):
        raise ValueError(f"expected keypoints shaped (T, {NUM_POINTS}, 3), got {kp.shape}")
    pts = list(check_points(points))
    missing = missing_mask(kp)
    centre, scale = reference_frame(kp, missing)
    out = np.zeros((kp.shape[0], len(pts), 3), dtype=np.float32)
    sel_missing = missing[:, pts]
    xy = (kp[:, pts, :2].astype(np.float64) - centre) / scale
    out[..., :2] = np.where(sel_missing[..., None], 0.0, xy)
    out[..., 2] = ~sel_missing
    return out


# The legal range of each augmentation knob. TrainConfig checks its aug_* fields with these same rules,
# so a config it accepts never fails here.
AUGMENT_RULES: dict[str, Rule] = {"frame_dropout": UNIT, "speed": UNIT, "noise": NON_NEGATIVE,
                                  "rotate": NON_NEGATIVE, "scale": UNIT, "shear": NON_NEGATIVE}


def _check_knob(name: str, value: float) -> float:
    problem = AUGMENT_RULES[name].problem(value)
    if problem:
        raise ValueError(f"augmentation {name} {problem}")
    return float(value)


def drop_frames(clip: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
    """Drop each frame with probability p; at least one frame always survives."""
    keep = rng.random(clip.shape[0]) >= p
    if not keep.any():
        keep[rng.integers(clip.shape[0])] = True
    return clip[keep]


def change_speed(clip: np.ndarray, rng: np.random.Generator, speed: float) -> np.ndarray:
    """Resample time by a factor f in [1 - speed, 1 + speed]; T' = round(T / f) frames.

    x, y are linearly interpolated between the two neighbouring frames when both see the point, and
    taken from the nearest frame otherwise; the visible flag always comes from the nearest frame, so a
    missing point stays (0, 0, 0).
    """
    t = clip.shape[0]
    factor = rng.uniform(1.0 - speed, 1.0 + speed)
    new_t = max(1, round(t / factor))
    pos = np.linspace(0.0, t - 1, new_t) if new_t > 1 else np.zeros(1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, t - 1)
    w = (pos - lo)[:, None, None].astype(np.float32)  # (T', 1, 1)
    nearest = np.where(pos - lo < 0.5, lo, hi)
    out = clip[nearest].copy()
    both = (clip[lo, :, 2] > 0) & (clip[hi, :, 2] > 0)  # (T', P)
    lerp = clip[lo, :, :2] * (1 - w) + clip[hi, :, :2] * w
    out[..., :2] = np.where(both[..., None], lerp, out[..., :2])
    return out


def affine(clip: np.ndarray, rng: np.random.Generator, rotate: float, scale: float, shear: float) -> np.ndarray:
    """One random rotation (degrees), scale and shear per clip, about the origin, visible points only."""
    theta = np.deg2rad(rng.uniform(-rotate, rotate)) if rotate else 0.0
    k = rng.uniform(1.0 - scale, 1.0 + scale) if scale else 1.0
    s = rng.uniform(-shear, shear) if shear else 0.0
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    matrix = (rot @ np.array([[k, 0.0], [0.0, k]]) @ np.array([[1.0, s], [0.0, 1.0]])).astype(np.float32)
    out = clip.copy()
    visible = clip[..., 2:3] > 0
    out[..., :2] = np.where(visible, clip[..., :2] @ matrix.T, 0.0)
    return out


def add_noise(clip: np.ndarray, rng: np.random.Generator, std: float) -> np.ndarray:
    """Gaussian noise on x, y of visible points."""
    out = clip.copy()
    visible = clip[..., 2:3] > 0
    noise = rng.normal(0.0, std, size=clip[..., :2].shape).astype(np.float32)
    out[..., :2] = np.where(visible, clip[..., :2] + noise, 0.0)
    return out


def augment(
    clip: np.ndarray,
    rng: np.random.Generator,
    *,
    frame_dropout: float = 0.0,
    speed: float = 0.0,
    noise: float = 0.0,
    rotate: float = 0.0,
    scale: float = 0.0,
    shear: float = 0.0,
) -> np.ndarray:
    """Plan B augmentations of one normalised clip (T, P, 3) -> (T', P, 3) float32.

    Applied in this order, each only when its knob is non-zero: frame dropout, speed change, affine
    (rotate in degrees, scale and shear as max relative amounts), Gaussian noise. All knobs at 0 return
    the input values unchanged (possibly the same array). Missing points stay (0, 0, 0).
    """
    clip = np.asarray(clip, dtype=np.float32)
    if clip.ndim != 3 or clip.shape[-1] != 3 or clip.shape[0] == 0:
        raise ValueError(f"expected a clip shaped (T>0, P, 3), got {clip.shape}")
    frame_dropout = _check_knob("frame_dropout", frame_dropout)
    speed = _check_knob("speed", speed)
    noise = _check_knob("noise", noise)
    rotate = _check_knob("rotate", rotate)
    scale = _check_knob("scale", scale)
    shear = _check_knob("shear", shear)
    if frame_dropout:
        clip = drop_frames(clip, rng, frame_dropout)
    if speed:
        clip = change_speed(clip, rng, speed)
    if rotate or scale or shear:
        clip = affine(clip, rng, rotate, scale, shear)
    if noise:
        clip = add_noise(clip, rng, noise)
    return clip
