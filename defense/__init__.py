"""UnMask defense: detection and rectification of M's predictions from K's part sets.

Modules:

* :mod:`defense.unmask` — Jaccard, Algorithm 1 (``scores``, ``detect``, ``rectify``) and the
  :class:`~defense.unmask.UnMask` class (``protect(images, keys)``).
* :mod:`defense.extractors` — the extractor protocol and the ground-truth
  :class:`~defense.extractors.OracleExtractor` (results with it are labelled "oracle").
* :mod:`defense.thresholds` — choosing the threshold t for a target benign FPR.
* :mod:`defense.base` and :mod:`defense.defenses` — the interface of a defense and the registry
  of every defense the comparison runs (UnMask, AT, the input transforms, noise, the
  trajectory detector); :mod:`defense.adaptive` — their defense-aware attack targets;
  :mod:`defense.adversarial_training`, :mod:`defense.transforms`, :mod:`defense.trajectory` —
  what those defenses are made of.

The evaluation harness that runs them (attacks, records, metrics, reports) is the
:mod:`evaluation` package.

Nothing here imports TensorFlow; a Keras model is only called through ``UnMask(model=...)``.
"""
from defense.extractors import Extractor, OracleExtractor
from defense.unmask import NO_CLASS, Mode, ProtectResult, UnMask, jaccard

__all__ = ["Extractor", "OracleExtractor", "NO_CLASS", "Mode", "ProtectResult", "UnMask",
           "jaccard"]
