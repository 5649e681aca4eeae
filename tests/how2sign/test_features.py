"""Point selection, normalisation and the Plan B augmentations."""

from __future__ import annotations

import numpy as np
import pytest

from how2sign.features import (
    DEFAULT_POINTS,
    FACE_OFFSET,
    FEATURE_VERSION,
    L_SHOULDER,
    LEFT_HAND_OFFSET,
    NECK,
    NUM_POINTS,
    R_SHOULDER,
    RIGHT_HAND_OFFSET,
    augment,
    normalise,
    select_points,
)

KNOBS = {"frame_dropout": 0.3, "speed": 0.3, "noise": 0.05, "rotate": 15.0, "scale": 0.2, "shear": 0.2}


def signer(t: int = 12, seed: int = 0, zoom: float = 1.0) -> np.ndarray:
    """(T, 137, 3) pixel keypoints of a 1280x720 signer (zoom=1.5 gives the same signer at 1920x1080)."""
    rng = np.random.default_rng(seed)
    kp = np.zeros((t, NUM_POINTS, 3), dtype=np.float32)
    kp[..., :2] = rng.uniform(400, 900, size=(t, NUM_POINTS, 2))
    kp[..., 2] = rng.uniform(0.3, 1.0, size=(t, NUM_POINTS))
    kp[:, R_SHOULDER, :2] = (540, 300)
    kp[:, L_SHOULDER, :2] = (740, 300)
    kp[:, NECK, :2] = (640, 290)
    kp[:, 10:25] = 0  # legs unseen: 0, 0, 0
    kp[1, LEFT_HAND_OFFSET:RIGHT_HAND_OFFSET, 2] = 0  # left hand lost in frame 1 (confidence 0)
    kp[2, RIGHT_HAND_OFFSET, :2] = 0  # x = y = 0 with a confidence: also missing
    kp[..., :2] *= zoom
    return kp


def test_default_points_cover_upper_body_hands_and_reduced_face():
    pts = DEFAULT_POINTS
    assert len(set(pts)) == len(pts) == 76
    assert set(range(8)) <= set(pts) and set(range(15, 19)) <= set(pts)
    assert set(range(LEFT_HAND_OFFSET, NUM_POINTS)) <= set(pts)
    assert sum(FACE_OFFSET <= p < LEFT_HAND_OFFSET for p in pts) == 22
    assert not set(range(8, 15)) & set(pts)
    assert isinstance(FEATURE_VERSION, int)


def test_select_points_keeps_order_and_rejects_bad_indices():
    kp = signer()
    sel = select_points(kp, (5, 2, 100))
    assert sel.shape == (12, 3, 3) and np.array_equal(sel[:, 0], kp[:, 5]) and np.array_equal(sel[:, 2], kp[:, 100])
    with pytest.raises(ValueError):
        select_points(kp, (0, 137))
    with pytest.raises(ValueError):
        select_points(kp, (1, 1))


def test_normalise_centres_on_shoulders_and_scales_by_shoulder_width():
    out = normalise(signer())
    assert out.dtype == np.float32 and out.shape == (12, len(DEFAULT_POINTS), 3)
    r, left = DEFAULT_POINTS.index(R_SHOULDER), DEFAULT_POINTS.index(L_SHOULDER)
    np.testing.assert_allclose(out[:, r], [[-0.5, 0.0, 1.0]] * 12, atol=1e-6)
    np.testing.assert_allclose(out[:, left], [[0.5, 0.0, 1.0]] * 12, atol=1e-6)


def test_missing_points_are_masked_not_left_at_pixel_zero():
    out = normalise(signer())
    lh = DEFAULT_POINTS.index(LEFT_HAND_OFFSET)
    rh = DEFAULT_POINTS.index(RIGHT_HAND_OFFSET)
    assert np.all(out[1, lh : lh + 21] == 0)
    assert np.all(out[2, rh] == 0)
    assert np.all(out[0, lh : lh + 21, 2] == 1)
    assert np.all((out[..., 2] == 0) <= np.all(out[..., :2] == 0, axis=-1))


def test_1080p_and_720p_clips_give_the_same_features():
    np.testing.assert_allclose(normalise(signer(zoom=1.0)), normalise(signer(zoom=1.5)), atol=1e-5)


def test_reference_is_the_clip_mean_over_frames_with_both_shoulders():
    kp = signer(t=4)
    kp[0, L_SHOULDER] = 0  # frame 0 lacks a shoulder: not used for the reference
    kp[3, :, :2] += 100  # the signer moves: the reference is the mean, so frame 3 is offset
    out = normalise(kp)
    r = DEFAULT_POINTS.index(R_SHOULDER)
    centre = np.array([(640 + 640 + 740) / 3, (300 + 300 + 400) / 3])  # mean shoulder midpoint, frames 1-3
    np.testing.assert_allclose(out[1, r, :2], (np.array([540, 300]) - centre) / 200, atol=1e-5)
    np.testing.assert_allclose(out[3, r, :2], (np.array([640, 400]) - centre) / 200, atol=1e-5)


def test_fallbacks_without_both_shoulders():
    kp = signer(t=3)
    kp[:, L_SHOULDER] = 0  # neck and the right shoulder only: width = 2 x |neck - shoulder|
    out = normalise(kp, (NECK, R_SHOULDER))
    width = 2 * np.hypot(100, 10)
    np.testing.assert_allclose(out[0], [[0, 0, 1], [-100 / width, 10 / width, 1]], atol=1e-6)
    hands = np.zeros((2, NUM_POINTS, 3), dtype=np.float32)
    hands[:, 100] = (100, 100, 1)
    hands[:, 120] = (300, 200, 1)  # bounding box 200 x 100 around (200, 150): scale 100
    np.testing.assert_allclose(normalise(hands, (100, 120))[0], [[-1, -0.5, 1], [1, 0.5, 1]], atol=1e-6)
    empty = normalise(np.zeros((3, NUM_POINTS, 3), dtype=np.float32))
    assert empty.shape == (3, 76, 3) and not empty.any()


def clip() -> np.ndarray:
    return normalise(signer(t=40, seed=3))


def test_augment_with_every_knob_zero_is_the_identity():
    c = clip()
    out = augment(c, np.random.default_rng(0))
    assert out.dtype == np.float32 and np.array_equal(out, c)


@pytest.mark.parametrize("knob", sorted(KNOBS))
def test_each_augmentation_keeps_shape_masking_and_is_deterministic(knob):
    c = clip()
    a = augment(c, np.random.default_rng(7), **{knob: KNOBS[knob]})
    b = augment(c, np.random.default_rng(7), **{knob: KNOBS[knob]})
    other = augment(c, np.random.default_rng(8), **{knob: KNOBS[knob]})
    assert np.array_equal(a, b) and not np.array_equal(a, other)
    assert a.dtype == np.float32 and a.ndim == 3 and a.shape[1:] == c.shape[1:] and len(a) >= 1
    missing = a[..., 2] == 0
    assert np.all(a[missing] == 0) and set(np.unique(a[..., 2])) <= {0.0, 1.0}
    if knob in ("noise", "rotate", "scale", "shear"):
        assert a.shape == c.shape and np.array_equal(a[..., 2], c[..., 2])
    if knob == "frame_dropout":
        assert len(a) < len(c)
    if knob == "speed":
        assert round(len(c) / 1.3) <= len(a) <= round(len(c) / 0.7)


def test_all_augmentations_together_keep_missing_points_zero():
    c = clip()
    for seed in range(5):
        a = augment(c, np.random.default_rng(seed), **KNOBS)
        assert np.all(a[a[..., 2] == 0] == 0)


def test_frame_dropout_never_drops_every_frame():
    c = clip()[:3]
    for seed in range(20):
        assert len(augment(c, np.random.default_rng(seed), frame_dropout=0.99)) >= 1


def test_speed_interpolates_between_frames_where_both_are_seen():
    c = np.zeros((2, 1, 3), dtype=np.float32)
    c[:, 0] = [[0, 0, 1], [1, 2, 1]]
    out = augment(c, np.random.default_rng(0), speed=0.5)
    assert np.allclose(out[0], [0, 0, 1]) and np.allclose(out[-1], [1, 2, 1])
    c[1] = 0  # second frame missing: no blending with (0, 0)
    out = augment(np.repeat(c, 3, axis=0), np.random.default_rng(1), speed=0.5)
    assert np.all(out[out[..., 2] == 0] == 0) and np.all(out[out[..., 2] == 1] == [0, 0, 1])


def test_rotation_by_a_known_angle_turns_visible_points():
    c = np.array([[[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]], dtype=np.float32)
    rng = np.random.default_rng(0)
    angle = np.deg2rad(np.random.default_rng(0).uniform(-90, 90))
    out = augment(c, rng, rotate=90)
    np.testing.assert_allclose(out[0, 0], [np.cos(angle), np.sin(angle), 1], atol=1e-6)
    assert np.all(out[0, 1] == 0)


@pytest.mark.parametrize("bad", [{"frame_dropout": 1.0}, {"speed": -0.1}, {"scale": 1.0}, {"noise": float("nan")}])
def test_invalid_knobs_are_rejected(bad):
    with pytest.raises(ValueError):
        augment(clip(), np.random.default_rng(0), **bad)
