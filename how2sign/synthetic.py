"""A learnable synthetic corpus in How2Sign's on-disk release format.

Each of 60 content words is a sign: a word-specific Bezier path of the right wrist (in shoulder
widths), hand direction and finger curls; some signs are two-handed. Sentences put 2-6 signs of one
topic into templates with unsigned function words ("Then you cut the onion." signs CUT ONION).
Signers differ in scale, position and speed; points get pixel noise, dropouts and empty frames.
Val and test use word sequences train never shows and partly unseen signers. Deterministic from
``seed``: one numpy Generator per split and one per clip, fixed ``%.2f`` formatting.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

__all__ = ["FPS", "MARKER", "SPLITS", "VOCABULARY", "CorpusInfo", "Sign", "Signer", "default_root",
           "ensure_default_corpus", "make_signers", "make_signs", "render_clip", "write_corpus"]

FPS = 24
SPLITS = ("train", "val", "test")
MARKER = "CORPUS.json"
GENERATOR_VERSION = 1
HEADER = "VIDEO_ID\tVIDEO_NAME\tSENTENCE_ID\tSENTENCE_NAME\tSTART_REALIGNED\tEND_REALIGNED\tSENTENCE"

# Topic -> (verbs, nouns); one topic per video, like How2Sign's instructional videos.
_TOPICS = {
    "cooking": (("cut", "stir", "boil", "mix"), ("onion", "pan", "sauce", "butter", "egg")),
    "sports": (("throw", "kick", "catch", "swing"), ("ball", "bat", "net", "goal", "club")),
    "crafts": (("fold", "glue", "paint", "sew"), ("paper", "fabric", "thread", "brush", "bead")),
    "garden": (("plant", "water", "dig", "trim"), ("seed", "soil", "rose", "hose", "pot")),
    "music": (("play", "tune", "strum", "hold"), ("guitar", "string", "drum", "chord", "piano")),
    "cars": (("check", "wash", "fix", "start"), ("engine", "tire", "oil", "hood", "wheel")),
}
_ADJECTIVES = ("small", "big", "new", "good", "long", "clean")
VOCABULARY: tuple[str, ...] = tuple(
    [w for verbs, nouns in _TOPICS.values() for w in verbs + nouns] + list(_ADJECTIVES))
# Clause templates: V verb, N and M nouns, A adjective are signed; every other word is not.
_CLAUSES_2 = ("V the N", "V your N", "V it into the N", "V some N", "V the N on it")
_CLAUSES_3 = ("V the A N", "V a A N", "V the N with the M", "V the N and the M", "V your A N")
_OPENERS = ("", "then you ", "now you want to ", "first you ", "you can ", "so you ", "next you ",
            "make sure you ", "you need to ", "and then you ", "you are going to ")
_JOINERS = (" and ", ", then ", " and then you ", ", then you ", " and you ")

# Frame layout: 25 BODY_25 pose points, 70 face, 21 left hand, 21 right hand (137 in all).
_FACE0, _LH0, _RH0 = 25, 95, 116


def _arc(cx: float, cy: float, rx: float, ry: float, n: int, a0: float = 0.0, a1: float = 2 * np.pi,
         closed: bool = True) -> np.ndarray:
    a = np.linspace(a0, a1, n + closed)[:n]
    return np.c_[cx + rx * np.cos(a), cy + ry * np.sin(a)]


# (70, 2) OpenPose face points in shoulder widths, neck at the origin, y down:
# jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, lips 48-67, pupils 68-69.
_FACE = np.concatenate([
    _arc(0, -0.78, 0.17, 0.26, 17, np.pi, 0, False),
    _arc(-0.085, -0.85, 0.055, 0.015, 5, np.pi, 2 * np.pi, False),
    _arc(0.085, -0.85, 0.055, 0.015, 5, np.pi, 2 * np.pi, False),
    np.c_[np.zeros(4), np.linspace(-0.83, -0.73, 4)], np.c_[np.linspace(-0.035, 0.035, 5), np.full(5, -0.7)],
    _arc(-0.07, -0.8, 0.03, 0.01, 6), _arc(0.07, -0.8, 0.03, 0.01, 6),
    _arc(0, -0.62, 0.06, 0.02, 12), _arc(0, -0.62, 0.04, 0.01, 8), [[-0.07, -0.8], [0.07, -0.8]]])
_POSE = np.zeros((25, 2))
_POSE[[0, 1, 2, 5, 8, 9, 12, 15, 16, 17, 18]] = [
    [0, -0.72], [0, 0], [-0.5, 0.03], [0.5, 0.03], [0, 1.55], [-0.25, 1.55], [0.25, 1.55],
    [-0.07, -0.8], [0.07, -0.8], [-0.17, -0.76], [0.17, -0.76]]
_HEAD = np.r_[[0, 15, 16, 17, 18], _FACE0:_LH0]
_LEGS = np.array([10, 11, 13, 14, 19, 20, 21, 22, 23, 24])  # below the frame: never detected
_GROUPS = np.r_[np.zeros(25, int), np.ones(70, int), np.full(42, 2)]  # body, face, hands
_SIGMA = np.array([1.2, 0.8, 1.8])[_GROUPS]         # pixel noise at 1280x720
_CONF = np.array([[0.55, 0.95], [0.6, 0.9], [0.3, 0.9]])[_GROUPS]
_PMISS = np.array([0.01, 0.01, 0.04])[_GROUPS]      # plus whole-hand dropouts, ~5.5% on hands

# Hand model (shoulder widths): thumb CMC / finger MCP offsets along and across the hand,
# splay angle at spread 1, and three phalanx lengths per finger (thumb, index .. pinky).
_BASE = np.array([[0.06, 0.07], [0.19, 0.06], [0.20, 0.015], [0.19, -0.03], [0.17, -0.07]])
_SPLAY = np.array([0.9, 0.25, 0.05, -0.15, -0.35])
_PHAL = np.array([[.09, .07, .06], [.09, .06, .05], [.10, .065, .05], [.09, .06, .05], [.07, .05, .04]])

# Hand state per frame, 18 numbers: right wrist xy, direction, 5 curls, spread; same for left.
_REST = np.array([-0.32, 1.2, 1.3, .45, .5, .5, .5, .5, .2, 0.32, 1.2, 1.85, .45, .5, .5, .5, .5, .2])


@dataclass(frozen=True, eq=False)
class Sign:
    """One word's sign: shapes are in shoulder widths relative to the neck, image axes."""

    word: str
    frames: int                 # length at speed 1.0
    path: np.ndarray            # (4, 2) Bezier control points of the right wrist
    angle: tuple[float, float, float]  # hand direction at start, at end, wiggle amplitude
    shape: np.ndarray           # (2, 6) five finger curls + spread, at start and at end
    left: np.ndarray | None     # (4, 2) left-wrist control points of a two-handed sign
    left_hand: np.ndarray | None  # (7,) left direction, curls, spread


@dataclass(frozen=True)
class Signer:
    width: float                # shoulder width in pixels at 1280x720
    neck: tuple[float, float]   # neck position in pixels at 1280x720
    speed: float                # 0.8 .. 1.25: sign lengths are divided by it
    space: tuple[float, float]  # personal shift of the signing space, shoulder widths


@dataclass(frozen=True)
class CorpusInfo:
    root: Path
    seed: int
    counts: dict[str, int]                 # CSV rows per split
    vocabulary: tuple[str, ...]            # the signed words
    frames: int                            # frame files written, all splits
    defects: dict[str, dict[str, int]]     # split -> missing_folder/empty_sentence/short_clip/corrupt_json
    empty_frames: dict[str, int]           # frames written as "people": [] per split
    version: int = GENERATOR_VERSION

    def to_json(self) -> str:
        """The marker text; without the root, so a corpus can be moved and compared byte for byte."""
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self) if f.name != "root"},
                          indent=1, sort_keys=True) + "\n"

    @classmethod
    def read(cls, root: Path) -> CorpusInfo:
        d = json.loads((Path(root) / MARKER).read_text(encoding="utf-8"))
        return cls(root=Path(root), **(d | {"vocabulary": tuple(d["vocabulary"])}))


def _bezier(ctrl: np.ndarray, t: np.ndarray) -> np.ndarray:
    s = 1.0 - t
    return np.stack([s ** 3, 3 * s * s * t, 3 * s * t * t, t ** 3], 1) @ ctrl  # (n, 2)


def make_signs(seed: int = 0) -> dict[str, Sign]:
    """The sign for every word of VOCABULARY; resampled until each is far from all earlier ones."""
    rng = np.random.default_rng([seed, 3])
    lo, hi = np.array([-0.95, -0.65]), np.array([0.45, 0.85])  # reachable signing space
    signs: dict[str, Sign] = {}
    feats: list[np.ndarray] = []
    for word in VOCABULARY:
        for _ in range(200):
            pts = [rng.uniform(lo, hi)]
            for _ in range(3):
                step = rng.normal(size=2)
                pts.append(np.clip(pts[-1] + step / np.linalg.norm(step) * rng.uniform(0.2, 0.6), lo, hi))
            path = np.array(pts)
            a0 = rng.uniform(-2.8, -0.3)
            angle = (a0, a0 + rng.uniform(-1, 1) * (rng.random() < 0.6), float(rng.choice([0.0, 0.3])))
            shape = np.c_[rng.choice([0.05, 0.5, 0.95], (2, 5)) + rng.normal(0, 0.03, (2, 5)),
                          rng.uniform(0, 1, (2, 1))]
            if rng.random() < 0.5:
                shape[1] = shape[0]  # a fixed hand shape
            f = np.r_[_bezier(path, np.linspace(0, 1, 6)).ravel(), 0.5 * shape.ravel(),
                      0.3 * np.cos(angle[:2]), 0.3 * np.sin(angle[:2])]
            if not feats or min(np.linalg.norm(f - g) for g in feats) > 0.6:
                break
        left = hand = None
        if rng.random() < 0.3:  # two-handed: mirrored motion, or a still base hand
            left = path * [-1, 1] if rng.random() < 0.5 else np.tile(rng.uniform([0.0, 0.2], [0.4, 0.8]), (4, 1))
            hand = np.r_[rng.uniform(-2.8, -0.3), rng.choice([0.05, 0.5, 0.95], 5), rng.uniform(0, 1)]
        feats.append(f)
        signs[word] = Sign(word, int(rng.integers(6, 13)), path, (float(angle[0]), float(angle[1]), angle[2]),
                           shape, left, hand)
    return signs


def make_signers(seed: int = 0, n: int = 8) -> tuple[Signer, ...]:
    rng = np.random.default_rng([seed, 4])
    speeds = rng.permutation(np.linspace(0.8, 1.25, n))  # slow to fast signers, whatever the seed
    return tuple(Signer(width=float(rng.uniform(170, 230)),
                        neck=(float(rng.uniform(560, 720)), float(rng.uniform(310, 370))),
                        speed=float(speed), space=(float(rng.normal(0, 0.04)), float(rng.normal(0, 0.04))))
                 for speed in speeds)


def _blend(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    w = np.arange(1, k + 1) / (k + 1)
    w = w * w * (3 - 2 * w)  # smoothstep: transitions ease in and out
    return a + w[:, None] * (b - a)


def _hand_states(signs: dict[str, Sign], glosses, signer: Signer, rng) -> np.ndarray:
    """(T, 18) hand states: rest, then each sign with transitions, then back to rest."""
    rest = _REST + rng.normal(0, 0.02, 18)
    parts, prev = [rest[None]], rest
    space = np.array(signer.space)
    for i, word in enumerate(glosses):
        sign = signs[word]
        n = max(4, round(sign.frames / signer.speed * rng.uniform(0.9, 1.1)))
        t = np.linspace(0, 1, n)
        ease = t * t * (3 - 2 * t)
        seg = np.tile(rest, (n, 1))
        seg[:, 0:2] = _bezier(sign.path, t) + space + rng.normal(0, 0.03, 2)
        a0, a1, wiggle = sign.angle
        seg[:, 2] = a0 + (a1 - a0) * t + wiggle * np.sin(2 * np.pi * t)
        seg[:, 3:9] = sign.shape[0] + np.outer(ease, sign.shape[1] - sign.shape[0]) + rng.normal(0, 0.03, 6)
        if sign.left is not None:
            seg[:, 9:11] = _bezier(sign.left, t) + space * [-1, 1] + rng.normal(0, 0.03, 2)
            seg[:, 11:18] = sign.left_hand
        parts += [_blend(prev, seg[0], int(rng.integers(2, 4) if i else rng.integers(1, 3))), seg]
        prev = seg[-1]
    parts.append(_blend(prev, rest, int(rng.integers(1, 3))))
    return np.concatenate(parts)


def _elbow(shoulder: np.ndarray, wrist: np.ndarray, l1: float = 0.62, l2: float = 0.58) -> np.ndarray:
    """(T, 2) elbow from 2-D two-bone IK; of the two solutions the lower one (elbows hang)."""
    d = wrist - shoulder
    norm = np.maximum(np.linalg.norm(d, axis=1), 1e-6)
    dist = np.clip(norm, abs(l1 - l2) + 1e-3, l1 + l2 - 1e-3)
    a = (l1 * l1 - l2 * l2 + dist * dist) / (2 * dist)
    h = np.sqrt(np.maximum(l1 * l1 - a * a, 0.0))
    u = d / norm[:, None]
    base = shoulder + a[:, None] * u
    perp = np.c_[-u[:, 1], u[:, 0]] * h[:, None]
    e1, e2 = base + perp, base - perp
    return np.where((e1[:, 1] > e2[:, 1])[:, None], e1, e2)


def _hand(state: np.ndarray, mirror: float) -> np.ndarray:
    """(T, 21, 2) OpenPose hand points from (T, 9) wrist xy, direction, 5 curls, spread."""
    wrist, ang, curl, spread = state[:, 0:2], state[:, 2], state[:, 3:8], state[:, 8]
    u = np.c_[np.cos(ang), np.sin(ang)]
    v = np.c_[-np.sin(ang), np.cos(ang)] * mirror
    out = np.empty((len(state), 21, 2))
    out[:, 0] = wrist
    for f in range(5):
        p = wrist + _BASE[f, 0] * u + _BASE[f, 1] * v
        out[:, 1 + 4 * f] = p
        phi = ang + mirror * _SPLAY[f] * spread
        for j in range(3):
            phi = phi - mirror * 1.1 * curl[:, f]       # bending toward the palm
            seg = _PHAL[f, j] * (1.0 - 0.4 * curl[:, f])  # and foreshortening
            p = p + seg[:, None] * np.c_[np.cos(phi), np.sin(phi)]
            out[:, 2 + 4 * f + j] = p
    return out


def render_clip(signs: dict[str, Sign], glosses, signer: Signer, rng: np.random.Generator,
                res: float = 1.0) -> np.ndarray:
    """(T, 137, 3) pixel x, y, confidence for one clip; missing points are 0, 0, 0.

    ``res`` is 1.0 for 1280x720 and 1.5 for 1920x1080 (the whole skeleton is scaled).
    """
    st = _hand_states(signs, glosses, signer, rng)
    T = len(st)
    P = np.empty((T, 137, 2))  # shoulder widths, neck at origin
    P[:, :25], P[:, _FACE0:_LH0] = _POSE, _FACE
    sway = 0.015 * np.sin(2 * np.pi * (np.arange(T) / 48 + rng.random()))
    P[:, _HEAD] += (sway[:, None] * rng.normal(0, 1, 2) + rng.normal(0, 0.01, 2))[:, None]
    P[:, 4], P[:, 7] = st[:, 0:2], st[:, 9:11]
    P[:, 3], P[:, 6] = _elbow(P[:, 2], st[:, 0:2]), _elbow(P[:, 5], st[:, 9:11])
    P[:, _LH0:_RH0], P[:, _RH0:] = _hand(st[:, 9:18], -1.0), _hand(st[:, 0:9], 1.0)
    width = signer.width * rng.uniform(0.97, 1.03) * res
    neck = (np.array(signer.neck) + rng.normal(0, 6, 2)) * res
    xy = neck + width * P + rng.normal(0, 1, P.shape) * (_SIGMA * res)[:, None]
    conf = rng.uniform(_CONF[:, 0], _CONF[:, 1], (T, 137))
    miss = rng.random((T, 137)) < _PMISS
    miss[:, _LEGS] = True
    miss[:, _LH0:_RH0] |= (rng.random(T) < 0.015)[:, None]
    miss[:, _RH0:] |= (rng.random(T) < 0.015)[:, None]
    miss |= (xy < 0).any(-1) | (xy[..., 0] >= 1280 * res) | (xy[..., 1] >= 720 * res)
    out = np.concatenate([xy, conf[..., None]], -1)
    out[miss] = 0.0
    return out


def _sentence(topic: str, rng: np.random.Generator) -> tuple[str, list[str]]:
    verbs, nouns = _TOPICS[topic]
    k = int(rng.choice([1, 2, 3], p=[0.6, 0.32, 0.08]))
    text, glosses = _OPENERS[rng.integers(len(_OPENERS))], []
    for c in range(k):
        forms = _CLAUSES_2 if k == 3 or rng.random() < 0.5 else _CLAUSES_3
        n1, n2 = rng.choice(len(nouns), 2, replace=False)
        fill = {"V": verbs[rng.integers(len(verbs))], "N": nouns[n1], "M": nouns[n2],
                "A": _ADJECTIVES[rng.integers(len(_ADJECTIVES))]}
        form = forms[rng.integers(len(forms))].split()
        words = [fill.get(tok, tok) for tok in form]
        glosses += [fill[tok] for tok in form if tok in fill]
        text += (_JOINERS[rng.integers(len(_JOINERS))] if c else "") + " ".join(words)
    return text[0].upper() + text[1:] + ".", glosses


_DEFECT_RATES = {"train": {"missing_folder": 0.02, "empty_sentence": 0.005, "short_clip": 0.005,
                            "corrupt_json": 0.005},
                  "val": {"missing_folder": 0.01, "empty_sentence": 0, "short_clip": 0, "corrupt_json": 0.01},
                  "test": {"missing_folder": 0, "empty_sentence": 0, "short_clip": 0, "corrupt_json": 0}}


_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))


def _plan_videos(n: int, split_index: int, rng: np.random.Generator):
    """Per video: id, camera digit, signer, topic, resolution scale, number of sentences."""
    sizes: list[int] = []
    while sum(sizes) < n:
        sizes.append(min(int(rng.integers(3, 9)), n - sum(sizes)))
    nv = len(sizes)
    hd = set(rng.permutation(nv)[:max(1, round(0.1 * nv))].tolist()) if nv else set()
    order = rng.permutation(nv).tolist()
    dash = {v: "-" for v in order[:max(1, round(0.1 * nv))]} | {v: "--" for v in order[-max(1, round(0.05 * nv)):]}
    held = set(rng.permutation(nv)[:max(1, round(nv / 3))].tolist()) if split_index else set()
    seen: set[str] = set()
    for v, size in enumerate(sizes):
        lead = dash.get(v, "")
        while True:  # after the leading dashes, a letter or digit
            vid = lead + str(rng.choice(_ALPHABET[:62])) + "".join(rng.choice(_ALPHABET, 10 - len(lead)))
            if vid not in seen:
                break
        seen.add(vid)
        signer = 5 + split_index if v in held else int(rng.integers(0, 6))
        yield vid, int(rng.integers(1, 10)), signer, list(_TOPICS)[rng.integers(len(_TOPICS))], \
            (1.5 if v in hd else 1.0), size


_SLOTS = ",".join(["%.2f"] * 3 * 21)
_TEMPLATE = ('{"version":1.3,"people":[{"person_id":[-1],"pose_keypoints_2d":[' + ",".join(["%.2f"] * 75)
             + '],"face_keypoints_2d":[' + ",".join(["%.2f"] * 210) + '],"hand_left_keypoints_2d":['
             + _SLOTS + '],"hand_right_keypoints_2d":[' + _SLOTS + '],"pose_keypoints_3d":[],'
             '"face_keypoints_3d":[],"hand_left_keypoints_3d":[],"hand_right_keypoints_3d":[]}]}')
_EMPTY = '{"version":1.3,"people":[]}'


def _write_split(root: Path, split: str, split_index: int, n: int, seed: int, defects: bool,
                 signs, signers, pool: ThreadPoolExecutor) -> tuple[int, dict[str, int], int]:
    base = root / "sentence_level" / split
    text_dir = base / "text" / "en" / "raw_text" / "re_aligned"
    json_dir = base / "rgb_front" / "features" / "openpose_output" / "json"
    for folder in (text_dir, json_dir):
        folder.mkdir(parents=True)
    rng = np.random.default_rng([seed, 1, split_index])
    plan = {k: max(1, round(r * n)) if r and n >= 5 and defects else 0 for k, r in _DEFECT_RATES[split].items()}
    picked = rng.permutation(n).tolist()
    defect_of: dict[int, str] = {}
    for kind, count in plan.items():
        defect_of |= dict.fromkeys(picked[len(defect_of):len(defect_of) + count], kind)
    rows, jobs, frames, empty, clip = [HEADER], [], 0, 0, 0
    for vid, cam, signer, topic, res, size in _plan_videos(n, split_index, rng):
        t, sid = float(rng.uniform(2, 60)), int(rng.integers(0, 20))
        for _ in range(size):
            for _ in range(500):  # word sequences by hash: 0 val only, 1 test only, 2-9 train
                sentence, glosses = _sentence(topic, rng)
                bucket = zlib.crc32(f"{seed}|{' '.join(glosses)}".encode()) % 10
                if bucket == split_index or (split_index == 0 and bucket > 1):
                    break
            kind = defect_of.get(clip)
            crng = np.random.default_rng([seed, 2, split_index, clip])
            kp = render_clip(signs, glosses, signers[signer], crng, res)
            if kind == "short_clip":
                kp = kp[: int(crng.integers(1, 4))]
            start = round(t + float(rng.uniform(0.2, 4.0)), 2)
            end = round(start + len(kp) / FPS, 2)
            name = f"{vid}_{sid}-{cam}-rgb_front"
            rows.append(f"{vid}\t{vid}-{cam}-rgb_front\t{vid}_{sid}\t{name}\t{start:.2f}\t{end:.2f}\t"
                        + ("" if kind == "empty_sentence" else sentence))
            if kind != "missing_folder":
                blank = crng.random(len(kp)) < 0.01  # frames written as "people": []
                frames, empty = frames + len(kp), empty + int(blank.sum())
                jobs.append(pool.submit(_write_frames, json_dir / name, name, kp, blank, kind == "corrupt_json"))
            t, sid, clip = end, sid + 1 + int(rng.random() < 0.1), clip + 1
    with open(text_dir / f"how2sign_realigned_{split}.csv", "w", encoding="utf-8", newline="") as f:
        f.write("\n".join(rows) + "\n")
    for job in jobs:
        job.result()  # re-raises a failed write
    return frames, plan, empty


def _write_frames(folder: Path, name: str, kp: np.ndarray, empty: np.ndarray, corrupt: bool) -> None:
    """One JSON file per frame, in a worker thread: the file system's time overlaps the formatting."""
    folder.mkdir()
    broken = len(kp) // 2 if corrupt else -1
    prefix = os.path.join(folder, name)
    for i, row in enumerate(kp.reshape(len(kp), -1).tolist()):
        text = _EMPTY if empty[i] else _TEMPLATE % tuple(row)
        if i == broken:
            text = text[: len(text) // 2]  # a truncated write
        with open(f"{prefix}_{i:012d}_keypoints.json", "w", encoding="ascii", newline="") as f:
            f.write(text)


def write_corpus(root: Path, *, train: int = 800, val: int = 100, test: int = 100, seed: int = 0,
                 defects: bool = True) -> CorpusInfo:
    """Write the corpus into ``root`` (absent or empty), ``CORPUS.json`` last; same arguments, same bytes."""
    root = Path(root)
    sizes = {"train": train, "val": val, "test": test}
    if seed < 0 or min(sizes.values()) < 0:
        raise ValueError(f"seed and split sizes must be >= 0, got seed={seed} sizes={sizes}")
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; the synthetic corpus needs a new folder")
    signs, signers = make_signs(seed), make_signers(seed)
    frames, plans, empties = 0, {}, {}
    pool = ThreadPoolExecutor(4)
    try:
        for i, split in enumerate(SPLITS):
            n_frames, plans[split], empties[split] = _write_split(root, split, i, sizes[split], seed, defects,
                                                                  signs, signers, pool)
            frames += n_frames
    finally:
        pool.shutdown(cancel_futures=True)  # on Ctrl-C, drop the writes not started yet
    info = CorpusInfo(root=root, seed=seed, counts=sizes, vocabulary=VOCABULARY, frames=frames,
                      defects=plans, empty_frames=empties)
    (root / MARKER).write_text(info.to_json(), encoding="utf-8")
    return info


def default_root() -> Path:
    """``$H2S_HOME/synthetic``; H2S_HOME defaults to ``~/.cache/h2s-search``."""
    return Path(os.environ.get("H2S_HOME") or "~/.cache/h2s-search").expanduser() / "synthetic"


def ensure_default_corpus(root: Path | None = None) -> tuple[Path, bool]:
    """Write the default corpus once; returns (root, created_now).

    It is written into a temporary sibling and renamed into place only when complete, marker
    included, so a racing process or an interrupted write never leaves a half corpus at ``root``.
    """
    root = Path(root) if root is not None else default_root()
    if (root / MARKER).is_file():
        return root, False
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists but has no {MARKER}: it is not a finished synthetic corpus; "
                              "remove it or pick another folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{root.name}.tmp-"
    for stale in root.parent.glob(prefix + "*"):  # left by killed writers (a write takes seconds)
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > 3600:
                shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=root.parent))
    try:
        write_corpus(tmp)
        try:
            os.rename(tmp, root)
        except OSError:
            if (root / MARKER).is_file():  # another process finished first
                return root, False
            raise
        return root, True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
