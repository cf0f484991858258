"""Reading one dataset in shuffled passes: :class:`ShuffledIndexStream`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from mtlkit.schedulers.base import _check_int

__all__ = ["ShuffledIndexStream"]


class ShuffledIndexStream:
    """An endless stream of indices into one dataset, one shuffled pass after another.

    Each pass is a permutation of ``range(size)`` drawn with this stream's own seeded
    :class:`torch.Generator` (or the identity when ``shuffle=False``), so every index is
    visited exactly once per pass; a used-up pass is followed by a freshly shuffled one.
    :meth:`take` may straddle two passes.

    Args:
        size: dataset length (>= 1).
        seed: seed of the stream's generator.
        shuffle: shuffle each pass (True) or read in order (False).
    """

    def __init__(self, size: int, *, seed: int = 0, shuffle: bool = True) -> None:
        self.size = _check_int("size", size, 1)
        self.shuffle = shuffle
        self._generator = torch.Generator().manual_seed(_check_int("seed", seed, 0))
        self._passes = 0
        self._new_pass()
        self._position = 0

    def _new_pass(self) -> None:
        # Remember the generator state *before* the shuffle: the state dict then only
        # needs it (not the permutation) to rebuild the current pass.
        self._pass_state = self._generator.get_state()
        if self.shuffle:
            self._perm = torch.randperm(self.size, generator=self._generator)
        else:
            self._perm = torch.arange(self.size)
        self._position = 0

    @property
    def passes(self) -> int:
        """Number of passes started before the current one."""
        return self._passes

    @property
    def position(self) -> int:
        """Number of indices already taken from the current pass."""
        return self._position

    def take(self, n: int) -> list[int]:
        """Return the next ``n`` indices."""
        n = _check_int("n", n, 0)
        out: list[int] = []
        while len(out) < n:
            if self._position == self.size:
                self._new_pass()
                self._passes += 1
            stop = min(self.size, self._position + n - len(out))
            out.extend(self._perm[self._position : stop].tolist())
            self._position = stop
        return out

    def state_dict(self) -> dict[str, Any]:
        """Position in the current pass, pass count and generator state."""
        return {
            "size": self.size,
            "shuffle": self.shuffle,
            "passes": self._passes,
            "position": self._position,
            "pass_state": self._pass_state.clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state["size"] != self.size or bool(state["shuffle"]) != self.shuffle:
            raise ValueError(
                f"state is for a stream of size {state['size']} (shuffle={state['shuffle']}), "
                f"this one has size {self.size} (shuffle={self.shuffle})"
            )
        self._generator.set_state(state["pass_state"])
        self._new_pass()
        self._passes = _check_int("state['passes']", state["passes"], 0)
        self._position = _check_int("state['position']", state["position"], 0)
        if self._position > self.size:
            raise ValueError(f"position {self._position} exceeds the stream size {self.size}")
