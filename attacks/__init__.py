"""Untargeted evasion attacks on a classifier M (pixels in [0, 1]), built on cleverhans 4.0.0.

Attacks are functions of a ``model_fn``: any callable mapping a float32 batch ``[B, H, W, 3]``
in ``[0, 1]`` to logits ``[B, C]`` (a tf-keras model without a final softmax works as is).
Budgets ``eps`` / ``step_size`` are on the 0-255 pixel scale, for L2 too.

Public API::

    run_attack(model_fn, images, labels, name, eps=None, *, steps=None, step_size=None,
               batch_size=32, seed=0, progress=None, **params) -> AttackResult
    compile_attack(model_fn, name, eps=None, *, steps=None, step_size=None, **params)
        -> CompiledAttack   (.run(images, labels, ...), .attack_batch(x, y, seed))
    ATTACKS, get_attack(name), list_attacks(), resolve_config(...), PAPER_ATTACK_VECTORS

Modules: ``_utils`` (shared maths), ``_inputs`` (input validation), one module per attack
(``pgd``, ``mim``, ``fgsm``, ``bim``, ``cw``), ``registry``, ``runner``.  This package imports
nothing from the project except ``tfcompat``.
"""
import tfcompat  # noqa: F401

from attacks.registry import (ATTACKS, PAPER_ATTACK_VECTORS, AttackConfig, AttackSpec,
                              get_attack, list_attacks, resolve_config)
from attacks.runner import AttackResult, CompiledAttack, compile_attack, run_attack

__all__ = [
    "ATTACKS", "PAPER_ATTACK_VECTORS", "AttackConfig", "AttackSpec", "AttackResult",
    "CompiledAttack", "compile_attack", "get_attack", "list_attacks", "resolve_config",
    "run_attack",
]
