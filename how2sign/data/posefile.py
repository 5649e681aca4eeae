"""pose-format `.pose` files -> the OpenPose 137-point array (see `how2sign.features`).

Two layouts are understood; anything else is a DataError naming the file and its components.

* OpenPose: components pose_keypoints_2d (25), face_keypoints_2d (70), hand_left_keypoints_2d (21),
  hand_right_keypoints_2d (21), as written by `pose_format.utils.openpose`. Copied as they are.
* MediaPipe Holistic: POSE_LANDMARKS (33), FACE_LANDMARKS (468, or 478 with iris refinement),
  LEFT_HAND_LANDMARKS (21), RIGHT_HAND_LANDMARKS (21); other components (POSE_WORLD_LANDMARKS) are
  ignored. Mapped onto the 137 points:
    - body: nose, shoulders, elbows, wrists, hips, knees, ankles, heels, eyes, ears and foot tips go to
      their BODY_25 slots (`HOLISTIC_BODY_TO_BODY25`); Neck = shoulder midpoint and MidHip = hip
      midpoint, seen only when both ends are; the small toes stay missing;
    - hands 1:1 (both use the same 21-point hand model);
    - face: the 68 dlib-style OpenPose face points from the face mesh by `FACE_MESH_TO_OPENPOSE`, and
      the pupils (68, 69) from the refined iris centres 468 / 473 when the mesh has 478 points.
  Holistic coordinates are pixels in pose-format's writer, but may be normalised to 0-1: when every
  seen x and y lies within [-1, 2], they are multiplied by the header's width and height.

Only the first person is used. A point is missing where it is masked or its confidence is <= 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pose_format import Pose

from how2sign.data.errors import DataError
from how2sign.features import (
    DEFAULT_FPS,
    FACE_OFFSET,
    LEFT_HAND_OFFSET,
    NUM_HAND,
    NUM_POINTS,
    OPENPOSE_COMPONENTS,
    RIGHT_HAND_OFFSET,
)

HOLISTIC_BODY = (
    "NOSE", "LEFT_EYE_INNER", "LEFT_EYE", "LEFT_EYE_OUTER", "RIGHT_EYE_INNER", "RIGHT_EYE", "RIGHT_EYE_OUTER",
    "LEFT_EAR", "RIGHT_EAR", "MOUTH_LEFT", "MOUTH_RIGHT", "LEFT_SHOULDER", "RIGHT_SHOULDER", "LEFT_ELBOW",
    "RIGHT_ELBOW", "LEFT_WRIST", "RIGHT_WRIST", "LEFT_PINKY", "RIGHT_PINKY", "LEFT_INDEX", "RIGHT_INDEX",
    "LEFT_THUMB", "RIGHT_THUMB", "LEFT_HIP", "RIGHT_HIP", "LEFT_KNEE", "RIGHT_KNEE", "LEFT_ANKLE",
    "RIGHT_ANKLE", "LEFT_HEEL", "RIGHT_HEEL", "LEFT_FOOT_INDEX", "RIGHT_FOOT_INDEX",
)  # fmt: skip  (MediaPipe PoseLandmark order)

# Holistic body landmark index -> BODY_25 index.
HOLISTIC_BODY_TO_BODY25: dict[int, int] = {
    0: 0,  # nose
    12: 2, 14: 3, 16: 4,  # right shoulder, elbow, wrist
    11: 5, 13: 6, 15: 7,  # left shoulder, elbow, wrist
    24: 9, 26: 10, 28: 11,  # right hip, knee, ankle
    23: 12, 25: 13, 27: 14,  # left hip, knee, ankle
    5: 15, 2: 16, 8: 17, 7: 18,  # right eye, left eye, right ear, left ear
    31: 19, 29: 21, 32: 22, 30: 24,  # left foot index -> LBigToe, left heel, right foot index, right heel
}  # fmt: skip
# BODY_25 points built as the midpoint of two Holistic landmarks: Neck (shoulders), MidHip (hips).
HOLISTIC_MIDPOINTS: dict[int, tuple[int, int]] = {1: (11, 12), 8: (23, 24)}

# OpenPose face point i (dlib 68 numbering) <- face-mesh landmark FACE_MESH_TO_OPENPOSE[i].
FACE_MESH_TO_OPENPOSE: tuple[int, ...] = (
    127, 234, 132, 58, 172, 150, 149, 148, 152, 377, 378, 379, 397, 288, 361, 454, 356,  # jaw 0-16
    70, 63, 105, 66, 107,  # right eyebrow 17-21
    336, 296, 334, 293, 300,  # left eyebrow 22-26
    168, 197, 5, 4,  # nose bridge 27-30
    98, 97, 2, 326, 327,  # nose base 31-35
    33, 160, 158, 133, 153, 144,  # right eye 36-41
    362, 385, 387, 263, 373, 380,  # left eye 42-47
    61, 39, 37, 0, 267, 269, 291, 321, 314, 17, 84, 91,  # outer lips 48-59
    78, 82, 13, 312, 308, 317, 14, 87,  # inner lips 60-67
)  # fmt: skip
REFINED_PUPILS: tuple[tuple[int, int], ...] = ((68, 468), (69, 473))  # (OpenPose face index, mesh index)

HOLISTIC_SIZES = {"POSE_LANDMARKS": (33,), "FACE_LANDMARKS": (468, 478),
                  "LEFT_HAND_LANDMARKS": (21,), "RIGHT_HAND_LANDMARKS": (21,)}  # fmt: skip


class CorruptPoseFile(Exception):
    """The file could not be decoded as a .pose file (counted and skipped, unlike an unknown layout)."""


def _layout(path: Path, header) -> str:
    sizes = {c.name: len(c.points) for c in header.components}
    if list(sizes.items()) == list(OPENPOSE_COMPONENTS):
        return "openpose"
    if all(sizes.get(name) in ok for name, ok in HOLISTIC_SIZES.items()):
        return "holistic"
    described = ", ".join(f"{name}({n})" for name, n in sizes.items()) or "none"
    raise DataError(
        f"{path}: unsupported .pose layout with components {described}; expected OpenPose "
        "(pose/face/hand_left/hand_right_keypoints_2d) or MediaPipe Holistic "
        "(POSE/FACE/LEFT_HAND/RIGHT_HAND_LANDMARKS)"
    )


def _first_person(pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """(frames, points, 2) float64 and (frames, points) confidence, zeros where masked or unseen."""
    data = pose.body.data
    conf = np.asarray(pose.body.confidence, dtype=np.float64)
    frames, people, points = data.shape[:3]
    if people == 0:
        return np.zeros((frames, points, 2)), np.zeros((frames, points))
    xy = np.asarray(np.ma.getdata(data)[:, 0, :, :2], dtype=np.float64)
    mask = np.ma.getmaskarray(data)[:, 0, :, :2].any(axis=-1)
    c = conf[:, 0, :]
    missing = mask | ~(c > 0) | ~np.isfinite(xy).all(axis=-1)
    return np.where(missing[..., None], 0.0, xy), np.where(missing, 0.0, c)


def _component_slices(header) -> dict[str, slice]:
    out, start = {}, 0
    for c in header.components:
        out[c.name] = slice(start, start + len(c.points))
        start += len(c.points)
    return out


def _from_holistic(header, xy: np.ndarray, conf: np.ndarray) -> np.ndarray:
    seen = conf > 0
    if seen.any():
        vis = xy[seen]
        if vis.min() >= -1.0 and vis.max() <= 2.0 and header.dimensions.width > 2 and header.dimensions.height > 2:
            xy = xy * np.array([header.dimensions.width, header.dimensions.height], dtype=np.float64)
    frames = xy.shape[0]
    kp = np.zeros((frames, NUM_POINTS, 3))
    sl = _component_slices(header)

    def put(dst: int, src: int) -> None:
        kp[:, dst, :2] = xy[:, src]
        kp[:, dst, 2] = conf[:, src]

    body = sl["POSE_LANDMARKS"].start
    for src, dst in HOLISTIC_BODY_TO_BODY25.items():
        put(dst, body + src)
    for dst, (a, b) in HOLISTIC_MIDPOINTS.items():
        both = seen[:, body + a] & seen[:, body + b]
        kp[:, dst, :2] = np.where(both[:, None], (xy[:, body + a] + xy[:, body + b]) / 2, 0.0)
        kp[:, dst, 2] = np.where(both, np.minimum(conf[:, body + a], conf[:, body + b]), 0.0)
    face = sl["FACE_LANDMARKS"]
    for dst, src in enumerate(FACE_MESH_TO_OPENPOSE):
        put(FACE_OFFSET + dst, face.start + src)
    if face.stop - face.start >= 478:
        for dst, src in REFINED_PUPILS:
            put(FACE_OFFSET + dst, face.start + src)
    for name, offset in (("LEFT_HAND_LANDMARKS", LEFT_HAND_OFFSET), ("RIGHT_HAND_LANDMARKS", RIGHT_HAND_OFFSET)):
        for i in range(NUM_HAND):
            put(offset + i, sl[name].start + i)
    return kp


def read_pose_file(path: str | Path) -> tuple[np.ndarray, float]:
    """Read a .pose file -> ((T, 137, 3) float32 [x_px, y_px, confidence], fps).

    Raises DataError for a layout that is neither OpenPose nor Holistic, CorruptPoseFile when the
    bytes do not decode.
    """
    path = Path(path)
    try:
        pose = Pose.read(path.read_bytes())
    except OSError as exc:
        raise CorruptPoseFile(f"{path}: {exc}") from exc
    except Exception as exc:  # pose-format raises struct/index/value errors on truncated files
        raise CorruptPoseFile(f"{path}: {type(exc).__name__}: {exc}") from exc
    layout = _layout(path, pose.header)
    xy, conf = _first_person(pose)
    if layout == "openpose":
        kp = np.concatenate([xy, conf[..., None]], axis=-1)
    else:
        kp = _from_holistic(pose.header, xy, conf)
    fps = float(pose.body.fps)
    return kp.astype(np.float32), fps if np.isfinite(fps) and fps > 0 else DEFAULT_FPS
