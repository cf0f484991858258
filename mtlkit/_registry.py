"""One registry convention for every extension point (strategies, schedulers, losses).

A :class:`Registry` maps names to classes. The three public registries live beside what
they hold (``mtlkit.strategies``, ``mtlkit.schedulers``, ``mtlkit.losses``) and are used
the same way::

    @register("my-method")            # or "my_method": names are normalised on both sides
    class MyMethod(Strategy): ...

    get_strategy("my_method", context=Context(num_tasks=3, seed=0), alpha=0.5)
    list_strategies()                 # sorted names

Names are normalised by :func:`normalize_name` when registering *and* when looking up, so
``"My_Method"``, ``"my-method"`` and ``"my method"`` are one name.

A :class:`Context` carries what a training run knows and a component may need (number of
tasks, seed, dataset sizes, ...). :meth:`Registry.build` passes each context value that is
set to the constructor when the constructor has a parameter of that name, unless the
caller gave that option explicitly: callers never inspect constructors themselves.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Generic, TypeVar, cast

__all__ = ["Context", "Registry", "normalize_name"]

T = TypeVar("T")
C = TypeVar("C", bound=type)


def normalize_name(name: str) -> str:
    """The canonical form of a registry name: lower case, words joined by ``-``.

    ``"PCGrad"`` -> ``"pcgrad"``, ``"my_method"`` -> ``"my-method"``,
    ``"Round Robin"`` -> ``"round-robin"``.
    """
    if not isinstance(name, str):
        raise TypeError(f"a registry name must be a string, got {type(name).__name__}")
    words = name.strip().lower().replace("_", " ").replace("-", " ").split()
    if not words:
        raise ValueError("a registry name must not be empty")
    return "-".join(words)


@dataclass(frozen=True)
class Context:
    """Facts of a training run that components may take as constructor arguments.

    Every field is optional; :meth:`Registry.build` passes a field that is set (not
    ``None``) to a constructor that has a parameter of the same name, unless the caller
    gave that option explicitly.

    Attributes:
        num_tasks: K, the number of tasks (strategies with per-task state).
        seed: the run's seed (strategies and schedulers with a generator).
        sizes: examples per task (schedulers).
        batch_size: examples per task and step, one for all or one per task (schedulers).
        mode: ``"one"`` task per step or ``"all"`` tasks per step (schedulers).
        epoch: what an epoch is, a number of steps or a rule such as ``"max"``
            (schedulers).
        num_epochs: epochs in the run (schedulers that anneal over the run).
    """

    num_tasks: int | None = None
    seed: int | None = None
    sizes: Sequence[int] | None = None
    batch_size: int | Sequence[int] | None = None
    mode: str | None = None
    epoch: int | str | None = None
    num_epochs: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields that are set."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }


class Registry(Generic[T]):
    """Names -> classes of one kind of component.

    Args:
        kind: what the registry holds, for messages (``"strategy"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, type[T]] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *, aliases: Sequence[str] = ()) -> Callable[[C], C]:
        """Class decorator: make the class available under ``name`` (and ``aliases``).

        Sets the class attribute ``name`` to the normalised name. Registering another
        class under a name that is taken raises ``ValueError``.
        """
        key = normalize_name(name)
        alias_keys = [normalize_name(a) for a in aliases]

        def deco(cls: C) -> C:
            if not inspect.isclass(cls):
                raise TypeError(f"only classes can be registered as a {self.kind}, got {cls!r}")
            for k in (key, *alias_keys):
                taken = self._lookup(k)
                if taken is not None and taken is not cls:
                    raise ValueError(
                        f"{self.kind} name {k!r} is already registered to {taken.__qualname__}"
                    )
            setattr(cls, "name", key)  # noqa: B010 (C is any class)
            self._classes[key] = cast("type[T]", cls)
            for a in alias_keys:
                if a != key:
                    self._aliases[a] = key
            return cls

        return deco

    def _lookup(self, key: str) -> type[T] | None:
        return self._classes.get(self._aliases.get(key, key))

    def get_class(self, name: str) -> type[T]:
        """The class registered under ``name`` (normalised; aliases accepted)."""
        cls = self._lookup(normalize_name(name))
        if cls is None:
            raise KeyError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}")
        return cls

    def build(self, name: str, context: Context | None = None, /, **options: Any) -> T:
        """An instance of the class registered under ``name``.

        ``options`` go to the constructor as keyword arguments; an option the constructor
        does not take raises ``TypeError`` naming the options it does take. Each field of
        ``context`` that is set fills the constructor parameter of the same name, unless
        ``options`` holds it.
        """
        cls = self.get_class(name)
        params = _parameters(cls)
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        named = {
            n
            for n, p in params.items()
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        }
        unknown = sorted(set(options) - named) if not takes_any else []
        if unknown:
            raise TypeError(
                f"{self.kind} {cls.name!r} has no option {', '.join(map(repr, unknown))}; "  # type: ignore[attr-defined]
                f"its options are: {', '.join(sorted(named)) or 'none'}"
            )
        kwargs = dict(options)
        if context is not None:
            for field_name, value in context.as_dict().items():
                if field_name in named and field_name not in kwargs:
                    kwargs[field_name] = value
        return cls(**kwargs)

    def names(self) -> list[str]:
        """Registered names, sorted (aliases left out)."""
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._lookup(normalize_name(name)) is not None

    def items(self) -> Mapping[str, type[T]]:
        """A read-only view of name -> class."""
        return dict(self._classes)


def _parameters(cls: type) -> Mapping[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(cls).parameters)
    except (TypeError, ValueError):  # a builtin without a signature: options only
        return {}
