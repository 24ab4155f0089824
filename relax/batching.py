"""In-flight batching: which waiting structures join the running batch.

Structures are admitted in input order while the batch's atom count stays within the budget
(a structure larger than the whole budget runs alone). Converged and failed systems leave the
batch after every model call, and the freed atoms are filled again, so the batch stays full
until the queue runs dry (TorchSim's ``InFlightAutoBatcher`` idea, as a small explicit object).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import torch

#: Atom budget on the CPU, measured with ``benchmarks/batch_size.py`` (CHGNet, 2 cores, the
#: relax benchmark's structure mixture): atoms per second peak between about 256 and 512
#: atoms per call and fall slowly beyond (0.7 of the peak at 1024); more systems in flight
#: also means fewer model calls.
CPU_MAX_ATOMS = 512


def default_max_atoms(device: torch.device, bytes_per_atom: float | None = None) -> int:
    """Atom budget: from free GPU memory on a GPU (half of it, over the potential's estimate
    of bytes per atom), :data:`CPU_MAX_ATOMS` on the CPU."""
    if device.type == "cuda" and bytes_per_atom:
        free, _total = torch.cuda.mem_get_info(device)
        return max(1, int(0.5 * free / bytes_per_atom))
    return CPU_MAX_ATOMS


class InFlightBatcher:
    """Hands out waiting structures (by input index) to fill an atom budget.

    Args:
        sizes: atom count of every structure, in input order.
        max_atoms: the atom budget of one batch.
    """

    def __init__(self, sizes: Sequence[int], max_atoms: int):
        if max_atoms < 1:
            raise ValueError("max_atoms must be at least 1")
        self.sizes = list(sizes)
        self.max_atoms = int(max_atoms)
        self.waiting: deque[int] = deque(range(len(self.sizes)))

    @property
    def done(self) -> bool:
        """True once every structure has been handed out."""
        return not self.waiting

    def take(self, atoms_in_batch: int) -> list[int]:
        """Indices of the next structures that fit beside ``atoms_in_batch`` running atoms."""
        taken: list[int] = []
        used = atoms_in_batch
        while self.waiting:
            nxt = self.sizes[self.waiting[0]]
            if used + nxt > self.max_atoms and used > 0:
                break
            taken.append(self.waiting.popleft())
            used += nxt
        return taken
