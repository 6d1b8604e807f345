"""UnMask defense: detection and rectification of M's predictions from K's part sets.

Modules:

* :mod:`defense.unmask` — Jaccard, Algorithm 1 (``scores``, ``detect``, ``rectify``) and the
  :class:`~defense.unmask.UnMask` class (``protect(images, keys)``).
* :mod:`defense.extractors` — the extractor protocol and the ground-truth
  :class:`~defense.extractors.OracleExtractor` (results with it are labelled "oracle").
* :mod:`defense.thresholds` — choosing the threshold t for a target benign FPR.
* :mod:`defense.metrics` — ROC/AUC, rates at t, accuracies, contamination-0.5 detection sets.
* :mod:`defense.report` — ``metrics.json`` (validated), Table IV, Fig. 4, Fig. 5 (imports
  matplotlib; not imported here).

Nothing here imports TensorFlow; a Keras model is only called through ``UnMask(model=...)``.
"""
from defense.extractors import Extractor, OracleExtractor
from defense.unmask import NO_CLASS, Mode, ProtectResult, UnMask, jaccard

__all__ = ["Extractor", "OracleExtractor", "NO_CLASS", "Mode", "ProtectResult", "UnMask",
           "jaccard"]
