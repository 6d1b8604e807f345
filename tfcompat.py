"""Process-wide TensorFlow set-up; import this module before anything imports TensorFlow.

TensorFlow >= 2.16 ships Keras 3 as ``tf.keras``.  Keras 3 cannot load the legacy Keras-2
HDF5 weight files of matterport Mask R-CNN by layer name, so the project uses the
``tf-keras`` package (the Keras 2 API).  TensorFlow only routes ``tf.keras`` to tf-keras when
``TF_USE_LEGACY_KERAS=1`` is set *before* TensorFlow is first imported, which is why every
package of the project that touches TensorFlow imports this module first.

It also quiets TensorFlow's C++ start-up logging (``TF_CPP_MIN_LOG_LEVEL``) and oneDNN's
banner, unless the user already chose values for them.
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("KMP_WARNINGS", "0")


_NOISE = ("All log messages before absl::InitializeLog", "oneDNN custom operations",
          "cudart_stub.cc", "cuda_platform.cc", "Could not find cuda drivers",
          "Unable to register cu", "computation placer already registered",
          "This TensorFlow binary is optimized", "rebuild TensorFlow with the appropriate",
          "TF-TRT Warning", "absl::InitializeLog")


def _quiet_import():
    """Import TensorFlow with file descriptor 2 captured, then re-emit whatever is not
    start-up noise (C++ messages printed before absl logging is configured ignore
    ``TF_CPP_MIN_LOG_LEVEL``)."""
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow as tf
            import tf_keras  # noqa: F401

            tf.config.list_physical_devices("GPU")  # triggers the CUDA probe while captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode("utf-8", "replace").splitlines():
                if line.strip() and not any(n in line for n in _NOISE):
                    sys.stderr.write(line + "\n")


_IMPORTED = False


def import_tf():
    """Import TensorFlow and tf-keras with the project's settings; returns ``(tf, keras)``.

    Raises:
        RuntimeError: if TensorFlow was imported before this module set the legacy-Keras
            switch and ``tf.keras`` resolved to Keras 3.
    """
    import logging

    global _IMPORTED
    first = not _IMPORTED
    if first:
        _quiet_import()
        _IMPORTED = True
    import tensorflow as tf
    import tf_keras as keras

    if first:
        # Same seed, same numbers: without this, multi-threaded CPU kernels (e.g. the gradient
        # sums in K's ROI heads) add in a varying order and two trainings of K with one seed
        # end with different weights.  It costs ~15% of a K training step on this CPU, and
        # makes TensorFlow refuse a random op that has no seed, which the project never uses.
        tf.config.experimental.enable_op_determinism()

    tf.get_logger().setLevel(logging.ERROR)
    if not tf.keras.__name__.startswith("tf_keras") and not tf.keras.__version__.startswith("2."):
        raise RuntimeError(
            "tf.keras resolved to Keras %s; import tfcompat before tensorflow "
            "(TF_USE_LEGACY_KERAS=1 must be set before the first TensorFlow import)."
            % tf.keras.__version__)
    return tf, keras
