"""Writing files so that a crash, a kill or a full disk never leaves a torn or half-written file.

Every file U-Net Lab writes that something else reads later (checkpoints, the registered
folders list, study definitions, cached arrays, evaluation arrays, worker settings) goes
through :func:`atomic_path`: the content is written to a temporary file beside the target
and renamed over it only once complete. A failed write removes the temporary file, and a
full disk is reported as such, naming the folder.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from core.errors import DiskFullError


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    Parameters
    ----------
    path : str or Path
        The file to write. Its folder is created if missing.
    suffix : str
        Appended to the temporary name, for writers that insist on an extension
        (``numpy.savez`` adds ``.npz`` to a name without it).

    Raises
    ------
    DiskFullError
        When the disk (or quota) is full; the temporary file is removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if is_disk_full(error):
            raise DiskFullError(f"the disk holding {path.parent} is full: {path.name} was not written "
                                "(free some space, then try again; nothing already saved was changed)") from None
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def is_disk_full(error: BaseException) -> bool:
    """True when ``error`` (or what caused it) says the disk or the quota is full.

    PyTorch's zip writer reports a full disk as ``RuntimeError: ... unexpected pos``, so
    its message is checked too.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(error)
        if "No space left on device" in text or "unexpected pos" in text:
            return True
        error = error.__cause__ or error.__context__
    return False
