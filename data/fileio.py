"""Atomic file writing: nothing already written is lost when a run is interrupted.

Every result, checkpoint and annotation file of the project is written to a temporary file in
the destination folder and renamed over the destination only once complete (``os.replace`` is
atomic on POSIX and Windows when both paths are on one file system).

Permissions: a finished file has the mode an ordinary ``open(path, "w")`` would give it,
``0o666 & ~umask`` (plus any default ACL of the folder), so a data set or checkpoint shared
with other users stays readable for them when the umask says so.  ``tempfile.mkstemp`` would
create every file ``0o600`` whatever the umask; instead the temporary file is created with
``os.open(..., O_CREAT | O_EXCL, 0o666)`` and the kernel applies the umask at creation, as for
any other file.  The umask is therefore never read or changed here (``os.umask`` can only be
read by setting it, which races with files created by other threads in the meantime).  A
writer that truncates the temporary file (``h5py.File(tmp, "w")``, ``open(tmp, "wb")``) keeps
that mode; the rename keeps it too.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import stat
from typing import Any, Iterator, Optional

_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
_NEW_FILE_MODE = 0o666  # the kernel applies the umask: 0o644 with the usual umask 022


def _create_temporary(folder: str, prefix: str, suffix: str) -> str:
    """Create a new empty file ``<folder>/<prefix><random><suffix>``; returns its path.

    ``O_EXCL`` makes the name ours (as ``tempfile.mkstemp`` does) and mode ``0o666`` lets the
    umask decide the permissions (``mkstemp`` would force ``0o600``).
    """
    for _ in range(100):
        path = os.path.join(folder, prefix + secrets.token_hex(6) + suffix)
        try:
            fd = os.open(path, _CREATE_FLAGS, _NEW_FILE_MODE)
        except FileExistsError:
            continue
        os.close(fd)
        return path
    raise FileExistsError("could not create a temporary file in %s (100 names taken)" % folder)


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    Use for writers that want a file name (``model.save_weights(tmp)``, ``fig.savefig(tmp)``).
    ``suffix`` keeps an extension that the writer may rely on (``".h5"``, ``".png"``).
    On an exception the temporary file is removed and ``path`` is left untouched.
    The finished file gets mode ``0o666 & ~umask`` like any newly created file (see the
    module docstring), not ``mkstemp``'s ``0o600``.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = _create_temporary(folder, "." + os.path.basename(path) + ".", suffix + ".tmp")
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


def file_digest(path: str, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (read in 1 MiB blocks), e.g. of a checkpoint."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def _existing_folder(path: str, what: str) -> str:
    """The folder ``path`` is or would be created in: ``path`` itself when it exists, else its
    nearest existing ancestor.  ValueError naming ``what`` and ``path`` for a plain file (or a
    file among the ancestors), a symlink loop or another path that cannot be resolved."""
    probe_dir = path
    while True:
        try:
            mode = os.stat(probe_dir).st_mode
        except FileNotFoundError:
            if os.path.islink(probe_dir):
                raise ValueError("%s %s: %s is a symbolic link to a missing target; pass "
                                 "another folder" % (what, path, probe_dir)) from None
            parent = os.path.dirname(os.path.abspath(probe_dir))
            if parent == os.path.abspath(probe_dir):
                raise ValueError("%s %s: no existing folder to create it in" % (what, path))
            probe_dir = parent
            continue
        except NotADirectoryError:     # a file among the ancestors
            probe_dir = os.path.dirname(os.path.abspath(probe_dir))
            continue
        except OSError as e:           # ELOOP (symlink loop), ENAMETOOLONG, EACCES, ...
            raise ValueError("%s %s cannot be used: %s (%s); pass another folder"
                             % (what, path, e.strerror or e, probe_dir)) from None
        break
    if not stat.S_ISDIR(mode):
        where = "is a file" if probe_dir == path else "lies under the file %s" % probe_dir
        raise ValueError("%s %s %s, not a folder; pass a folder" % (what, path, where))
    return probe_dir


def _probe_write(folder: str) -> None:
    """Create and remove a file in the existing ``folder``; OSError when that fails.  The one
    writability probe of the project (``os.access`` answers "yes" to root even on a
    read-only mount)."""
    os.remove(_create_temporary(folder, ".write-probe.", ".tmp"))


def write_problem(path: str, what: str = "path") -> Optional[str]:
    """None when files can be written in the folder ``path`` (or, when it does not exist yet,
    created in its nearest existing ancestor); otherwise why not, e.g. ``"Read-only file
    system in /mnt/share"``.  ValueError (naming ``what``) when ``path`` is no folder at all
    (see :func:`check_folder`)."""
    folder = _existing_folder(path, what)
    try:
        _probe_write(folder)
    except OSError as e:
        return "%s in %s" % (e.strerror or e, folder)
    return None


def check_folder(path: str, what: str, write: bool = True, why: str = "") -> None:
    """Refuse, before any work, a folder a run cannot use: ValueError naming ``what`` (e.g.
    ``"--results-dir"``) and ``path``.

    A folder that does not exist yet is fine when its nearest existing ancestor is a folder
    one can create it in.  Refused: a plain file (or a file among the ancestors), a symlink
    loop or another path that cannot be resolved, and -- with ``write`` -- a folder in which
    no file can be created (read-only, no permission, a read-only file system), probed by
    creating and removing a file (:func:`write_problem`).  ``why`` says what would be written
    there (it ends the message, before the way out).
    """
    if not write:
        _existing_folder(path, what)
        return
    problem = write_problem(path, what)
    if problem is not None:
        raise ValueError("%s %s cannot be written (%s)%s; pass a folder you can write to"
                         % (what, path, problem, ": " + why if why else ""))


def read_cached_json(path: str, log=print) -> Any:
    """A cache file's JSON content, or None (logged, naming the file) when it is missing,
    unreadable or not valid JSON: the caller recomputes it and writes it anew."""
    try:
        return read_json(path)
    except FileNotFoundError:
        return None
    except (ValueError, OSError) as e:
        log("cache file %s is damaged (%s): recomputed" % (path, e))
        return None


@contextlib.contextmanager
def exclusive(lock_path: str, what: str, log=print) -> Iterator[None]:
    """Hold the exclusive lock ``lock_path`` (an ``fcntl`` lock on that file) while a folder
    is written by one process only, e.g. a model trained into its checkpoint folder.

    The holder writes its process id, host and start time into the file; a second process
    that wants the same folder says whom it waits for (``what`` names the folder) and waits,
    then goes on (typically finding the work done).  The lock is released when the holder
    ends, however it ends (the kernel drops it with the process).
    """
    import fcntl
    import socket
    import time

    os.makedirs(os.path.dirname(os.path.abspath(lock_path)), exist_ok=True)
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            log("%s is in use by %s: waiting for it to finish" % (what, holder))
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write("process %d on %s since %s" % (os.getpid(), socket.gethostname(),
                                                        time.strftime("%Y-%m-%d %H:%M:%S")))
            handle.flush()
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)
