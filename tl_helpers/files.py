"""Files written atomically: a checkpoint, a cache entry or a results file is whole or absent, never half-written.

>>> import tempfile
>>> from tl_helpers.files import atomic_write
>>> path = atomic_write(Path(tempfile.mkdtemp()) / "sub" / "note.txt", "done")
>>> path.read_text()
'done'
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def atomic_write(path: str | Path, data) -> Path:
    """Write ``data`` to ``path`` atomically and return the path (parent folders are created).

    ``str`` is written as UTF-8 text, ``bytes`` as they are, anything else (a dict of tensors, a
    checkpoint...) with ``torch.save``. The data goes to a temporary file next to ``path`` first and is
    then renamed over it (``os.replace``, atomic on one file system), so an interrupted write never leaves
    a damaged file and readers see the old or the new version, nothing in between.

    >>> import tempfile
    >>> path = atomic_write(Path(tempfile.mkdtemp()) / "t.pt", {"x": torch.ones(2)})
    >>> torch.load(path, weights_only=True)["x"].tolist(), sorted(p.name for p in path.parent.iterdir())
    ([1.0, 1.0], ['t.pt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")   # one per process: parallel writers do not clash
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        elif isinstance(data, (bytes, bytearray)):
            tmp.write_bytes(data)
        else:
            torch.save(data, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
