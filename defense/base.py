"""What every defense of the bench is: a small object with ``fit``, ``predict`` (and, for
detectors, ``score`` and ``flag``), evaluated by one loop over a list of them.

A defense answers for a batch of images with class indices into the class set, where
:data:`REJECTED` (-1) means "rejected / no class" (counted wrong by the accuracy).  The
evaluation splits that answer in two so that the expensive part is computed once per image set
and cached on disk, and the cheap part can be re-decided (e.g. at another threshold):

* :meth:`Defense.observe` -- the expensive, cacheable observation of an :class:`ImageSet`
  (M's predictions on transformed images, K's part sets, ...): a JSON-able dict of lists;
* :meth:`Defense.decide` -- from an observation to an :class:`Outcome`: final labels and, for a
  detector, its suspicion scores and flags at the operating threshold.

``predict``, ``score`` and ``flag`` are the two composed, for users who just want an answer.

Threat model of the bench (paper): **gray-box** -- the attacker sees the classifier it is
attacking, never the defense around it.  :meth:`Defense.attacked_model` names that classifier:
M for every defense that protects the unchanged M, the adversarially trained model for AT
(whose gray-box attack is therefore white-box on its own model).
"""
from __future__ import annotations

import dataclasses
import functools
import numbers
import zlib
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from defense.threats import Goal, Threat
from defense.thresholds import check_target_fpr
from defense.unmask import check_images, check_threshold
from models.inference import inference_fn

#: Label meaning "rejected by a detector / no class" (UnMask's NO_CLASS is the same value).
REJECTED = -1

#: Threat models a result row can carry (:class:`~defense.threats.Threat`): the paper's
#: gray-box attacker (sees the classifier, not the defense), the defense-aware one (sees
#: everything; :mod:`defense.adaptive`) and the same through a surrogate of the defense.
GRAY_BOX, ADAPTIVE, TRANSFER = Threat.GRAY_BOX, Threat.ADAPTIVE, Threat.TRANSFER
THREAT_MODELS = tuple(Threat)


@dataclasses.dataclass(frozen=True)
class AdaptiveOptions:
    """How defense-aware targets are built (the run's ``--adaptive-*`` options).

    Attributes:
        gradient: how a detector target combines its gradients
            (:data:`defense.adaptive.GRADIENT_MODES`); None: each defense's default.
        eot_samples: draws averaged per step through a random transform (>= 20 asked).
        routes: the routes an attack is narrowed to (``--adaptive-routes``; None: every route
            of the defense, SPEC §13).  A defense none of whose routes is named keeps them all.
    """
    gradient: Optional[str] = None
    eot_samples: int = 20
    routes: Optional[Tuple[str, ...]] = None


@dataclasses.dataclass
class ImageSet:
    """One set of images a defense is asked about, with what is already known of it.

    Attributes:
        name: stable identifier of the set (``"benign-test"``, ``"m/pgd_linf_8"``, ...); used
            to seed randomised defenses, so the same set always gets the same randomness.
        split: the split the images come from (``"train"``, ``"val"``, ``"test"``).
        x: float32 [N, H, W, 3] in [0, 1].
        keys: N image keys (paths relative to the class-set folder; the oracle extractor needs
            them).
        labels: int64 [N], true classes.
        preds: model key -> int64 [N] predictions already computed on ``x`` (``"m"``: M's, from
            the attack run or the benign pass), so defenses do not recompute them.
        fingerprint: what the images depend on (a cached observation is reused only when the
            set's fingerprint and the defense's fingerprint both match).
    """
    name: str
    split: str
    x: np.ndarray
    keys: Sequence[str]
    labels: np.ndarray
    preds: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    fingerprint: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        check_images(self.x, "ImageSet.x")
        self.x = np.asarray(self.x)
        n = len(self.x)
        self.labels = _class_indices(self.labels, n, "ImageSet.labels")
        if isinstance(self.keys, (str, bytes)) or len(self.keys) != n:
            raise ValueError("ImageSet.keys must be a sequence of %d image keys (one per image "
                             "of x), got %s" % (n, "the string %r" % (self.keys,)
                                                if isinstance(self.keys, (str, bytes))
                                                else "%d keys" % len(self.keys)))
        self.preds = {model: _class_indices(p, n, "ImageSet.preds[%r]" % model)
                      for model, p in dict(self.preds).items()}

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @classmethod
    def of(cls, x: Any, labels: Any, split: str = "test", name: Optional[str] = None
           ) -> "ImageSet":
        """Images of your own (float32 ``[N, H, W, 3]`` in [0, 1], int labels ``[N]``) as a
        set a defense can be asked about: keys ``"<name>-<i>"`` (a part extractor caches by
        key *and* pixels, so an attacked copy under the same key is looked at anew); ``name``
        defaults to ``"<split>"`` and seeds a randomised defense's draws."""
        name = name or split
        return cls(name=name, split=split, x=np.asarray(x, np.float32), labels=labels,
                   keys=["%s-%d" % (name, i) for i in range(len(np.asarray(labels)))],
                   fingerprint={"name": name})

    @property
    def seed(self) -> int:
        """A 31-bit seed derived from ``name`` (stable across processes, unlike ``hash``)."""
        return zlib.crc32(self.name.encode("utf-8")) & 0x7FFFFFFF


def _class_indices(values: Any, n: int, name: str) -> np.ndarray:
    """``values`` as int64 [n] (class indices, -1 for "rejected"); ValueError naming
    ``name`` otherwise."""
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise ValueError("%s must be a 1-D array of %d class indices (one per image), got "
                         "shape %s" % (name, n, arr.shape))
    if n and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError("%s must hold integer class indices, got dtype %s" % (name, arr.dtype))
    arr = arr.astype(np.int64, copy=False)
    if n and arr.min() < REJECTED:
        raise ValueError("%s must be class indices >= 0 (or %d, rejected), got minimum %d"
                         % (name, REJECTED, arr.min()))
    return arr


@dataclasses.dataclass
class Outcome:
    """A defense's answer on N images.

    Attributes:
        pred: int64 [N], final class indices, :data:`REJECTED` (-1) where rejected.
        score: float64 [N], higher = more suspicious (detectors only, else None).
        flags: bool [N], ``score >= threshold`` (detectors only, else None).
    """
    pred: np.ndarray
    score: Optional[np.ndarray] = None
    flags: Optional[np.ndarray] = None


class Defense:
    """Base class; subclasses set ``name`` and implement :meth:`observe` and :meth:`decide`.

    Attributes:
        name: registry name.
        detector: True when the defense scores images and flags (rejects or rectifies) them;
            the bench then reports its AUC and TPR at the chosen FPR.
        threshold: a detector's operating threshold (set by :meth:`fit`).
        reads_m_layers: True when the defense reads the inner layers of one of the project's
            architectures (the trajectory detector's taps), so it cannot wrap a classifier
            of your own (``main.py --m-model``).
    """
    name: str = "?"
    detector: bool = False
    reads_m_layers: bool = False
    threshold: Optional[float] = None
    _fitted: bool = False

    def __init_subclass__(cls, **kwargs):
        """Every subclass's ``fit`` checks its context and records that it ran (see
        :meth:`_check_ready`)."""
        super().__init_subclass__(**kwargs)
        if "fit" in cls.__dict__:
            cls.fit = _checked_fit(cls.__dict__["fit"])

    @property
    def label(self) -> str:
        """How reports name this defense: ``name``, or ``name:value`` when a parameter was
        given on the command line (set by :func:`defense.defenses.build_defense`)."""
        return getattr(self, "_label", None) or self.name

    @label.setter
    def label(self, text: str) -> None:
        self._label = str(text)

    # ---------------------------------------------------------------- to implement
    def fit(self, ctx: "FitContext") -> None:
        """Learn what the defense needs from training / validation data (default: nothing)."""

    def params(self) -> Dict[str, Any]:
        """JSON-able parameters of the fitted defense (recorded in every report)."""
        return {}

    def fingerprint(self) -> Dict[str, Any]:
        """Everything an observation depends on besides the images (default: the params)."""
        return {"defense": self.name, "params": self.params()}

    def attacked_model(self) -> str:
        """Key of the model the gray-box attacker attacks (``"m"``, or ``"at"`` for AT)."""
        return "m"

    def models_needed(self) -> Tuple[str, ...]:
        """Keys of the run's models this defense uses (``"at"``: the run must train or load
        the adversarially trained model)."""
        return (self.attacked_model(),)

    def value_text(self, value: Optional[str]) -> Optional[str]:
        """The parameter text of this defense's label for the command line's ``value``
        (default: ``value`` itself); None: the label is the bare name."""
        return value

    #: The threat models this defense can be evaluated under (gray-box always; a defense
    #: with something hidden from the gray-box attacker adds ``adaptive``, and ``transfer``
    #: when it has a surrogate).
    threats: Tuple[Threat, ...] = (Threat.GRAY_BOX,)

    def adaptive_goals(self) -> Tuple[Goal, ...]:
        """The goals whose adaptive attacks differ (:class:`~defense.threats.Goal`): one
        run serves both where "wrong answer" and "undetected" are the same event (a
        classifier; a detector that rejects what it flags)."""
        return (Goal.WRONG,)

    #: Every route this defense's adaptive attack can take (checked on the command line before
    #: any work; :meth:`adaptive_routes` says which serve a goal).
    ROUTES: Tuple[str, ...] = ("default",)

    def adaptive_routes(self, goal: Goal) -> Tuple[str, ...]:
        """The ways this defense's final answer can reach ``goal`` (SPEC §13), in the order
        the adaptive engine attacks them (cheapest first).  One for most defenses."""
        return self.ROUTES[:1]

    def chosen_routes(self, goal: Goal, options: AdaptiveOptions) -> Tuple[str, ...]:
        """The routes the run attacks for ``goal``: :meth:`adaptive_routes`, narrowed to
        ``options.routes`` when some of them are named there."""
        routes = self.adaptive_routes(goal)
        if options.routes is None:
            return routes
        return tuple(r for r in routes if r in options.routes) or routes

    def ignored_parameters(self, extractor: str) -> Optional[str]:
        """Why this defense's parameters would change nothing with part extractor
        ``extractor`` (``"k"`` or ``"oracle"``), so its row would repeat another's; None when
        they all matter.  A run refuses such a defense before any work."""
        return None

    def transfer_surrogate(self) -> Optional[str]:
        """Which surrogate part extractor a transfer attack on this defense goes through:
        ``"standard"`` (``--k-transfer``), ``"robust"`` (``--k-transfer-robust``: the
        surrogate mirrors a defense holding the robust K), or None (no surrogate).  The
        one place the defense's ``fit`` (choosing among the :class:`FitContext`'s surrogate
        loaders) and its transfer records' fingerprint read."""
        return "standard" if Threat.TRANSFER in self.threats else None

    def attacker_fingerprint(self) -> Dict[str, Any]:
        """What this defense's defense-aware attacker depends on beyond :meth:`fingerprint`
        and the run's attack settings (default: nothing); it keys the adaptive and transfer
        records only, so the defense's own observations stay reused."""
        return {}

    def no_adaptive_reason(self, threat: Threat) -> Optional[str]:
        """Why there is no defense-aware attack of ``threat`` (None when there is one)."""
        if threat in self.threats:
            return None
        if threat == Threat.ADAPTIVE:
            return ("none needed: the gray-box attack already sees all of it (white-box on %s)"
                    % ("the AT model" if self.attacked_model() == "at" else "M"))
        return "none: %s has no surrogate to attack through" % self.name

    def attack_target(self, threat: Threat, goal: Goal, options: AdaptiveOptions):
        """The defense-aware attacker's :class:`~attacks.target.AttackTarget` for ``goal``
        (:mod:`defense.adaptive`), or None (see :meth:`no_adaptive_reason`).  ``threat``
        ``transfer`` asks for the same attack through a surrogate of the defense."""
        return None

    def observe(self, images: ImageSet) -> Dict[str, List]:
        """The expensive part of answering on ``images``: a JSON-able dict of lists."""
        raise NotImplementedError

    def decide(self, observation: Mapping[str, List]) -> Outcome:
        """Final labels (and scores/flags for a detector) from :meth:`observe`'s output."""
        raise NotImplementedError

    def restore(self, params: Mapping[str, Any], classes: Sequence[str],
                seed: int = 0) -> "Defense":
        """Set what :meth:`decide` needs from the parameters a finished run recorded for this
        defense (``metrics.json``, ``defenses.<label>.params``) instead of :meth:`fit`: no
        model, no data.  A run's page re-decides the saved observations this way.  Returns
        ``self``; a KeyError names a parameter the record lacks."""
        if self.detector:
            self.threshold = float(params["threshold"])
        return self

    # ---------------------------------------------------------------- composed
    def wrong_answers(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """bool [B]: the defense's real answer on images ``x`` (float [B, H, W, 3] in [0, 1])
        is wrong and not a rejection -- an adaptive attack's "wrong answer" verdict."""
        probe = ImageSet(name="adaptive-probe", split="test", x=np.asarray(x, np.float32),
                         keys=[""] * len(x), labels=np.asarray(y, np.int64))
        pred = self.decide(self.observe(probe)).pred
        return (pred != probe.labels) & (pred != REJECTED)

    def predict(self, images: ImageSet) -> np.ndarray:
        """int64 [N] class indices, -1 where rejected."""
        self._check_ready("predict", images)
        return self.decide(self.observe(images)).pred

    def score(self, images: ImageSet) -> np.ndarray:
        """float64 [N], higher = more suspicious (detectors only)."""
        self._need_detector("score")
        self._check_ready("score", images)
        return self.decide(self.observe(images)).score

    def flag(self, images: ImageSet) -> np.ndarray:
        """bool [N] at the chosen operating threshold (detectors only)."""
        self._need_detector("flag")
        self._check_ready("flag", images)
        return self.decide(self.observe(images)).flags

    def _check_ready(self, what: str, images: Any) -> None:
        """A fitted defense and an :class:`ImageSet` (ValueError/TypeError saying which)."""
        if type(self).fit is not Defense.fit and not self._fitted:
            raise ValueError("defense %r is not fitted: call fit(ctx) (a FitContext) before "
                             "%s()" % (self.label, what))
        if not isinstance(images, ImageSet):
            raise TypeError("%s() takes an ImageSet (defense.base.ImageSet(name, split, x, "
                            "keys, labels), x float [N, H, W, 3] in [0, 1]), got %s"
                            % (what, type(images).__name__))

    def _need_detector(self, what: str) -> None:
        if not self.detector:
            raise ValueError("defense %r is not a detector: it has no %s(); use predict()"
                             % (self.name, what))


def _checked_fit(fit: Callable) -> Callable:
    """``fit`` refusing anything but a :class:`FitContext`, marking the defense fitted."""
    @functools.wraps(fit)
    def checked(self, ctx, *args, **kwargs):
        if not isinstance(ctx, FitContext):
            raise TypeError("%s.fit(ctx) takes a defense.base.FitContext (the evaluation "
                            "builds one: evaluation.comparison.Comparison.fit_context), got %s"
                            % (type(self).__name__, type(ctx).__name__))
        fit(self, ctx, *args, **kwargs)
        self._fitted = True
    return checked


@dataclasses.dataclass(frozen=True)
class ATModel:
    """The adversarially trained model a run fitted: its PGD-Linf budget (0-255 scale) and
    the digest of its weights (``eps`` None: a model given to the run, not trained by it)."""
    eps: Optional[float]
    checkpoint_digest: Optional[str] = None


class FitContext:
    """What a defense may use while fitting (built by the evaluation,
    :meth:`evaluation.comparison.Comparison.fit_context`).

    Attributes:
        models: model key -> callable float32 [B, H, W, 3] in [0, 1] -> logits [B, C]
            (``"m"`` always; ``"at"`` when the AT model is trained).
        classes: class names in M's output order; ``class_set``: the :class:`ClassSet`.
        seed: the run's seed; ``log``: a message sink.
        target_fpr: the false-positive rate detectors choose their threshold for on benign
            validation images; ``threshold``: a threshold given by the user (or None).
        mode: UnMask's rectification mode (``"flagged"`` or ``"all"``).
        extractors: makes (once) UnMask's part extractors: ``(k="standard") -> (kind,
            extractor for validation images, extractor for test images, digest of what they
            answer from)``, ``k="robust"`` for the adversarially trained K; None when the run
            has none.
        arch, m_dir, m_digest: M's architecture, checkpoint folder and weights' digest (the
            trajectory detector taps M and caches beside it).
        trajectory_cache: folders of the trajectory detector's cache, the one it writes
            first (default: beside ``m_dir``).
        at: the AT model's :class:`ATModel` (None without adversarial training).
        transfer_k: makes the surrogate K of the transfer threat (None: no surrogate).
        transfer_k_robust: makes the robust surrogate K of the transfer threat on an UnMask
            holding the robust K (None: none given).
        strategy: a ``tf.distribute`` strategy the trajectory detector trains under (or
            None).
    """

    def __init__(self, *, models: Mapping[str, Callable], class_set, seed: int,
                 target_fpr: float, threshold: Optional[float], log: Callable[[str], None],
                 images: Callable[[str], ImageSet],
                 attacked: Callable[[str, str, float, str], ImageSet],
                 observe: Callable[[Defense, ImageSet], Dict[str, List]],
                 mode: str = "flagged", extractors: Optional[Callable[..., Tuple]] = None,
                 arch: Optional[str] = None, m_dir: Optional[str] = None,
                 m_digest: Optional[str] = None, trajectory_cache: Sequence[str] = (),
                 at: Optional[ATModel] = None, transfer_k: Optional[Callable] = None,
                 transfer_k_robust: Optional[Callable] = None,
                 strategy: Any = None):
        self.models = dict(models)
        if not callable(self.models.get("m")):
            raise ValueError("FitContext: models must map 'm' to M (a callable, float32 [B, "
                             "H, W, 3] in [0, 1] -> logits [B, C]); got keys %s"
                             % sorted(self.models))
        for key, model in self.models.items():
            if not callable(model):
                raise ValueError("FitContext: models[%r] must be callable, got %s"
                                 % (key, type(model).__name__))
        self.class_set = class_set
        self.classes = tuple(class_set.classes)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError("FitContext: seed must be an integer >= 0, got %r" % (seed,))
        self.seed = int(seed)
        self.target_fpr = check_target_fpr(target_fpr)
        self.threshold = None if threshold is None else check_threshold(threshold)
        self.log = log
        self._images = images
        self._attacked = attacked
        self._observe = observe
        if mode not in ("flagged", "all"):
            raise ValueError("FitContext: mode must be 'flagged' or 'all', got %r" % (mode,))
        self.mode = mode
        self.extractors = extractors
        self.arch = arch
        self.m_dir = m_dir
        self.m_digest = m_digest
        self.trajectory_cache = tuple(trajectory_cache)
        self.at = at
        self.transfer_k = transfer_k
        self.transfer_k_robust = transfer_k_robust
        self.strategy = strategy

    @classmethod
    def for_classifier(cls, model: Callable, class_set, val_images: Any, val_labels: Any,
                       extractor: Any = None, *, train: Optional[Tuple[Any, Any]] = None,
                       target_fpr: float = 0.10, threshold: Optional[float] = None,
                       mode: str = "flagged", robust_extractor: Any = None,
                       at_model: Optional[Callable] = None, seed: int = 0,
                       log: Callable[[str], None] = print) -> "FitContext":
        """What a defense of the bench needs to protect *your* classifier, outside a run.

        Args:
            model: your classifier, float32 ``[B, H, W, 3]`` in [0, 1] -> logits ``[B, C]``,
                its outputs in the order of ``class_set.classes`` (a Keras model for
                UnMask's defense-aware target, which reads its input size).
            class_set: a :class:`~data.knowledge.ClassSet` (e.g. ``get_class_set("CS5b")``):
                the classes whose expected parts UnMask checks.
            val_images, val_labels: clean validation images ``[N, H, W, 3]`` and labels
                ``[N]``: a detector's threshold is chosen on them for ``target_fpr`` (unless
                ``threshold`` is given).
            extractor: UnMask's part extractor -- K
                (``models.mrcnn.PartExtractor.from_checkpoint``; the defense-aware attack
                needs it: it differentiates through K), or for predicting only anything with
                ``extract(images, keys) -> list of frozensets``.
            train: ``(images, labels)`` of clean training images, for the defenses fitted on
                them (``pca``).
            robust_extractor: the adversarially trained K (for ``unmask:k=robust``).
            at_model: an adversarially trained classifier (for ``at`` and ``unmask:m=at``).

        What this context does not make -- attacked images, which the trajectory detector
        trains on and ``noise`` without an amplitude chooses one on -- is refused when the
        defense asks for it, saying what to give instead.
        """
        val = ImageSet.of(val_images, val_labels, split="val")
        if len(val) == 0:
            raise ValueError("FitContext.for_classifier: val_images is empty; give the clean "
                             "validation images the threshold is chosen on")
        sets = {"val": val}
        if train is not None:
            sets["train"] = ImageSet.of(*train, split="train")
        logits = np.asarray(inference_fn(model)(val.x[:1]))
        if logits.shape != (1, len(class_set.classes)):
            raise ValueError("FitContext.for_classifier: the model gives logits of shape %s "
                             "for one image; %s has %d classes (%s), in that order"
                             % (logits.shape[1:], class_set.paper_name,
                                len(class_set.classes), ", ".join(class_set.classes)))

        def images(split):
            if split not in sets:
                raise ValueError("this defense is fitted on %s images: give them as "
                                 "FitContext.for_classifier(train=(images, labels))" % split
                                 if split == "train" else
                                 "FitContext.for_classifier holds no %s images" % split)
            return sets[split]

        def attacked(model_key, attack, eps, split="val"):
            raise ValueError("this defense is fitted on %s images attacked with %s at eps %g, "
                             "which FitContext.for_classifier does not make: give its "
                             "parameter where it has one (e.g. noise:10), or evaluate it with "
                             "main.py --defenses" % (split, attack, eps))

        def extractors(k="standard"):
            if k not in ("standard", "robust"):
                raise ValueError("unknown K %r: 'standard' or 'robust'" % (k,))
            ex = extractor if k == "standard" else robust_extractor
            if ex is None:
                raise ValueError("this defense holds %s: give FitContext.for_classifier(%s=...)"
                                 % (("K", "extractor") if k == "standard" else
                                    ("a robust K", "robust_extractor")))
            return getattr(ex, "kind", "k"), ex, ex, None

        models = {"m": model} if at_model is None else {"m": model, "at": at_model}
        return cls(models=models, class_set=class_set, seed=seed, target_fpr=target_fpr,
                   threshold=threshold, log=log, images=images, attacked=attacked,
                   observe=lambda defense, image_set: defense.observe(image_set), mode=mode,
                   extractors=extractors)

    def images(self, split: str) -> ImageSet:
        """The benign images of ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
        return self._images(split)

    def attacked(self, model: str, attack: str, eps: float, split: str = "val") -> ImageSet:
        """``split``'s images attacked (gray-box) on model ``model`` with ``attack`` at ``eps``
        (0-255 scale); computed once and cached like the evaluation's attack vectors."""
        return self._attacked(model, attack, eps, split)

    def observe(self, defense: Defense, images: ImageSet) -> Dict[str, List]:
        """``defense.observe(images)``, cached on disk under the fingerprints."""
        return self._observe(defense, images)


def model_predictions(model: Callable, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Arg-max predictions int64 [N] of ``model`` on float images [N, H, W, 3] in [0, 1],
    batched as :meth:`defense.unmask.UnMask.predict` does (so the numbers are the same)."""
    forward, out = inference_fn(model), []
    for i in range(0, len(x), batch_size):
        logits = forward(x[i:i + batch_size])
        logits = logits.numpy() if hasattr(logits, "numpy") else np.asarray(logits)
        out.append(np.argmax(logits, axis=1))
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)
