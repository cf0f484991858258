"""The shared parameters' side of the engine: which tensors, where they live, what a
step reached.

* :func:`check_shared` validates what ``TaskGradients`` is given (trainable leaf tensors,
  one device, all sharded or all whole);
* :func:`local` / :func:`sharded_like` / :func:`mesh_group`: FSDP2-sharded parameters
  (``DTensor``), of which a rank holds and writes only its shard;
* :class:`Reach` and :func:`reach_hook`: one post-accumulate-grad hook per parameter
  records which parameters a task's backward reached;
* :func:`compiled_backward_errors`: torch's donated-buffer error, turned into advice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit import distributed


class Reach:
    """Which shared parameters a task's backward reached in this step.

    Set by one post-accumulate-grad hook per parameter (:func:`reach_hook`), only while
    the engine runs a task's backward (``active``). The hooks hold this object, never the
    engine, so an engine that goes away takes its hooks with it.
    """

    __slots__ = ("active", "flags")

    def __init__(self) -> None:
        self.active = False
        self.flags: list[bool] = []


def reach_hook(reach: Reach, index: int) -> Callable[[Tensor], None]:
    def hook(_: Tensor) -> None:
        if reach.active:
            reach.flags[index] = True

    return hook


def remove_hooks(handles: list[Any]) -> None:
    for handle in handles:
        if handle is not None:
            handle.remove()
    handles.clear()


#: What torch says when a ``torch.compile``d backward that donated its buffers is run with
#: ``retain_graph=True``.
DONATED = "donated buffer"
DONATED_HELP = (
    "the losses' graph runs through a torch.compile'd module whose backward was compiled "
    "to run once (torch's 'donated buffers'), and the per-task gradients of one graph need "
    "one backward pass per task through it (retain_graph=True). torch compiles the "
    "backward so only when the first backward through the compiled graph did not retain "
    "it (e.g. an earlier plain loss.backward()). Either set "
    "torch._functorch.config.donated_buffer = False before the compiled module's first "
    "forward; or give each task its own forward (TaskGradients.backward(task, loss) "
    "without retain_graph: one backward per graph); or compile only the shared encoder and "
    "combine at its output with mtlkit.SharedFeatures (one backward through the encoder)"
)


@contextmanager
def compiled_backward_errors() -> Iterator[None]:
    """Turn torch's donated-buffer error of a retained compiled backward into advice."""
    try:
        yield
    except RuntimeError as err:
        if DONATED in str(err):
            raise RuntimeError(DONATED_HELP) from err
        raise


def local(t: Tensor) -> Tensor:
    """This rank's part of ``t``: the local shard of a sharded tensor, else ``t``."""
    if distributed.is_sharded(t):
        with torch.no_grad():
            return t.to_local()  # type: ignore[attr-defined, no-any-return]
    return t


def sharded_like(param: Tensor, local: Tensor) -> Tensor:
    """A gradient for sharded ``param`` whose local shard is ``local`` (no copy)."""
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        local,
        param.device_mesh,  # type: ignore[attr-defined]
        param.placements,  # type: ignore[attr-defined]
        shape=param.shape,
        stride=param.stride(),
        run_check=False,
    )


def mesh_group(param: Tensor) -> Any:
    """The process group of a sharded parameter's (one-dimensional) device mesh."""
    mesh = param.device_mesh  # type: ignore[attr-defined]
    if mesh.ndim != 1:
        raise ValueError(
            f"sharded parameters on a {mesh.ndim}-D device mesh (HSDP) are not supported; "
            "shard over one mesh dimension (fully_shard with a 1-D mesh)"
        )
    return mesh.get_group()


def check_shared(shared_params: Iterable[Tensor]) -> list[Tensor]:
    """The shared parameters as a list of distinct leaf tensors that require grad."""
    if isinstance(shared_params, Tensor):
        raise TypeError(
            "shared_params must be an iterable of parameters (e.g. model.encoder.parameters() "
            "or [model.weight]), not one tensor"
        )
    params = list(shared_params)
    if not params:
        raise ValueError("shared_params is empty: pass the parameters all tasks share")
    seen: set[int] = set()
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"shared_params[{i}] is not a tensor: {type(p).__name__}")
        if not p.requires_grad:
            raise ValueError(
                f"shared_params[{i}] (shape {tuple(p.shape)}) has requires_grad=False "
                "(frozen): leave it out of the shared parameters"
            )
        if not p.is_leaf:
            raise ValueError(
                f"shared_params[{i}] (shape {tuple(p.shape)}) is not a leaf tensor (a view or "
                "the result of an operation): pass the parameters themselves"
            )
        if id(p) in seen:
            raise ValueError(f"shared_params[{i}] appears twice")
        seen.add(id(p))
    devices = {p.device for p in params}
    if len({distributed.is_sharded(p) for p in params}) > 1:
        raise ValueError(
            "shared parameters must be all sharded (FSDP2) or all whole: shard the whole "
            "shared module with fully_shard, or none of it"
        )
    if len(devices) > 1:
        raise ValueError(f"shared parameters must be on one device, got {devices}")
    return params


def refuse_fsdp_module(module: nn.Module) -> None:
    """The module form cannot follow FSDP2 modules: they swap their parameter objects
    (sharded / unsharded) within a step."""
    if any(c.__name__ == "FSDPModule" for m in module.modules() for c in type(m).__mro__):
        raise ValueError(
            "TaskGradients cannot follow the parameters of an FSDP2 (fully_shard) module, "
            "which swaps them between sharded and unsharded within a step: pass "
            "module.parameters() after fully_shard instead"
        )


def layout_of(params: list[Tensor]) -> list[tuple[Any, ...]]:
    """What J's layout and the reach hooks depend on: each parameter's dtype, device,
    shape and tensor (``_cdata`` changes when ``torch.utils.swap_tensors`` swaps it)."""
    return [(p.dtype, p.device, p.shape, getattr(p, "_cdata", None)) for p in params]
