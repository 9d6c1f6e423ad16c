"""Replace a file so that a power cut leaves either the old or the new content, never a mix."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def replace_file(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace ``path`` with ``data``: a temp file in the same directory (created 0600), fsync,
    rename over ``path``, fsync of the directory. ``mode`` is set before the rename; None leaves
    the permissions to the file system (FAT refuses chmod: its modes come from the mount
    options). The directory must exist. The temp file never outlives a failure."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass  # a file system without directory fsync: the rename is as durable as it gets
    finally:
        os.close(dir_fd)
