"""The progress display of ``demo`` and ``train``.

On a terminal it is a tqdm bar.  Anywhere else (a log file, CI, nohup) tqdm's redraws
are carriage returns: the demo's bar became one line of 47,000 characters in a file.
There, and where tqdm is not installed, it prints one plain line per tenth of the run.
"""
from __future__ import annotations

import sys
from typing import Optional, TextIO


class Progress:
    """Steps done out of ``total`` with the last loss; ``label`` names the current part
    (the demo's algorithm).  ``enabled=False`` shows nothing."""

    def __init__(self, total: int, enabled: bool = True, *, initial: int = 0,
                 label: str = "", file: Optional[TextIO] = None):
        self.file = file if file is not None else sys.stderr
        self.total, self.done, self._label = total, initial, label
        self.enabled = enabled and total > initial
        self.every = max(1, total // 10)
        self.bar = None
        if self.enabled and _is_terminal(self.file):
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=total, initial=initial, unit="step", desc=label or None,
                                dynamic_ncols=True, file=self.file)

    def label(self, text: str) -> None:
        self._label = text
        if self.bar is not None:
            self.bar.set_description(text)

    def update(self, loss) -> None:
        """One step done; loss a number or a 0-d tensor, read (on a GPU: waited for)
        only when it is shown."""
        if not self.enabled:
            return
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{float(loss):.3f}", refresh=False)
        elif self.done % self.every == 0 or self.done == self.total:
            where = f"{self._label}: " if self._label else ""
            print(f"{where}step {self.done}/{self.total}, loss {float(loss):.3f}",
                  file=self.file, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _is_terminal(file) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
