"""The learning-rate schedules (by steps, or by the clock until a time budget is spent) and :class:`Pace`, a run's
clock: when to validate, what total to show, when the budget is spent."""

from __future__ import annotations

import time

from napari_metalseg.training.config import UNTIL_BUDGET


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up over ``warmup * total`` steps, then polynomial (power 0.9) decay to 0."""
    warm = max(1, int(round(warmup * total)))
    if step < warm:
        return (step + 1) / warm
    return max(0.0, 1 - (step - warm) / max(1, total - warm)) ** 0.9


def time_lr_factor(elapsed: float, budget: float, warmup: float) -> float:
    """The schedule of :func:`lr_factor` on the clock: linear warm-up over the first ``warmup`` of the budget
    (from 1 %), then polynomial (power 0.9) decay reaching 0 when ``budget`` seconds are spent."""
    frac = min(1.0, max(0.0, elapsed / budget))
    if frac < warmup:
        return max(0.01, frac / warmup)
    return max(0.0, 1 - (frac - warmup) / max(1e-9, 1 - warmup)) ** 0.9


class Pace:
    """The clock of one gradient run: learning-rate factor, validation times and the total shown in progress.

    Parameters
    ----------
    total : int
        Optimizer steps of the run, or :data:`~napari_metalseg.training.config.UNTIL_BUDGET`.
    budget : float or None
        Time budget in seconds.
    warmup : float
        Warm-up fraction of the steps (or of the budget).
    val_every : int or None
        Validate every that many steps (default: 5 times per run); with a budget, every fifth of it instead.
    spent : float
        Seconds already spent (a resumed run).
    """

    def __init__(self, *, total: int, budget: float | None, warmup: float, val_every: int | None, spent: float) -> None:
        self.total = total
        self.budget = budget
        self.warmup = warmup
        self.val_every = val_every or max(1, total // 5)
        self.val_seconds = budget / 5 if budget else None
        self.next_val = spent + self.val_seconds if self.val_seconds else None
        self.t0 = time.perf_counter() - spent

    def elapsed(self) -> float:
        """Seconds of training so far (with those of the run this one resumes)."""
        return time.perf_counter() - self.t0

    def lr_factor(self, step: int, elapsed: float | None = None) -> float:
        """Factor of the base learning rate at ``step``: on the clock (``elapsed`` seconds, default this process's
        clock) for a run until the budget, else by steps."""
        if self.total == UNTIL_BUDGET:
            return time_lr_factor(self.elapsed() if elapsed is None else elapsed, self.budget, self.warmup)
        return lr_factor(step, self.total, self.warmup)

    def out_of_time(self, elapsed: float) -> bool:
        """Whether the time budget is spent."""
        return self.budget is not None and elapsed >= self.budget

    def shown_total(self, step: int, elapsed: float) -> int:
        """The total steps a progress event shows: estimated from the pace so far for a run until the budget."""
        if self.total != UNTIL_BUDGET:
            return self.total
        if self.out_of_time(elapsed):
            return step
        return max(step + 1, int(round(step * self.budget / max(elapsed, 1e-6))))

    def validation_due(self, step: int, elapsed: float) -> bool:
        """Whether a periodic validation is due after ``step`` (every fifth of the budget, or every ``val_every``)."""
        return elapsed >= self.next_val if self.next_val is not None else step % self.val_every == 0

    def validated(self) -> None:
        """Count a validation: the next timed one is a fifth of the budget later."""
        if self.next_val is not None:
            self.next_val += self.val_seconds
