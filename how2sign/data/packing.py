"""Packing a split into the cache (see `cache`): parallel, resumable, published atomically.

The pack is built in `<target parent>/.<target name>.partial/`, locked with flock while one process
packs into it (others wait, then use what it published):

    pack-key.json   what the partial pack is of: format, FEATURE_VERSION, points, source, CSV stamp, rows
    features.f16    the float16 features of the clips packed so far, in CSV row order
    journal.jsonl   one line per commit (every COMMIT_SECONDS): the rows it covers and their results
                    (skip reason, corrupt files, fps, frames) and the size features.f16 then had

A pack that is interrupted (Ctrl-C, kill -9, a crash) resumes from its last commit: features.f16 is cut
back to the committed size and the rows after it are read; a changed CSV (mtime or size), point
selection, FEATURE_VERSION, cache format or source starts afresh, as does `force`. At the end the folder
gets offsets.npy and meta.json, loses the key and journal, and is renamed into place (`cache._publish`).
Where flock is not available the pack is written in a private temporary folder, as before: not resumable.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from how2sign.data.cache import (
    F16_MAX,
    FEATURES_FILE,
    META_FILE,
    META_FORMAT,
    OFFSETS_FILE,
    PackedSplit,
    PackSummary,
    _publish,
    cache_candidates,
    compute_fingerprint,
    csv_stamp,
    default_cache_dir,
    open_cache,
)
from how2sign.data.errors import DataError
from how2sign.data.fastjson import read_json_clip_fast
from how2sign.data.progress import LineProgress
from how2sign.data.release import (
    SKIP_REASONS,
    CsvRow,
    check_root,
    csv_path,
    detect_source,
    read_clip,
    read_csv,
    read_json_clip,
)
from how2sign.features import DEFAULT_POINTS, FEATURE_VERSION, check_points

try:
    import fcntl
except ImportError:  # Windows: no flock, so no shared resumable folder
    fcntl = None

KEY_FILE, JOURNAL_FILE = "pack-key.json", "journal.jsonl"
COMMIT_SECONDS = 2.0
CHUNK = 4  # rows per task sent to a worker process
READERS = {"fast": read_json_clip_fast, "reference": read_json_clip}
Progress = Callable[[int, int], None]


def default_workers() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


# ------------------------------------------------------------------------------------- reading rows


def read_rows(rows: list[CsvRow], source: str, folder: Path, points: tuple[int, ...], reader: str) -> list[tuple]:
    """Read and normalise some rows (in a worker process): (row, reason, corrupt, fps, float16 features)."""
    out = []
    for row in rows:
        res = read_clip(row, source, folder, points, json_clip=READERS[reader])
        f16 = None if res.features is None else np.clip(res.features, -F16_MAX, F16_MAX).astype(np.float16)
        out.append((res.row, res.reason, res.corrupt_files, res.fps, f16))
    return out


def _worker_init() -> None:
    """Ctrl-C is the parent's to handle (it commits and stops the pool); and a worker whose parent was
    killed (kill -9) exits instead of waiting for work forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def results(rows: list[CsvRow], work: Callable[[list[CsvRow]], list[tuple]], workers: int) -> Iterator[list[tuple]]:
    """`work` over CHUNK-row chunks of `rows`, in order, in `workers` processes (in this one for 1)."""
    chunks = [rows[i : i + CHUNK] for i in range(0, len(rows), CHUNK)]
    if workers <= 1 or len(chunks) < 2:
        yield from map(work, chunks)
        return
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_worker_init)
    try:
        pending = iter(chunks)
        window = deque(pool.submit(work, c) for c in [next(pending) for _ in range(min(len(chunks), 4 * workers))])
        while window:
            done = window.popleft().result()
            if (chunk := next(pending, None)) is not None:
                window.append(pool.submit(work, chunk))
            yield done
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------ the partial folder


class Partial:
    """The partial pack in `folder`: what is committed, and appending to it."""

    def __init__(self, folder: Path, key: dict):
        self.folder, self.key = folder, key
        self.records: list[list] = []  # per row done: [reason or None, corrupt, fps, frames]
        self.size = 0  # committed bytes of features.f16
        self.out = None
        self.pending: list[list] = []  # rows added since the last commit
        self.written = 0  # bytes of the committed and pending rows (a write cut short is not counted)
        self.last_commit = time.monotonic()

    def start(self, fresh: bool) -> int:
        """Resume what is committed (unless `fresh` or the key differs); returns rows already done."""
        if fresh or self._stored_key() != self.key:
            self._clear()
            (self.folder / KEY_FILE).write_text(json.dumps(self.key), encoding="utf-8")
        else:
            self._load_journal()
        self.out = open(self.folder / FEATURES_FILE, "ab")  # noqa: SIM115 (closed by close())
        self.out.truncate(self.size)  # bytes written after the last commit are read again
        self.written = self.size
        return len(self.records)

    def _stored_key(self) -> dict | None:
        try:
            return json.loads((self.folder / KEY_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def _clear(self) -> None:
        for p in self.folder.iterdir():
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        self.records, self.size = [], 0

    def _load_journal(self) -> None:
        """Committed lines, in order; a torn last line (killed while writing) and anything after a line
        whose features are not all on disk are dropped."""
        try:
            lines = (self.folder / JOURNAL_FILE).read_bytes().split(b"\n")
            on_disk = (self.folder / FEATURES_FILE).stat().st_size
        except OSError:
            lines, on_disk = [], 0
        good: list[bytes] = []
        for raw in lines:
            try:
                entry = json.loads(raw)
                ok = entry["first"] == len(self.records) and entry["bytes"] <= on_disk
            except (ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                break
            self.records += entry["results"]
            self.size = int(entry["bytes"])
            good.append(raw)
        (self.folder / JOURNAL_FILE).write_bytes(b"".join(line + b"\n" for line in good))

    def add(self, results: list[tuple]) -> None:
        for _, reason, corrupt, fps, f16 in results:
            if f16 is not None:
                self.out.write(f16.tobytes())
                self.written += f16.nbytes
            self.pending.append([reason, int(corrupt), float(fps), 0 if f16 is None else len(f16)])
        if time.monotonic() - self.last_commit >= COMMIT_SECONDS:
            self.commit()

    def commit(self) -> None:
        """Make the rows added so far durable: features first (fsync), then their journal line."""
        if not self.pending:
            return
        self.out.flush()
        os.fsync(self.out.fileno())
        size = self.written
        line = {"first": len(self.records), "bytes": size, "results": self.pending}
        with open(self.folder / JOURNAL_FILE, "a", encoding="utf-8") as j:
            j.write(json.dumps(line) + "\n")
        self.records += self.pending
        self.size, self.pending, self.last_commit = size, [], time.monotonic()

    def close(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None


# ------------------------------------------------------------------------------------------ locking


@contextlib.contextmanager
def claimed(target: Path, fresh: Callable[[], PackedSplit | None], progress_note: Callable[[str], None]):
    """Hold the partial folder of `target` (flock); yields it, or None when `fresh()` found a current
    cache once the lock was ours (another process packed it meanwhile). Without flock: a private temp
    folder, removed afterwards."""
    if fcntl is None:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    partial = target.with_name(f".{target.name}.partial")
    while True:
        partial.mkdir(exist_ok=True)
        fd = os.open(partial, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                progress_note(f"waiting for another process packing into {partial}")
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                ours = os.stat(partial).st_ino == os.fstat(fd).st_ino  # not published or removed meanwhile
            except FileNotFoundError:
                ours = False
            if ours:
                if fresh() is None:
                    yield partial
                else:  # packed by another process meanwhile: nothing to resume here
                    shutil.rmtree(partial, ignore_errors=True)
                    yield None
                return
        finally:
            os.close(fd)  # releases the lock
        if fresh() is not None:
            yield None
            return


# ------------------------------------------------------------------------------------------ packing


def pack_split(root: str | Path, split: str, cache_dir: str | Path | None = None, *, force: bool = False,
               points: Sequence[int] = DEFAULT_POINTS, workers: int | None = None,
               progress: Progress | str | None = "stderr", json_reader: str = "fast") -> PackedSplit:  # fmt: skip
    """Parse one split once into the packed cache and open it.

    A current cache (see `cache.open_cache`) is reused unless `force`. `workers` processes read clips
    (default: one per core). `progress(done, total)` is called as rows are done; "stderr" prints a line
    every few seconds once packing has run 5 s, None is silent. `json_reader` "reference" reads JSON with
    the per-frame reference reader (tests and benchmarks; same result, slower).
    """
    root, points = check_root(root), check_points(points)
    csv = csv_path(root, split)
    if not csv.is_file():
        raise DataError(f"split CSV not found: {csv}")
    if json_reader not in READERS:
        raise ValueError(f"json_reader must be one of {sorted(READERS)}, got {json_reader!r}")
    stamp = csv_stamp(csv)
    if not force:
        for c in [Path(cache_dir)] if cache_dir else cache_candidates(root, split, points):
            if (found := open_cache(c, stamp=stamp, points=points)) is not None:
                return found
    report = LineProgress(split) if progress == "stderr" else progress
    target = Path(cache_dir) if cache_dir else default_cache_dir(root, split, points)
    target.parent.mkdir(parents=True, exist_ok=True)
    fresh = functools.partial(open_cache, target, stamp=stamp, points=points)
    note = _note if report is not None else (lambda message: None)
    with claimed(target, (lambda: None) if force else fresh, note) as folder:
        if folder is not None:
            _pack_into(folder, target, root, split, csv, stamp, points, force, workers, report, json_reader)
    for attempt in range(20):  # a concurrent forced re-pack may be swapping the folder right now
        if (opened := fresh()) is not None:
            return opened
        time.sleep(0.05 * (attempt + 1))
    raise DataError(f"packed cache is unreadable right after writing it: {target}")


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _pack_into(folder: Path, target: Path, root: Path, split: str, csv: Path, stamp: dict,
               points: tuple[int, ...], force: bool, workers: int | None, report: Progress | None,
               json_reader: str) -> None:  # fmt: skip
    """Pack (or resume) into the held `folder`, then publish it at `target`."""
    rows = read_csv(csv)
    source, keypoints = detect_source(root, split)
    key = {"format": META_FORMAT, "feature_version": FEATURE_VERSION, "points": list(points), "source": source,
           "split": split, "rows": len(rows), **stamp}  # fmt: skip
    partial = Partial(folder, key)
    try:
        done = partial.start(fresh=force)
        if report is not None:
            report(done, len(rows))
        work = functools.partial(read_rows, source=source, folder=keypoints, points=points, reader=json_reader)
        for chunk in results(rows[done:], work, workers or default_workers()):
            partial.add(chunk)
            if report is not None:
                report(len(partial.records) + len(partial.pending), len(rows))
    finally:
        with contextlib.suppress(OSError, ValueError):
            partial.commit()  # on Ctrl-C too: what was read is kept for the next run
        partial.close()
    meta = build_meta(rows, partial.records, split, source, points)
    meta.update(stamp, root=str(root.resolve()), csv=str(csv))
    if meta["summary"]["packed"] == 0:
        raise DataError(f"no usable clips in {csv}: {PackSummary.from_dict(meta['summary']).line()}")
    np.save(folder / OFFSETS_FILE, np.asarray(meta.pop("offsets"), dtype=np.int64))
    (folder / META_FILE).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    for name in (KEY_FILE, JOURNAL_FILE):
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    _publish(folder, target, replace=force, stamp=stamp, points=points)
    shutil.rmtree(folder, ignore_errors=True)  # still there only when another process's cache won


def build_meta(rows: list[CsvRow], records: list[list], split: str, source: str, points: tuple[int, ...]) -> dict:
    """meta.json (less the CSV stamp) and "offsets" from the per-row records, as the cache stores them."""
    kept, offsets = [], [0]
    skipped = {r: 0 for r in SKIP_REASONS}
    skipped_clips: list[tuple[str, str]] = []
    corrupt = 0
    for row, (reason, bad, fps, frames) in zip(rows, records, strict=True):
        corrupt += bad
        if reason is not None:
            skipped[reason] += 1
            skipped_clips.append((row.sentence_name, reason))
        else:
            offsets.append(offsets[-1] + frames)
            kept.append((row, fps))
    names = [r.sentence_name for r, _ in kept]
    sentences = [r.sentence for r, _ in kept]
    summary = PackSummary(split, source, len(rows), len(kept), offsets[-1], {k: v for k, v in skipped.items() if v},
                          skipped_clips, corrupt)  # fmt: skip
    return {
        "format": META_FORMAT, "feature_version": FEATURE_VERSION, "split": split, "points": list(points),
        "num_points": len(points), "total_frames": offsets[-1], "dtype": "float16",
        "fingerprint": compute_fingerprint(names, sentences, np.diff(offsets)),
        "clips": {"names": names, "video_ids": [r.video_id for r, _ in kept], "sentences": sentences,
                  "fps": [fps for _, fps in kept], "rows": [r.row for r, _ in kept]},
        "summary": summary.to_dict(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "offsets": offsets,
    }  # fmt: skip


def load_split(root: str | Path, split: str, cache_dir: str | Path | None = None, *,
               points: Sequence[int] = DEFAULT_POINTS, workers: int | None = None,
               progress: Progress | str | None = "stderr") -> PackedSplit:  # fmt: skip
    """The split's packed cache, built first when missing or stale (CSV changed, FEATURE_VERSION bumped),
    with one process per core and progress lines on stderr when that takes more than a few seconds."""
    return pack_split(root, split, cache_dir, force=False, points=points, workers=workers, progress=progress)
