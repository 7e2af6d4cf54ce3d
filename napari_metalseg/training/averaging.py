"""The exponential moving average of a model's trained weights: what a gradient run validates and keeps.

A network trained for a few thousand steps on a handful of micrographs ends each step somewhere else: batch norm and
small batches make consecutive weights differ in which crops they fit best. The average of the recent weights
generalises better than any one of them (docs/quality.md: +4 to +6 points of mean Dice on held-out micrographs after
1,600 steps of ELU-Net, 2 of 2 runs). Training goes on from the raw weights; validation, the kept model and the
model of a stopped run are the average.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class WeightAverage:
    """Exponential moving average of the trained state of ``model`` (its :func:`trainable_state_dict
    <napari_metalseg.models.lora.trainable_state_dict>`: parameters and batch-norm statistics, never a frozen base).

    After update ``t`` (from 0) the average moves towards the weights by ``1 - d`` with
    ``d = min(decay, (1 + t) / (10 + t))``: the first updates follow the weights closely, so a short run is not
    held back by its random initialisation.

    Parameters
    ----------
    model : torch.nn.Module
        The model in training (its tensors are read and, in :meth:`applied`, swapped).
    decay : float
        Weight of the average at each update, in [0, 1); 0: no average, the model's own weights are validated and
        kept.
    """

    def __init__(self, model, *, decay: float) -> None:
        from napari_metalseg.models.lora import trainable_state_dict

        self.decay = float(decay)
        self.updates = 0
        self._live = {k: v for k, v in trainable_state_dict(model).items() if v.is_floating_point()}
        self._average = {k: v.detach().clone() for k, v in self._live.items()}

    def update(self) -> None:
        """Move the average towards the model's current weights (after an optimizer step)."""
        import torch

        if not self.decay:
            return
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            for key, value in self._live.items():
                self._average[key].lerp_(value.detach(), 1.0 - d)
        self.updates += 1

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the model holds the average (to validate and save it); its own weights after."""
        import torch

        if not self.decay:
            yield
            return
        with torch.no_grad():
            own = {k: v.detach().clone() for k, v in self._live.items()}
            for key, value in self._live.items():
                value.copy_(self._average[key])
        try:
            yield
        finally:
            with torch.no_grad():
                for key, value in self._live.items():
                    value.copy_(own[key])

    def reset(self) -> None:
        """Start the average again from the model's current weights (a run resumed from a state without one)."""
        import torch

        with torch.no_grad():
            for key, value in self._live.items():
                self._average[key].copy_(value)
        self.updates = 0

    def state_dict(self) -> dict:
        """The average and the number of updates (saved with a run's resume state)."""
        return {"average": dict(self._average), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` (a resumed run)."""
        import torch

        missing = set(self._average) ^ set(state["average"])
        if missing:
            from napari_metalseg.errors import MetalsegError

            raise MetalsegError(f"the resume state's weight average does not match the model: {sorted(missing)[:3]}")
        with torch.no_grad():
            for key, value in state["average"].items():
                self._average[key].copy_(value)
        self.updates = int(state["updates"])
