"""how2sign.synthetic: exact How2Sign layout, determinism, recorded defects, learnable signs."""

from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from how2sign import synthetic
from how2sign.synthetic import (
    FPS,
    SPLITS,
    VOCABULARY,
    CorpusInfo,
    default_root,
    ensure_default_corpus,
    make_signers,
    make_signs,
    render_clip,
    write_corpus,
)

SIZES = {"train": 20, "val": 6, "test": 6}
HEADER = ["VIDEO_ID", "VIDEO_NAME", "SENTENCE_ID", "SENTENCE_NAME", "START_REALIGNED", "END_REALIGNED",
          "SENTENCE"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> CorpusInfo:
    return write_corpus(tmp_path_factory.mktemp("syn") / "corpus", seed=0, **SIZES)


def rows(root: Path, split: str) -> list[list[str]]:
    path = root / "sentence_level" / split / "text/en/raw_text/re_aligned" / f"how2sign_realigned_{split}.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t") == HEADER
    return [line.split("\t") for line in lines[1:]]


def clip_dir(root: Path, split: str, name: str) -> Path:
    return root / "sentence_level" / split / "rgb_front/features/openpose_output/json" / name


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def frames(folder: Path) -> list[dict | None]:
    """Parsed frames in order; None for a corrupt file."""
    out = []
    for p in sorted(folder.iterdir()):
        try:
            out.append(json.loads(p.read_text()))
        except json.JSONDecodeError:
            out.append(None)
    return out


def glosses(sentence: str) -> list[str]:
    return [w for w in re.findall(r"[a-z]+", sentence.lower()) if w in VOCABULARY]


def test_same_seed_same_bytes_other_seed_differs(corpus, tmp_path):
    again = write_corpus(tmp_path / "again", seed=0, **SIZES)
    other = write_corpus(tmp_path / "other", seed=1, **SIZES)
    assert again.frames == corpus.frames and again.defects == corpus.defects
    assert tree_hash(again.root) == tree_hash(corpus.root)
    assert tree_hash(other.root) != tree_hash(corpus.root)


def test_translation_rows_follow_the_release(corpus):
    for split in SPLITS:
        table = rows(corpus.root, split)
        assert len(table) == corpus.counts[split] == SIZES[split]
        ids = {r[0] for r in table}
        assert all(len(v) == 11 and re.fullmatch(r"[A-Za-z0-9_-]+", v) for v in ids)
        assert any(v.startswith("-") for v in ids) and len(ids) < len(table)  # several sentences per video
        if split == "train":
            assert any(v[0] == "-" and v[1] != "-" for v in ids) and any(v.startswith("--") for v in ids)
        for vid, vname, sid, sname, start, end, sentence in table:
            assert re.fullmatch(re.escape(vid) + r"-\d-rgb_front", vname)
            assert re.fullmatch(re.escape(vid) + r"_\d+", sid)
            assert sname == sid + vname[len(vid):]
            assert re.fullmatch(r"\d+\.\d\d", start) and re.fullmatch(r"\d+\.\d\d", end)
            folder = clip_dir(corpus.root, split, sname)
            if folder.is_dir():
                assert round((float(end) - float(start)) * FPS) == len(list(folder.iterdir()))
            if sentence:
                assert sentence[0].isupper() and sentence.endswith(".")
                signed = glosses(sentence)
                assert 2 <= len(signed) <= 6 and len(sentence.split()) > len(signed)  # function words


def test_keypoint_files_follow_openpose_1_3(corpus):
    folder = next(p for p in sorted(clip_dir(corpus.root, "test", "").iterdir()))
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"{folder.name}_{i:012d}_keypoints.json" for i in range(len(names))]
    people = [f["people"][0] for f in frames(folder) if f and f["people"]]
    assert people
    for person in people:
        assert person["person_id"] == [-1]
        sizes = [len(person[k]) for k in ("pose_keypoints_2d", "face_keypoints_2d",
                                           "hand_left_keypoints_2d", "hand_right_keypoints_2d")]
        assert sizes == [75, 210, 63, 63]
        assert all(person[k] == [] for k in ("pose_keypoints_3d", "face_keypoints_3d",
                                             "hand_left_keypoints_3d", "hand_right_keypoints_3d"))
        pts = np.array(person["pose_keypoints_2d"] + person["face_keypoints_2d"]
                       + person["hand_left_keypoints_2d"] + person["hand_right_keypoints_2d"]).reshape(137, 3)
        assert np.all(pts[pts[:, 2] == 0] == 0)  # a missing point is 0,0,0
        assert np.all(pts[[10, 11, 13, 14]] == 0)  # knees and ankles are below the frame
    assert json.loads((folder / names[0]).read_text())["version"] == 1.3


def test_defects_on_disk_match_the_record(corpus, tmp_path):
    total_files = 0
    for split in SPLITS:
        found = dict.fromkeys(corpus.defects[split], 0)
        empty = 0
        for *_, sname, _start, _end, sentence in rows(corpus.root, split):
            folder = clip_dir(corpus.root, split, sname)
            found["empty_sentence"] += sentence == ""
            if not folder.is_dir():
                found["missing_folder"] += 1
                continue
            parsed = frames(folder)
            total_files += len(parsed)
            found["short_clip"] += len(parsed) <= 3
            found["corrupt_json"] += sum(f is None for f in parsed)
            empty += sum(f is not None and f["people"] == [] for f in parsed)
        assert found == corpus.defects[split], split
        assert empty == corpus.empty_frames[split]
    assert corpus.defects["train"] == {"missing_folder": 1, "empty_sentence": 1, "short_clip": 1, "corrupt_json": 1}
    assert sum(corpus.defects["val"].values()) >= 1 and sum(corpus.defects["test"].values()) == 0
    assert total_files == corpus.frames
    assert CorpusInfo.read(corpus.root) == corpus

    clean = write_corpus(tmp_path / "clean", train=10, val=2, test=2, defects=False)
    assert all(n == 0 for split in SPLITS for n in clean.defects[split].values())
    assert all(clip_dir(clean.root, "train", r[3]).is_dir() and r[6] for r in rows(clean.root, "train"))


def test_mixed_resolutions_scale_the_whole_skeleton(corpus):
    widths = []
    for *_, sname, _s, _e, _t in rows(corpus.root, "train"):
        folder = clip_dir(corpus.root, "train", sname)
        if not folder.is_dir():
            continue
        for f in frames(folder):
            if f and f["people"]:
                pose = np.array(f["people"][0]["pose_keypoints_2d"]).reshape(25, 3)
                hands = np.array(f["people"][0]["hand_right_keypoints_2d"]).reshape(21, 3)
                if pose[2, 2] > 0 and pose[5, 2] > 0:
                    w = np.linalg.norm(pose[5, :2] - pose[2, :2])
                    widths.append(w)
                    limit = (1920, 1080) if w > 245 else (1280, 720)  # 170-230 px at 720p, x1.5 at 1080p
                    assert np.all(hands[:, :2].max(0) < limit) and np.all(pose[:, :2].max(0) < limit)
    widths = np.array(widths)
    hd = widths > 245
    assert 0 < hd.mean() < 0.5
    assert np.all((widths[~hd] > 150) & (widths[~hd] < 245)) and np.all(widths[hd] < 370)


def test_frame_lengths_and_held_out_word_sequences(corpus):
    lengths, seqs = [], {}
    for split in SPLITS:
        seqs[split] = {tuple(glosses(r[6])) for r in rows(corpus.root, split) if r[6]}
        for r in rows(corpus.root, split):
            folder = clip_dir(corpus.root, split, r[3])
            if folder.is_dir():
                lengths.append(len(list(folder.iterdir())))
    assert 20 <= np.mean(lengths) <= 60
    assert not seqs["train"] & seqs["val"] and not seqs["train"] & seqs["test"] and not seqs["val"] & seqs["test"]


def _normalised_right_hand(kp: np.ndarray, steps: int = 12) -> np.ndarray:
    """Shoulder-centred, shoulder-width-scaled right hand resampled to `steps` frames, flattened."""
    xy, conf = kp[..., :2], kp[..., 2]
    ok = (conf[:, 2] > 0) & (conf[:, 5] > 0)
    centre = (xy[ok, 2] + xy[ok, 5]).mean(0) / 2
    width = np.linalg.norm(xy[ok, 5] - xy[ok, 2], axis=-1).mean()
    hand = np.where(conf[:, 116:, None] > 0, (xy[:, 116:] - centre) / width, 0.0)
    return hand[np.round(np.linspace(0, len(kp) - 1, steps)).astype(int)].ravel()


def test_signs_are_learnable_across_signers():
    """Nearest centroid on six signers recognises one-word clips of two unseen signers."""
    signs, signers = make_signs(0), make_signers(0)
    feats = np.array([[_normalised_right_hand(render_clip(signs, [w], signers[s], np.random.default_rng([s, i]),
                                                          res=1.5 if s % 2 else 1.0))
                       for i, w in enumerate(VOCABULARY)] for s in range(8)])  # (signers, words, D)
    centroids = feats[:6].mean(0)
    dist = ((feats[6:, :, None] - centroids[None, None]) ** 2).sum(-1)  # (2, words, words)
    accuracy = (dist.argmin(-1) == np.arange(len(VOCABULARY))).mean()
    assert accuracy >= 0.85, accuracy  # chance is 1/60
    # Unseen signers 6 and 7, around the mean of all signs: same word correlates, different words do not.
    f = feats - feats.mean((0, 1))
    same = np.mean([np.corrcoef(f[6, i], f[7, i])[0, 1] for i in range(len(VOCABULARY))])
    other = np.mean([np.corrcoef(f[6, i], f[7, i - 1])[0, 1] for i in range(len(VOCABULARY))])
    assert same > 0.5 and abs(other) < 0.2, (same, other)


def test_write_corpus_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        write_corpus(tmp_path, train=5, val=5, test=5)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.fixture
def small_default(monkeypatch, tmp_path):
    monkeypatch.setenv("H2S_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(synthetic, "write_corpus", functools.partial(write_corpus, train=6, val=2, test=2))
    return tmp_path / "home" / "synthetic"


def test_default_root_follows_h2s_home(monkeypatch, tmp_path):
    monkeypatch.setenv("H2S_HOME", str(tmp_path))
    assert default_root() == tmp_path / "synthetic"
    monkeypatch.delenv("H2S_HOME")
    assert default_root() == Path("~/.cache/h2s-search/synthetic").expanduser()


def test_ensure_default_corpus_writes_once_then_reuses(small_default):
    root, created = ensure_default_corpus()
    assert (root, created) == (small_default, True)
    info = CorpusInfo.read(root)
    assert info.counts == {"train": 6, "val": 2, "test": 2} and len(info.vocabulary) == 60
    assert sorted(p.name for p in root.parent.iterdir()) == ["synthetic"]  # no temporary left
    before = tree_hash(root)
    assert ensure_default_corpus() == (small_default, False)
    assert tree_hash(root) == before


def test_ensure_default_corpus_racing_threads_create_it_once(small_default):
    results: list[tuple[Path, bool]] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_default_corpus())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(created for _, created in results) == [False, False, True]
    assert CorpusInfo.read(small_default).counts["train"] == 6
    assert sorted(p.name for p in small_default.parent.iterdir()) == ["synthetic"]


def test_interrupted_write_leaves_no_half_corpus(small_default, monkeypatch):
    def dies_halfway(root):
        write_corpus(root / "sentence_level", train=3, val=0, test=0)
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "write_corpus", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        ensure_default_corpus()
    assert not small_default.exists() and list(small_default.parent.iterdir()) == []


def test_a_foreign_folder_is_not_taken_for_a_corpus(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="CORPUS.json"):
        ensure_default_corpus(tmp_path / "data")
