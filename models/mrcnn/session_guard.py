"""Guard against "Session has been closed" when a Keras/TF1 callable outlives its session.

A TF1 session callable (``BaseSession._Callable``, what Keras-2 backend functions and K's
inference use) releases its handle in ``__del__``.  When the session was closed first, old
TensorFlow versions called ``TF_SessionReleaseCallable`` on the closed session and printed an
exception during garbage collection.  Checking only ``session._session is not None`` (the fix
suggested in the original project's README) is not enough: ``close()`` keeps ``_session`` set
until the session object itself is deleted.  The guard below also checks ``_closed`` and
swallows errors of the release itself, so releasing after close is harmless on any version.
"""
from __future__ import annotations

import tfcompat

tf, _keras = tfcompat.import_tf()

_GUARD_FLAG = "_unmask_session_close_guard"


def _callable_class():
    """The TF1 session callable class (private TensorFlow API)."""
    from tensorflow.python.client import session as tf_session_module
    return tf_session_module.BaseSession._Callable


def _session_is_open(session) -> bool:
    """True when the TF1 session still has a live, not closed, C session."""
    return (session is not None and getattr(session, "_session", None) is not None
            and not getattr(session, "_closed", False))


def install_session_close_guard() -> bool:
    """Patch ``_Callable.__del__`` so it is a no-op once its session is closed.

    Idempotent; returns True when the patch was installed by this call.
    """
    cls = _callable_class()
    if getattr(cls.__del__, _GUARD_FLAG, False):
        return False
    original = cls.__del__

    def guarded_del(self):
        if getattr(self, "_handle", None) is None:
            return
        if not _session_is_open(getattr(self, "_session", None)):
            self._handle = None
            return
        try:
            original(self)
        except (tf.errors.OpError, AttributeError, TypeError):
            pass
        self._handle = None

    setattr(guarded_del, _GUARD_FLAG, True)
    guarded_del.original = original
    cls.__del__ = guarded_del
    return True


def guard_installed() -> bool:
    """True when :func:`install_session_close_guard` has patched TensorFlow."""
    return bool(getattr(_callable_class().__del__, _GUARD_FLAG, False))


def make_callable(session, feeds, fetches, targets=()):
    """A session callable (as Keras-2 backend functions build) running ``fetches``.

    Args:
        feeds: placeholders fed positionally; fetches: tensors returned as a list of arrays;
        targets: operations run for their side effects.
    """
    from tensorflow.core.protobuf import config_pb2
    opts = config_pb2.CallableOptions()
    opts.feed.extend([t.name for t in feeds])
    opts.fetch.extend([t.name for t in fetches])
    opts.target.extend([op.name for op in targets])
    return session._make_callable_from_options(opts)
