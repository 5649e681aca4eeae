"""The library's command-level operations: what `h2s-search data/train/evaluate` run, minus the printing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import TrainConfig
from .presets import preset

SPLITS = ("train", "val", "test")


@dataclass
class DataChoice:
    root: Path
    synthetic: bool
    created: bool

    def describe(self) -> str:
        if not self.synthetic:
            return f"data: {self.root}"
        verb = "wrote" if self.created else "using"
        return f"no --data given: {verb} the built-in synthetic corpus (How2Sign format) at {self.root}"


def choose_data(data: Path | None) -> DataChoice:
    """--data DIR, or the built-in synthetic corpus, generated once into $H2S_HOME."""
    if data is not None:
        from .data import DataError

        if not Path(data).is_dir():
            raise DataError(f"data root not found: {data}")
        return DataChoice(Path(data), False, False)
    from .synthetic import ensure_default_corpus

    root, created = ensure_default_corpus()
    return DataChoice(root, True, created)


def pack(root: Path, splits: tuple[str, ...] = SPLITS, force: bool = False, *, workers: int | None = None,
         progress=None) -> list:  # fmt: skip
    """Pack every split that has a CSV (resuming an interrupted pack); returns the PackedSplits.

    `workers`: processes reading clips (default one per core). `progress(split)` gives each split's
    `(done, total)` callback (see `how2sign.data.pack_split`); None prints lines on stderr as packing on
    first use does."""
    from .data import DataError, csv_path, pack_split

    if not Path(root).is_dir():
        raise DataError(f"data root not found: {root}")
    present = [s for s in splits if csv_path(root, s).exists()]
    if not present:
        raise DataError(f"no split CSV under {root} (looked for {csv_path(root, splits[0])})")
    return [pack_split(root, s, force=force, workers=workers, progress="stderr" if progress is None else progress(s))
            for s in present]  # fmt: skip


def build_config(preset_name: str, epochs: int | None = None, sets: list[str] | None = None) -> TrainConfig:
    cfg = preset(preset_name)
    if epochs is not None:
        cfg = cfg.replace({"epochs": epochs}, "--epochs")
    return cfg.with_sets(sets or [])


def run_training(cfg: TrainConfig, root: Path, out: Path, *, device: str = "auto", resume: bool = False,
                 progress: bool = True, on_epoch=None):
    """Load (packing on first use) and train; returns (TrainResult, TrainData)."""
    from .batches import TrainData
    from .checkpoint import LAST, load
    from .device import resolve_device
    from .train import train
    from .vocab import Vocab

    resolve_device(device)  # a wrong --device fails before minutes of packing
    vocab = None
    if resume and (Path(out) / LAST).exists():
        vocab = Vocab.from_list(load(Path(out) / LAST)["vocab"])  # resume keeps the run's own vocabulary
    data = TrainData.load(root, vocab=vocab, min_freq=cfg.vocab_min_freq)
    result = train(cfg, data, out, device=device, resume=resume, progress=progress, on_epoch=on_epoch)
    return result, data


def write_predictions(path: Path, hypotheses: list[str]) -> None:
    Path(path).write_text("".join(h.replace("\n", " ") + "\n" for h in hypotheses))

