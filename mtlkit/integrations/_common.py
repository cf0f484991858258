"""What the integrations share, free of any framework: choosing the strategy, splitting a
batch by task, and one optimizer step's bookkeeping around :class:`~mtlkit.TaskGradients`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit._guard import NonFinitePolicy
from mtlkit._registry import Context
from mtlkit.gradients import TaskGradients
from mtlkit.strategies import Strategy, get_strategy

logger = logging.getLogger("mtlkit.integrations")

#: The file a Hugging Face checkpoint folder keeps the strategy's state in.
STATE_NAME = "mtlkit_state.pt"
#: The key of a Lightning checkpoint that holds it.
CHECKPOINT_KEY = "mtlkit"
_STATE_VERSION = 1

SharedSpec = nn.Module | Iterable[Tensor] | str | None


def build_strategy(
    strategy: Strategy | str,
    num_tasks: int,
    *,
    seed: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> Strategy:
    """``strategy`` itself, or the strategy registered under that name, built for
    ``num_tasks`` tasks (and ``seed``, for strategies that draw random numbers)."""
    if isinstance(strategy, Strategy):
        if options:
            raise ValueError("strategy_options is for a strategy given by name")
        return strategy
    if isinstance(strategy, str):
        return get_strategy(
            strategy, context=Context(num_tasks=num_tasks, seed=seed), **(options or {})
        )
    raise TypeError(
        f"strategy must be a mtlkit Strategy or a registered name (mtlkit.list_strategies()), "
        f"got {type(strategy).__name__}"
    )


def task_names_of(tasks: int | Sequence[str]) -> list[str]:
    """Names for K tasks: the names given, or ``"0"``, ``"1"``, ... for a count."""
    if isinstance(tasks, bool) or not isinstance(tasks, (int, Sequence)) or isinstance(tasks, str):
        raise TypeError(f"tasks must be a number of tasks or a list of names, got {tasks!r}")
    if isinstance(tasks, int):
        if tasks < 1:
            raise ValueError(f"tasks must be >= 1, got {tasks}")
        return [str(k) for k in range(tasks)]
    names = [str(t) for t in tasks]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"task names must be distinct and not empty, got {names}")
    return names


def resolve_shared(model: nn.Module, shared: SharedSpec) -> nn.Module | list[Tensor]:
    """The shared parameters: a module, a dotted attribute path of ``model``, an iterable
    of parameters, or (``None``) a Hugging Face model's ``base_model`` (the encoder)."""
    if shared is None:
        base = getattr(model, "base_model", None)
        if isinstance(base, nn.Module) and base is not model:
            return base
        raise ValueError(
            f"{type(model).__name__} has no separate base_model: pass shared_parameters= "
            "(the module every task shares, its attribute name such as 'encoder', or its "
            "parameters)"
        )
    if isinstance(shared, str):
        try:
            return model.get_submodule(shared)
        except AttributeError as err:
            raise ValueError(f"shared_parameters={shared!r}: {err}") from None
    if isinstance(shared, nn.Module):
        return shared
    return list(shared)


def first_dim(value: Any) -> int | None:
    """The number of examples of a (nested) batch: the first dimension of its first tensor."""
    if isinstance(value, Tensor):
        return int(value.shape[0]) if value.dim() > 0 else None
    if isinstance(value, Mapping):
        items: Iterable[Any] = value.values()
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        return None
    for item in items:
        n = first_dim(item)
        if n is not None:
            return n
    return None


def _task_ids(column: Any, names: Sequence[str]) -> list[int]:
    values = column.tolist() if isinstance(column, Tensor) else list(column)
    index = {name: k for k, name in enumerate(names)}
    ids = []
    for v in values:
        if isinstance(v, str):
            if v not in index:
                raise ValueError(f"unknown task {v!r}; the tasks are {list(names)}")
            ids.append(index[v])
        else:
            k = int(v)
            if not 0 <= k < len(names):
                raise ValueError(f"task index {k} is outside 0..{len(names) - 1}")
            ids.append(k)
    return ids


def _take(value: Any, rows: list[int], index: Tensor, batch: int) -> Any:
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch:
        return value.index_select(0, index.to(value.device))
    if isinstance(value, (list, tuple)) and len(value) == batch:
        return type(value)(value[i] for i in rows)
    return value


def split_by_task(
    inputs: Mapping[str, Any], task_key: str, names: Sequence[str]
) -> list[tuple[int, dict[str, Any], int]]:
    """Split a batch with a per-example task column into ``(task, sub_batch, examples)``
    for each task present (in task order). Tensors and lists with one entry per example
    are split; other values go to every sub-batch. The task column stays in each."""
    column = inputs[task_key]
    ids = _task_ids(column, names)
    batch = len(ids)
    out = []
    for k in sorted(set(ids)):
        rows = [i for i, t in enumerate(ids) if t == k]
        index = torch.tensor(rows, dtype=torch.long)
        sub = {name: _take(v, rows, index, batch) for name, v in inputs.items()}
        out.append((k, sub, len(rows)))
    return out


def task_counts(inputs: Any, task_key: str | None, names: Sequence[str]) -> dict[int, int]:
    """Examples per task in one micro-batch (a batch with a task column, or task groups)."""
    if task_key is not None and isinstance(inputs, Mapping) and task_key in inputs:
        counts: dict[int, int] = {}
        for k in _task_ids(inputs[task_key], names):
            counts[k] = counts.get(k, 0) + 1
        return counts
    counts = {}
    for k, _, n in task_groups(inputs, names) or []:
        counts[k] = counts.get(k, 0) + n
    return counts


def task_groups(inputs: Any, names: Sequence[str]) -> list[tuple[int, Any, int]] | None:
    """A batch already grouped by task, as ``(task, sub_batch, examples)``:
    ``{task: sub_batch}`` (task index or name), or a list of ``(task, sub_batch)`` or
    ``(task, examples, sub_batch)``; ``None`` for anything else. The number of examples is
    the first dimension of the sub-batch's first tensor unless given."""
    pairs: list[tuple[Any, Any, Any]]
    if isinstance(inputs, Mapping) and inputs:
        keys = list(inputs)
        if not (
            all(isinstance(k, int) and not isinstance(k, bool) for k in keys)
            or all(isinstance(k, str) and k in names for k in keys)
        ):
            return None
        pairs = [(k, None, inputs[k]) for k in keys]
    elif (
        isinstance(inputs, (list, tuple))
        and inputs
        and all(isinstance(g, (list, tuple)) and len(g) in (2, 3) for g in inputs)
    ):
        pairs = [(g[0], g[1] if len(g) == 3 else None, g[-1]) for g in inputs]
    else:
        return None
    out = []
    for task, n, sub in pairs:
        if n is None:
            n = first_dim(sub) or 1
        out.append((_task_ids([task], names)[0], sub, int(n)))
    return out


def scalar_loss(output: Any) -> Tensor:
    """The loss of a model's output: a tensor, ``output["loss"]``, ``output.loss`` or
    ``output[0]`` (averaged when it has one value per device, as ``DataParallel`` gives)."""
    if isinstance(output, Tensor):
        loss = output
    elif isinstance(output, Mapping) and "loss" in output:
        loss = output["loss"]
    elif getattr(output, "loss", None) is not None:
        loss = output.loss
    elif isinstance(output, (list, tuple)) and output and isinstance(output[0], Tensor):
        loss = output[0]
    else:
        raise ValueError(
            f"the model's output ({type(output).__name__}) has no loss: return one from "
            "forward, or pass task_loss_fn=(model, inputs, task) -> loss"
        )
    if loss.dim() > 0:
        loss = loss.mean()
    return loss


def zero_loss(device: torch.device | str) -> Tensor:
    """The loss of a task with no examples in a step (its row of J is zero)."""
    return torch.zeros((), device=device, requires_grad=True)


class StepState:
    """One optimizer step's bookkeeping around the engine: which tasks were seen, the
    per-task losses for logging, zero rows for the tasks a step did not see, skipped steps.

    The engine is built lazily (the framework's scaler and process group exist only once
    training starts) and always accumulates (``accumulate=True``): every micro-batch of a
    task adds into its row of J, and :meth:`finish` combines the whole step once.
    """

    def __init__(self, strategy: Strategy, names: Sequence[str]) -> None:
        self.strategy = strategy
        self.names = list(names)
        self.engine: TaskGradients | None = None
        self.seen: set[int] = set()
        self.loss_sums: list[Tensor | float] = [0.0] * len(self.names)
        self.logged_steps = 0
        self.skipped_steps = 0
        self.partial_steps = 0
        self._warned_partial = False

    @property
    def num_tasks(self) -> int:
        return len(self.names)

    def build(
        self,
        shared: nn.Module | list[Tensor],
        *,
        nonfinite: NonFinitePolicy = "raise",
        scaler: Any | None = None,
        process_group: Any | bool | None = None,
    ) -> TaskGradients:
        refuse_defer(nonfinite)
        if self.engine is None:
            self.engine = TaskGradients(
                shared,
                self.strategy,
                num_tasks=self.num_tasks,
                nonfinite=nonfinite,
                scaler=scaler,
                process_group=process_group,
                accumulate=True,
            )
        return self.engine

    def backward(
        self, task: int, loss: Tensor, *, scale: Callable[[Tensor], Tensor] | None = None
    ) -> Tensor:
        """Backpropagate one (already weighted) task loss into its row; returns it detached."""
        assert self.engine is not None, "build() the engine first"
        if loss.dim() > 0:
            loss = loss.mean()
        self.engine.backward(task, scale(loss) if scale is not None else loss)
        self.seen.add(task)
        value = loss.detach()
        self.loss_sums[task] = self.loss_sums[task] + value
        return value

    def backward_all(
        self, losses: Sequence[Tensor], *, factor: Callable[[Tensor], Tensor], weight: float = 1.0
    ) -> None:
        """Backpropagate K losses of one training step (one graph or several); ``factor``
        turns a loss into what is backpropagated, ``weight`` is its share of the step's
        mean (for the logged per-task losses)."""
        assert self.engine is not None, "build() the engine first"
        self.engine.backward_all([factor(loss) for loss in losses])
        for k, loss in enumerate(losses):
            self.seen.add(k)
            self.loss_sums[k] = self.loss_sums[k] + loss.detach() * weight

    def finish(self, device: torch.device | str) -> bool:
        """Zero rows for the tasks not seen, then the engine's ``write_grad()``."""
        assert self.engine is not None, "build() the engine first"
        missing = [k for k in range(self.num_tasks) if k not in self.seen]
        if missing and len(missing) < self.num_tasks:
            self.partial_steps += 1
            if not self._warned_partial:
                self._warned_partial = True
                logger.warning(
                    "an optimizer step saw no example of tasks %s: their rows of J are zero "
                    "(logged as mtl_partial_steps; this warning is shown once)",
                    [self.names[k] for k in missing],
                )
        if len(missing) == self.num_tasks:
            raise RuntimeError("an optimizer step without any task's loss")
        for k in missing:
            self.engine.backward(k, zero_loss(device))
        self.seen.clear()
        self.logged_steps += 1
        ok = self.engine.write_grad()
        if not ok:
            self.skipped_steps += 1
        return ok

    def log_values(self) -> dict[str, float]:
        """Mean loss of each task per optimizer step since the last call (and counters)."""
        if self.logged_steps == 0:
            return {}
        out = {
            f"loss_{n}": round(float(s) / self.logged_steps, 4)
            for n, s in zip(self.names, self.loss_sums, strict=True)
        }
        if self.skipped_steps:
            out["mtl_skipped_steps"] = float(self.skipped_steps)
        if self.partial_steps:
            out["mtl_partial_steps"] = float(self.partial_steps)
        self.loss_sums = [0.0] * self.num_tasks
        self.logged_steps = 0
        return out

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the strategy's state, with the tasks it was built for."""
        return {
            "version": _STATE_VERSION,
            "strategy_class": type(self.strategy).__name__,
            "tasks": list(self.names),
            "strategy": self.strategy.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        cls = state.get("strategy_class")
        if cls is not None and cls != type(self.strategy).__name__:
            raise ValueError(
                f"the checkpoint holds the state of {cls}, but this run's strategy is "
                f"{type(self.strategy).__name__}"
            )
        tasks = state.get("tasks")
        if tasks is not None and len(tasks) != self.num_tasks:
            raise ValueError(
                f"the checkpoint was written for {len(tasks)} tasks, not {self.num_tasks}"
            )
        self.strategy.load_state_dict(state["strategy"])


def other_trainable(params: Iterable[Tensor], engine: TaskGradients) -> list[Tensor]:
    """The trainable parameters of ``params`` that are not the engine's shared ones."""
    shared = {id(p) for p in engine.params}
    seen: set[int] = set()
    out = []
    for p in params:
        if p.requires_grad and id(p) not in shared and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def drop_grads(params: Iterable[Tensor]) -> None:
    """A skipped step: every gradient goes, so the optimizer leaves every parameter alone."""
    for p in params:
        p.grad = None


def refuse_defer(nonfinite: str) -> None:
    """The trainers take ``"raise"`` or ``"skip"``: nothing in them would ever call
    :meth:`~mtlkit.TaskGradients.check_nonfinite`, so ``"defer"`` would go unseen."""
    if nonfinite == "defer":
        raise ValueError(
            "nonfinite='defer' is for hand-written loops that call "
            "TaskGradients.check_nonfinite(); in a trainer use 'raise' or 'skip'"
        )
