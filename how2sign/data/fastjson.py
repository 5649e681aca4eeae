"""OpenPose JSON clips read fast: exactly the ((T, 137, 3) float32, corrupt count) of the reference
`release.read_json_clip`, for every input, faster per core (benchmarks/README.md, pack.py).

The reference's time went mostly to the standard json parser (it builds 411 Python floats per frame),
then to four `np.asarray` per frame, opening files by full path and per-frame Python (the split:
benchmarks/README.md, pack.py --profile). Here each file is opened relative to its clip folder and read
with one `os.read`, and then the first of these that vouches for the frame reads it:

1. **OpenPose's own layout, pysimdjson.** When the bytes, with number characters and whitespace taken
   out, are exactly OpenPose 1.3's one-person layout (`_LAYOUT`) and the four 3-D keys are there (so no
   2-D key is there twice), simdjson validates the document and copies the four number arrays straight into C doubles
   (no Python floats); the clip becomes float32 in one numpy cast. Why that equals the reference: no
   backslash can survive the layout check, so keys are literal and unique (json keeps the last of
   duplicate keys, simdjson the first: here there are none); every array is flat and holds only
   numbers, in the counts the layout fixes; simdjson and Python both round decimal to the nearest
   double, and int64/uint64 -> double -> float32 is the cast numpy applies to a Python int.
2. **Any other frame, orjson** (the standard `json` when orjson cannot be imported): a dict whose
   "people" is a list and whose first person has the four component lists at 3 x n values (or empty)
   joins one flat list per clip, converted by one `array("f", ...)` call, which rounds as
   `np.asarray(..., float32)` does and refuses anything that is not a number.
3. **The reference's `parse_json_frame` itself** for whatever neither vouches for: inputs that orjson
   refuses and Python may accept (NaN, Infinity, BOMs, UTF-16, integers beyond 64 bits, lone
   surrogates), unusual structure, and every orjson-read frame of a clip whose values hold a non-number.

orjson and `json` build the same document for every input both accept (same rounding, last duplicate
key wins), except that orjson reads integers beyond 64 bits as floats, which give the same float32.
tests/how2sign/test_pack.py checks the equality on crafted and fuzzed (damaged) frames, bit for bit.
"""

from __future__ import annotations

import os
from array import array
from pathlib import Path

import numpy as np

from how2sign.data.release import frame_names, parse_json_frame
from how2sign.features import NUM_POINTS, OPENPOSE_COMPONENTS

try:
    import simdjson
except ImportError:  # no wheel for this platform: orjson reads every frame
    simdjson = None
try:
    import orjson

    loads, _GENERAL = orjson.loads, "orjson"
except ImportError:  # the standard parser: same results, only the parse is not faster
    import json

    loads, _GENERAL = json.loads, "json"

JSON_PARSERS = ("simdjson+" if simdjson is not None else "") + _GENERAL  # as the benchmark prints it
_DIR_FD = os.open in os.supports_dir_fd

_KEYS = tuple(key for key, _ in OPENPOSE_COMPONENTS)
_KEYS_3D = tuple(key.replace("_2d", "_3d") for key in _KEYS)
_BYTES = bytes(range(256))  # translate() with an identity table is faster than with None
_COMPONENTS = tuple((key, 3 * n, [0.0] * (3 * n)) for key, n in OPENPOSE_COMPONENTS)
_LAYOUT_CHARS = b"0123456789.+-eE \t\n\r"  # what a number is made of, and JSON's whitespace
_LAYOUT = ('{"version":1.3,"people":[{"person_id":[-1],'
           + ",".join(f'"{key}":[{",".join(["0"] * (3 * n))}]' for key, n in OPENPOSE_COMPONENTS)
           + "".join(f',"{key}":[]' for key in _KEYS_3D) + "}]}").encode().translate(None, _LAYOUT_CHARS)  # fmt: skip
_SIMDJSON_ERRORS = (ValueError, TypeError, LookupError, RuntimeError)  # what pysimdjson raises on bad input
_EMPTY: list = []  # "people": [] (an empty frame); compared by identity
_READ = 1 << 16  # OpenPose frame files are 3-5 kB


def read_bytes(name: str, dir_fd: int | None) -> bytes:
    """The whole file (`name` relative to `dir_fd`), with as few system calls as possible."""
    fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    try:
        data = os.read(fd, _READ)
        if len(data) == _READ:
            parts = [data]
            while chunk := os.read(fd, _READ):
                parts.append(chunk)
            data = b"".join(parts)
        return data
    finally:
        os.close(fd)


def layout_values(parse, data: bytes) -> list | None:
    """The four component arrays as buffers of C doubles when the frame is in OpenPose's own layout
    and simdjson accepts it, else None."""
    if data.translate(_BYTES, _LAYOUT_CHARS) != _LAYOUT:
        return None
    try:
        person = parse(data)["people"][0]
        # The layout gives each component two key slots, its 2-D and 3-D one: all four 3-D keys present
        # means no 2-D key is there twice.
        if not all(key in person for key in _KEYS_3D):
            return None
        arrays = [person[key] for key in _KEYS]
        if any(len(a) != size for a, (_, size, _) in zip(arrays, _COMPONENTS, strict=True)):
            return None  # the layout allows a 2-D key in its 3-D slot, e.g. an empty (disabled) component
        return [a.as_buffer(of_type="d") for a in arrays]
    except _SIMDJSON_ERRORS:
        return None


def frame_values(data: bytes) -> list | None:
    """A frame's 411 values as one flat list when orjson reads it as an OpenPose frame, `_EMPTY` when
    "people" is empty, None when the reference must decide."""
    try:
        doc = loads(data)
    except (ValueError, RecursionError):  # orjson refuses some inputs the standard parser takes
        return None
    if type(doc) is not dict:
        return None
    people = doc.get("people")
    if type(people) is not list:
        return None
    if not people:
        return _EMPTY
    person = people[0]
    if type(person) is not dict:
        return None
    out: list = []
    for key, size, zeros in _COMPONENTS:
        values = person.get(key)
        if type(values) is not list:
            return None
        if len(values) == size:
            out += values
        elif values:
            return None  # a wrong length: corrupt, as the reference will say
        else:
            out += zeros  # OpenPose writes [] for a disabled component
    return out


class _Clip:
    """One clip's frames as they are read: which way each went, and the values gathered so far."""

    def __init__(self, frames: int):
        self.kp = np.zeros((frames, NUM_POINTS, 3), dtype=np.float32)
        self.corrupt = 0
        self.layout_rows: list[int] = []
        self.layout_bufs: list = []
        self.flat_rows: list[int] = []
        self.flat: list = []
        self.blobs: list[bytes] = []  # bytes of the flat frames, for the reference if `flat` has a non-number

    def reference(self, t: int, data: bytes) -> None:
        frame = parse_json_frame(data)
        if frame is None:
            self.corrupt += 1
        else:
            self.kp[t] = frame

    def add(self, t: int, data: bytes, parse) -> None:
        if parse is not None and (bufs := layout_values(parse, data)) is not None:
            self.layout_bufs += bufs
            self.layout_rows.append(t)
            return
        values = frame_values(data)
        if values is None:
            self.reference(t, data)
        elif values is not _EMPTY:
            self.flat += values
            self.flat_rows.append(t)
            self.blobs.append(data)

    def finish(self) -> tuple[np.ndarray, int]:
        if self.layout_rows:
            values = np.frombuffer(b"".join(self.layout_bufs), dtype=np.float64).reshape(-1, NUM_POINTS, 3)
            if len(self.layout_rows) == len(self.kp):
                self.kp = values.astype(np.float32)
            else:
                self.kp[self.layout_rows] = values  # the same double -> float cast as astype
        if self.flat_rows:
            try:
                values = np.frombuffer(array("f", self.flat), dtype=np.float32)
            except (TypeError, OverflowError):  # a string, null, list or object among the values
                for t, data in zip(self.flat_rows, self.blobs, strict=True):
                    self.reference(t, data)
            else:
                self.kp[self.flat_rows] = values.reshape(-1, NUM_POINTS, 3)
        return self.kp, self.corrupt


def read_json_clip_fast(folder: Path) -> tuple[np.ndarray, int] | None:
    """`release.read_json_clip`'s result: ((T, 137, 3) float32, corrupt file count), None when the
    folder does not exist."""
    names = frame_names(folder)
    if names is None:
        return None
    try:  # opening by name in the folder saves resolving the whole path for every frame
        dir_fd: int | None = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if _DIR_FD else None
    except OSError:
        dir_fd = None
    if dir_fd is None:
        names = [os.path.join(folder, name) for name in names]
    clip = _Clip(len(names))
    parse = simdjson.Parser().parse if simdjson is not None else None  # one parser per call: thread-safe
    try:
        for t, name in enumerate(names):
            try:
                data = read_bytes(name, dir_fd)
            except OSError:
                clip.corrupt += 1
                continue
            clip.add(t, data, parse)
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    return clip.finish()
