"""Checkpoints and the run folder: a lock, atomic writes, an integrity check, exact resume.

**The run folder.** A run holds an exclusive lock on ``OUT_DIR/.lock`` (:class:`RunLock`,
``fcntl.flock``) from its start to its end, so two runs never write one folder; the lock
file names the holder (pid, host, start time) for the error the second run gets. The kernel
drops the lock when its process ends, however it ends (SIGKILL included), so a stale lock
never blocks a folder.

**Atomic writes.** :func:`write_atomic` writes to a fresh temporary file of the same folder
(``tempfile.mkstemp``: ``.latest.pt.<random>.tmp``), fsyncs it, renames it over the target
and fsyncs the folder: a reader, a kill or a power cut sees the old file or the new one,
never half of one, and concurrent writers never share a temporary file. A failed write
(disk full, Ctrl-C) removes its temporary file and raises :class:`WriteError`, which names
the file and the cause; the previous file is untouched. A kill leaves a temporary file
behind: the next run that takes the folder's lock removes it
(:func:`remove_stale_temporaries`).

**The checkpoint format.** A file starts with the line :data:`MAGIC`, then one line of JSON
(``{"format": "mtlkit-minbert", "version": 1, "kind": "latest" | "best", "size": N,
"sha256": ...}``), then ``N`` bytes written by ``torch.save``. :func:`load_checkpoint`
checks the header, the size and the SHA-256 before it reads the payload, and reads it with
``torch.load(weights_only=True)``: tensors and plain values only, never code (it never falls
back to ``weights_only=False``). Whatever is not a checkpoint of this example (an empty
file, random bytes, flipped bytes, a cut-off copy, another program's torch file, a pickle
with code in it) raises :class:`CheckpointError` with one sentence naming the file.

**What is saved.** ``latest.pt`` holds the state of every stateful part of a run (model,
optimizer, LR schedule, strategy, data loader with its scheduler), the RNG states and the
run's progress, so a resumed run continues bit for bit. Under data parallelism the data
loader and the RNG differ per process: rank 0 gathers them into ``ranks``. ``best.pt`` holds
the model of the best epoch, the run's config and its dev scores.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import re
import socket
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

try:
    import fcntl
except ImportError:  # pragma: no cover (not POSIX: no lock)
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "MAGIC",
    "CheckpointError",
    "CheckpointNotFoundError",
    "ConfigError",
    "ResumeError",
    "RunError",
    "RunFolderError",
    "RunLock",
    "FullModelState",
    "FullOptimizerState",
    "Stateful",
    "WriteError",
    "load_checkpoint",
    "remove_stale_temporaries",
    "restore",
    "save_atomic",
    "save_best",
    "save_latest",
    "write_atomic",
]

#: The first line of every checkpoint file of this example.
MAGIC = b"MTLKIT-MINBERT-CHECKPOINT\n"
FORMAT = "mtlkit-minbert"
VERSION = 1
KINDS = ("latest", "best")
#: Bytes per write call (a disk that fills up fails part-way, between two of them).
CHUNK = 16 << 20
_MAX_HEADER = 4096
LOCK_NAME = ".lock"


# ------------------------------------------------------------------------------ errors
class RunError(Exception):
    """A problem the user can fix (an option, a file, a folder, a full disk): the command
    line prints its message as one ``error: ...`` line and exits with status 2."""


class ConfigError(RunError, ValueError):
    """An option has a value the run cannot use (found at start-up, before any training)."""


class ResumeError(RunError, ValueError):
    """``--resume`` cannot continue this checkpoint with these options."""


class RunFolderError(RunError):
    """The run folder is in use by another run, holds another run, or has no checkpoint."""


class CheckpointError(RunError, ValueError):
    """A file is not a readable checkpoint of this example; the message names it."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist."""


class WriteError(RunError, OSError):
    """A file of the run could not be written (the message names it and the cause); the
    previous version of the file, if any, is intact and no partial file is left."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


def _reason(exc: OSError) -> str:
    """``[Errno 28] No space left on device``: the cause without the (temporary) file name."""
    if exc.errno is not None and exc.strerror:
        return f"[Errno {exc.errno}] {exc.strerror}"
    return str(exc) or type(exc).__name__


# ------------------------------------------------------------------------------ the lock
class RunLock:
    """An exclusive lock on a run folder (``folder/.lock``), held until :meth:`release`.

    ``with RunLock(folder): ...`` creates the folder if needed. A second lock of the same
    folder, from this process or another, raises :class:`RunFolderError` naming the holder.
    The lock file stays after release (removing it would race with a new holder).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunFolderError(
                f"could not use the run folder {self.folder}: {_reason(exc)}"
            ) from exc
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _holder(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise RunFolderError(f"could not lock {self.path}: {_reason(exc)}") from exc
                raise RunFolderError(
                    f"{self.folder} is in use by another run ({holder}): wait for it to end "
                    f"or choose another --out-dir"
                ) from None
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": started}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file releases the lock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(fd: int) -> str:
    """``pid 1234 on host, since 2025-01-01 12:00:00``, from the lock file (best effort)."""
    try:
        info = json.loads(os.pread(fd, 1024, 0).decode())
        return f"pid {info['pid']} on {info['host']}, since {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its pid is not known yet"


_TEMPORARY = re.compile(r"^\.(.+\.(pt|json|png|txt|csv))\.[A-Za-z0-9_]+\.tmp$")


def _is_temporary(name: str) -> bool:
    """A temporary file of :func:`write_atomic` (``.NAME.<random>.tmp``), or the fixed
    ``latest.pt.tmp`` / ``best.pt.tmp`` of earlier versions."""
    return name in ("latest.pt.tmp", "best.pt.tmp") or _TEMPORARY.match(name) is not None


def remove_stale_temporaries(folder: str | Path) -> list[str]:
    """Remove what killed writers left in ``folder`` and its ``dev-predictions`` (call it
    holding the folder's lock: then no writer is alive); returns the names removed."""
    removed = []
    for sub in (Path(folder), Path(folder) / "dev-predictions"):
        if not sub.is_dir():
            continue
        for path in sub.iterdir():
            if path.is_file() and _is_temporary(path.name):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                removed.append(path.name)
    return removed


# ------------------------------------------------------------------------------ writing
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()


def _write_chunk(fh: Any, chunk: memoryview) -> None:
    """One write call (a separate function: tests make the disk fill up here)."""
    fh.write(chunk)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (skipped where the file system cannot)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def write_atomic(path: str | Path, parts: bytes | memoryview | Iterable[Any]) -> None:
    """Write ``parts`` (bytes, or several buffers one after the other) to ``path`` atomically:
    a unique temporary file in the same folder, fsync, rename, fsync of the folder.

    Raises:
        WriteError: an ``OSError`` (disk full, no permission, ...) with ``path`` and the
            cause in the message; the temporary file is removed, ``path`` is unchanged.
        KeyboardInterrupt: after removing the temporary file.
    """
    path = Path(path)
    buffers: list[Any] = (
        [parts] if isinstance(parts, bytes | bytearray | memoryview) else list(parts)
    )
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600: the permissions of a plain open
        with os.fdopen(fd, "wb") as fh:
            for part in buffers:
                view = memoryview(part).cast("B")
                for start in range(0, len(view), CHUNK):
                    _write_chunk(fh, view[start : start + CHUNK])
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_folder(path.parent)
    except OSError as exc:
        kept = " (the previous file is intact)" if path.is_file() and tmp else ""
        raise WriteError(f"could not write {path}: {_reason(exc)}{kept}", path) from exc
    finally:
        if tmp is not None:  # failed or interrupted before the rename
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def save_atomic(obj: Any, path: str | Path, *, kind: str = "latest") -> None:
    """``torch.save`` ``obj`` into a checkpoint file of this example (header with the
    SHA-256 of the payload, then the payload), written with :func:`write_atomic`."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getbuffer()
    header = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    write_atomic(path, [MAGIC + json.dumps(header).encode() + b"\n", payload])


# ------------------------------------------------------------------------------ reading
def load_checkpoint(path: str | Path, *, kind: str | None = None) -> dict[str, Any]:
    """Load a checkpoint of this example, after checking its header, size and SHA-256,
    without executing code (``weights_only=True``).

    Args:
        kind: ``"latest"`` or ``"best"`` to require that kind; ``None``: either.

    Raises:
        CheckpointNotFoundError: no such file.
        CheckpointError: anything else that is not an intact checkpoint of this example.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    not_ours = (
        f"{path} is not a miniBERT checkpoint: it does not start with the mtlkit-minbert "
        f"header (a file of another program, or one written before checkpoints carried a "
        f"SHA-256)"
    )
    try:
        with open(path, "rb") as fh:
            magic = fh.read(len(MAGIC))
            if not magic:
                raise CheckpointError(f"{path} is empty (0 bytes), not a miniBERT checkpoint")
            if magic != MAGIC:
                raise CheckpointError(not_ours)
            line = fh.readline(_MAX_HEADER)
            payload = fh.read()
    except OSError as exc:
        raise CheckpointError(f"could not read {path}: {_reason(exc)}") from exc
    header = _parse_header(line)
    if header is None:
        raise CheckpointError(f"{path} has a damaged header: not a readable miniBERT checkpoint")
    if header["version"] > VERSION:
        raise CheckpointError(
            f"{path} is a miniBERT checkpoint of format version {header['version']}; this "
            f"code reads version {VERSION}"
        )
    size = header["size"]
    if len(payload) < size:
        raise CheckpointError(
            f"{path} is truncated: {len(payload)} of its {size} payload bytes are there"
        )
    if len(payload) > size:
        raise CheckpointError(
            f"{path} is damaged: {len(payload) - size} bytes follow its {size}-byte payload"
        )
    if hashlib.sha256(payload).hexdigest() != header["sha256"]:
        raise CheckpointError(
            f"{path} is corrupt: the SHA-256 of its contents does not match the one written "
            f"with them"
        )
    if kind is not None and header["kind"] != kind:
        what = {"best": "the model of a run's best epoch", "latest": "a run's whole state"}
        raise CheckpointError(
            f"{path} is a {header['kind']}.pt checkpoint ({what[header['kind']]}), and a "
            f"{kind}.pt one is needed here"
        )
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} holds objects that a miniBERT checkpoint never holds "
            f"({_unpickling_detail(exc)}): refused without loading them"
        ) from exc
    except Exception as exc:  # the payload passed its SHA-256 yet torch cannot read it
        raise CheckpointError(
            f"{path} has an intact payload that torch cannot read ({type(exc).__name__})"
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a checkpoint's dict")
    return state


def _parse_header(line: bytes) -> dict[str, Any] | None:
    if not line.endswith(b"\n"):
        return None
    try:
        header = json.loads(line)
    except ValueError:
        return None
    ok = (
        isinstance(header, dict)
        and header.get("format") == FORMAT
        and isinstance(header.get("version"), int)
        and header.get("kind") in KINDS
        and isinstance(header.get("size"), int)
        and isinstance(header.get("sha256"), str)
    )
    return header if ok else None


def _unpickling_detail(exc: Exception) -> str:
    """torch's reason (``... unsupported GLOBAL posix.mkdir ...``), without its advice."""
    for line in str(exc).splitlines():
        if "WeightsUnpickler error:" in line:
            line = line.split("WeightsUnpickler error:", 1)[1]
        line = line.strip().rstrip(".")
        if "GLOBAL" in line or line.startswith("Unsupported"):
            return line[:1].lower() + line[1:] if line else line
    return "not tensors and plain values"


# ------------------------------------------------------------------------------ a run's state
class Stateful(Protocol):
    def state_dict(self) -> Any: ...
    def load_state_dict(self, state: Any, /) -> Any: ...


def _own_state(own: Mapping[str, Stateful]) -> dict[str, Any]:
    """This process's part: its data loader(s) and RNG states."""
    return {
        **{name: part.state_dict() for name, part in own.items()},
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def save_latest(
    path: Path,
    shared: Mapping[str, Stateful],
    own: Mapping[str, Stateful],
    progress: Mapping[str, Any],
    *,
    rank: int = 0,
    world: int = 1,
) -> None:
    """Write the state of a run to ``path`` (by rank 0; every rank must call it).

    Args:
        shared: parts equal on every process (model, optimizer, schedule, strategy).
        own: parts that differ per process (the data loader); saved with the RNG states.
        progress: plain values (history, losses so far, best score, config).
    """
    mine = _own_state(own)
    ranks: list[Any] = []
    if world > 1:
        import torch.distributed as dist

        ranks = [None] * world
        dist.all_gather_object(ranks, mine)
    # every rank: a sharded part gathers its whole state (a collective); others are cheap
    state = {name: part.state_dict() for name, part in shared.items()}
    if rank == 0:
        state.update(mine)
        state.update(progress)
        if ranks:
            state["ranks"] = ranks
        save_atomic(state, path, kind="latest")


def restore(
    state: Mapping[str, Any],
    shared: Mapping[str, Stateful],
    own: Mapping[str, Stateful],
    *,
    rank: int = 0,
    world: int = 1,
) -> None:
    """Load what :func:`save_latest` wrote into the parts of a run, RNG states included.

    Raises:
        ResumeError: the checkpoint was written by another number of processes.
    """
    ranks = state.get("ranks", [state])  # data-parallel: each rank's data and RNG
    if len(ranks) != world:
        raise ResumeError(
            f"the checkpoint was written by {len(ranks)} process(es), this run has "
            f"{world}: resume with the same number of processes"
        )
    for name, part in shared.items():
        part.load_state_dict(state[name])
    mine = ranks[rank]
    for name, part in own.items():
        part.load_state_dict(mine[name])
    torch.set_rng_state(mine["rng_cpu"])
    if mine["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(mine["rng_cuda"])


def save_best(path: Path, weights: Mapping[str, Any], **info: Any) -> None:
    """The model's weights (its whole ``state_dict``) and ``info`` (config, epoch, dev
    scores) to ``path``."""
    save_atomic({"model": dict(weights), **info}, path, kind="best")


class FullModelState:
    """The whole state of an FSDP2-sharded model, as one process would have it.

    :meth:`state_dict` gathers the shards (a collective: every rank calls it; rank 0
    receives the tensors, on the CPU) and :meth:`load_state_dict` shards a whole state
    dict back, so a checkpoint of a sharded run is the same file as a checkpoint of a
    one-process run (``torch.distributed.checkpoint.state_dict``).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(self.model, options=_full_state())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(self.model, dict(state), options=_full_state(load=True))


class FullOptimizerState:
    """The whole state of an optimizer over FSDP2-sharded parameters (as
    :class:`FullModelState`; keys are the parameters' names)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return dict(get_optimizer_state_dict(self.model, self.optimizer, options=_full_state()))

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(
            self.model, self.optimizer, dict(state), options=_full_state(load=True)
        )


def _full_state(load: bool = False) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    if load:  # every rank read the file: each takes its shard from the whole tensors
        return StateDictOptions(full_state_dict=True)
    return StateDictOptions(full_state_dict=True, cpu_offload=True)
