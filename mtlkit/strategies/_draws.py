"""Random draws from a strategy's own CPU generator, in eager and in compiled code.

``torch.compile`` cannot trace a draw from a ``torch.Generator`` held by an object
(dynamo: a graph break). A strategy that draws (PCGrad's task orders, RLW's weights) does
it through a custom op of its own under compilation: opaque to dynamo and inductor, the op
finds the strategy by an integer handle (a constant of the graph) and runs its eager draw
on the CPU at run time, so the generator moves exactly as in eager mode. Each op mutates
the strategy's small counter tensor, so the compiler keeps the ops in order and neither
folds nor removes them. :class:`SeededDraws` holds what these strategies share: the
generator, its state before the last draw (for ``discard_step``) and the handle.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Any

import torch
from torch import Tensor

_HANDLES = itertools.count()
_OBJECTS: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()


def drawer(handle: int) -> Any:
    """The strategy registered under ``handle`` (called by the custom ops at run time)."""
    return _OBJECTS[handle]


class SeededDraws:
    """A CPU generator of the strategy's own, seeded once, and the handle by which its
    custom ops find it. Copies (``copy.deepcopy``, unpickling) get their own handle."""

    generator: torch.Generator
    _state_before_draw: Tensor | None
    _handle: int
    _draws: Tensor

    def _init_draws(self, seed: int | None) -> None:
        """Seed the generator (``None``: from torch's global generator) and register."""
        self.generator = torch.Generator()
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        self.generator.manual_seed(seed)
        #: The generator's state before the last draw (for :meth:`_restore_draw`).
        self._state_before_draw = None
        #: The counter tensor the custom ops mutate (keeps them ordered under compile).
        self._draws = torch.zeros((), dtype=torch.long)
        self._register()

    def _register(self) -> None:
        self._handle = next(_HANDLES)
        _OBJECTS[self._handle] = self

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._register()

    def _remember_draw(self) -> None:
        """Keep the generator's state before a draw that a rejected step may undo."""
        self._state_before_draw = self.generator.get_state()

    def _restore_draw(self) -> None:
        """Put the generator back to before the last remembered draw (once)."""
        if self._state_before_draw is not None:
            self.generator.set_state(self._state_before_draw)
            self._state_before_draw = None
