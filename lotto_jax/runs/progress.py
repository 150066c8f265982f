"""Progress display of the run layer: a rich progress bar fed by ``fit``'s callback.

:func:`lotto_jax.train.fit` prints nothing; it calls ``callback(state, record)``
after each evaluation. The engine opens a :class:`ProgressBar` around a stack's
``fit`` calls and forwards each record to :meth:`ProgressBar.update`.

Examples:
  >>> from lotto_jax.train import EvalRecord
  >>> with ProgressBar("train", total=20, done=0, enabled=False) as bar:
  ...     bar.update(EvalRecord(10, 0.5, None, None, 0.6, 0.8, 0.1))
  >>> bar.completed
  10
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

__all__ = ["ProgressBar"]


class ProgressBar:
    """A rich progress bar with loss, accuracy and ETA; silent when disabled.

    Args:
      description: the bar's label.
      total: the last step (``config.steps``).
      done: the step training starts from (a resumed run starts part-way).
      enabled: draw the bar; default: only when stderr is a terminal.
    """

    def __init__(
        self, description: str, *, total: int, done: int, enabled: bool | None = None
    ):
        self.enabled = sys.stderr.isatty() if enabled is None else bool(enabled)
        self.completed = done
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._p = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                transient=False,
            )
            self._task = self._p.add_task(description, total=total, completed=done, info="")

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            self._p.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self._p.__exit__(*exc)

    def update(self, rec: Any) -> None:
        """Moves the bar to ``rec.step`` and shows its train loss and test accuracy
        (means over replicates). A record without a train loss (the evaluation at
        step 0, before any training) leaves the bar as it is."""
        if rec.train_loss is None:
            return
        self.completed = int(rec.step)
        if not self.enabled:
            return
        mean = lambda v: float(np.mean(v))  # noqa: E731
        info = (
            f"loss {mean(rec.train_loss):.4f}  "
            f"test acc {100 * mean(rec.test_accuracy):.2f}%"
        )
        self._p.update(self._task, completed=self.completed, info=info)
