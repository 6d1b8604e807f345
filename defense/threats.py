"""Threat models and attack goals: each one enum, the single source of the CLI's choices, the
report schema and the defenses' declarations.

Threat models (SPEC §8):

* ``gray-box`` -- the paper's: the attacker sees the classifier it attacks (M, or the AT model
  for AT), never the defense around it;
* ``adaptive`` -- the attacker knows the whole defense and attacks it (BPDA / EOT through a
  transform, the detector through its score, M and K together for UnMask);
* ``transfer`` -- the adaptive attack through a *surrogate* of the defense (UnMask: a K trained
  with another seed), judged on the real one: the attacker knows the architecture and the
  data, not the weights.

Goals of an adaptive attack (SPEC §11: two goals, two runs, each keeping its own best iterate):

* ``wrong`` -- the defense's final answer is wrong and not a rejection (defended accuracy);
* ``undetected`` -- M is fooled and the detector does not flag (evasion).  For a classifier,
  or a detector that rejects what it flags, the two are the same goal (one run serves both).
"""
import enum


class Threat(str, enum.Enum):
    GRAY_BOX = "gray-box"
    ADAPTIVE = "adaptive"
    TRANSFER = "transfer"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, text: str) -> "Threat":
        """A threat model from its name (case-insensitive); ValueError listing the names."""
        key = str(text).strip().lower()
        for member in cls:
            if member.value == key:
                return member
        raise ValueError("unknown threat model %r; valid: %s" % (text, ", ".join(NAMES)))


class Goal(str, enum.Enum):
    WRONG = "wrong"
    UNDETECTED = "undetected"

    def __str__(self) -> str:
        return self.value


#: Threat model names in their canonical order.
NAMES = tuple(t.value for t in Threat)
#: The threat models whose attacks are defense-aware (run by the adaptive engine).
DEFENSE_AWARE = (Threat.ADAPTIVE, Threat.TRANSFER)
#: Goal names.
GOALS = tuple(g.value for g in Goal)
