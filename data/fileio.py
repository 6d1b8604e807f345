"""Atomic file writing: nothing already written is lost when a run is interrupted.

Every result, checkpoint and annotation file of the project is written to a temporary file in
the destination folder and renamed over the destination only once complete (``os.replace`` is
atomic on POSIX and Windows when both paths are on one file system).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    Use for writers that want a file name (``model.save_weights(tmp)``, ``fig.savefig(tmp)``).
    ``suffix`` keeps an extension that the writer may rely on (``".h5"``, ``".png"``).
    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=suffix + ".tmp",
                               dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def write_json_atomic(path: str, obj: Any, indent: int = None) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def read_json(path: str) -> Any:
    """Read a JSON file; ValueError naming the file when it is missing or not valid JSON."""
    if not os.path.isfile(path):
        raise FileNotFoundError("JSON file not found: %s" % path)
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError("%s is not valid JSON (%s); delete it and regenerate it, or fix it"
                         % (path, e)) from None
