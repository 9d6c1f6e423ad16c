"""Unix socket addresses for paths of any length.

A pathname in ``sockaddr_un`` holds at most :data:`SUN_PATH_MAX` bytes, far less than a
file path may have.  :func:`unix_address` gives an address that names the same file and
always fits: the path itself when it is short enough, otherwise the socket's name under
``/proc/self/fd/N`` for a directory file descriptor held open meanwhile (the kernel resolves
it like any path, so ``bind`` creates and ``connect`` reaches the socket in that directory;
no working-directory change, nothing else to keep in step).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SUN_PATH_MAX = 107  # bytes of sun_path a pathname may use (108 with its terminating NUL)


@contextmanager
def unix_address(path: Path) -> Iterator[str]:
    """An address for ``bind``/``connect`` naming ``path``, valid inside the ``with`` block.
    Raises :class:`OSError` if ``path``'s directory cannot be opened (as ``bind`` would)."""
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        yield os.fspath(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)
