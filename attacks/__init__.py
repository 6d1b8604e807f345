"""Evasion attacks on a classifier M (pixels in [0, 1]), built on cleverhans 4.0.0.

Untargeted per-image attacks (the UnMask paper's): ``pgd_linf`` (eps 8), ``pgd_l2`` (300),
``mia_linf`` (8), ``mia_l2`` (300), ``fgsm`` (8), ``bim`` (8), ``cw_l2`` (no ball); and
``bim_l2`` (BIM in L2, eps 300, 20 steps of ``2.5 * eps / steps``, start at x).  Targeted
variants: ``pgd_linf``, ``pgd_l2``, ``mia_linf``, ``mia_l2``, ``bim``, ``bim_l2`` and ``cw_l2``
take ``targeted=True`` (default False; only a True value enters ``AttackConfig.params``, so
untargeted configs are unchanged): each image gets a random target ``!= its label`` drawn as
``ga``'s (:func:`ga_targets` with the batch seed ``(seed, batch_index)``) and the attack
minimises the target's loss (CW: the targeted hinge); ``AttackResult.targets`` holds them
(-1 for untargeted runs) and ``success`` is then ``pred_adv == targets``.  From the
seed-004 project (SPEC section 7): ``ga``, targeted gradient ascent to a random class (L-inf,
eps 3, <= 100 steps of eps/20, early stop at p(target) >= 0.99; targets from
:func:`ga_targets` with the batch seed ``(seed, batch_index)``), and the *universal*
adversarial perturbations ``uap`` (L-inf, xi 10) and ``uap_l2`` (L2, xi 850): one ``v`` fitted
by DeepFool passes over a set of images (fooling target 0.8, <= 10 passes, <= 256 fit images),
then applied to every image.  Full defaults: :mod:`attacks.registry`.

Attacks are functions of a ``model_fn``: any callable mapping a float32 batch ``[B, H, W, 3]``
in ``[0, 1]`` to logits ``[B, C]`` (a tf-keras model without a final softmax works as is).
Budgets ``eps`` / ``step_size`` are on the 0-255 pixel scale, for L2 too.

Public API::

    run_attack(model_fn, images, labels, name, eps=None, *, steps=None, step_size=None,
               batch_size=32, seed=0, progress=None, fit_images=None, **params)
        -> AttackResult   (fit_images: fit a universal attack on them first;
                           params: e.g. targeted=True, rand_init, decay, stop_prob)
    AttackResult: x_adv, success, pred_clean, pred_adv, labels, config, seconds, targets
                  (+ success_rate, target_success_rate, clean_accuracy, adv_accuracy)
    compile_attack(model_fn, name, eps=None, *, steps=None, step_size=None, **params)
        -> CompiledAttack   (.run(images, labels, ...), .attack_batch(x, y, seed);
                             universal attacks: .fit(images, seed=0, progress=None)
                             -> UniversalPerturbation, .set_perturbation(v))
    ga_targets(y, num_classes, seed) -> int64 [B]   the random targets of ``ga`` and of the
        targeted=True attacks for one batch (batch i of a run: seed (run_seed, i))
    ATTACKS, get_attack(name), list_attacks(), resolve_config(...), PAPER_ATTACK_VECTORS

Modules: ``_utils`` (shared maths, random targets), ``_inputs`` (input validation), one module
per attack (``pgd``, ``mim``, ``fgsm``, ``bim`` (L-inf and L2), ``cw``, ``ga``, ``uap``),
``universal`` (the fitted perturbation record and its application), ``registry``, ``runner``.
This package imports nothing from the project except ``tfcompat``.
"""
import tfcompat

# TensorFlow's first import in the process, with its start-up noise quieted and the project's
# settings (the attack modules then import the already loaded module).
tfcompat.import_tf()

from attacks.registry import (ATTACKS, PAPER_ATTACK_VECTORS, AttackConfig,  # noqa: E402
                              AttackSpec,
                              get_attack, list_attacks, resolve_config)
from attacks._inputs import check_images  # noqa: E402
from attacks.ga import ga_targets  # noqa: E402
from attacks.runner import AttackResult, CompiledAttack, compile_attack, run_attack  # noqa: E402
from attacks.universal import UniversalPerturbation  # noqa: E402

__all__ = [
    "ATTACKS", "PAPER_ATTACK_VECTORS", "AttackConfig", "AttackSpec", "AttackResult",
    "CompiledAttack", "compile_attack", "get_attack", "list_attacks", "resolve_config",
    "run_attack", "ga_targets", "UniversalPerturbation", "check_images",
]
