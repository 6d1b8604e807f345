"""``MaskRCNN``: matterport's public API on TensorFlow 2 / tf-keras, run as a TF1-style graph.

Each instance owns a ``tf.Graph`` and a ``tf.compat.v1.Session``; the network is built once
and every batch is a run of cached session callables, so model K coexists with eager code
(classifier M, attacks) in the same process.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import re
from typing import Dict, Iterator, List, Optional

import numpy as np

import tfcompat
from data.fileio import read_json, write_json_atomic
from mrcnn_config import architecture_signature, config_key
from models.mrcnn.keras_classes import keras_graph_scope
from models.mrcnn import data_gen, losses, utils
from models.mrcnn import weights as weights_io
from models.mrcnn.constants import LOSS_NAMES
from models.mrcnn.graph_utils import norm_boxes_graph, parse_image_meta_graph
from models.mrcnn.layers import AnchorsLayer, DetectionLayer, DetectionTargetLayer, ProposalLayer
from models.mrcnn.network import (build_fpn_mask_graph, build_rpn_model, fpn_classifier_graph,
                                  fpn_graph, resnet_graph)
from models.mrcnn.session_guard import install_session_close_guard, make_callable
from models.mrcnn.trainer import Trainer

tf, keras = tfcompat.import_tf()
KL, KM = keras.layers, keras.models

install_session_close_guard()

# Head layers whose shapes depend on NUM_CLASSES (exclude them when loading COCO weights).
HEAD_LAYERS = ["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"]


def _input(shape, name, config, dtype=tf.float32):
    return KL.Input(shape=shape, name=name, batch_size=config.BATCH_SIZE, dtype=dtype)


RUN_CONFIG_FILE = "config.json"


def _run_folder_pattern(prefix: str) -> "re.Pattern":
    """``<prefix>YYYYMMDDTHHMM[-k]``, the run folders :meth:`MaskRCNN.set_log_dir` names
    (groups: the minute, the same-minute suffix)."""
    return re.compile(r"%s(\d{8}T\d{4})(?:-(\d+))?" % re.escape(prefix))


def _checkpoint_pattern(prefix: str) -> "re.Pattern":
    """``mask_rcnn_<prefix>_<epoch>.h5`` (group: the epoch)."""
    return re.compile(r"mask_rcnn_%s_(\d+)\.h5" % re.escape(prefix))


def _run_folders(model_dir: str, prefix: str) -> List[str]:
    """``<model_dir>/<prefix>YYYYMMDDTHHMM[-k]`` run folders, oldest first.

    Only the exact scheme of :meth:`MaskRCNN.set_log_dir` counts, so the runs of another name
    that merely starts with ``prefix`` (``parts_robust...`` beside ``parts...``) are not taken
    for this name's runs; a same-minute ``-k`` suffix sorts by its number.
    """
    pattern = _run_folder_pattern(prefix)
    runs = []
    for name in (os.listdir(model_dir) if os.path.isdir(model_dir) else []):
        m = pattern.fullmatch(name)
        if m and os.path.isdir(os.path.join(model_dir, name)):
            runs.append(((m.group(1), int(m.group(2) or 0)), os.path.join(model_dir, name)))
    return [path for _, path in sorted(runs)]


def _last_checkpoint_file(folder: str, prefix: str) -> Optional[str]:
    """The highest-epoch ``mask_rcnn_<prefix>_<epoch>.h5`` of a run folder, or None (files of
    another name that starts with ``prefix`` are not this name's checkpoints)."""
    pattern = _checkpoint_pattern(prefix)
    epochs = [(int(m.group(1)), f) for f in os.listdir(folder)
              for m in [pattern.fullmatch(f)] if m]
    return os.path.join(folder, max(epochs)[1]) if epochs else None


def run_architecture_mismatch(folder: str, config) -> Dict[str, tuple]:
    """Weight-shape attributes where the run's recorded ``config.json`` differs from
    ``config``, and ``ADV_TRAIN`` when one is a robust K and the other not:
    ``{name: (recorded, wanted)}``; empty when compatible or nothing recorded.

    Raises:
        ValueError: the ``config.json`` is not valid JSON (message names the file).
    """
    path = os.path.join(folder, RUN_CONFIG_FILE)
    if config is None or not os.path.isfile(path):
        return {}
    values = read_json(path)
    recorded = architecture_signature(values)
    wanted = config.architecture()
    diff = {k: (recorded.get(k), v) for k, v in wanted.items() if recorded.get(k) != v}
    # a robust K (adversarially trained) and a standard one are never taken for each other
    robust = (values.get("ADV_TRAIN"), getattr(config, "ADV_TRAIN", None))
    if (robust[0] is None) != (robust[1] is None):
        diff["ADV_TRAIN"] = robust
    return diff


def _no_checkpoint_message(model_dir: str, config, rejected: Dict[str, dict]) -> str:
    """FileNotFoundError text: what was found, why it was skipped and how to train."""
    key = config_key(config) if config is not None else None
    command = "python main.py --model K%s --k-log-dir %s" % (
        " --k-config %s" % key if key else "", model_dir)
    if not rejected:
        return "no model K checkpoint under %s; train one first with `%s`" % (model_dir, command)
    details = "; ".join("%s (%s)" % (os.path.basename(folder), ", ".join(
        "%s %r, wanted %r" % (k, a, b) for k, (a, b) in diff.items()))
        for folder, diff in rejected.items())
    return ("no model K checkpoint under %s was trained with a configuration compatible with "
            "%s (NAME %r); skipped runs of another architecture or kind (ADV_TRAIN: robust "
            "or standard K): %s. Train one with `%s`"
            % (model_dir, type(config).__name__, config.NAME, details, command))


def find_last_checkpoint(model_dir: str, name: str, config=None) -> str:
    """Last ``mask_rcnn_<name>_<epoch>.h5`` of the newest ``<model_dir>/<name><time>/`` run.

    With ``config``, runs whose ``config.json`` records other weight shapes (another backbone,
    class count, head size ...) are skipped; runs without ``config.json`` are accepted.

    Raises:
        FileNotFoundError: naming ``model_dir``, any skipped runs and the training command.
    """
    prefix = name.lower()
    rejected = {}
    for folder in reversed(_run_folders(model_dir, prefix)):
        path = _last_checkpoint_file(folder, prefix)
        if path is None:
            continue
        diff = run_architecture_mismatch(folder, config)
        if not diff:
            return path
        rejected[folder] = diff
    raise FileNotFoundError(_no_checkpoint_message(model_dir, config, rejected))


def resolve_checkpoint(path: str, model_dir: str, name: str, config=None) -> str:
    """``"last"`` -> the newest checkpoint of ``name`` under ``model_dir`` compatible with
    ``config`` (see :func:`find_last_checkpoint`); otherwise ``path`` itself, which must be an
    existing file.

    Raises:
        FileNotFoundError: naming the missing checkpoint and the command that creates one.
        ValueError: ``path``'s run folder records the other kind of K than ``config`` (a
            robust, adversarially trained K where a standard one is asked for, or back).
    """
    if path == "last":
        return find_last_checkpoint(model_dir, name, config)
    if not os.path.isfile(path):
        raise FileNotFoundError("K checkpoint %s not found; train one with `python main.py "
                                "--model K` or pass an existing .h5 file" % path)
    kind = run_architecture_mismatch(os.path.dirname(os.path.abspath(path)), config)
    if "ADV_TRAIN" in kind:
        recorded, wanted = kind["ADV_TRAIN"]
        raise ValueError("K checkpoint %s is a %s K (its run's config.json has ADV_TRAIN=%r), "
                         "but a %s K is asked for: pass a checkpoint of that kind"
                         % (path, "standard" if recorded is None else "robust", recorded,
                            "standard" if wanted is None else "robust"))
    return path


def proposal_layer_args(config, proposal_count: int) -> dict:
    """Keyword arguments of :class:`ProposalLayer` from a config (``proposal_count``:
    POST_NMS_ROIS_TRAINING or POST_NMS_ROIS_INFERENCE)."""
    return dict(proposal_count=proposal_count, nms_threshold=config.RPN_NMS_THRESHOLD,
                pre_nms_limit=config.PRE_NMS_LIMIT, rpn_bbox_std_dev=config.RPN_BBOX_STD_DEV,
                batch_size=config.BATCH_SIZE,
                anchor_count=utils.get_anchors(config, config.IMAGE_SHAPE).shape[0])


def detection_target_args(config) -> dict:
    """Keyword arguments of :func:`detection_targets_graph` (and, with ``batch_size``, of
    :class:`DetectionTargetLayer`) from a config."""
    return dict(train_rois_per_image=config.TRAIN_ROIS_PER_IMAGE,
                roi_positive_ratio=config.ROI_POSITIVE_RATIO, bbox_std_dev=config.BBOX_STD_DEV,
                mask_shape=config.MASK_SHAPE, use_mini_mask=config.USE_MINI_MASK,
                proposals_include_gt=config.PROPOSALS_INCLUDE_GT)


def refine_detection_args(config) -> dict:
    """Keyword arguments of :func:`refine_detections_graph` (and, with ``batch_size``, of
    :class:`DetectionLayer`) from a config."""
    return dict(bbox_std_dev=config.BBOX_STD_DEV,
                min_confidence=config.DETECTION_MIN_CONFIDENCE,
                max_instances=config.DETECTION_MAX_INSTANCES,
                nms_threshold=config.DETECTION_NMS_THRESHOLD)


class MaskRCNN:
    """Mask R-CNN in "training" or "inference" mode (matterport's interface).

    Attributes:
        keras_model: the tf-keras functional model (built in ``self.graph``).
        graph: the ``tf.Graph`` of the model; add ops to it only inside :meth:`graph_scope`.
        session: the ``tf.compat.v1.Session`` of ``self.graph``.
        epoch: epochs already trained (from the last loaded/saved checkpoint name).
        log_dir, checkpoint_path: the run folder and the checkpoint file pattern
            (``{epoch:04d}``) of this run (see :meth:`set_log_dir`).

    Training (mode "training") is done by one :class:`models.mrcnn.trainer.Trainer`, created
    on first use (:attr:`trainer`), which owns all training state and uses only the public
    members of this class; :meth:`train` delegates to it.
    """

    def __init__(self, mode: str, config, model_dir: str, seed: int = 0):
        if mode not in ("training", "inference"):
            raise ValueError("mode must be 'training' or 'inference', got %r" % (mode,))
        self.mode, self.config, self.model_dir = mode, config, model_dir
        self.epoch = 0
        self.log_dir = self.checkpoint_path = None
        self.set_log_dir()
        self.graph = tf.Graph()
        self._graph_scope_depth = 0
        self._callables = {}
        self._trainer = None
        with self.graph_scope():
            # tf-keras draws the seeds of unseeded initializers from Python's `random`:
            # seeding only the graph would leave the initial weights different in every build
            keras.utils.set_random_seed(seed)
            tf.compat.v1.set_random_seed(seed)
            self.keras_model = self.build(mode, config)
            self._loss_tensors = ({name: tf.reduce_mean(self.keras_model.get_layer(name).output)
                                   for name in LOSS_NAMES} if mode == "training" else None)
            self._build_assign_ops()
            self._init_op = tf.compat.v1.global_variables_initializer()
        # on a GPU (one per worker: SPEC §9) K takes memory as it needs it, beside M
        self.session = tf.compat.v1.Session(graph=self.graph, config=tf.compat.v1.ConfigProto(
            allow_soft_placement=True,
            gpu_options=tf.compat.v1.GPUOptions(allow_growth=True)))
        self.session.run(self._init_op)

    # ------------------------------------------------------------------ graph building
    def build(self, mode, config):
        """Build the Keras model of ``mode``; returns the ``keras_model``."""
        h, w = config.IMAGE_SHAPE[:2]
        if h / 2 ** 6 != int(h / 2 ** 6) or w / 2 ** 6 != int(w / 2 ** 6):
            raise ValueError("image size must be divisible by 64 (IMAGE_SHAPE=%s)"
                             % (config.IMAGE_SHAPE,))
        input_image = _input(list(config.IMAGE_SHAPE), "input_image", config)
        input_meta = _input([config.IMAGE_META_SIZE], "input_image_meta", config)
        train_bn = config.TRAIN_BN if mode == "training" else False
        _, c2, c3, c4, c5 = resnet_graph(input_image, config, train_bn)
        p2, p3, p4, p5, p6 = fpn_graph(c2, c3, c4, c5, config.TOP_DOWN_PYRAMID_SIZE)
        rpn_maps, mrcnn_maps = [p2, p3, p4, p5, p6], [p2, p3, p4, p5]
        rpn = build_rpn_model(config.RPN_ANCHOR_STRIDE, len(config.RPN_ANCHOR_RATIOS),
                              config.TOP_DOWN_PYRAMID_SIZE, config.RPN_CONV_SIZE)
        level_outputs = [rpn([p]) for p in rpn_maps]
        names = ["rpn_class_logits", "rpn_class", "rpn_bbox"]
        rpn_logits, rpn_class, rpn_bbox = [
            KL.Concatenate(axis=1, name=n)([lo[i] for lo in level_outputs])
            for i, n in enumerate(names)]
        if mode == "training":
            anchors = AnchorsLayer(utils.get_anchors(config, config.IMAGE_SHAPE),
                                   config.BATCH_SIZE, name="anchors")(input_image)
            count = config.POST_NMS_ROIS_TRAINING
        else:
            anchors = _input([None, 4], "input_anchors", config)
            count = config.POST_NMS_ROIS_INFERENCE
        rpn_rois = ProposalLayer(name="ROI", **proposal_layer_args(config, count))(
            [rpn_class, rpn_bbox, anchors])
        heads = dict(image=input_image, meta=input_meta, maps=mrcnn_maps, rpn_rois=rpn_rois,
                     rpn=(rpn_logits, rpn_class, rpn_bbox), anchors=anchors)
        if mode == "training":
            return self._build_training_heads(heads, config, train_bn)
        return self._build_inference_heads(heads, config)

    def _build_training_heads(self, t, config, train_bn):
        """Targets, heads and the five loss layers of the training model."""
        input_rpn_match = _input([None, 1], "input_rpn_match", config, tf.int32)
        input_rpn_bbox = _input([None, 4], "input_rpn_bbox", config)
        gt_class_ids = _input([None], "input_gt_class_ids", config, tf.int32)
        input_gt_boxes = _input([None, 4], "input_gt_boxes", config)
        shape = list(config.MINI_MASK_SHAPE if config.USE_MINI_MASK else config.IMAGE_SHAPE[:2])
        input_gt_masks = _input(shape + [None], "input_gt_masks", config, tf.bool)
        image_shape = tuple(int(v) for v in config.IMAGE_SHAPE[:2])
        gt_boxes = KL.Lambda(lambda x: norm_boxes_graph(x, image_shape))(input_gt_boxes)
        active_class_ids = KL.Lambda(
            lambda x: parse_image_meta_graph(x)["active_class_ids"])(t["meta"])
        rois, target_class_ids, target_bbox, target_mask = DetectionTargetLayer(
            config.BATCH_SIZE, name="proposal_targets", **detection_target_args(config))(
            [t["rpn_rois"], gt_class_ids, gt_boxes, input_gt_masks])
        class_logits, class_probs, bbox = fpn_classifier_graph(rois, t["maps"], t["meta"],
                                                               config, train_bn)
        mask = build_fpn_mask_graph(rois, t["maps"], t["meta"], config, train_bn)
        output_rois = KL.Lambda(lambda x: x * 1, name="output_rois")(rois)
        rpn_logits, rpn_class, rpn_bbox = t["rpn"]
        loss_layers = [
            KL.Lambda(lambda x: losses.rpn_class_loss_graph(*x), name="rpn_class_loss")(
                [input_rpn_match, rpn_logits]),
            KL.Lambda(lambda x, images_per_gpu: losses.rpn_bbox_loss_graph(
                *x, images_per_gpu=images_per_gpu), name="rpn_bbox_loss",
                arguments={"images_per_gpu": int(config.IMAGES_PER_GPU)})(
                [input_rpn_bbox, input_rpn_match, rpn_bbox]),
            KL.Lambda(lambda x: losses.mrcnn_class_loss_graph(*x), name="mrcnn_class_loss")(
                [target_class_ids, class_logits, active_class_ids]),
            KL.Lambda(lambda x: losses.mrcnn_bbox_loss_graph(*x), name="mrcnn_bbox_loss")(
                [target_bbox, target_class_ids, bbox]),
            KL.Lambda(lambda x: losses.mrcnn_mask_loss_graph(*x), name="mrcnn_mask_loss")(
                [target_mask, target_class_ids, mask]),
        ]
        inputs = [t["image"], t["meta"], input_rpn_match, input_rpn_bbox, gt_class_ids,
                  input_gt_boxes, input_gt_masks]
        outputs = [rpn_logits, rpn_class, rpn_bbox, class_logits, class_probs, bbox, mask,
                   t["rpn_rois"], output_rois] + loss_layers
        return KM.Model(inputs, outputs, name="mask_rcnn")

    def _build_inference_heads(self, t, config):
        """Heads and detection layer of the inference model."""
        class_logits, class_probs, bbox = fpn_classifier_graph(t["rpn_rois"], t["maps"],
                                                               t["meta"], config, False)
        detections = DetectionLayer(config.BATCH_SIZE, name="mrcnn_detection",
                                    **refine_detection_args(config))(
            [t["rpn_rois"], class_probs, bbox, t["meta"]])
        det_boxes = KL.Lambda(lambda x: x[..., :4])(detections)
        mask = build_fpn_mask_graph(det_boxes, t["maps"], t["meta"], config, False)
        _, rpn_class, rpn_bbox = t["rpn"]
        return KM.Model([t["image"], t["meta"], t["anchors"]],
                        [detections, class_probs, bbox, mask, t["rpn_rois"], rpn_class, rpn_bbox],
                        name="mask_rcnn")

    def _build_assign_ops(self):
        """One placeholder + assign op per variable (so weights load without new ops)."""
        self._assign = {}
        for var in self.keras_model.weights:
            ph = tf.compat.v1.placeholder(var.dtype.base_dtype, var.shape)
            self._assign[id(var)] = (ph, tf.compat.v1.assign(var, ph))

    # ------------------------------------------------------------------ graph and session
    @contextlib.contextmanager
    def graph_scope(self) -> Iterator[None]:
        """Context in which to add ops to :attr:`graph` (the graph as default graph, tf-keras
        on its v1 classes: see :func:`models.mrcnn.keras_classes.keras_graph_scope`).

        Re-entrant: a nested ``graph_scope`` of the same model is a no-op, so the Keras
        classes go back to v2 only when the outermost scope ends.
        """
        outermost = self._graph_scope_depth == 0
        self._graph_scope_depth += 1
        try:
            if outermost:
                with keras_graph_scope(self.graph):
                    yield
            else:
                yield
        finally:
            self._graph_scope_depth -= 1

    @property
    def loss_tensors(self) -> Dict[str, "tf.Tensor"]:
        """Training mode: ``{name: float32 scalar tensor}`` for the five ``LOSS_NAMES``
        (in that order), each the batch mean of its loss layer's output; unweighted, without
        weight decay.  The same tensors on every call (a new dict).

        Raises:
            ValueError: the model was built in inference mode (it has no loss layers).
        """
        if self._loss_tensors is None:
            raise ValueError("loss tensors need a MaskRCNN built with mode='training'")
        return dict(self._loss_tensors)

    def trainable_weights_matching(self, regex: str) -> list:
        """Trainable ``tf.Variable`` s of the layers whose name fully matches ``regex``
        (layers of the nested ``rpn_model`` matched by their own names), in layer order."""
        out = []
        with self.graph_scope():
            for layer in self.ancestor_layers():
                if layer.trainable_weights and re.fullmatch(regex, layer.name):
                    out.extend(layer.trainable_weights)
        return out

    def state_updates_matching(self, regex: str) -> list:
        """State update ops (batch-norm moving statistics) of the layers whose name fully
        matches ``regex``, each once.

        Matterport freezes a stage's other layers with ``layer.trainable = False``, and a
        frozen Keras layer contributes no updates, so a train op that runs only these updates
        keeps the moving statistics of frozen batch-norm layers as they are (this matters only
        with ``TRAIN_BN = True``, where batch norm runs in training mode).  A
        ``TimeDistributed`` wrapper matches by its own name and brings the updates of the
        layer it wraps.
        """
        out, seen = [], set()
        with self.graph_scope():
            for layer in self.ancestor_layers():
                if re.fullmatch(regex, layer.name):
                    for update in layer.updates:
                        if id(update) not in seen:
                            seen.add(id(update))
                            out.append(update)
        return out

    def input_values(self, batch: Dict[str, np.ndarray]) -> List[np.ndarray]:
        """The arrays of ``batch`` (keyed by input name, e.g. a ``data_gen.build_batch``
        dict) in the order of ``keras_model.inputs``, C-contiguous and cast to each input's
        dtype.  Training mode: ``input_image [B, H, W, 3]`` float32, ``input_image_meta
        [B, META]`` float32, ``input_rpn_match [B, A, 1]`` int32, ``input_rpn_bbox [B, R, 4]``
        float32, ``input_gt_class_ids [B, G]`` int32, ``input_gt_boxes [B, G, 4]`` float32,
        ``input_gt_masks [B, h, w, G]`` bool."""
        out = []
        for inp in self.keras_model.inputs:
            name = inp.name.split(":")[0]
            out.append(np.ascontiguousarray(batch[name], dtype=inp.dtype.as_numpy_dtype))
        return out

    def get_callable(self, key, feeds, fetches, targets=()):
        """Cached session callable (created once per ``key``)."""
        if key not in self._callables:
            self._callables[key] = make_callable(self.session, feeds, fetches, targets)
        return self._callables[key]

    def read_variables(self, variables) -> list:
        """Current values of graph variables."""
        return self.session.run(list(variables)) if variables else []

    def assign_variables(self, pairs) -> None:
        """Set ``[(variable, value)]`` through the prepared assign ops."""
        if not pairs:
            return
        feed, ops = {}, []
        for var, value in pairs:
            ph, op = self._assign[id(var)]
            feed[ph] = value
            ops.append(op)
        self.session.run(ops, feed_dict=feed)

    def close(self) -> None:
        """Close the session (idempotent); the callables become harmless to release."""
        if not getattr(self.session, "_closed", False):
            self.session.close()

    # ------------------------------------------------------------------ weights
    def load_weights(self, filepath: str, by_name: bool = False, exclude=None) -> List[str]:
        """Load a Keras-2 HDF5 weight file (see :mod:`models.mrcnn.weights`).

        ``exclude`` lists layer names to skip; with ``exclude`` the load is by name, as in
        matterport. Updates ``epoch``/``log_dir`` from a checkpoint name.
        """
        if exclude:
            by_name = True
        loaded = weights_io.load_weights_h5(self.keras_model, self.assign_variables, filepath,
                                            by_name=by_name, exclude=exclude)
        self.set_log_dir(filepath)
        return loaded

    def save_weights(self, filepath: str) -> None:
        """Write all weights to ``filepath`` (Keras-2 HDF5 layout, atomic)."""
        weights_io.save_weights_h5(self.keras_model, self.read_variables, filepath)

    def save_checkpoint(self, epoch: int) -> str:
        """Save the weights as this run's checkpoint of ``epoch`` (``checkpoint_path``,
        atomic) and set :attr:`epoch` to it; returns the file's path."""
        path = self.checkpoint_path.format(epoch=epoch)
        self.save_weights(path)
        self.epoch = epoch
        return path

    def find_last(self) -> str:
        """Path of the last checkpoint of the newest run directory of this config (runs
        recorded with other weight shapes are skipped).

        Raises:
            FileNotFoundError: naming ``model_dir`` and the command that creates one.
        """
        return find_last_checkpoint(self.model_dir, self.config.NAME, self.config)

    def write_run_config(self) -> str:
        """Record the configuration as ``<log_dir>/config.json`` (atomic; kept when the run
        folder already has one, e.g. when resuming), so ``find_last`` can tell runs of other
        architectures apart.  Returns the file's path."""
        path = os.path.join(self.log_dir, RUN_CONFIG_FILE)
        if not os.path.isfile(path):
            write_json_atomic(path, self.config.to_dict(), indent=1)
        return path

    def set_log_dir(self, model_path: Optional[str] = None) -> None:
        """Set ``log_dir``, ``checkpoint_path`` and ``epoch``.

        Resuming from a checkpoint ``.../<name>YYYYMMDDTHHMM[-k]/mask_rcnn_<name>_<epoch>.h5``
        of this configuration's ``<name>`` continues in that run's folder at that epoch.  A new
        run gets a new folder named by the minute (matterport's scheme); a second run started in
        the same minute gets a ``-1``, ``-2`` ... suffix instead of overwriting the first run's
        checkpoints.  Weights of another name (a standard K's checkpoint as the start of a
        robust K, ``parts`` against ``parts_robust``) start a new run at epoch 0, so one run
        folder never holds two kinds of K.
        """
        self.epoch = 0
        if model_path:
            name = self.config.NAME.lower()
            run_dir = os.path.dirname(os.path.abspath(model_path))
            m = _checkpoint_pattern(name).fullmatch(os.path.basename(model_path))
            if m and _run_folder_pattern(name).fullmatch(os.path.basename(run_dir)):
                self.epoch = int(m.group(1))
                self.log_dir = run_dir
                self._set_checkpoint_path()
                return
        base = "%s%s" % (self.config.NAME.lower(),
                         datetime.datetime.now().strftime("%Y%m%dT%H%M"))
        self.log_dir = os.path.join(self.model_dir, base)
        suffix = 0
        while os.path.exists(self.log_dir):
            suffix += 1
            self.log_dir = os.path.join(self.model_dir, "%s-%d" % (base, suffix))
        self._set_checkpoint_path()

    def _set_checkpoint_path(self) -> None:
        self.checkpoint_path = os.path.join(
            self.log_dir, "mask_rcnn_%s_{epoch:04d}.h5" % self.config.NAME.lower())

    # ------------------------------------------------------------------ inference
    def run_graph_inference(self, molded: np.ndarray, metas: np.ndarray):
        """Raw network outputs ``(detections [B, D, 6], mrcnn_mask [B, D, h, w, C])``."""
        if self.mode != "inference":
            raise ValueError("detect() needs a MaskRCNN built with mode='inference'")
        model = self.keras_model
        fn = self.get_callable("detect", model.inputs, [model.outputs[0], model.outputs[3]])
        anchors = utils.get_anchors(self.config, molded.shape[1:])
        anchors = np.broadcast_to(anchors, (molded.shape[0],) + anchors.shape)
        det, mask = fn(molded.astype(np.float32), metas.astype(np.float32),
                       np.ascontiguousarray(anchors, dtype=np.float32))
        return det, mask

    def detect(self, images, verbose: int = 0) -> List[dict]:
        """Detect instances in exactly ``BATCH_SIZE`` RGB images ``[H, W, 3]`` (pixels in
        0..255, any size): a list of images or a ``[B, H, W, 3]`` array.

        Returns one dict per image: ``rois int32 [N, (y1, x1, y2, x2)]`` (pixels of the
        original image), ``class_ids int32 [N]``, ``scores float32 [N]``,
        ``masks bool [H, W, N]``.

        Raises:
            ValueError: no batch, wrong image count, or an image that is not finite RGB
                ``[H, W, 3]`` in 0..255 (the message names ``images[i]``; see
                :func:`data_gen.check_rgb_image`).
        """
        images = data_gen.image_batch(images)
        if len(images) != self.config.BATCH_SIZE:
            raise ValueError("detect() takes exactly BATCH_SIZE=%d images, got %d"
                             % (self.config.BATCH_SIZE, len(images)))
        images = [np.asarray(image) for image in images]
        molded, metas, windows = data_gen.mold_inputs(images, self.config)
        det, mask = self.run_graph_inference(molded, metas)
        results = []
        for i, image in enumerate(images):
            rois, class_ids, scores, masks = data_gen.unmold_detections(
                det[i], mask[i], image.shape, molded[i].shape, windows[i])
            results.append({"rois": rois, "class_ids": class_ids, "scores": scores,
                            "masks": masks})
        return results

    def mold_inputs(self, images):
        """Resize/mold RGB images: ``(molded [B, S, S, 3], image_metas, windows)``."""
        return data_gen.mold_inputs(images, self.config)

    def unmold_detections(self, detections, mrcnn_mask, original_image_shape, image_shape,
                          window):
        """One image's network outputs -> ``(rois, class_ids, scores, masks)`` in pixels."""
        return data_gen.unmold_detections(detections, mrcnn_mask, original_image_shape,
                                          image_shape, window)

    def get_anchors(self, image_shape):
        """Normalized pyramid anchors ``[A, 4]`` for an input of ``image_shape``."""
        return utils.get_anchors(self.config, image_shape)

    def ancestor_layers(self):
        """All layers including those of the nested ``rpn_model`` (for regex selection)."""
        out = []
        for layer in self.keras_model.layers:
            out.extend(layer.layers if weights_io._is_model(layer) else [layer])
        return out

    # ------------------------------------------------------------------ training
    @property
    def trainer(self) -> Trainer:
        """The :class:`models.mrcnn.trainer.Trainer` of this model (created on first use; the
        same object afterwards, so optimizer state carries over between :meth:`train` calls).

        Raises:
            ValueError: the model was built in inference mode.
        """
        if self._trainer is None:
            self._trainer = Trainer(self)
        return self._trainer

    def train(self, train_dataset, val_dataset, learning_rate: float, epochs: int,
              layers: str, augmentation=None, seed: int = 0, progress: bool = True,
              max_seconds: Optional[float] = None,
              steps_per_epoch: Optional[int] = None, on_epoch=None,
              total_epochs: Optional[int] = None) -> List[dict]:
        """Train ``layers`` (a ``LAYER_REGEX`` key or a regex) up to epoch ``epochs``
        (cumulative, as in matterport); see :meth:`models.mrcnn.trainer.Trainer.train`.

        Returns:
            One dict per epoch trained (epoch, checkpoint, losses, ``val_*`` losses ...).
        """
        return self.trainer.train(train_dataset, val_dataset, learning_rate, epochs, layers,
                                  augmentation=augmentation, seed=seed, progress=progress,
                                  max_seconds=max_seconds, steps_per_epoch=steps_per_epoch,
                                  on_epoch=on_epoch, total_epochs=total_epochs)
