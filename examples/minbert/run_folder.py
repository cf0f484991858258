"""The run folder: its lock, and what a new run, ``--resume`` or ``--overwrite`` may do
with what is already there."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .checkpoint import (
    RunError,
    RunFolderError,
    RunLock,
    remove_stale_temporaries,
)
from .config import TrainConfig

#: What a run writes to its folder (``--overwrite`` removes these and refuses other files).
RUN_FILES = frozenset(
    {
        "latest.pt",
        "best.pt",
        "config.json",
        "split.json",
        "history.json",
        "gradients.json",
        "curves.png",
        "conflicts.png",
        "dev-predictions",
        "eval",
    }
)


def _is_run_file(name: str) -> bool:
    return name in RUN_FILES or name.endswith("-confusion.txt")


def open_run_folder(cfg: TrainConfig) -> RunLock:
    """Lock the run folder and check it suits the run; returns the held lock.

    A new run needs an empty (or new) folder, or ``overwrite`` (then the previous run's
    files are removed; a folder with other files is refused). ``resume`` needs the folder's
    ``latest.pt``. Temporary files that killed writers left are removed.

    Raises:
        RunFolderError: the folder is in use by another run, holds a run (or other files),
            or has no checkpoint to resume.
    """
    out = Path(cfg.out_dir)
    missing = RunFolderError(
        f"--resume: there is no checkpoint to resume in {out} ({out / 'latest.pt'} does not "
        f"exist); start a new run without --resume"
    )
    if cfg.resume and not out.is_dir():
        raise missing  # (without creating the folder)
    lock = RunLock(out).acquire()
    try:
        remove_stale_temporaries(out)
        present = sorted(p.name for p in out.iterdir() if p.name != lock.path.name)
        if cfg.resume:
            if not (out / "latest.pt").is_file():
                raise missing
        elif present and not cfg.overwrite:
            shown = ", ".join(present[:6]) + (", ..." if len(present) > 6 else "")
            what = "holds a run" if "config.json" in present else "is not empty"
            raise RunFolderError(
                f"{out} {what} ({shown}): continue its run with --resume, replace it with "
                f"--overwrite, or choose another --out-dir"
            )
        elif present:  # overwrite: remove the previous run's files, and only those
            foreign = [name for name in present if not _is_run_file(name)]
            if foreign:
                raise RunFolderError(
                    f"--overwrite replaces a run folder, and {out} also holds "
                    f"{', '.join(foreign[:6])}: move those away or choose another --out-dir"
                )
            for name in present:
                path = out / name
                try:
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
                except OSError as exc:
                    raise RunFolderError(f"--overwrite: could not remove {path}: {exc}") from exc
    except BaseException:
        lock.release()
        raise
    return lock


def _on_rank0(rank: int, world: int, fn: Any) -> Any:
    """``fn()`` on rank 0; a :class:`RunError` there is raised on every rank (no rank waits
    forever in a collective call)."""
    result, error = None, None
    if rank == 0:
        try:
            result = fn()
        except RunError as exc:
            error = exc
    if world > 1:
        import torch.distributed as dist

        box = [None if error is None else str(error)]
        dist.broadcast_object_list(box, src=0)
        if error is None and box[0] is not None:
            raise RunFolderError(box[0])
    if error is not None:
        raise error
    return result
