"""Names are not paths: study names are checked, and every folder built from one stays inside its root.

A study's name comes from a study file or from the shared database, and a trial's run folder is built
from it (`<checkpoint root>/<study>/trial-00017`). In a fleet, whoever can write a study into the
database would otherwise pick where every worker writes. So a name is a plain word (`check_name`), and
every folder derived from a name or a trial number is resolved and must lie inside its root (`inside`).
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import UserError

MAX_NAME = 100
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


class UnsafePath(UserError):
    """A name that would make a path, or a folder outside its root."""


def check_name(name: str, where: str) -> str:
    """`name` when it is a plain study name (letters, digits, `_ . + -`, not starting with a dot, no `..`,
    at most MAX_NAME characters); else one line naming `where`."""
    shown = repr(name if len(name) <= 40 else name[:40] + "...")
    if not isinstance(name, str) or not name:
        raise UnsafePath(f"{where}: the study name is empty")
    if len(name) > MAX_NAME:
        raise UnsafePath(f"{where}: study name {shown} is longer than {MAX_NAME} characters")
    if not _NAME.fullmatch(name) or ".." in name:
        raise UnsafePath(f"{where}: study name {shown} may hold only letters, digits and _ . + - (no '..', "
                         "no '/', not starting with a dot): it names folders")
    return name


def inside(root: Path, *parts: str) -> Path:
    """root/parts, resolved; refused unless it lies inside the resolved root."""
    base = Path(root).resolve()
    path = base.joinpath(*parts).resolve()
    if path != base and base not in path.parents:
        raise UnsafePath(f"{path} is outside {base}")
    return path
