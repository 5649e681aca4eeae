"""The How2Sign release as shipped: the split CSVs and the keypoint sources.

Keypoints come, per split, from OpenPose JSON (one file per frame) or from pose-format `.pose` files
(one per clip); JSON is used when its folder exists. Both are read into the OpenPose 137-point array
and turned into features by `how2sign.features.normalise`.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from how2sign.data.errors import DataError
from how2sign.data.posefile import CorruptPoseFile, read_pose_file
from how2sign.features import DEFAULT_FPS, NUM_POINTS, OPENPOSE_COMPONENTS, missing_mask, normalise

CSV_COLUMNS = ("VIDEO_ID", "VIDEO_NAME", "SENTENCE_ID", "SENTENCE_NAME", "START_REALIGNED", "END_REALIGNED", "SENTENCE")
MIN_FRAMES = 4  # a clip needs at least this many frames with a person in them

# Skip reasons, as counted in the pack summary.
SKIP_NO_KEYPOINTS = "no keypoints"  # no JSON folder / .pose file for the row
SKIP_EMPTY_SENTENCE = "empty sentence"
SKIP_TOO_SHORT = "too short"  # fewer than MIN_FRAMES frames with a person (zero-length clips included)
SKIP_CORRUPT = "corrupt keypoints"  # every JSON frame file corrupt, or the .pose file does not decode
SKIP_REASONS = (SKIP_NO_KEYPOINTS, SKIP_EMPTY_SENTENCE, SKIP_TOO_SHORT, SKIP_CORRUPT)

SOURCE_JSON = "json"
SOURCE_POSE = "pose"
_FRAME_RE = re.compile(r"_(\d+)_keypoints\.json$")


@dataclass(frozen=True)
class CsvRow:
    row: int  # 0-based index among the data rows (the header is not counted)
    line: int  # 1-based line number in the file
    video_id: str
    video_name: str
    sentence_id: str
    sentence_name: str
    start: float
    end: float
    sentence: str


def check_root(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data root not found: {root}")
    return root


def csv_path(root: str | Path, split: str) -> Path:
    base = Path(root) / "sentence_level" / split / "text" / "en" / "raw_text" / "re_aligned"
    return base / f"how2sign_realigned_{split}.csv"


def json_dir(root: str | Path, split: str) -> Path:
    return Path(root) / "sentence_level" / split / "rgb_front" / "features" / "openpose_output" / "json"


def pose_dir(root: str | Path, split: str) -> Path:
    return Path(root) / "sentence_level" / split / "rgb_front" / "features" / "pose"


def _header_problem(header: list[str]) -> str:
    if len(header) == 1 and "," in header[0]:
        return "header is not tab-separated (it looks comma-separated)"
    if len(header) != len(CSV_COLUMNS):
        return f"header has {len(header)} columns, expected {len(CSV_COLUMNS)}: {' '.join(CSV_COLUMNS)}"
    wrong = [f"column {i + 1} is {got!r}, expected {want!r}" for i, (got, want) in enumerate(zip(header, CSV_COLUMNS, strict=True))
             if got != want]  # fmt: skip
    return "; ".join(wrong)


def _number(path: Path, line: int, column: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{path} line {line}: column {column} is not a number: {text!r}") from None


def read_csv(path: str | Path) -> list[CsvRow]:
    """Read one split CSV (tab-separated, header row, exactly the 7 CSV_COLUMNS). Blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split CSV not found: {path}")
    rows: list[CsvRow] = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: file is empty, expected a header row: {' '.join(CSV_COLUMNS)}")
            problem = _header_problem([h.strip() for h in header])
            if problem:
                raise DataError(f"{path}: {problem}")
            for fields in reader:
                line = reader.line_num
                if not fields or fields == [""]:
                    continue
                if len(fields) != len(CSV_COLUMNS):
                    raise DataError(f"{path} line {line}: expected {len(CSV_COLUMNS)} tab-separated fields, found {len(fields)}")
                vid, vname, sid, sname, start, end, sentence = fields
                sname = sname.strip()
                if not sname or sname in (".", "..") or "/" in sname or "\\" in sname:
                    raise DataError(f"{path} line {line}: SENTENCE_NAME {sname!r} is not a plain clip name")
                rows.append(CsvRow(len(rows), line, vid.strip(), vname.strip(), sid.strip(), sname,
                                   _number(path, line, "START_REALIGNED", start),
                                   _number(path, line, "END_REALIGNED", end), sentence.strip()))  # fmt: skip
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: unreadable CSV: {exc}") from None
    return rows


def detect_source(root: str | Path, split: str) -> tuple[str, Path]:
    """("json", folder) when the OpenPose JSON folder exists, else ("pose", folder) for .pose files."""
    jd, pd = json_dir(root, split), pose_dir(root, split)
    if jd.is_dir():
        return SOURCE_JSON, jd
    if pd.is_dir():
        return SOURCE_POSE, pd
    raise DataError(f"no keypoints for split {split!r}: neither {jd} nor {pd} exists")


def read_json_frame(path: str | Path) -> np.ndarray | None:
    """One OpenPose frame file -> (137, 3) float32 of the first person (zeros when "people" is empty),
    or None when the file is corrupt (unreadable, bad JSON, wrong structure, wrong list lengths).

    This per-frame reader is the reference: `how2sign.data.fastjson` reads whole clips faster and must
    give exactly its result for every input (tests/how2sign/test_pack.py checks that)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    return parse_json_frame(data)


def parse_json_frame(data: bytes) -> np.ndarray | None:
    """The bytes of one OpenPose frame file -> (137, 3) float32, as `read_json_frame` describes."""
    try:
        doc = json.loads(data)
        people = doc["people"]
        if not people:
            return np.zeros((NUM_POINTS, 3), dtype=np.float32)
        person = people[0]
        parts = []
        for key, n in OPENPOSE_COMPONENTS:
            values = person.get(key) or []  # OpenPose writes [] for a disabled component
            if values and len(values) != 3 * n:
                return None
            parts.append(np.asarray(values, dtype=np.float32).reshape(n, 3) if values else np.zeros((n, 3), np.float32))
        return np.concatenate(parts)
    # OverflowError (an integer beyond float range) and RecursionError (nesting deeper than the parser
    # goes) used to stop the whole pack; a file that holds them is as corrupt as any other.
    except (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError, RecursionError):
        return None


def frame_names(folder: Path) -> list[str] | None:
    """A clip folder's frame file names (`*_<index>_keypoints.json`), sorted by frame index (then name);
    None when the folder does not exist."""
    try:
        entries = [(int(m.group(1)), e.name) for e in os.scandir(folder) if (m := _FRAME_RE.search(e.name))]
    except (FileNotFoundError, NotADirectoryError):
        return None
    entries.sort()
    return [name for _, name in entries]


def read_json_clip(folder: Path) -> tuple[np.ndarray, int] | None:
    """All frame files of one clip, sorted by frame index -> ((T, 137, 3), corrupt file count).

    None when the folder does not exist. A corrupt frame becomes an empty frame (all points missing).
    """
    names = frame_names(folder)
    if names is None:
        return None
    kp = np.zeros((len(names), NUM_POINTS, 3), dtype=np.float32)
    corrupt = 0
    for t, name in enumerate(names):
        frame = read_json_frame(os.path.join(folder, name))
        if frame is None:
            corrupt += 1
        else:
            kp[t] = frame
    return kp, corrupt


@dataclass
class ClipResult:
    """What reading one CSV row gave: features, or the reason it was skipped."""

    row: int
    features: np.ndarray | None  # (T, P, 3) float32 when usable
    fps: float
    reason: str | None
    corrupt_files: int = 0


def read_clip(row: CsvRow, source: str, folder: Path, points: tuple[int, ...],
              json_clip: Callable[[Path], tuple[np.ndarray, int] | None] = read_json_clip) -> ClipResult:  # fmt: skip
    """Read and normalise one row's keypoints, or say why the row is skipped.

    `json_clip` reads a JSON clip folder: the reference `read_json_clip`, or `fastjson.read_json_clip_fast`
    (same result, faster)."""
    if not row.sentence:
        return ClipResult(row.row, None, DEFAULT_FPS, SKIP_EMPTY_SENTENCE)
    fps, corrupt = DEFAULT_FPS, 0
    if source == SOURCE_JSON:
        got = json_clip(folder / row.sentence_name)
        if got is None:
            return ClipResult(row.row, None, fps, SKIP_NO_KEYPOINTS)
        kp, corrupt = got
        if corrupt and corrupt == len(kp):
            return ClipResult(row.row, None, fps, SKIP_CORRUPT, corrupt)
    else:
        path = folder / f"{row.sentence_name}.pose"
        if not path.is_file():
            return ClipResult(row.row, None, fps, SKIP_NO_KEYPOINTS)
        try:
            kp, fps = read_pose_file(path)
        except CorruptPoseFile:
            return ClipResult(row.row, None, fps, SKIP_CORRUPT, 1)
    with_person = int((~missing_mask(kp)).any(axis=1).sum()) if len(kp) else 0
    if with_person < MIN_FRAMES:
        return ClipResult(row.row, None, fps, SKIP_TOO_SHORT, corrupt)
    return ClipResult(row.row, normalise(kp, points), fps, None, corrupt)
