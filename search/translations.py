"""The test hypotheses of a confirmation run: `test_translations.csv` in its run folder (and uploaded as an
artifact of that name). Columns `row, reference, hypothesis`, one line per test clip in the test split's
order, so two runs' files pair up line by line for sacrebleu's paired significance test.

One writer (the worker, after decoding the test split) and one reader (the confirmation's statistics), which
reads the run folder's file or, where that folder is not at hand, the uploaded copy's text.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

__all__ = ["COLUMNS", "TEST_TRANSLATIONS", "Translations", "parse_test_translations", "read_test_translations",
           "write_test_translations"]

TEST_TRANSLATIONS = "test_translations.csv"
COLUMNS = ("row", "reference", "hypothesis")


@dataclass(frozen=True)
class Translations:
    source: str              # the file, or the uploaded artifact, for messages
    references: list[str]
    hypotheses: list[str]

    def __len__(self) -> int:
        return len(self.hypotheses)


def write_test_translations(run_dir: Path | str, references: list[str], hypotheses: list[str]) -> Path:
    """Every test clip: row k is the k-th clip of the split as decoded. Returns the file written."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    path = Path(run_dir) / TEST_TRANSLATIONS
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerows((k, ref, hyp) for k, (ref, hyp) in enumerate(zip(references, hypotheses, strict=True)))
    return path


def read_test_translations(run_dir: Path | str) -> Translations:
    """The file in a run folder, in row order. FileNotFoundError when it is missing; ValueError (naming the
    file) when it is not the format above."""
    path = Path(run_dir) / TEST_TRANSLATIONS
    with open(path, newline="", encoding="utf-8") as f:
        return parse_test_translations(f.read(), str(path))


def parse_test_translations(text: str, source: str) -> Translations:
    """The file's text (from a run folder or the artifact store), in row order; ValueError naming `source`
    when it is not the format above."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = tuple(next(reader, ()))
    if header != COLUMNS:
        raise ValueError(f"{source}: expected the columns {', '.join(COLUMNS)}, found {', '.join(header) or 'none'}")
    rows = []
    for n, line in enumerate(reader, start=2):
        if len(line) != len(COLUMNS) or not line[0].isdigit():
            raise ValueError(f"{source}, line {n}: expected {len(COLUMNS)} columns with a row number")
        rows.append((int(line[0]), line[1], line[2]))
    rows.sort()
    if [r for r, _, _ in rows] != list(range(len(rows))):
        raise ValueError(f"{source}: the rows are not 0..{len(rows) - 1}, each once")
    return Translations(source, [ref for _, ref, _ in rows], [hyp for _, _, hyp in rows])
