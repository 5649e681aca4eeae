"""The How2Sign reader, .pose layouts, packed cache and batching, on small trees written into tmp_path."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from pose_format import Pose
from pose_format.numpy import NumPyPoseBody
from pose_format.pose_header import PoseHeader, PoseHeaderComponent, PoseHeaderDimensions
from pose_format.utils.openpose import load_openpose

import how2sign.data.cache as data_cache
import how2sign.data.packing as data_packing
from how2sign.data import (
    CSV_COLUMNS,
    DataError,
    PackedSplit,
    bucket_batches,
    csv_path,
    fingerprint_of,
    load_split,
    pack_split,
    padding_efficiency,
    pose_dir,
    read_csv,
)
from how2sign.data.posefile import FACE_MESH_TO_OPENPOSE, HOLISTIC_BODY_TO_BODY25, HOLISTIC_MIDPOINTS
from how2sign.features import FACE_OFFSET, NUM_POINTS, OPENPOSE_COMPONENTS

JSON_DIR = "sentence_level/{split}/rgb_front/features/openpose_output/json"


def row(name: str, sentence: str, vid: str = "vid1") -> list[str]:
    return [vid, f"{vid}-8-rgb_front", f"{vid}_{name}", name, "1.50", "4.25", sentence]


def put_csv(root: Path, rows: list[list[str]], split: str = "train", header=CSV_COLUMNS) -> Path:
    path = csv_path(root, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(r) for r in [list(header), *rows]) + "\n", encoding="utf-8")
    return path


def signer(t: int = 6, seed: int = 0, zoom: float = 1.0) -> np.ndarray:
    """(T, 137, 3) pixel keypoints; zoom=1.5 is the same signer filmed at 1920x1080."""
    rng = np.random.default_rng(seed)
    kp = np.concatenate([rng.uniform(400, 900, (t, NUM_POINTS, 2)), rng.uniform(0.3, 1, (t, NUM_POINTS, 1))], -1)
    kp[:, 2, :2], kp[:, 5, :2], kp[:, 10:25] = (540, 300), (740, 300), 0
    kp[..., :2] *= zoom
    return kp.astype(np.float32)


def person(kp: np.ndarray) -> dict:
    flat, start, out = kp.reshape(-1, 3), 0, {"person_id": [-1]}
    for key, n in OPENPOSE_COMPONENTS:
        out[key] = [float(v) for v in flat[start : start + n].reshape(-1)]
        start += n
    return out


def put_json(root: Path, name: str, frames: list, split: str = "train") -> None:
    """frames: (137, 3) arrays, None for "people": [], or a str written as-is (corrupt file)."""
    folder = root / JSON_DIR.format(split=split) / name
    folder.mkdir(parents=True, exist_ok=True)
    for i, fr in enumerate(frames):
        doc = fr if isinstance(fr, str) else json.dumps({"version": 1.3, "people": [] if fr is None else [person(fr)]})
        (folder / f"{name}_{i:012d}_keypoints.json").write_text(doc)


def json_tree(root: Path, clips: dict[str, np.ndarray], split: str = "train") -> Path:
    put_csv(root, [row(n, f"sentence {n}") for n in clips], split)
    for name, kp in clips.items():
        put_json(root, name, list(kp), split)
    return root


def put_pose(root: Path, name: str, pose: Pose, split: str = "train") -> Path:
    path = pose_dir(root, split) / f"{name}.pose"
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    pose.write(buf)
    path.write_bytes(buf.getvalue())
    return path


def pose_of(components: list[tuple[str, int]], xyz: np.ndarray, conf: np.ndarray, fps: float = 30.0) -> Pose:
    comps = [PoseHeaderComponent(n, [str(i) for i in range(k)], [], [(255, 0, 0)], "XYZC") for n, k in components]
    header = PoseHeader(0.2, PoseHeaderDimensions(1280, 720, 0), comps)
    return Pose(header, NumPyPoseBody(fps, xyz[:, None].astype(np.float32), conf[:, None].astype(np.float32)))


# ----------------------------------------------------------------------------------------------- CSV


def test_csv_reader_handles_tabs_quotes_and_dash_video_ids(tmp_path):
    path = put_csv(tmp_path, [row("a", 'He said "hi" and it\'s fine, ok.', "-x1"), row("b", "  Two words  ", "--y2")])
    with open(path, "a") as f:
        f.write("\n")  # trailing blank line is ignored
    rows = read_csv(path)
    assert [(r.video_id, r.sentence_name, r.row, r.line) for r in rows] == [("-x1", "a", 0, 2), ("--y2", "b", 1, 3)]
    assert rows[0].sentence == 'He said "hi" and it\'s fine, ok.' and rows[1].sentence == "Two words"
    assert (rows[0].start, rows[0].end, rows[0].video_name) == (1.5, 4.25, "-x1-8-rgb_front")


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("comma", "comma-separated"),
        ("six_columns", "6 columns"),
        ("renamed", "SENTENCE"),
        ("short_row", "line 3: expected 7 tab-separated fields, found 5"),
        ("bad_number", "START_REALIGNED"),
    ],
)
def test_malformed_csv_is_a_one_line_data_error_naming_the_file(tmp_path, case, needle):
    if case == "comma":
        path = csv_path(tmp_path, "train")
        path.parent.mkdir(parents=True)
        path.write_text(",".join(CSV_COLUMNS) + "\n")
    elif case == "six_columns":
        path = put_csv(tmp_path, [], header=CSV_COLUMNS[:6])
    elif case == "renamed":
        path = put_csv(tmp_path, [], header=(*CSV_COLUMNS[:6], "TEXT"))
    elif case == "short_row":
        path = put_csv(tmp_path, [row("a", "ok"), row("b", "x")[:5]])
    else:
        path = put_csv(tmp_path, [[*row("a", "ok")[:4], "soon", "2", "ok"]])
    with pytest.raises(DataError) as err:
        read_csv(path)
    assert str(path) in str(err.value) and needle in str(err.value) and "\n" not in str(err.value)


def test_missing_root_csv_and_keypoints_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="data root not found: .*nowhere"):
        load_split(tmp_path / "nowhere", "train")
    with pytest.raises(DataError) as err:
        load_split(tmp_path, "val")
    assert str(csv_path(tmp_path, "val")) in str(err.value)
    put_csv(tmp_path, [row("a", "hello")])
    with pytest.raises(DataError, match="no keypoints for split 'train'"):
        load_split(tmp_path, "train")


# ------------------------------------------------------------------------------------- JSON defects


def test_json_reader_survives_and_counts_every_defect(tmp_path):
    good = signer(t=8)
    frames = list(good)
    frames[2], frames[5] = None, "{not json"  # an empty frame and a corrupt file, both kept as empty frames
    put_csv(tmp_path, [row("good", "Good one."), row("gone", "No folder."), row("blank", "   "),
                       row("short", "Too short."), row("zero", "No frames."), row("rotten", "All corrupt."),
                       row("bodyless", "Only empty frames.")])  # fmt: skip
    put_json(tmp_path, "good", frames)
    put_json(tmp_path, "blank", list(signer()))
    put_json(tmp_path, "short", [*signer(t=3), None, None])
    (tmp_path / JSON_DIR.format(split="train") / "zero").mkdir()
    put_json(tmp_path, "rotten", ["", '{"people": [{"pose_keypoints_2d": [1, 2]}]}', "[1, 2"])
    put_json(tmp_path, "bodyless", [None] * 6)
    split = load_split(tmp_path, "train")
    s = split.summary
    assert (s.rows, s.packed, s.source, s.corrupt_files) == (7, 1, "json", 4)
    assert s.skipped == {"no keypoints": 1, "empty sentence": 1, "too short": 3, "corrupt keypoints": 1}
    assert dict(s.skipped_clips) == {"gone": "no keypoints", "blank": "empty sentence", "short": "too short",
                                     "zero": "too short", "rotten": "corrupt keypoints", "bodyless": "too short"}  # fmt: skip
    assert split.names == ["good"] and split.sentences == ["Good one."] and list(split.rows) == [0]
    assert list(split.lengths) == [8] and list(split.fps) == [24.0]
    clip = split.clip(0)
    assert not clip[2].any() and not clip[5].any() and clip[3, :, 2].sum() > 0
    assert split.summary_dict()["frames"] == 8 and "7 clips" in s.line()


def test_720p_and_1080p_clips_normalise_to_the_same_features(tmp_path):
    split = load_split(json_tree(tmp_path, {"hd": signer(seed=4), "fullhd": signer(seed=4, zoom=1.5)}), "train")
    assert split.num_points == 76
    np.testing.assert_allclose(split.clip(0), split.clip(1), atol=2e-3)
    assert np.abs(split.clip(0)[..., :2]).max() < 5


# ------------------------------------------------------------------------------------------- .pose


def test_openpose_pose_files_read_like_the_json(tmp_path):
    kp = signer(t=7, seed=1)
    kp[3] = 0
    json_split = load_split(json_tree(tmp_path / "json", {"c1": kp}), "train")
    root = tmp_path / "pose"
    put_csv(root, [row("c1", "sentence c1"), row("absent", "No file.")])
    frames = {i: {"people": [person(f)] if f.any() else []} for i, f in enumerate(kp)}
    put_pose(root, "c1", load_openpose(frames, fps=30, width=1280, height=720))
    split = load_split(root, "train")
    assert split.summary.source == "pose" and split.summary.skipped == {"no keypoints": 1}
    assert list(split.fps) == [30.0] and split.fingerprint == json_split.fingerprint
    np.testing.assert_allclose(split.clip(0), json_split.clip(0), atol=1e-3)


def holistic(t: int = 6, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(T, 553, 3) pixel Holistic landmarks (body 33, refined face 478, hands 21 + 21) and confidence."""
    rng = np.random.default_rng(seed)
    xyz = np.concatenate([rng.uniform(300, 900, (t, 553, 2)), rng.uniform(-1, 1, (t, 553, 1))], axis=-1)
    xyz[:, 12, :2], xyz[:, 11, :2] = (540, 300), (740, 300)  # right, left shoulder
    conf = np.ones((t, 553))
    conf[1, 511:532] = 0  # left hand lost in frame 1
    return xyz, conf


def holistic_as_openpose(xyz: np.ndarray, conf: np.ndarray) -> np.ndarray:
    kp = np.zeros((len(xyz), NUM_POINTS, 3))
    for src, dst in HOLISTIC_BODY_TO_BODY25.items():
        kp[:, dst] = np.c_[xyz[:, src, :2], conf[:, src]]
    for dst, (a, b) in HOLISTIC_MIDPOINTS.items():
        kp[:, dst] = np.c_[(xyz[:, a, :2] + xyz[:, b, :2]) / 2, np.ones(len(xyz))]
    for dst, src in [*enumerate(FACE_MESH_TO_OPENPOSE), (68, 468), (69, 473)]:
        kp[:, FACE_OFFSET + dst] = np.c_[xyz[:, 33 + src, :2], conf[:, 33 + src]]
    kp[:, 95:137] = np.c_[xyz[:, 511:553, :2].reshape(-1, 2), conf[:, 511:553].reshape(-1)].reshape(-1, 42, 3)
    return kp.astype(np.float32)


HOLISTIC = [("POSE_LANDMARKS", 33), ("FACE_LANDMARKS", 478), ("LEFT_HAND_LANDMARKS", 21), ("RIGHT_HAND_LANDMARKS", 21)]


@pytest.mark.parametrize("normalised", [False, True])
def test_holistic_pose_files_map_onto_the_openpose_points(tmp_path, normalised):
    xyz, conf = holistic()
    kp = holistic_as_openpose(xyz, conf)
    assert np.allclose(kp[:, 2, :2], (540, 300)) and np.allclose(kp[:, 25 + 48, :2], xyz[:, 33 + 61, :2])
    json_split = load_split(json_tree(tmp_path / "json", {"c1": kp}), "train")
    root = tmp_path / "pose"
    put_csv(root, [row("c1", "sentence c1")])
    stored = xyz / np.array([1280, 720, 1]) if normalised else xyz
    put_pose(root, "c1", pose_of([*HOLISTIC, ("POSE_WORLD_LANDMARKS", 33)], np.concatenate([stored, stored[:, :33]], 1),
                                 np.concatenate([conf, conf[:, :33]], 1), fps=25.0))  # fmt: skip
    split = load_split(root, "train")
    assert list(split.fps) == [25.0]
    np.testing.assert_allclose(split.clip(0), json_split.clip(0), atol=2e-3)
    assert not split.clip(0)[1, 34:55].any()  # the lost left hand is masked


def test_unknown_pose_layout_is_a_data_error_and_corrupt_files_are_skipped(tmp_path):
    put_csv(tmp_path, [row("bad", "Broken file."), *(row(f"ok{i}", "Fine.") for i in range(2))])
    xyz, conf = holistic()
    for i in range(2):
        put_pose(tmp_path, f"ok{i}", pose_of(HOLISTIC, xyz, conf))
    (pose_dir(tmp_path, "train") / "bad.pose").write_bytes(b"\x00\x01garbage")
    split = load_split(tmp_path, "train")
    assert len(split) == 2 and split.summary.skipped == {"corrupt keypoints": 1} and split.summary.corrupt_files == 1
    odd = put_pose(tmp_path, "ok0", pose_of([("BODY_135", 135)], np.ones((5, 135, 3)), np.ones((5, 135))))
    with pytest.raises(DataError) as err:
        pack_split(tmp_path, "train", force=True)
    assert str(odd) in str(err.value) and "BODY_135(135)" in str(err.value)


# -------------------------------------------------------------------------------------------- cache


@pytest.fixture
def parse_counter(monkeypatch):
    calls = []
    real = data_packing.read_clip

    def counting(row, *args, **kw):
        calls.append(row.sentence_name)
        return real(row, *args, **kw)

    monkeypatch.setattr(data_packing, "read_clip", counting)
    return calls


def test_cache_is_built_once_reused_and_rebuilt_when_the_csv_changes(tmp_path, parse_counter):
    root = json_tree(tmp_path, {"a": signer(t=5), "b": signer(t=9, seed=1)})
    first = load_split(root, "train")
    assert first.path == root / "h2s-packed" / "train" and len(parse_counter) == 2
    assert sorted(p.name for p in first.path.parent.iterdir()) == ["train"]  # no temp folders left
    assert {p.name for p in first.path.iterdir()} == {"features.f16", "offsets.npy", "meta.json"}
    assert isinstance(first.features, np.memmap) and first.features.dtype == np.float16
    assert first.features.shape == (14, 76, 3) and not first.features.flags.writeable
    assert list(first.offsets) == [0, 5, 14] and list(first.lengths) == [5, 9]
    mtime = (first.path / "features.f16").stat().st_mtime_ns
    again = load_split(root, "train")
    assert len(parse_counter) == 2 and (again.path / "features.f16").stat().st_mtime_ns == mtime
    assert again.fingerprint == first.fingerprint and len(first.fingerprint) == 64
    np.testing.assert_array_equal(again.clip(1), first.clip(1))
    assert pack_split(root, "train", force=True).fingerprint == first.fingerprint and len(parse_counter) == 4
    path = put_csv(root, [row("a", "sentence a"), row("b", "a changed sentence")])
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))
    changed = load_split(root, "train")
    assert len(parse_counter) == 6 and changed.fingerprint != first.fingerprint
    assert changed.sentences[1] == "a changed sentence"
    np.testing.assert_array_equal(first.clip(0), changed.clip(0))  # the old memmap stays readable


def test_feature_version_bump_rebuilds_and_explicit_cache_dir_is_used(tmp_path, parse_counter, monkeypatch):
    root = json_tree(tmp_path / "data", {"a": signer()})
    cache = tmp_path / "elsewhere" / "train"
    assert load_split(root, "train", cache).path == cache and len(parse_counter) == 1
    monkeypatch.setattr(data_cache, "FEATURE_VERSION", 999)
    monkeypatch.setattr(data_packing, "FEATURE_VERSION", 999)
    assert json.loads((load_split(root, "train", cache).path / "meta.json").read_text())["feature_version"] == 999
    assert len(parse_counter) == 2 and not (root / "h2s-packed").exists()


def test_read_only_root_falls_back_to_h2s_home(tmp_path, monkeypatch):
    root = json_tree(tmp_path / "data", {"a": signer()})
    monkeypatch.setenv("H2S_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(data_cache, "_writable", lambda folder: False)
    split = load_split(root, "train")
    assert split.path.parent.parent == tmp_path / "home" / "packed" and split.path.name == "train"
    assert len(split.path.parent.name) == 12 and load_split(root, "train").path == split.path


def test_subset_shares_the_memmap_and_fingerprints_combine(tmp_path):
    root = json_tree(tmp_path, {f"c{i}": signer(t=4 + i, seed=i) for i in range(5)})
    split = load_split(root, "train")
    sub = split.subset([3, 1])
    assert isinstance(sub, PackedSplit) and sub.features is split.features and len(sub) == 2
    assert sub.names == ["c3", "c1"] and list(sub.lengths) == [7, 5] and list(sub.rows) == [3, 1]
    np.testing.assert_array_equal(sub.clip(0), split.clip(3))
    assert sub.clip(0).dtype == np.float32 and sub.fingerprint != split.fingerprint
    assert fingerprint_of(split, sub) != fingerprint_of(sub, split) and len(fingerprint_of(split)) == 64
    with pytest.raises(IndexError):
        split.subset([5])


def test_parallel_packing_gives_the_same_cache(tmp_path):
    root = json_tree(tmp_path, {f"c{i}": signer(t=4 + i, seed=i) for i in range(6)})
    serial = load_split(root, "train")
    parallel = pack_split(root, "train", tmp_path / "par", workers=2)
    np.testing.assert_array_equal(np.asarray(serial.features), np.asarray(parallel.features))
    assert parallel.fingerprint == serial.fingerprint


def test_custom_point_selection_gets_its_own_cache(tmp_path):
    root = json_tree(tmp_path, {"a": signer()})
    small = load_split(root, "train", points=(2, 5, 0))
    assert small.num_points == 3 and small.path.name.startswith("train-") and small.points == (2, 5, 0)
    assert load_split(root, "train").num_points == 76


# ---------------------------------------------------------------------------------------- batching


def test_bucket_batches_cover_every_index_once_with_little_padding():
    lengths = np.random.default_rng(0).integers(60, 251, size=2000)
    for shuffle in (False, True):
        batches = bucket_batches(lengths, 64, shuffle=shuffle, rng=np.random.default_rng(1))
        assert sorted(i for b in batches for i in b) == list(range(2000))
        assert all(len(b) == 64 for b in batches[:-1] if not shuffle) and padding_efficiency(lengths, batches) >= 0.9
    one = bucket_batches(lengths, 64, shuffle=True, rng=np.random.default_rng(5))
    assert one == bucket_batches(lengths, 64, shuffle=True, rng=np.random.default_rng(5))
    assert one != bucket_batches(lengths, 64, shuffle=True, rng=np.random.default_rng(6))
    ordered = bucket_batches(lengths, 64, shuffle=False)
    assert list(lengths[[i for b in ordered for i in b]]) == sorted(lengths)
    assert bucket_batches([], 8, shuffle=True, rng=np.random.default_rng(0)) == []
    with pytest.raises(ValueError):
        bucket_batches(lengths, 0, shuffle=False)
