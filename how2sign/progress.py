"""A rich progress bar over epochs and the current epoch's batches, shared by train() and pretrain()."""

from __future__ import annotations


class EpochProgress:
    """Two bars: epochs done, and the batches of the current epoch (a no-op when disabled)."""

    def __init__(self, enabled: bool, total_epochs: int, done: int, label: str = "epochs"):
        self.p = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
        self.p.start()
        self.epochs = self.p.add_task(label, total=total_epochs, completed=done, info="")
        self.batches = self.p.add_task("batches", total=1, info="")

    def start_epoch(self, epoch: int, n: int, done: int = 0) -> None:
        """An epoch of n batches begins, or resumes with `done` of them done."""
        if self.p:
            self.p.reset(self.batches, total=n, completed=done, description=f"epoch {epoch}", info="")

    def advance(self) -> None:
        if self.p:
            self.p.advance(self.batches)

    def end_epoch(self, info: str) -> None:
        """One epoch done; `info` is the line shown beside the epochs bar (losses so far)."""
        if self.p:
            self.p.update(self.epochs, advance=1, info=info)

    def close(self) -> None:
        if self.p:
            self.p.stop()
