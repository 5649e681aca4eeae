"""Packing by the fast path equals the reference reader byte for byte (built-in corpus, defects, crafted
and fuzzed frames, .pose files, every parser fallback), and an interrupted pack resumes."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import how2sign.data.fastjson as fastjson
import how2sign.data.packing as packing
from how2sign.data import LineProgress, json_dir, pack_split
from how2sign.data.release import read_csv, read_json_clip
from how2sign.features import OPENPOSE_COMPONENTS
from how2sign.synthetic import write_corpus

# The reference's np.asarray warns on values beyond float32 ("overflow encountered in cast"); both paths
# store inf there, which is what the crafted frames check.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
REPO = Path(__file__).resolve().parents[2]
CSV = "sentence_level/train/text/en/raw_text/re_aligned/how2sign_realigned_train.csv"


def cache_bytes(path: Path) -> dict:
    """Every file of a packed cache; meta.json without its creation time (and the stamp-free parts)."""
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    meta.pop("created")
    return {"features": (path / "features.f16").read_bytes(), "offsets": (path / "offsets.npy").read_bytes(),
            "meta": meta, "files": sorted(p.name for p in path.iterdir())}  # fmt: skip


def assert_same_as_reference(root: Path, split: str, tmp: Path, **kw) -> None:
    ref = pack_split(root, split, tmp / f"ref-{split}", json_reader="reference", workers=1, progress=None)
    new = pack_split(root, split, tmp / f"new-{split}", progress=None, **kw)
    a, b = cache_bytes(ref.path), cache_bytes(new.path)
    assert a["meta"].pop("root") == b["meta"].pop("root")
    assert a == b and ref.fingerprint == new.fingerprint and ref.summary == new.summary


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pack") / "h2s"
    write_corpus(root, train=120, val=20, test=10, seed=5)  # with every defect the synthetic corpus writes
    return root


@pytest.mark.parametrize("workers", [1, 2])
def test_built_in_corpus_packs_identically_by_the_fast_path(corpus, tmp_path, workers):
    for split in ("train", "val", "test"):
        assert_same_as_reference(corpus, split, tmp_path, workers=workers)
    summary = pack_split(corpus, "train", tmp_path / "new-train", progress=None).summary
    assert summary.corrupt_files and set(summary.skipped) >= {"no keypoints", "too short"}


# ------------------------------------------------------------------------------ frames, one by one

GOOD = [round(float(v), 3) for v in np.random.default_rng(0).uniform(1, 900, 411)]


def doc(people=None, **person) -> dict:
    values, start, out = GOOD, 0, {"person_id": [-1]}
    for key, n in OPENPOSE_COMPONENTS:
        out[key] = values[start : start + 3 * n]
        start += 3 * n
    out.update(person)
    for key, _ in OPENPOSE_COMPONENTS:
        out[key.replace("_2d", "_3d")] = []
    return {"version": 1.3, "people": [out] if people is None else people}


def compact(d) -> bytes:
    return json.dumps(d, separators=(",", ":")).encode()


def frame_of(tokens: list[str]) -> bytes:
    """A frame in OpenPose's own layout whose 411 values are these number tokens, written as they are."""
    parts, start = [], 0
    for key, n in OPENPOSE_COMPONENTS:
        parts.append(f'"{key}":[{",".join(tokens[start : start + 3 * n])}]')
        start += 3 * n
    empty = "".join(f',"{key.replace("_2d", "_3d")}":[]' for key, _ in OPENPOSE_COMPONENTS)
    return ('{"version":1.3,"people":[{"person_id":[-1],' + ",".join(parts) + empty + "}]}").encode()


def pose_with(*tokens: str) -> bytes:
    return frame_of([*tokens, *map(str, GOOD[len(tokens) :])])


CANONICAL = compact(doc())
assert frame_of([str(v) for v in GOOD]) == CANONICAL
CRAFTED: dict[str, bytes] = {
    "canonical": CANONICAL,
    "pretty printed": json.dumps(doc(), indent=2).encode(),
    "trailing newline": CANONICAL + b"\n",
    "empty people": b'{"version":1.3,"people":[]}',
    "people is 0": b'{"version":1.3,"people":0}',
    "people is null": b'{"version":1.3,"people":null}',
    "people is an object": b'{"version":1.3,"people":{"0":1}}',
    "people is a string": b'{"version":1.3,"people":"abc"}',
    "person is a list": b'{"version":1.3,"people":[[1,2]]}',
    "no people key": b'{"version":1.3}',
    "top level list": b"[1,2,3]",
    "two people": compact(doc(people=[doc()["people"][0], doc()["people"][0]])),
    "disabled face": compact(doc(face_keypoints_2d=[])),
    "face is null": compact(doc(face_keypoints_2d=None)),
    "face missing": CANONICAL.replace(b'"face_keypoints_2d"', b'"face_missing_2d"'),
    "wrong length": compact(doc(pose_keypoints_2d=GOOD[:74])),
    "string value": compact(doc(pose_keypoints_2d=["1.5"] + GOOD[1:75])),
    "null value": compact(doc(pose_keypoints_2d=[None] + GOOD[1:75])),
    "bool values": compact(doc(pose_keypoints_2d=[True, False] + GOOD[2:75])),
    "nested all": compact(doc(pose_keypoints_2d=[[v] for v in GOOD[:75]])),
    "nested some": compact(doc(pose_keypoints_2d=[[GOOD[0]]] + GOOD[1:75])),
    "nested pair and empty": compact(doc(pose_keypoints_2d=[[1, 2], []] + GOOD[2:75])),
    "component is an object": compact(doc(pose_keypoints_2d={str(i): 1 for i in range(75)})),
    "component is a string": compact(doc(pose_keypoints_2d="1" * 75)),
    "duplicate 2d key in the 3d slot": CANONICAL.replace(b'"pose_keypoints_3d":[]', b'"pose_keypoints_2d":[]'),
    "2d and 3d swapped": CANONICAL.replace(b'"pose_keypoints_3d"', b'"tmp"').replace(
        b'"pose_keypoints_2d"', b'"pose_keypoints_3d"').replace(b'"tmp"', b'"pose_keypoints_2d"'),
    "duplicate people": CANONICAL[:-1] + b',"people":[]}',
    "escaped key": CANONICAL.replace(b'"people"', b'"\\u0070eople"'),
    "escaped duplicate": CANONICAL[:-1] + b',"\\u0070eople":[]}',
    "NaN": pose_with("NaN", "1", "0.5"),
    "Infinity": pose_with("Infinity", "-Infinity", "1"),
    "huge exponent": pose_with("1e400", "-1e400", "1e-400"),
    "big ints": pose_with("18446744073709551616", "-9223372036854775809", "99999999999999999999999999"),
    "huge int": pose_with("9" * 400, "1", "1"),
    "int64 edges": pose_with("18446744073709551615", "-9223372036854775808", "9007199254740993"),
    "negative zero": pose_with("-0", "-0.0", "0e0"),
    "exponents": pose_with("1E2", "2.5e-3", "3.4028235e38", "3.5e38", "1e-46", "-1E+2"),
    "BOM": b"\xef\xbb\xbf" + CANONICAL,
    "UTF-16": CANONICAL.decode().encode("utf-16"),
    "lone surrogate key": CANONICAL[:-1] + b',"\\ud800":1}',
    "invalid UTF-8 key": CANONICAL[:-1] + b',"\xff":1}',
    "control character": CANONICAL[:-1] + b',"a\x01":1}',
    "truncated": CANONICAL[: len(CANONICAL) // 2],
    "empty file": b"",
    "trailing garbage": CANONICAL + b"x",
    "two documents": CANONICAL + CANONICAL,
    "leading zero": pose_with("01"),
    "bare dot": pose_with("1."),
    "plus sign": pose_with("+1"),
    "form feed": CANONICAL + b"\x0c",
    "deep nesting": b'{"people":[' + b"[" * 5000 + b"]" * 5000 + b"]}",
}


def fill(folder: Path, frames: list[bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(frames):
        (folder / f"{folder.name}_{i:012d}_keypoints.json").write_bytes(data)
    return folder


def assert_clip_equal(folder: Path) -> None:
    ref, new = read_json_clip(folder), fastjson.read_json_clip_fast(folder)
    assert ref[1] == new[1], folder.name
    assert ref[0].dtype == new[0].dtype and ref[0].shape == new[0].shape
    assert ref[0].tobytes() == new[0].tobytes(), folder.name  # bit for bit, NaN and -0.0 included


def _with_parsers(monkeypatch, parsers: str) -> None:
    if "simdjson" not in parsers:
        monkeypatch.setattr(fastjson, "simdjson", None)
    if "orjson" not in parsers:
        monkeypatch.setattr(fastjson, "loads", json.loads)


@pytest.mark.parametrize("parsers", ["simdjson+orjson", "orjson", "json"])
def test_crafted_frames_read_exactly_as_the_reference_reads_them(tmp_path, monkeypatch, parsers):
    _with_parsers(monkeypatch, parsers)
    for i, data in enumerate(CRAFTED.values()):
        # alone, between good frames, and as every frame of a clip
        fill(tmp_path / f"c{i}a", [data])
        fill(tmp_path / f"c{i}b", [CANONICAL, data, CANONICAL])
        fill(tmp_path / f"c{i}c", [data] * 3)
        for suffix in "abc":
            assert_clip_equal(tmp_path / f"c{i}{suffix}")
    odd = fill(tmp_path / "odd", [CANONICAL, CANONICAL])
    (odd / "odd_000000000005_keypoints.json").mkdir()  # a folder named like a frame: unreadable, corrupt
    (odd / "notes.txt").write_text("not a frame")
    assert_clip_equal(odd)
    assert fastjson.read_json_clip_fast(tmp_path / "nowhere") is None


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One to three random edits with JSON-significant bytes: replace, insert, delete or repeat a slice."""
    alphabet = b'[]{}",:.-+eE0123456789 \\\ntfnaul\x00\xff'
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        i = int(rng.integers(len(b) + 1))
        op = rng.integers(4)
        if op == 0 and i < len(b):
            b[i] = alphabet[rng.integers(len(alphabet))]
        elif op == 1:
            b[i:i] = bytes(alphabet[j] for j in rng.integers(len(alphabet), size=int(rng.integers(1, 4))))
        elif op == 2:
            del b[i : i + int(rng.integers(1, 6))]
        else:
            j = min(len(b), i + int(rng.integers(1, 40)))
            b[j:j] = b[i:j]
    return bytes(b)


def test_fuzzed_frames_read_exactly_as_the_reference_reads_them(tmp_path):
    rng = np.random.default_rng(19)
    pretty = json.dumps(doc(), indent=1).encode()
    for c in range(30):
        base = CANONICAL if c % 3 else pretty
        assert_clip_equal(fill(tmp_path / f"f{c}", [mutate(base, rng) for _ in range(40)]))


def test_random_numbers_convert_exactly(tmp_path):
    """Decimal -> double -> float32 rounding: long mantissas, big exponents, subnormals, big integers."""
    rng = np.random.default_rng(7)
    frames = []
    for _ in range(60):
        tokens = []
        for k in rng.integers(1, 25, 411):
            s = "".join(map(str, rng.integers(0, 10, int(k)))).lstrip("0") or "0"
            kind = int(rng.integers(4))
            if kind == 1:
                s = s[: max(1, len(s) // 2)] + "." + (s[len(s) // 2 :] or "0")
            elif kind == 2:
                s += f"e{int(rng.integers(-330, 310))}"
            tokens.append(("-" if rng.random() < 0.3 else "") + s)
        frames.append(frame_of(tokens))
    assert_clip_equal(fill(tmp_path / "numbers", frames))


# ---------------------------------------------------------------------- defects and .pose, packed


def test_defect_cases_and_pose_files_pack_identically(tmp_path):
    from test_data import holistic, pose_of, put_csv, put_json, put_pose, row, signer  # this folder's helpers

    root = tmp_path / "json"
    frames = list(signer(t=8))
    frames[2], frames[5] = None, "{not json"
    put_csv(root, [row("good", "Good one."), row("gone", "No folder."), row("blank", "   "), row("short", "Too short."),
                   row("zero", "No frames."), row("rotten", "All corrupt."), row("bodyless", "Only empty frames."),
                   *(row(f"ok{i}", "Fine.") for i in range(9))])  # fmt: skip
    put_json(root, "good", frames)
    put_json(root, "blank", list(signer()))
    put_json(root, "short", [*signer(t=3), None, None])
    (json_dir(root, "train") / "zero").mkdir()
    put_json(root, "rotten", ["", '{"people": [{"pose_keypoints_2d": [1, 2]}]}', "[1, 2"])
    put_json(root, "bodyless", [None] * 6)
    for i in range(9):
        put_json(root, f"ok{i}", list(signer(t=5 + i, seed=i)))
    assert_same_as_reference(root, "train", tmp_path, workers=2)
    pose = tmp_path / "pose"
    put_csv(pose, [row("bad", "Broken file."), row("absent", "No file."), *(row(f"ok{i}", "Fine.") for i in range(9))])
    xyz, conf = holistic()
    for i in range(9):
        put_pose(pose, f"ok{i}", pose_of([("POSE_LANDMARKS", 33), ("FACE_LANDMARKS", 478), ("LEFT_HAND_LANDMARKS", 21),
                                          ("RIGHT_HAND_LANDMARKS", 21)], xyz, conf))  # fmt: skip
    (pose / "sentence_level/train/rgb_front/features/pose/bad.pose").write_bytes(b"\x00\x01garbage")
    assert_same_as_reference(pose, "train", tmp_path / "p", workers=2)


@pytest.mark.parametrize("blocked", [("simdjson",), ("simdjson", "orjson")])
def test_without_simdjson_or_orjson_the_package_falls_back_and_packs_the_same(corpus, tmp_path, blocked):
    script = f"""
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # import fails as it does where no wheel exists
import how2sign.data.fastjson as fastjson
from how2sign.data import pack_split
split = pack_split(sys.argv[1], "val", sys.argv[2], progress=None)
print(fastjson.JSON_PARSERS, split.fingerprint)
"""
    res = subprocess.run([sys.executable, "-c", script, str(corpus), str(tmp_path / "val")], capture_output=True,
                         text=True, cwd=REPO, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    parsers, fingerprint = res.stdout.split()
    assert parsers == ("orjson" if len(blocked) == 1 else "json")
    ref = pack_split(corpus, "val", tmp_path / "ref", json_reader="reference", workers=1, progress=None)
    assert fingerprint == ref.fingerprint
    assert cache_bytes(tmp_path / "val")["features"] == cache_bytes(ref.path)["features"]


# ---------------------------------------------------------------------------------------- resuming


class Reads(list):
    """Sentence names read by the packer; reading row `stop_at` raises KeyboardInterrupt (Ctrl-C)."""

    stop_at: int | None = None


@pytest.fixture
def counted(monkeypatch):
    calls = Reads()
    real = packing.read_clip

    def counting(row, *args, **kw):
        if calls.stop_at is not None and len(calls) == calls.stop_at:
            raise KeyboardInterrupt
        calls.append(row.sentence_name)
        return real(row, *args, **kw)

    monkeypatch.setattr(packing, "read_clip", counting)
    return calls


def journal_rows(folder: Path) -> int:
    done = 0
    for line in (folder / packing.JOURNAL_FILE).read_text().splitlines():
        try:
            done += len(json.loads(line)["results"])
        except ValueError:
            break
    return done


def test_interrupted_pack_resumes_without_rereading_and_a_changed_csv_starts_afresh(corpus, tmp_path, counted,
                                                                                     monkeypatch):  # fmt: skip
    monkeypatch.setattr(packing, "COMMIT_SECONDS", 0.0)
    target, partial = tmp_path / "train", tmp_path / ".train.partial"
    counted.stop_at = 50  # Ctrl-C while reading row 50 of 120
    with pytest.raises(KeyboardInterrupt):
        pack_split(corpus, "train", target, workers=1, progress=None)
    assert journal_rows(partial) == 48 and not target.exists()  # 12 chunks of 4 rows committed
    counted.clear()
    counted.stop_at = None
    seen: list[tuple[int, int]] = []
    resumed = pack_split(corpus, "train", target, workers=1, progress=lambda d, t: seen.append((d, t)))
    names = [r.sentence_name for r in read_csv(corpus / CSV)]
    assert counted == names[48:]  # the 48 committed rows were not read again
    assert seen[0] == (48, 120) and seen[-1] == (120, 120) and not partial.exists()
    ref = pack_split(corpus, "train", tmp_path / "ref", json_reader="reference", workers=1, progress=None)
    assert cache_bytes(resumed.path) == cache_bytes(ref.path)
    # A partial pack made for an older CSV (or FEATURE_VERSION, points, source) is not resumed.
    counted.clear()
    counted.stop_at = 50
    with pytest.raises(KeyboardInterrupt):
        pack_split(corpus, "train", target, workers=1, progress=None, force=True)
    assert journal_rows(partial) == 48 and cache_bytes(target) == cache_bytes(ref.path)  # the old cache stays
    csv = corpus / CSV
    os.utime(csv, ns=(csv.stat().st_mtime_ns + 10**9,) * 2)
    counted.clear()
    counted.stop_at = None
    again = pack_split(corpus, "train", target, workers=1, progress=None)
    assert len(counted) == 120 and cache_bytes(again.path)["features"] == cache_bytes(ref.path)["features"]
    monkeypatch.setattr(packing, "FEATURE_VERSION", 2)
    counted.clear()
    counted.stop_at = 50
    with pytest.raises(KeyboardInterrupt):
        pack_split(corpus, "train", target, workers=1, progress=None, force=True)
    monkeypatch.undo()  # FEATURE_VERSION back, and read_clip unpatched: count through a fresh counter
    shutil.rmtree(target)
    fresh = pack_split(corpus, "train", target, workers=1, progress=None, json_reader="reference")
    assert fresh.fingerprint == ref.fingerprint and not partial.exists()
    assert cache_bytes(fresh.path)["features"] == cache_bytes(ref.path)["features"]


KILLED = """
import sys
import how2sign.data.packing as packing
packing.COMMIT_SECONDS = 0.05
real = packing.read_clip
def slow(*args, **kw):
    import time
    time.sleep(0.02)  # so the kill lands mid-way
    return real(*args, **kw)
packing.read_clip = slow
packing.pack_split(sys.argv[1], "train", sys.argv[2], workers=int(sys.argv[3]), progress=None)
"""


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return True


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads child processes from /proc")
@pytest.mark.parametrize("workers", [1, 2])
def test_pack_killed_with_sigkill_resumes_and_equals_an_uninterrupted_pack(corpus, tmp_path, counted, workers):
    target = tmp_path / "train"
    partial = tmp_path / ".train.partial"
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(corpus), str(target), str(workers)], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
                (partial / packing.JOURNAL_FILE).exists() and journal_rows(partial) >= 16):  # fmt: skip
            assert proc.poll() is None, "the pack finished before it could be killed"
            time.sleep(0.02)
        children = _children(proc.pid)
        assert len(children) >= (workers if workers > 1 else 0)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(_gone(c) for c in children):
        time.sleep(0.1)
    assert all(_gone(c) for c in children), "worker processes outlived their killed parent"
    committed = journal_rows(partial)
    assert 16 <= committed < 120 and not target.exists()
    resumed = pack_split(corpus, "train", target, workers=1, progress=None)
    assert len(counted) == 120 - committed and not partial.exists()
    ref = pack_split(corpus, "train", tmp_path / "ref", json_reader="reference", workers=1, progress=None)
    assert cache_bytes(resumed.path) == cache_bytes(ref.path)


def test_a_second_process_waits_for_the_first_and_reads_nothing(corpus, tmp_path, counted):
    target = tmp_path / "train"
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(corpus), str(target), "1"], cwd=REPO)
    try:
        while not (tmp_path / ".train.partial" / packing.KEY_FILE).exists():
            assert proc.poll() is None
            time.sleep(0.02)
        split = pack_split(corpus, "train", target, progress=None)  # blocks on the lock until it is published
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert counted == [] and len(split) > 0 and not (tmp_path / ".train.partial").exists()


# ---------------------------------------------------------------------------------------- progress


def test_progress_lines_give_clips_per_second_and_time_left():
    now = [100.0]
    out = io.StringIO()
    report = LineProgress("train", out, every=5.0, after=5.0, clock=lambda: now[0])
    report(300, 1000)  # resumed: 300 packed before
    for done in range(310, 1001, 10):
        now[0] += 0.5
        report(done, 1000)
    lines = out.getvalue().splitlines()
    assert lines[0] == "packing train: 400 of 1,000 clips (40 %), 300 from an interrupted pack, 20 clips/s, 30 s left"
    assert len(lines) == 7 and lines[-1] == "packing train: 1,000 of 1,000 clips (100 %), 300 from an interrupted pack, 20 clips/s"
    quick = io.StringIO()
    q = LineProgress("val", quick, clock=lambda: now[0])
    q(0, 10)
    q(10, 10)
    assert quick.getvalue() == ""  # a pack that is over in a moment says nothing


def test_pack_reports_progress_and_digest_is_stable(corpus, tmp_path):
    seen: list[tuple[int, int]] = []
    pack_split(corpus, "val", tmp_path / "v", workers=2, progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (0, 20) and seen[-1] == (20, 20) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    digest = hashlib.sha256((tmp_path / "v" / "features.f16").read_bytes()).hexdigest()
    assert len(digest) == 64
