"""Running on several processes launched by ``torchrun``: the rank of this process, its device, the process group
of a distributed training run and the decisions its ranks take together.

``torchrun --nproc_per_node=N metalseg train ...`` (or ``--nnodes`` with a rendezvous) starts N copies of the
command with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in their environment. Training joins
the process group they form (:func:`process_group`: gloo on CPUs, nccl on GPUs) and wraps the model in
:class:`torch.nn.parallel.DistributedDataParallel`, which all-reduces the gradients; :class:`Agreement` makes every
rank take the same decision at every step (stop, the clock of the learning rate, end of the time budget,
validation). Batch prediction only reads the rank (:func:`environment_rank`) to take its share of a folder. Nothing
here communicates by itself: all communication is ``torch.distributed``'s.

torch is imported lazily: reading the rank costs nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from napari_metalseg.errors import MetalsegError

TIMEOUT = timedelta(minutes=60)
"""How long a rank waits for the others at a collective before it gives up (rank 0 validates while the others wait:
a long validation must fit in it). A rank that dies is noticed at once: its peers' sockets close."""


def environment_rank() -> tuple[int, int]:
    """``(rank, world size)`` of this process from ``torchrun``'s ``RANK`` and ``WORLD_SIZE`` (``(0, 1)`` when not
    set).

    Raises
    ------
    MetalsegError
        When they are not integers or the rank is outside ``0 .. WORLD_SIZE - 1``.
    """
    try:
        rank, count = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise MetalsegError("RANK and WORLD_SIZE must be integers (set by torchrun)") from None
    if not 0 <= rank < count:
        raise MetalsegError(f"rank {rank} is not in 0..{count - 1} (WORLD_SIZE {count})")
    return rank, count


def rank_device(device: str = "auto") -> str:
    """The device of this process: under ``torchrun`` on a GPU node, ``"auto"`` or ``"cuda"`` is the GPU of its local
    rank (``cuda:LOCAL_RANK`` modulo the GPUs present); otherwise ``device`` as given."""
    if environment_rank()[1] == 1 or device not in ("auto", "cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        return device
    try:
        local = int(os.environ.get("LOCAL_RANK", environment_rank()[0]))
    except ValueError:
        raise MetalsegError("LOCAL_RANK must be an integer (set by torchrun)") from None
    return f"cuda:{local % torch.cuda.device_count()}"


@contextmanager
def process_group(device: str = "auto") -> Iterator[str]:
    """Join the process group of the ranks ``torchrun`` started (nothing to join in a single process) and leave it
    at the end; yields the resolved device this rank computes on.

    The backend is nccl when the rank computes on a GPU, gloo otherwise. A group already initialised by the caller
    is used as it is (and left to the caller).

    Raises
    ------
    MetalsegError
        When the device cannot be used, or the rendezvous variables ``torchrun`` sets are missing.
    """
    from napari_metalseg.predict import resolve_device

    resolved = resolve_device(rank_device(device))
    world = environment_rank()[1]
    import torch.distributed as dist

    if world == 1 or (dist.is_available() and dist.is_initialized()):
        yield resolved
        return
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise MetalsegError(
            f"WORLD_SIZE is {world} but {' and '.join(missing)} is not set: launch distributed training with "
            "torchrun (e.g. torchrun --nproc_per_node=2 metalseg train ...)"
        )
    if resolved.startswith("cuda"):
        import torch

        torch.cuda.set_device(torch.device(resolved))
    dist.init_process_group("nccl" if resolved.startswith("cuda") else "gloo", timeout=TIMEOUT)
    try:
        yield resolved
    finally:
        dist.destroy_process_group()


class Agreement:
    """The decisions the ranks of a training run take together, so that they all do the same number of steps.

    Each rank has its own stop request (a signal it received), its own clock and its own loss; a rank that ended
    alone would leave the others waiting forever in the gradient all-reduce. One all-reduce per question makes the
    answer every rank's: a stop asked by any rank stops all, the budget spent on any rank's clock ends all, and the
    loss is the mean over the ranks (the loss of the global batch), and the clock a time-budget schedule follows is
    the ranks' mean. In a single process every answer is the local one and nothing is communicated.

    Parameters
    ----------
    world : int
        The number of ranks.
    device : str
        The device of this rank's tensors (nccl reduces GPU tensors).
    """

    def __init__(self, *, world: int, device: str) -> None:
        self.world = world
        self.device = device if device.startswith("cuda") else "cpu"

    def _sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def before_step(self, requested: bool, elapsed: float) -> tuple[bool, float]:
        """Before a step: ``(whether any rank was asked to stop, the ranks' mean clock)``. The learning rate of a run
        on a time budget follows the clock: every rank must use the same one, or their weights drift apart."""
        stops, seconds = self._sum([float(requested), elapsed])
        return stops > 0, seconds / self.world

    def step(self, loss: float, *, out_of_time: bool, validate: bool) -> tuple[float, bool, bool]:
        """After a step: ``(mean loss over the ranks, whether any rank's budget is spent, whether any rank's
        validation is due)``."""
        total, late, due = self._sum([loss, float(out_of_time), float(validate)])
        return total / self.world, late > 0, due > 0


def sum_over_ranks(tensor):
    """``(tensor summed over the ranks, number of ranks)``, outside autograd (a copy; ``tensor`` is left as it is);
    in a single process ``(tensor, 1)``."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor, 1
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total, dist.get_world_size()
