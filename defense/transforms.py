"""Input-transform defenses of seed 004 (SPEC §7) as preprocessor objects, IBM-ART style.

A :class:`Preprocessor` is applied to the images *before* an unchanged classifier M at test
time; adaptive attacks (SPEC §7-8, Athalye et al. 2018) use its backward pass.

* ``pca`` — :class:`PCATransform`: dataset-level PCA fitted on the flattened training images,
  every image projected onto the kept components and reconstructed.
* ``noise`` — :class:`NoiseTransform`: additive uniform *integer* noise in ``[-a, a]`` on the
  0-255 scale (randomized; the only transform that uses ``seed``).
* ``downsample`` — :class:`DownsampleTransform`: bilinear resize to ``scale`` of the side and back.
* ``jpeg`` — :class:`JPEGTransform`: Pillow JPEG re-compression at ``quality``.
* ``bitdepth`` — :class:`BitDepthTransform`: feature squeezing to ``bits`` bits per channel.
* ``resizepad`` — :class:`ResizePadTransform`: random resize and pad (randomized; the input
  of K in ``unmask:input=random``, not a bench defense of its own).

Common contract (all images are float32 ``[N, H, W, 3]`` in ``[0, 1]``):

* ``t.fit(train_images) -> t`` learns what the transform needs (only PCA learns anything);
  ``t.fitted`` tells whether it can be applied; applying an unfitted PCA raises ValueError.
* ``t(images, seed=0)`` returns a new float32 array of the same shape with values in
  ``[0, 1]`` (every transform ends with a clip to ``[0, 1]``).  The output is a deterministic
  function of ``(images, seed)``; only ``noise`` draws random numbers, from
  ``numpy.random.default_rng(seed)``, for the whole batch at once (so image i's noise depends on
  the batch it is in).
* ``t.params()`` — JSON-able dict of everything the output depends on (constructor parameters
  plus, for a fitted PCA, the fitted statistics); ``t.init_params()`` — the constructor
  parameters only, so ``get_transform(t.name, **t.init_params())`` rebuilds an unfitted copy.
* ``t.differentiable(x_tf, seed_tf=None)`` — the transform written in TensorFlow ops, for
  attacks; ``None`` when ``t.has_differentiable_form`` is False (jpeg, bitdepth).
* ``t.estimate_gradient(images, grad, seed=0)`` — the BPDA backward pass in numpy;
  ``t.bpda(x_tf, seed=0)`` — the same inside a TF loss (forward: the real transform; gradient:
  the BPDA estimate).

Backward pass (BPDA, Athalye et al. 2018).  Where the transform has a differentiable form
(pca: a linear projection; downsample: two linear resizes; noise: ``x + n``) the estimate is
the exact vector-Jacobian product through :meth:`Preprocessor.differentiable`; jpeg and
bitdepth are treated as the identity (straight-through).  **The final clip to [0, 1] is
straight-through in every differentiable form**: its forward value is the clip, its gradient the
identity.  This keeps the gradient of noise exactly the identity (as SPEC §7 states) and does
not zero the gradient of saturated pixels; it is the same convention as SPEC §8's treatment of
8-bit quantisation.  (Down-sampling's output never leaves [0, 1] — its resize weights are
non-negative and sum to one — so for it the clip is a no-op; for PCA the estimate is
``(g @ C.T) @ C`` with C the kept components.)

Importing this module loads no TensorFlow; the first transform that runs does (through
:mod:`tfcompat`, and the images' check, :func:`attacks.check_images`).  pca, noise, jpeg and
bitdepth compute on numpy alone.
"""
from __future__ import annotations

import inspect
import io
import numbers
from typing import Any, Dict, Optional

import numpy as np

import tfcompat
from defense.unmask import check_images

_PCA_BATCH = 256           # images projected at a time by PCA (bounds the float32 temporaries)


def _tf():
    """TensorFlow, imported with the project's settings on first use."""
    return tfcompat.import_tf()[0]


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------

def check_seed(seed: Any, name: str = "seed") -> int:
    """``seed`` as a Python int; ValueError unless it is a non-negative integer."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise ValueError("%s must be a non-negative integer, got %r" % (name, seed))
    if int(seed) < 0:
        raise ValueError("%s must be a non-negative integer, got %r" % (name, seed))
    return int(seed)


def _check_int(value: Any, name: str, lo: int, hi: Optional[int], what: str) -> int:
    """An integer (or integral float) in ``[lo, hi]``; ValueError naming ``name`` otherwise."""
    rng = "%d..%d" % (lo, hi) if hi is not None else ">= %d" % lo
    bad = ValueError("%s must be an integer %s (%s), got %r" % (name, rng, what, value))
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise bad
    if not float(value).is_integer():
        raise bad
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        raise bad
    return v


def _check_fraction(value: Any, name: str, what: str) -> float:
    """A float in ``(0, 1]``; ValueError naming ``name`` otherwise."""
    bad = ValueError("%s must be a number in (0, 1] (%s), got %r" % (name, what, value))
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise bad
    v = float(value)
    if not 0.0 < v <= 1.0:
        raise bad
    return v


_CLIP_ST = None


def clip01_straight_through(x):
    """``tf.clip_by_value(x, 0, 1)`` whose gradient is the identity (see module doc)."""
    global _CLIP_ST
    if _CLIP_ST is None:
        tf = _tf()

        @tf.custom_gradient
        def _clip(v):
            def grad(dy):
                return dy
            return tf.clip_by_value(v, 0.0, 1.0), grad
        _CLIP_ST = _clip
    return _CLIP_ST(x)


# --------------------------------------------------------------------------------------------
# base class
# --------------------------------------------------------------------------------------------

class Preprocessor:
    """A test-time input transform ``[N, H, W, 3] -> [N, H, W, 3]`` on float32 images in [0, 1].

    Subclasses set the class attributes and implement ``_forward`` (numpy, on checked input)
    and, when ``has_differentiable_form``, ``_differentiable`` (TF); see the module docstring
    for the contract of the public methods.
    """

    name: str = ""
    #: True only when the output depends on ``seed`` (noise, resizepad).
    randomized: bool = False
    #: True when :meth:`differentiable` returns a TF form (pca, downsample, noise).
    has_differentiable_form: bool = False
    #: True when :meth:`fit` must be called before the transform can be applied (pca).
    needs_fit: bool = False
    #: True when the BPDA estimate is exactly the identity (noise, jpeg, bitdepth).
    identity_gradient: bool = True

    # -- parameters -----------------------------------------------------------------------
    def init_params(self) -> Dict[str, Any]:
        """The constructor parameters (JSON-able): ``get_transform(name, **init_params())``."""
        raise NotImplementedError

    def params(self) -> Dict[str, Any]:
        """JSON-able dict of everything the output depends on (for reports)."""
        return dict(self.init_params())

    def __repr__(self) -> str:
        return "%s(%s)" % (type(self).__name__,
                           ", ".join("%s=%r" % kv for kv in self.init_params().items()))

    # -- fitting --------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        """Whether the transform can be applied (always True unless ``needs_fit``)."""
        return True

    def fit(self, train_images: Any) -> "Preprocessor":
        """Learn what the transform needs from float32 ``[N, H, W, 3]`` training images in
        [0, 1]; a no-op (after checking the input) for transforms that learn nothing.
        Returns ``self``."""
        check_images(train_images, "train_images")
        return self

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise ValueError("the %r transform is not fitted; call .fit(train_images) first"
                             % self.name)

    # -- forward --------------------------------------------------------------------------
    def __call__(self, images: Any, seed: int = 0) -> np.ndarray:
        """Apply the transform.

        Args:
            images: float ``[N, H, W, 3]`` in [0, 1].
            seed: non-negative int; only ``randomized`` transforms use it.
        Returns:
            float32 ``[N, H, W, 3]`` in [0, 1], a new array.
        """
        x = check_images(images)
        seed = check_seed(seed)
        self._require_fitted()
        self._check_shape(x)
        if x.shape[0] == 0:
            return x.copy()
        out = self._forward(x, seed)
        return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)

    def _check_shape(self, x: np.ndarray) -> None:
        """Hook: reject image sizes the (fitted) transform cannot handle."""

    def _forward(self, x: np.ndarray, seed: int) -> np.ndarray:
        raise NotImplementedError

    # -- TF side ----------------------------------------------------------------------------
    def differentiable(self, x_tf, seed_tf=None):
        """The transform in TF ops, differentiable w.r.t. ``x_tf``; ``None`` when
        ``has_differentiable_form`` is False.

        Args:
            x_tf: float32 tensor ``[N, H, W, 3]`` in [0, 1] (not range-checked).
            seed_tf: for noise only: ``None`` draws fresh noise from TF's global RNG (for EOT);
                an int (or int tensor) reproduces ``self(images, seed)`` exactly.  Ignored by
                the deterministic transforms.
        Returns:
            float32 tensor of the same shape; the final clip to [0, 1] is straight-through.
        """
        if not self.has_differentiable_form:
            return None
        self._require_fitted()
        tf = _tf()
        x = tf.convert_to_tensor(x_tf, dtype=tf.float32)
        if x.shape.rank is not None and (x.shape.rank != 4 or x.shape[-1] not in (None, 3)):
            raise ValueError("x_tf must be a 4-D tensor [N, H, W, 3], got shape %s" % x.shape)
        return clip01_straight_through(self._differentiable(x, seed_tf))

    def _differentiable(self, x, seed_tf):
        raise NotImplementedError

    def _tf_forward(self, x, seed: int):
        """Forward value of :meth:`bpda` for transforms without a differentiable form: the
        numpy transform through ``tf.numpy_function`` (identical to ``self(images, seed)``)."""
        tf = _tf()
        y = tf.numpy_function(lambda a: self(a, seed=seed), [x], tf.float32, stateful=False)
        y.set_shape(x.shape)
        return y

    def bpda(self, x_tf, seed: Optional[int] = 0):
        """TF tensor whose value is the transform of ``x_tf`` and whose gradient is the BPDA
        estimate of :meth:`estimate_gradient`, for use inside an attack's loss.

        With a differentiable form this is :meth:`differentiable` (``seed`` is passed as
        ``seed_tf``; noise with ``seed=None`` samples fresh noise each call, i.e. EOT); jpeg and
        bitdepth run their real forward pass with a straight-through (identity) gradient.
        """
        tf = _tf()
        if self.has_differentiable_form:
            return self.differentiable(x_tf, seed_tf=seed)
        self._require_fitted()
        seed = check_seed(0 if seed is None else seed)
        x = tf.convert_to_tensor(x_tf, dtype=tf.float32)

        @tf.custom_gradient
        def _straight_through(v):
            def grad(dy):
                return dy
            return self._tf_forward(v, seed), grad
        return _straight_through(x)

    # -- backward ---------------------------------------------------------------------------
    def estimate_gradient(self, images: Any, grad: Any, seed: int = 0) -> np.ndarray:
        """BPDA backward pass: dLoss/d(input) from ``grad`` = dLoss/d(transform output).

        Args:
            images: float ``[N, H, W, 3]`` in [0, 1], the transform's input.
            grad: float ``[N, H, W, 3]``, same shape as ``images``.
            seed: as for ``__call__`` (only resizepad's estimate depends on it -- the
                draw whose adjoint it is; every other form here is affine in ``x`` with a
                Jacobian that does not depend on the draw).
        Returns:
            float32 ``[N, H, W, 3]``: the exact vector-Jacobian product through
            :meth:`differentiable` (pca, downsample), or ``grad`` itself (noise: its Jacobian is
            the identity; jpeg, bitdepth: straight-through).
        """
        x = check_images(images)
        seed = check_seed(seed)
        g = np.asarray(grad)
        if g.shape != x.shape:
            raise ValueError("grad must have the shape of images %s, got %s"
                             % (x.shape, g.shape))
        if not np.issubdtype(g.dtype, np.number) or not np.all(np.isfinite(g)):
            raise ValueError("grad must be a finite numeric array")
        g = g.astype(np.float32)
        self._require_fitted()
        self._check_shape(x)
        if self.identity_gradient or x.shape[0] == 0:
            return g.copy()
        return self._vjp(x, g, seed)

    def _vjp(self, x: np.ndarray, g: np.ndarray, seed: int) -> np.ndarray:
        """The vector-Jacobian product of checked inputs (default: through
        :meth:`differentiable` with TF's tape)."""
        tf = _tf()
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = self.differentiable(xt, seed_tf=seed)
        return tape.gradient(y, xt, output_gradients=tf.constant(g)).numpy().astype(np.float32)


# --------------------------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------------------------

class PCATransform(Preprocessor):
    """Dataset-level PCA: project each flattened image on the components that keep
    ``variance`` of the training variance, reconstruct, clip to [0, 1].

    ``fit`` runs ``sklearn.decomposition.PCA(n_components=variance, svd_solver="full",
    random_state=seed)`` on the training images flattened to ``[N, H*W*3]`` (float32; the full
    solver ignores random_state, it is recorded anyway).  ``variance = 1`` keeps all
    ``min(N, H*W*3)`` components (sklearn's ``n_components=None``), so training images are
    reconstructed exactly.  The fitted transform only accepts images of the training size.

    Memory: the SVD of N x D float32 data holds about three N x D arrays (N = 1200, D = 96*96*3
    gives ~130 MB each); transforming works on batches of 256 images.
    """

    name = "pca"
    has_differentiable_form = True
    needs_fit = True
    identity_gradient = False

    def __init__(self, variance: float = 0.99, seed: int = 0):
        self.variance = _check_fraction(variance, "variance", "fraction of the training "
                                        "variance the kept components explain")
        self.seed = check_seed(seed)
        self.mean_: Optional[np.ndarray] = None          # float32 [D]
        self.components_: Optional[np.ndarray] = None    # float32 [k, D], orthonormal rows
        self.image_shape: Optional[tuple] = None         # (H, W, 3)
        self.explained_variance: Optional[float] = None  # kept fraction actually reached
        self.n_train: Optional[int] = None

    def init_params(self) -> Dict[str, Any]:
        return {"variance": self.variance, "seed": self.seed}

    def params(self) -> Dict[str, Any]:
        """Constructor parameters plus, once fitted, ``n_components``, ``explained_variance``
        (the fraction the kept components really explain, >= variance), ``n_train``,
        ``image_shape`` and ``svd_solver``."""
        out = self.init_params()
        out["svd_solver"] = "full"
        if self.fitted:
            out.update(n_components=self.n_components, explained_variance=self.explained_variance,
                       n_train=self.n_train, image_shape=list(self.image_shape))
        return out

    @property
    def fitted(self) -> bool:
        return self.components_ is not None

    @property
    def n_components(self) -> Optional[int]:
        """Number of kept components (None before ``fit``)."""
        return None if self.components_ is None else int(self.components_.shape[0])

    def fit(self, train_images: Any) -> "PCATransform":
        """Fit the PCA on float ``[N, H, W, 3]`` training images in [0, 1] (N >= 2)."""
        from sklearn.decomposition import PCA

        x = check_images(train_images, "train_images")
        n = x.shape[0]
        if n < 2:
            raise ValueError("train_images must hold at least 2 images to fit a PCA, got %d" % n)
        flat = x.reshape(n, -1).astype(np.float32, copy=True)  # sklearn may centre it in place
        pca = PCA(n_components=None if self.variance >= 1.0 else self.variance,
                  svd_solver="full", random_state=self.seed, copy=False)
        pca.fit(flat)
        del flat
        self.mean_ = np.asarray(pca.mean_, dtype=np.float32)
        self.components_ = np.ascontiguousarray(pca.components_, dtype=np.float32)
        self.explained_variance = min(1.0, float(np.sum(pca.explained_variance_ratio_,
                                                        dtype=np.float64)))
        self.image_shape = tuple(int(s) for s in x.shape[1:])
        self.n_train = int(n)
        return self

    def _check_shape(self, x: np.ndarray) -> None:
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError("images must have the size the PCA was fitted on, [N, %d, %d, %d], "
                             "got shape %s" % (self.image_shape + (x.shape,)))

    def _forward(self, x: np.ndarray, seed: int) -> np.ndarray:
        n = x.shape[0]
        flat = x.reshape(n, -1)
        out = np.empty_like(flat)
        c = self.components_
        for i in range(0, n, _PCA_BATCH):
            centred = flat[i:i + _PCA_BATCH] - self.mean_
            out[i:i + _PCA_BATCH] = (centred @ c.T) @ c + self.mean_
        return out.reshape(x.shape)

    def _differentiable(self, x, seed_tf):
        tf = _tf()
        # constants made per call: a tensor cached from one tf.function's graph cannot be
        # used in another's (each adaptive attack traces its own)
        mean, comps = tf.constant(self.mean_), tf.constant(self.components_)
        if x.shape.rank is not None and None not in x.shape[1:] \
                and tuple(x.shape[1:]) != self.image_shape:
            raise ValueError("x_tf must have the size the PCA was fitted on, [N, %d, %d, %d], "
                             "got shape %s" % (self.image_shape + (x.shape,)))
        flat = tf.reshape(x, [-1, int(np.prod(self.image_shape))]) - mean
        rec = tf.matmul(tf.matmul(flat, comps, transpose_b=True), comps) + mean
        return tf.reshape(rec, tf.shape(x))


class NoiseTransform(Preprocessor):
    """Additive uniform integer noise: ``clip(x + k / 255, 0, 1)`` with k drawn independently
    per pixel and channel, uniformly from the integers ``{-a, ..., a}`` (a = ``amplitude``,
    0..255; the default a = 0 is the identity — a placeholder until the grid search, which
    lives elsewhere, picks a).

    Noise comes from ``numpy.random.default_rng(seed).integers(-a, a, endpoint=True,
    size=images.shape)``; :meth:`differentiable` with an int seed draws the same numbers, with
    ``seed_tf=None`` it draws fresh noise from TF's global RNG (for EOT).  The gradient is the
    identity.  8-bit-exact inputs (``m / 255``) give 8-bit-exact outputs.
    """

    name = "noise"
    randomized = True
    has_differentiable_form = True

    def __init__(self, amplitude: int = 0):
        self.amplitude = _check_int(amplitude, "amplitude", 0, 255,
                                    "noise amplitude a on the 0-255 scale")

    def init_params(self) -> Dict[str, Any]:
        return {"amplitude": self.amplitude}

    def sample(self, shape, seed: int) -> np.ndarray:
        """The float32 noise ``k / 255`` of ``shape`` that ``self(images, seed)`` adds."""
        a = self.amplitude
        k = np.random.default_rng(seed).integers(-a, a, endpoint=True, size=tuple(shape),
                                                 dtype=np.int16)
        return k.astype(np.float32) / np.float32(255.0)

    def _forward(self, x: np.ndarray, seed: int) -> np.ndarray:
        if self.amplitude == 0:
            return x.copy()
        return x + self.sample(x.shape, seed)

    def _differentiable(self, x, seed_tf):
        tf = _tf()
        if self.amplitude == 0:
            return tf.identity(x)
        a = self.amplitude
        if seed_tf is None:
            k = tf.random.uniform(tf.shape(x), minval=-a, maxval=a + 1, dtype=tf.int32)
            noise = tf.cast(k, tf.float32) / 255.0
        else:
            if not tf.is_tensor(seed_tf):
                seed_tf = check_seed(seed_tf, "seed_tf")
            noise = tf.numpy_function(
                lambda shape, s: self.sample(tuple(int(v) for v in shape), int(s)),
                [tf.shape(x), tf.cast(seed_tf, tf.int64)], tf.float32, stateful=False)
            noise.set_shape(x.shape)
        return x + tf.stop_gradient(noise)


class DownsampleTransform(Preprocessor):
    """Resize each image to ``round(scale * side)`` (half up, at least 1) per side and back to
    its original size, both bilinear with ``tf.image.resize``; ``scale = 1`` is the identity.

    The down-sizing uses ``antialias=True``: the bilinear (triangle) kernel is stretched by
    ``1 / scale`` so that every input pixel contributes — a proper low-pass like PIL's resize,
    rather than TF's default point sampling of two neighbours, which aliases at scale 0.75.
    (At scale 0.5 both average the image; antialias has no effect on the up-sizing.)  The
    resize weights are non-negative and sum to one, so constant images are unchanged and the
    output stays in [0, 1].  The op is linear and differentiable, so :meth:`differentiable` is
    the transform itself.
    """

    name = "downsample"
    has_differentiable_form = True
    identity_gradient = False
    antialias = True

    def __init__(self, scale: float = 0.5):
        self.scale = _check_fraction(scale, "scale", "fraction of the side to resize to, "
                                     "e.g. 0.5 or 0.75")

    def init_params(self) -> Dict[str, Any]:
        return {"scale": self.scale}

    def params(self) -> Dict[str, Any]:
        out = self.init_params()
        out.update(method="bilinear", antialias=self.antialias)
        return out

    def small_size(self, height: int, width: int):
        """``(h, w)`` the images are down-sized to."""
        return tuple(max(1, int(np.floor(self.scale * s + 0.5))) for s in (height, width))

    def _forward(self, x: np.ndarray, seed: int) -> np.ndarray:
        if self.scale == 1.0:
            return x.copy()
        tf = _tf()
        return self._differentiable(tf.constant(x), None).numpy()

    def _differentiable(self, x, seed_tf):
        tf = _tf()
        if self.scale == 1.0:
            return tf.identity(x)
        if x.shape.rank is not None and None not in x.shape[1:3]:
            h, w = int(x.shape[1]), int(x.shape[2])
        else:
            raise ValueError("x_tf must have a static height and width for downsample, got "
                             "shape %s" % x.shape)
        small = tf.image.resize(x, self.small_size(h, w), method="bilinear",
                                antialias=self.antialias)
        return tf.image.resize(small, (h, w), method="bilinear", antialias=self.antialias)


class JPEGTransform(Preprocessor):
    """JPEG re-compression with Pillow at ``quality`` (1..95, default 75).

    Each image is quantised to uint8 as ``round(x * 255)`` (numpy's round, half to even),
    encoded as an RGB JPEG with ``quality`` and 4:2:0 chroma subsampling (Pillow's default,
    made explicit), decoded and divided by 255.  Not differentiable: BPDA uses the identity.
    """

    name = "jpeg"

    def __init__(self, quality: int = 75):
        self.quality = _check_int(quality, "quality", 1, 95, "Pillow JPEG quality")

    def init_params(self) -> Dict[str, Any]:
        return {"quality": self.quality}

    def params(self) -> Dict[str, Any]:
        out = self.init_params()
        out["subsampling"] = "4:2:0"
        return out

    def _forward(self, x: np.ndarray, seed: int) -> np.ndarray:
        from PIL import Image

        u8 = np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)
        out = np.empty(x.shape, dtype=np.float32)
        for i, img in enumerate(u8):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=self.quality,
                                                  subsampling=2)
            buf.seek(0)
            with Image.open(buf) as dec:
                out[i] = np.asarray(dec.convert("RGB"), dtype=np.float32) / 255.0
        return out


class BitDepthTransform(Preprocessor):
    """Feature squeezing: ``round(x * L) / L`` with ``L = 2**bits - 1`` (bits 1..8, default 4),
    at most ``2**bits`` levels per channel; round is half to even (numpy and TF agree), in
    float32.  Not differentiable: BPDA uses the identity; :meth:`bpda`'s forward is TF ops."""

    name = "bitdepth"

    def __init__(self, bits: int = 4):
        self.bits = _check_int(bits, "bits", 1, 8, "bits per channel")

    def init_params(self) -> Dict[str, Any]:
        return {"bits": self.bits}

    @property
    def levels(self) -> int:
        """``2**bits - 1`` (the largest quantised value on the integer scale)."""
        return 2 ** self.bits - 1

    def _forward(self, x: np.ndarray, seed: int) -> np.ndarray:
        lv = np.float32(self.levels)
        return np.round(x * lv) / lv

    def _tf_forward(self, x, seed: int):
        tf = _tf()
        lv = float(self.levels)
        return tf.round(tf.clip_by_value(x, 0.0, 1.0) * lv) / lv


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------

def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """float64 ``[n_out, n_in]``: 1-D bilinear resampling from ``n_in`` to ``n_out`` samples
    (half-pixel centres, edges clamped, no anti-aliasing -- ``tf.image.resize`` bilinear);
    each row's weights are >= 0 and sum to 1, and ``n_in == n_out`` gives the identity."""
    out = np.zeros((n_out, n_in))
    src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    w = src - lo
    np.add.at(out, (np.arange(n_out), lo), 1.0 - w)
    np.add.at(out, (np.arange(n_out), hi), w)
    return out


class ResizePadTransform(Preprocessor):
    """Random resize and pad (Xie et al. 2018): each image is resized (bilinear,
    :func:`bilinear_matrix`) to a side drawn uniformly from the integers
    ``[ceil(min_scale * S), S]`` and placed at a uniformly drawn offset on a zero canvas of the
    original ``S x S`` size -- the randomized part-extractor input of ``unmask:input=random``.

    Draws come from ``numpy.random.default_rng(seed)``, one ``(side_h, side_w, top, left)`` per
    image in batch order (:meth:`draws`).  For a fixed draw the transform is linear, so the
    backward pass is exact: ``R_h^T g[top:top+h, left:left+w] R_w`` per channel
    (:meth:`estimate_gradient`; :meth:`bpda` uses it as the gradient of the real forward).
    """

    name = "resizepad"
    randomized = True
    identity_gradient = False

    def __init__(self, min_scale: float = 0.85):
        self.min_scale = _check_fraction(min_scale, "min_scale",
                                         "smallest side kept, as a share of the image's")

    def init_params(self) -> Dict[str, Any]:
        return {"min_scale": self.min_scale}

    def draws(self, n: int, height: int, width: int, seed: int) -> np.ndarray:
        """int ``[n, 4]``: ``(side_h, side_w, top, left)`` of each image for ``seed``."""
        rng = np.random.default_rng(seed)
        side = int(np.ceil(self.min_scale * min(height, width)))
        scale = rng.integers(side, min(height, width), endpoint=True, size=n) / min(height,
                                                                                 width)
        h = np.maximum(np.round(scale * height).astype(int), 1)
        w = np.maximum(np.round(scale * width).astype(int), 1)
        top = np.floor(rng.random(n) * (height - h + 1)).astype(int)
        left = np.floor(rng.random(n) * (width - w + 1)).astype(int)
        return np.stack([h, w, top, left], axis=1)

    def _forward(self, x: np.ndarray, seed: int) -> np.ndarray:
        n, height, width, _ = x.shape
        out = np.zeros_like(x)
        for i, (h, w, top, left) in enumerate(self.draws(n, height, width, seed)):
            rh, rw = bilinear_matrix(height, h), bilinear_matrix(width, w)
            out[i, top:top + h, left:left + w] = np.einsum("ay,yxc,bx->abc", rh, x[i], rw)
        return out

    def _vjp(self, x: np.ndarray, g: np.ndarray, seed: int) -> np.ndarray:
        n, height, width, _ = x.shape
        out = np.zeros(x.shape, np.float32)          # B x draws images: keep it float32
        for i, (h, w, top, left) in enumerate(self.draws(n, height, width, seed)):
            rh, rw = bilinear_matrix(height, h), bilinear_matrix(width, w)
            out[i] = np.einsum("ay,abc,bx->yxc", rh, g[i, top:top + h, left:left + w], rw)
        return out

    def bpda(self, x_tf, seed: Optional[int] = 0):
        """The real forward (numpy) with the exact backward pass of that draw."""
        tf = _tf()
        seed = check_seed(0 if seed is None else seed)
        x = tf.convert_to_tensor(x_tf, dtype=tf.float32)

        @tf.custom_gradient
        def _resize_pad(v):
            def grad(dy):
                g = tf.numpy_function(lambda a, b: self.estimate_gradient(a, b, seed=seed),
                                      [v, dy], tf.float32, stateful=False)
                g.set_shape(v.shape)
                return g
            return self._tf_forward(v, seed), grad
        return _resize_pad(x)


TRANSFORMS: Dict[str, type] = {
    cls.name: cls for cls in (PCATransform, NoiseTransform, DownsampleTransform, JPEGTransform,
                              BitDepthTransform, ResizePadTransform)
}


def get_transform(name: str, **params: Any) -> Preprocessor:
    """A new (unfitted) transform ``name`` of :data:`TRANSFORMS` built with ``params``.

    Raises ValueError for an unknown name (listing the valid ones), an unknown parameter
    (listing the transform's parameters) or a parameter out of its range (naming it).
    """
    if name not in TRANSFORMS:
        raise ValueError("unknown transform %r; valid names: %s"
                         % (name, ", ".join(sorted(TRANSFORMS))))
    cls = TRANSFORMS[name]
    sig = inspect.signature(cls.__init__).parameters
    valid = [p for p in sig if p != "self"]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError("unknown parameter(s) %s for transform %r; valid parameters: %s"
                         % (", ".join(unknown), name, ", ".join(valid)))
    missing = [p for p in valid if sig[p].default is inspect.Parameter.empty and p not in params]
    if missing:
        raise ValueError("transform %r needs parameter(s) %s (no default)"
                         % (name, ", ".join(missing)))
    return cls(**params)
