"""Differentiable interface of model K for adaptive attacks (SPEC §8).

Attacks in this project are functions of callables: M is a ``model_fn`` mapping a float32
batch ``[B, S, S, 3]`` in [0, 1] to logits.  :class:`PartScorer` gives K the same kind of
contract.  It is built once, inside K's own ``tf.Graph`` and ``tf.compat.v1.Session`` (those of
the inference ``MaskRCNN``), for images of M's size, and answers with NumPy arrays:

``PartScorer(k, image_size, class_names=None, quantize=True)``
    ``k`` is a :class:`~models.mrcnn.extractor.PartExtractor` or an inference ``MaskRCNN``.
``scorer.part_margins(images, rois=None, quantize=None) -> (margins [B, R, P], rois [B, R, 4])``
    ``m[b, r, p] = z[b, r, p] - max_{c != p} z[b, r, c]`` on the ROI head's class logits
    ``z [B, R, C]`` (C = NUM_CLASSES, background included among the ``c``), for every part
    class ``p`` (class id ``p + 1``; ``P = C - 1``).  The ROIs are K's own proposals (the
    inference graph's ProposalLayer, ``R = POST_NMS_ROIS_INFERENCE``, zero padded as the real
    pipeline, whose detection layer classifies the padding rows too), normalized
    ``(y1, x1, y2, x2)`` in K's molded ``IMAGE_SHAPE`` input.
``scorer.value_and_grad(images, weights, rois=None, quantize=None) -> (loss [B], grad [B, S, S, 3])``
    ``loss[b] = sum_{r,p} weights[b, r, p] * m[b, r, p]`` and its gradient w.r.t. the input
    pixels in [0, 1].  A nonlinear loss of the margins is handled by passing
    ``weights = dL/dm`` at the current margins (chain rule) or by one of the built-in losses:
``scorer.hinge_value_and_grad(images, present, absent, kappa=0, lam_present=1, lam_absent=1, tau=1, ...)``
    SPEC §8's part-set loss ``lam_present * sum_p present[b, p] * relu(kappa - smax_r m[b, r, p])
    + lam_absent * sum_p absent[b, p] * sum_r relu(m[b, r, p] + kappa)`` with the smooth
    maximum ``smax_r = tau * logsumexp_r(m / tau)`` (``present``/``absent`` are ``[B, P]``
    0/1 masks).  Minimising it makes the ``present`` parts detected and the ``absent`` ones not.
    ``return_parts=True`` adds K's detected part sets from the same session run (one K pass
    per attack step gives the gradient and the real detector's verdict).
``scorer.margins_tf(x) -> tf.Tensor [B, R, P]``
    The margins as a TensorFlow op usable under ``tf.GradientTape`` (eager or ``tf.function``):
    forward is one session run, the backward pass another (the vector-Jacobian product with
    the forward's ROIs held fixed).  This is the ``model_fn``-style callable.
``scorer.detected_parts(images, method="detections", quantize=None) -> list[frozenset[str]]``
    The part set read from the same forward pass (see "Detected parts" below).
``scorer.mold(images, quantize=None)`` / ``scorer.logits(images, rois=None, quantize=None)``
    K's molded input ``[B, *IMAGE_SHAPE]`` and the raw class logits ``[B, R, C]`` (checks).

Gradient semantics
    * The proposals are held constant within a call: ``tf.gradients(..., stop_gradients=[rois])``
      (ROIAlign already stops the gradient to its boxes, the explicit stop makes it a
      contract).  They are recomputed by K's RPN at every call unless ``rois`` (e.g. from a
      previous :meth:`part_margins`) is passed; passing them also skips the RPN/NMS, so a
      finite-difference check can hold them fixed.
    * The gradient is taken in K's graph w.r.t. the pixels of M's size: the molding that
      ``PartExtractor.extract`` applies (8-bit quantisation, resize from S to K's image size
      with clipping and zero padding, ``data_gen.mold_inputs``' mean subtraction) is built in
      the graph in front of the network, so TF differentiates through it exactly.
    * 8-bit quantisation is treated as the identity on the backward pass (straight-through):
      the forward truncates ``255 x`` to integers (``extractor.to_uint8``, the original's
      ``x.mul(255).byte()``) and floors the resized pixels (matterport's resize casts its
      float result back to ``uint8``); the backward passes the gradient unchanged through
      both.  ``quantize=False`` removes both roundings from the forward (what a
      finite-difference check needs); the final image of an attack is always evaluated by
      the real pipeline, after quantisation.

The resize
    K's real ``detect()`` resizes with matterport's ``utils.resize_image`` -> skimage
    ``resize(order=1, mode="constant", cval=0, clip=True, anti_aliasing=False)`` in float64.
    That is *not* ``tf.image.resize(bilinear)``: both sample at half-pixel centres with the
    same bilinear weights (the interior is identical), but when upsampling skimage blends the
    outer ring of output pixels with the constant 0 outside the image, where TF clamps to the
    edge pixel (up to ~60 grey levels of difference on the border ring at 96 -> 128), and skimage
    then clips the result to ``[min, max]`` of the input image.  The interface therefore does
    not use ``tf.image.resize``: it applies skimage's own linear operator as two matrices
    ``R_y [S', S]`` and ``R_x [S', S]`` (``out = R_y u R_x^T`` per channel, in float64), obtained
    by resizing identity matrices with the project's own ``utils._resize``, then the same
    clip, the zero padding to the square and the mean subtraction (``extract`` then molds the
    square with ``data_gen.mold_inputs``, whose own resize is the identity and whose window is
    the whole square; the interface uses that image meta).  The forward therefore equals the
    real molding to round-off (with ``quantize=True`` the molded input matched
    ``to_uint8`` + ``PartExtractor.resize`` + ``mold_inputs`` exactly, up to float32 round-off,
    on every pixel tested: 48 -> 64 and 96 -> 128, random and synthetic images), and its
    gradient is the exact derivative of that piecewise-linear map (the clip passes no
    gradient where it is active).

Detected parts
    Part p is in K's set iff at least one ROI's arg-max class is p, i.e. ``max_r m[r, p] > 0``,
    among the ROIs whose detection is kept: DETECTION_MIN_CONFIDENCE is 0 and the per-class
    NMS never removes a class (the best box of each class survives); only the
    top-``DETECTION_MAX_INSTANCES`` cut over the surviving boxes and ``extract``'s removal of
    detections whose refined box has zero area in pixels can.  Methods:

    * ``"detections"`` (default): the classes of the detections K's own detection layer keeps,
      run on the interface's forward pass, after the zero-area filter of ``extract``
      (``data_gen.unmold_boxes``); same logits, so this is ``{p : m[r, p] > 0`` for a kept
      ``r}``, exact for the interface's forward pass.
    * ``"margins"``: ``{p : max_r m[r, p] > 0}`` over all R ROIs, ignoring the cut and the
      zero-area filter (SPEC §8's definition, what the margin losses act on); a superset of
      "detections".
    * ``"topn"``: "margins" with the cut approximated from the margins and ROI scores alone:
      p kept when its best ROI score ranks within the top N of the classes' best scores,
      i.e. assuming NMS removes every same-class duplicate (over-reports when it does not).

    Differences from ``PartExtractor.extract`` therefore come only from the molding's float
    round-off (and, for "margins"/"topn", from the cut and the zero-area filter);
    ``tests/test_k_gradients.py`` measures the agreement.  A random K has degenerate boxes
    (which all survive NMS and are then dropped by the zero-area filter), so there
    "margins"/"topn" over-report; for a trained K they rarely differ.

Batches of more than the graph's ``BATCH_SIZE`` images are cut into chunks (one session run
per chunk); smaller batches are padded.  The callables run K's graph only; they do not touch
eager state, so they work beside an eager M (tf-keras classes are swapped back to their v2
bases after the graph is extended, see :mod:`models.mrcnn.keras_classes`).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

import tfcompat
from models.mrcnn import data_gen, utils
from models.mrcnn.keras_classes import keras_graph_scope
from models.mrcnn.session_guard import make_callable

tf, keras = tfcompat.import_tf()

DETECTION_METHODS = ("detections", "margins", "topn")


def part_margins_from_logits(logits):
    """Margins ``m[..., p] = z[..., p + 1] - max_{c != p + 1} z[..., c]`` for the part classes.

    Args:
        logits: ``[..., C]`` class logits (class 0 = background, at least 2 classes); a
            tensor or array (evaluated with TensorFlow ops: eager or in a graph).
    Returns:
        ``[..., C - 1]`` float tensor.  Exact for ties: equal top logits give a margin of 0.
    """
    logits = tf.convert_to_tensor(logits, tf.float32)
    top = tf.math.top_k(logits, k=2)
    best, second = top.values[..., 0:1], top.values[..., 1:2]
    best_class = top.indices[..., 0:1]
    n_classes = tf.shape(logits)[-1]
    part_ids = tf.range(1, n_classes)
    # max over the other classes: the runner-up where p is the arg-max, else the maximum.
    others = tf.where(tf.equal(best_class, part_ids), second, best)
    return logits[..., 1:] - others


def _image_hw(image_size) -> Tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    h, w = (int(v) for v in image_size)
    return h, w


def molding_geometry(config, image_hw) -> dict:
    """How ``PartExtractor.extract`` places an ``H x W`` image in K's input: matterport's
    ``utils.resize_image`` (run here on a blank image) gives the resized size, padding and
    window; the square is then molded by ``data_gen.mold_inputs``, whose own resize must be
    the identity, and whose image meta (window = the whole square) is returned as ``meta``."""
    h, w = image_hw
    if config.IMAGE_RESIZE_MODE == "crop":
        raise ValueError("IMAGE_RESIZE_MODE 'crop' is for training only")
    blank = np.zeros((h, w, 3), np.uint8)
    resized, window, scale, padding, _ = utils.resize_image(
        blank, min_dim=config.IMAGE_MIN_DIM, min_scale=config.IMAGE_MIN_SCALE,
        max_dim=config.IMAGE_MAX_DIM, mode=config.IMAGE_RESIZE_MODE)
    if tuple(resized.shape) != tuple(config.IMAGE_SHAPE):
        raise ValueError("an image of %dx%d resizes to %s, but K's input is %s"
                         % (h, w, resized.shape, tuple(config.IMAGE_SHAPE)))
    molded, metas, _ = data_gen.mold_inputs([resized], config)
    if molded.shape[1:] != tuple(config.IMAGE_SHAPE) or \
            not np.allclose(molded[0], -np.asarray(config.MEAN_PIXEL, np.float32)):
        raise ValueError("mold_inputs changes an already resized %s input" % (resized.shape,))
    y1, x1, y2, x2 = (int(v) for v in window)
    return {"inner": (y2 - y1, x2 - x1), "padding": [(int(a), int(b)) for a, b in padding[:2]],
            "scale": float(scale), "resized": (y2 - y1, x2 - x1) != (h, w),
            "meta": metas[0].astype(np.float32),
            "molded_window": tuple(int(v) for v in utils.parse_image_meta(metas)["window"][0])}


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``float64 [n_out, n_in]``: the 1-D linear operator of the project's image resize
    (skimage order-1 resize, ``mode="constant"``) along one axis, read off by resizing an
    identity matrix along that axis (the bilinear resize is separable)."""
    if n_in == n_out:
        return np.eye(n_in)
    return utils._resize(np.eye(n_in, dtype=np.float64), (n_out, n_in))


def _resolve_model(k):
    """``(MaskRCNN, class_names or None)`` from a PartExtractor or a MaskRCNN."""
    if hasattr(k, "keras_model") and hasattr(k, "session"):
        return k, None
    model = getattr(k, "model", None)
    if model is not None and hasattr(model, "keras_model"):
        return model, list(getattr(k, "class_names", None) or []) or None
    raise TypeError("PartScorer needs a PartExtractor or an inference MaskRCNN, got %r"
                    % type(k).__name__)


def _default_class_names(config) -> List[str]:
    from models.mrcnn.extractor import parts_class_names
    names = parts_class_names()
    if len(names) == config.NUM_CLASSES:
        return names
    return ["BG"] + ["class_%d" % i for i in range(1, config.NUM_CLASSES)]


class PartScorer:
    """K's part-class margins and their input gradients (see the module docstring).

    Attributes:
        model: the inference ``MaskRCNN`` whose graph and session are used.
        image_size: ``(H, W)`` of the images taken (M's size).
        part_names: names of the ``P`` part classes (class ids 1..C-1), margin column order.
        num_rois: ``R`` (POST_NMS_ROIS_INFERENCE); batch_size: the graph's static batch.
        quantize: default of the 8-bit quantisation of the forward pass.
    """

    def __init__(self, k, image_size: Union[int, Sequence[int]],
                 class_names: Optional[Sequence[str]] = None, quantize: bool = True):
        model, names = _resolve_model(k)
        if model.mode != "inference":
            raise ValueError("PartScorer needs a MaskRCNN built in inference mode")
        self.model, self.config = model, model.config
        names = list(class_names) if class_names is not None else (
            names or _default_class_names(self.config))
        if len(names) != self.config.NUM_CLASSES:
            raise ValueError("class_names has %d names, the config has NUM_CLASSES=%d"
                             % (len(names), self.config.NUM_CLASSES))
        self.class_names = names
        self.part_names = names[1:]
        self.num_parts = len(self.part_names)
        self.num_rois = int(self.config.POST_NMS_ROIS_INFERENCE)
        self.batch_size = int(self.config.BATCH_SIZE)
        self.max_instances = int(self.config.DETECTION_MAX_INSTANCES)
        self.image_size = _image_hw(image_size)
        self.quantize = bool(quantize)
        self.geometry = molding_geometry(self.config, self.image_size)
        scope = getattr(model, "graph_scope", None)   # MaskRCNN's own scope when it has one
        with (scope() if callable(scope) else keras_graph_scope(model.graph)):
            self._build_graph()
        self._fns = {}

    # ------------------------------------------------------------------ graph
    def _mold_graph(self, x, quantize):
        """Pixels in [0, 1] ``[B, H, W, 3]`` -> K's molded input ``[B, *IMAGE_SHAPE]``,
        as ``PartExtractor.extract`` (``to_uint8``, ``resize``, then ``data_gen.mold_inputs``),
        with straight-through roundings scaled by ``quantize`` in {0, 1})."""
        geo = self.geometry
        u32 = x * 255.0  # float32, as extractor.to_uint8 computes it before truncating
        q32 = tf.floor(tf.clip_by_value(u32, 0.0, 255.0))
        u = tf.cast(u32, tf.float64) + tf.cast(quantize, tf.float64) * tf.stop_gradient(
            tf.cast(q32, tf.float64) - tf.cast(u32, tf.float64))
        if geo["resized"]:
            h, w = self.image_size
            ry = tf.constant(resize_matrix(h, geo["inner"][0]))
            rx = tf.constant(resize_matrix(w, geo["inner"][1]))
            r = tf.einsum("ij,bjkc,lk->bilc", ry, u, rx)
            # skimage clips to the input image's range (all channels); see module doc.
            lo = tf.reduce_min(u, axis=[1, 2, 3], keepdims=True)
            hi = tf.reduce_max(u, axis=[1, 2, 3], keepdims=True)
            r = tf.minimum(tf.maximum(r, lo), hi)
            r = r + tf.cast(quantize, tf.float64) * tf.stop_gradient(tf.floor(r) - r)
        else:
            r = u
        (top, bottom), (left, right) = geo["padding"]
        r = tf.pad(r, [(0, 0), (top, bottom), (left, right), (0, 0)])
        mean = np.asarray(self.config.MEAN_PIXEL, np.float32).reshape([1, 1, 1, 3])
        return tf.cast(r, tf.float32) - tf.constant(mean)

    def _build_graph(self):
        cfg, km = self.config, self.model.keras_model
        bs, (h, w) = self.batch_size, self.image_size
        ph = tf.compat.v1.placeholder
        self._x = ph(tf.float32, [bs, h, w, 3], name="part_scorer/images")
        self._q = tf.compat.v1.placeholder_with_default(1.0, [], name="part_scorer/quantize")
        molded = self._mold_graph(self._x, self._q)
        self._molded = molded
        metas = tf.constant(np.tile(self.geometry["meta"][None], [bs, 1]))
        anchors = utils.get_anchors(cfg, cfg.IMAGE_SHAPE).astype(np.float32)
        anchors = tf.broadcast_to(tf.constant(anchors), (bs,) + anchors.shape)
        logits_t = km.get_layer("mrcnn_class_logits").output
        rois_t = km.get_layer("ROI").output
        det_t = km.get_layer("mrcnn_detection").output
        net = keras.models.Model(km.inputs, [logits_t, rois_t, det_t], name="part_scorer_net")
        logits, rois, detections = net([molded, metas, anchors])
        self._rois, self._detections = rois, detections
        self._logits = logits
        self._margins = part_margins_from_logits(logits)
        probs = tf.nn.softmax(logits, axis=-1)
        self._scores = tf.reduce_max(probs, axis=-1)
        n_parts = self.num_parts
        # linear loss: sum_{r,p} w * m
        self._w = ph(tf.float32, [bs, self.num_rois, n_parts], name="part_scorer/weights")
        self._linear = tf.reduce_sum(self._w * self._margins, axis=[1, 2])
        self._linear_grad = tf.gradients(self._linear, self._x, stop_gradients=[rois])[0]
        # SPEC §8 hinge loss on the part set
        self._present = ph(tf.float32, [bs, n_parts], name="part_scorer/present")
        self._absent = ph(tf.float32, [bs, n_parts], name="part_scorer/absent")
        scalar = lambda v, n: tf.compat.v1.placeholder_with_default(v, [], name="part_scorer/" + n)
        self._kappa, self._tau = scalar(0.0, "kappa"), scalar(1.0, "tau")
        self._lam_p, self._lam_a = scalar(1.0, "lam_present"), scalar(1.0, "lam_absent")
        smax = self._tau * tf.reduce_logsumexp(self._margins / self._tau, axis=1)  # [B, P]
        keep = tf.reduce_sum(self._present * tf.nn.relu(self._kappa - smax), axis=1)
        drop = tf.reduce_sum(self._absent * tf.reduce_sum(
            tf.nn.relu(self._margins + self._kappa), axis=1), axis=1)
        self._hinge = self._lam_p * keep + self._lam_a * drop
        self._hinge_grad = tf.gradients(self._hinge, self._x, stop_gradients=[rois])[0]
        uninitialized = self.model.session.run(
            tf.compat.v1.report_uninitialized_variables())
        if len(uninitialized):
            raise RuntimeError("PartScorer created new variables in K's graph: %s"
                               % list(uninitialized))

    # ------------------------------------------------------------------ running
    def _callable(self, key, feeds, fetches):
        if key not in self._fns:
            self._fns[key] = make_callable(self.model.session, feeds, fetches)
        return self._fns[key]

    def _check_images(self, images) -> np.ndarray:
        x = np.asarray(images, dtype=np.float32)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_size + (3,):
            raise ValueError("images must have shape [B, %d, %d, 3], got %s"
                             % (self.image_size + (x.shape,)))
        if not np.all(np.isfinite(x)):
            raise ValueError("images must be finite")
        return x

    def _run(self, key, fetches, images, rois=None, quantize=None, batched=(), scalars=()):
        """Run ``fetches`` on ``images`` in chunks of ``batch_size`` (the last one padded).

        Args:
            batched: ``[(placeholder, array [B, ...])]`` fed chunk by chunk with the images.
            scalars: ``[(placeholder, value)]`` fed unchanged to every chunk.
        Returns:
            One ``[B, ...]`` array per fetch.
        """
        x = self._check_images(images)
        n, bs = x.shape[0], self.batch_size
        q = self.quantize if quantize is None else bool(quantize)
        batched = [(self._x, x)] + [(p, np.asarray(v, np.float32)) for p, v in batched]
        if rois is not None:
            rois = np.asarray(rois, np.float32)
            if rois.shape != (n, self.num_rois, 4):
                raise ValueError("rois must have shape [%d, %d, 4], got %s"
                                 % (n, self.num_rois, rois.shape))
            batched.append((self._rois, rois))
        scalars = [(self._q, float(q))] + list(scalars)
        feeds = [p for p, _ in batched] + [p for p, _ in scalars]
        # a fed tensor cannot be fetched: the given ROIs are returned as they are
        wanted = fetches
        fetches = [t for t in fetches if rois is None or t is not self._rois]
        fn = self._callable((key,) + tuple(t.name for t in feeds), feeds, fetches)
        scalar_args = [np.float32(v) for _, v in scalars]
        outs = [[] for _ in fetches]
        for start in range(0, n, bs):
            stop = min(start + bs, n)
            args = []
            for _, v in batched:
                chunk = v[start:stop]
                if chunk.shape[0] < bs:
                    chunk = np.concatenate([chunk] + [chunk[-1:]] * (bs - chunk.shape[0]))
                args.append(np.ascontiguousarray(chunk))
            for o, r in zip(outs, fn(*(args + scalar_args))):
                o.append(np.asarray(r)[:stop - start])
        outs = iter([np.concatenate(o) for o in outs])
        return [rois if rois is not None and t is self._rois else next(outs) for t in wanted]

    def part_margins(self, images, rois=None, quantize: Optional[bool] = None):
        """Margins ``float32 [B, R, P]`` and the ROIs ``float32 [B, R, 4]`` used (K's own
        proposals, or ``rois`` when given) for images ``[B, H, W, 3]`` in [0, 1]."""
        margins, used = self._run("margins", [self._margins, self._rois], images, rois,
                                  quantize)
        return margins.astype(np.float32), used.astype(np.float32)

    def mold(self, images, quantize: Optional[bool] = None) -> np.ndarray:
        """K's molded network input ``float32 [B, *IMAGE_SHAPE]`` as the interface computes
        it (compare ``data_gen.mold_inputs``)."""
        return self._run("mold", [self._molded], images, None, quantize)[0]

    def logits(self, images, rois=None, quantize: Optional[bool] = None):
        """Raw ROI-head class logits ``float32 [B, R, C]`` and the ROIs ``[B, R, 4]``."""
        return tuple(self._run("logits", [self._logits, self._rois], images, rois, quantize))

    def value_and_grad(self, images, weights, rois=None, quantize: Optional[bool] = None,
                       return_margins: bool = False):
        """``loss[b] = sum_{r,p} weights[b, r, p] * m[b, r, p]`` and ``d loss[b] / d images[b]``.

        Args:
            images: ``[B, H, W, 3]`` in [0, 1]; weights: ``[B, R, P]``.
            rois: optional ``[B, R, 4]`` proposals to hold (default: K's RPN on these images).
            quantize: 8-bit quantisation of the forward (straight-through); default
                ``self.quantize``.
            return_margins: also return the margins ``[B, R, P]`` and ROIs ``[B, R, 4]``.
        Returns:
            ``(loss float32 [B], grad float32 [B, H, W, 3])`` (+ margins, rois).  One session
            run per ``batch_size`` images.
        """
        n = np.shape(images)[0]
        weights = np.asarray(weights, np.float32)
        if weights.shape != (n, self.num_rois, self.num_parts):
            raise ValueError("weights must have shape [%d, %d, %d], got %s"
                             % (n, self.num_rois, self.num_parts, weights.shape))
        fetches = [self._linear, self._linear_grad] + (
            [self._margins, self._rois] if return_margins else [])
        outs = self._run("linear%d" % return_margins, fetches, images, rois, quantize,
                         batched=[(self._w, weights)])
        return tuple(o.astype(np.float32) for o in outs)

    def hinge_value_and_grad(self, images, present, absent, *, kappa: float = 0.0,
                             lam_present: float = 1.0, lam_absent: float = 1.0,
                             tau: float = 1.0, rois=None, quantize: Optional[bool] = None,
                             return_margins: bool = False, return_parts: bool = False,
                             need_grad=None):
        """SPEC §8's part-set loss (to minimise) and its input gradient.

        ``loss[b] = lam_present * sum_p present[b,p] * relu(kappa - tau * logsumexp_r(m[b,r,p] / tau))
        + lam_absent * sum_p absent[b,p] * sum_r relu(m[b,r,p] + kappa)``.

        Args:
            present, absent: ``[B, P]`` masks (1 = the part should be / should not be
                detected; 0 = ignore), in ``self.part_names`` order.
            kappa: confidence margin; tau > 0: temperature of the smooth max over ROIs
                (small: close to the max, which is what decides detection).
            return_parts: also return K's detected part sets of these images, read from the
                same forward pass (:meth:`detected_parts` "detections"; K's own proposals
                only, so ``rois`` must be None): an attack gets the gradient and the real
                detector's answer for the same images from one session run.
            need_grad: optional bool ``[B]``: the images whose gradient is wanted; the others
                get a zero gradient from a forward-only session run (no backward pass through
                K: an attack step that does not use K's gradient for an image pays only its
                forward pass).
        Returns:
            ``(loss float32 [B], grad float32 [B, H, W, 3])`` (+ margins, rois) (+ a list of
            B frozensets of part names).
        """
        n = np.shape(images)[0]
        present = np.asarray(present, np.float32)
        absent = np.asarray(absent, np.float32)
        for name, v in (("present", present), ("absent", absent)):
            if v.shape != (n, self.num_parts):
                raise ValueError("%s must have shape [%d, %d], got %s"
                                 % (name, n, self.num_parts, v.shape))
        if not tau > 0:
            raise ValueError("tau must be > 0, got %r" % (tau,))
        if return_parts and rois is not None:
            raise ValueError("return_parts needs K's own proposals; pass rois=None")
        extra = ([self._margins, self._rois] if return_margins else []) + (
            [self._detections] if return_parts else [])
        scalars = [(self._kappa, kappa), (self._lam_p, lam_present), (self._lam_a, lam_absent),
                   (self._tau, tau)]
        need = (np.ones(n, bool) if need_grad is None
                else np.asarray(need_grad, bool).reshape(n))
        # the backward run fills its last chunk of the graph's static batch with images
        # whose gradient is not wanted (they would be padding): fewer chunks in all
        with_grad = np.flatnonzero(need)
        if 0 < with_grad.size:
            fill = -with_grad.size % self.batch_size
            with_grad = np.sort(np.r_[with_grad, np.flatnonzero(~need)[:fill]]).astype(int)
        forward = np.setdiff1d(np.arange(n), with_grad)
        outs = None
        for rows, grad in ((with_grad, True), (forward, False)):
            if not rows.size:
                continue
            fetches = [self._hinge] + ([self._hinge_grad] if grad else []) + extra
            part = self._run("hinge%d%d%d" % (grad, return_margins, return_parts), fetches,
                             np.asarray(images)[rows], None if rois is None else
                             np.asarray(rois)[rows], quantize,
                             batched=[(self._present, present[rows]),
                                      (self._absent, absent[rows])], scalars=scalars)
            if not grad:     # the images whose gradient is not wanted: zero, not computed
                part.insert(1, np.zeros((rows.size,) + tuple(np.shape(images)[1:]),
                                        np.float32))
            if outs is None:
                outs = [np.zeros((n,) + np.shape(o)[1:], np.asarray(o).dtype) for o in part]
            for o, v in zip(outs, part):
                o[rows] = v
        outs[1][~need] = 0.0              # only the gradients asked for
        if return_parts:
            return tuple(o.astype(np.float32) for o in outs[:-1]) + (
                self._parts_from_detections(outs[-1]),)
        return tuple(o.astype(np.float32) for o in outs)

    # ------------------------------------------------------------------ tape interface
    def margins_tf(self, x):
        """Margins ``[B, R, P]`` of ``x`` (float32 ``[B, H, W, 3]`` tensor in [0, 1]) as a
        TensorFlow op with a gradient (``tf.GradientTape``, eager or inside ``tf.function``).

        The forward runs K once; the backward runs the vector-Jacobian product with the
        forward's ROIs held fixed and the same quantisation (``self.quantize``).
        """
        scorer = self

        @tf.custom_gradient
        def _op(images):
            margins, rois = tf.numpy_function(
                lambda a: scorer.part_margins(a), [images], [tf.float32, tf.float32],
                stateful=True)
            margins.set_shape([images.shape[0], scorer.num_rois, scorer.num_parts])

            def grad(upstream):
                g = tf.numpy_function(
                    lambda a, w, r: scorer.value_and_grad(a, w, rois=r)[1],
                    [images, upstream, rois], tf.float32, stateful=True)
                g.set_shape(images.shape)
                return g

            return margins, grad

        return _op(tf.convert_to_tensor(x, tf.float32))

    # ------------------------------------------------------------------ part sets
    def detected_parts(self, images, method: str = "detections",
                       quantize: Optional[bool] = None) -> List[frozenset]:
        """K's part set of each image from one forward pass (see "Detected parts" in the
        module docstring): ``method`` "detections" (default), "margins" or "topn"."""
        if method not in DETECTION_METHODS:
            raise ValueError("method must be one of %s, got %r" % (DETECTION_METHODS, method))
        if method == "detections":
            (det,) = self._run("detections", [self._detections], images, None, quantize)
            return self._parts_from_detections(det)
        margins, scores = self._run("sets", [self._margins, self._scores], images, None,
                                    quantize)
        return [self._set_from_margins(m, s, method) for m, s in zip(margins, scores)]

    def _parts_from_detections(self, det: np.ndarray) -> List[frozenset]:
        """Part sets from the detection layer's output ``[B, N, 6]``."""
        shape = tuple(self.config.IMAGE_SHAPE)
        window = self.geometry["molded_window"]
        # as PartExtractor.detect: boxes in pixels of the square, zero-area boxes dropped
        return [frozenset(self.class_names[int(c)] for c in
                          data_gen.unmold_boxes(d, shape, shape, window)[1] if int(c) > 0)
                for d in det]

    def _set_from_margins(self, margins: np.ndarray, scores: np.ndarray, method: str):
        """Part set of one image from its margins ``[R, P]`` and ROI scores ``[R]``."""
        positive = margins > 0                       # at most one True per row
        found = np.flatnonzero(positive.any(axis=0))
        if method == "topn" and found.size > self.max_instances:
            # one kept box per class (duplicates assumed suppressed by the per-class NMS)
            best = np.where(positive, scores[:, None], -np.inf).max(axis=0)
            found = found[np.argsort(-best[found], kind="stable")][:self.max_instances]
        return frozenset(self.part_names[p] for p in found)
