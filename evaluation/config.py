"""The configuration of a run: :class:`EvalConfig` -- one (class set, architecture) of the
defense comparison, with every setting it depends on -- built from the command line's options
(:meth:`EvalConfig.from_options`; the defaults are theirs, :mod:`evaluation.options`), and its
record ``config.json``, written beside the run's results and read back by ``main.py --config``:

    {"version": 1, "command": "evaluate" | "grid" | "k",
     "config": {...every EvalConfig field, resolved...},   # evaluate, grid
     "archs": [...], "class_sets": [...],                  # grid
     "options": {...every option of K's runner...},        # k
     "defaults": [names of the settings left at their default],
     "versions": {"python": ..., "tensorflow": ..., ...},
     "checkpoints": {"m": {"path": ..., "sha1": ...}, "at": ..., "k": ..., "k_transfer": ...}}

"Resolved": the extractor the run chose (``k`` or ``oracle``) and the K checkpoint it loaded
replace "the default" and "the newest", so the record reruns what ran.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import functools
import json
import os
import re
import typing
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from attacks import PAPER_ATTACK_VECTORS
from attacks.engine import EngineSettings
from data.fileio import file_digest
from data.knowledge import ClassSet, get_class_set
from defense.adaptive import check_gradient_mode
from defense.base import GRAY_BOX, AdaptiveOptions
from defense.defenses import DEFAULT_DEFENSES, build_defense
from defense.threats import DEFENSE_AWARE, Threat
from evaluation.options import (MAX_INPUT_SIZE, ROBUST_K_DIRS, DataOptions, KOptions,
                                MOptions, Options, check_l2_budgets, parse_goals,
                                parse_routes, parse_vectors)
from models.train_classifier import TrainConfig

_DATA, _M, _K = DataOptions(), MOptions(), KOptions()

CONFIG_FILE = "config.json"
CONFIG_VERSION = 1
COMMANDS = ("evaluate", "grid", "k")


@dataclasses.dataclass
class EvalConfig:
    """Settings of one evaluation run (the command line's are checked by
    :class:`~evaluation.options.MOptions`)."""
    class_set: ClassSet
    data_dir: str = _DATA.data_dir
    arch: str = _M.arch
    m_model: Optional[str] = None        # your own classifier file in M's place (--m-model)
    at_model: Optional[str] = None       # your own AT model file (--at-model)
    input_size: int = _M.input_size
    weights: Optional[str] = None        # None or "imagenet" (--weights none / imagenet)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    adv_train: bool = _M.adv_train
    at_eps: float = _M.at_eps
    extractor: Optional[str] = _M.extractor   # "k", "oracle" or None (K if trained, else oracle)
    k_weights: str = "last"              # K checkpoint: "last" (newest in k_log_dir) or a path
    k_config: str = _K.k_config          # K's configuration (main.py --k-config)
    k_log_dir: str = _K.k_log_dir
    threshold: Optional[float] = _M.threshold   # None: chosen on validation for target_fpr
    target_fpr: float = _M.target_fpr
    mode: str = _M.mode
    vectors: Sequence[Tuple[str, float]] = tuple(PAPER_ATTACK_VECTORS)
    defenses: Optional[Sequence[str]] = None   # None: none, unmask (+ at with adv_train)
    trajectory_table: bool = _M.trajectory_table   # also the seed-003 table
    detection_set: str = _M.detection_set   # "original" (the UnMask code) or "strict"
    threats: Sequence[str] = (GRAY_BOX,)  # add "adaptive" for defense-aware attacks
    # the defense-aware attacks (SPEC §11): steps of each run, restart rounds, target classes
    # tried where the attack needs them (None: all C - 1), how a detector's two gradients
    # combine (None: each defense's default) and EOT draws through a random transform
    adaptive_steps: int = _M.adaptive_steps
    adaptive_restarts: int = _M.adaptive_restarts
    adaptive_targets: Optional[int] = _M.adaptive_targets
    adaptive_gradient: Optional[str] = _M.adaptive_gradient
    eot_samples: int = 20
    adaptive_batch: int = _M.adaptive_batch   # images per saved adaptive batch (a work unit)
    adaptive_slots: int = _M.adaptive_slots   # images evaluated together (not in any record)
    adaptive_save_seconds: float = 60.0       # an adaptive batch's progress is saved this often
    adaptive_routes: Optional[Tuple[str, ...]] = None   # None: every route of each defense
    adaptive_goals: Optional[Tuple[str, ...]] = None    # None: every goal of each defense
    k_transfer: Optional[str] = _M.k_transfer   # surrogate K checkpoint for threat "transfer"
    # the robust K of unmask:k=robust: "last" (newest robust K in k_robust_log_dir) or a path
    k_robust: str = "last"
    k_transfer_robust: Optional[str] = _M.k_transfer_robust   # its surrogate (another seed)
    k_robust_log_dir: str = ROBUST_K_DIRS["k_log_dir"]
    n_test: Optional[int] = _M.n_test
    attack_batch: int = 50
    seed: int = _DATA.seed
    results_dir: str = _M.results_dir
    checkpoint_dir: str = _M.checkpoint_dir
    progress: bool = not _M.no_progress
    distribute: str = _M.distribute      # M's, AT's and the trajectory detector's training:
    #                                      none, mirrored, multi-worker
    shards: int = 1                      # image shards per attack vector (grid work units);
    #                                      the merged records equal the unsharded ones
    # a rerun's models that are not the recorded ones (--config --allow-other-models)
    other_models: Tuple[str, ...] = ()

    def __post_init__(self):
        if self.defenses is None:
            self.defenses = tuple(DEFAULT_DEFENSES) + (("at",) if self.adv_train else ())
        self.defenses = tuple(self.defenses)
        if any("at" in build_defense(label).models_needed() for label in self.defenses):
            self.adv_train = True           # the AT row, or an UnMask holding the AT model
        elif self.adv_train:
            self.defenses = self.defenses + ("at",)
        if isinstance(self.shards, bool) or not isinstance(self.shards, int) or self.shards < 1:
            raise ValueError("shards must be an integer >= 1, got %r" % (self.shards,))
        self.threats = tuple(Threat.parse(t) for t in self.threats)
        if self.at_model is not None:
            self.adv_train = True
            if "at" not in self.defenses:
                self.defenses = self.defenses + ("at",)
        if self.m_model is not None:
            self._check_own_model()
        self.engine_settings()                   # validates the adaptive settings
        if self.adaptive_gradient is not None:
            check_gradient_mode(self.adaptive_gradient)

    def _check_own_model(self) -> None:
        """What cannot run on your own classifier (--m-model), refused up front: the
        trajectory detector taps the blocks of a known backbone (``models.taps``)."""
        with_taps = [d for d in self.defenses if build_defense(d).reads_m_layers]
        with_taps += ["--trajectory-table"] if self.trajectory_table else []
        if with_taps:
            raise ValueError("--m-model: the trajectory detector reads the blocks of one of "
                             "the project's architectures (--arch), not of your own "
                             "classifier; drop %s" % ", ".join(with_taps))

    def refuse_what_does_nothing(self) -> None:
        """A setting that would change nothing is refused with the reason, not reported as
        a result: a defense parameter the extractor ignores (``unmask:input=random`` with the
        oracle; checked here when the extractor is given, and by the defense's fit when the
        run chooses it), a route no defense of the run has, routes without a defense-aware
        threat model.  Run before any work by the command line and ``--config``."""
        defenses = [build_defense(label) for label in self.defenses]
        if self.extractor is not None:
            for d in defenses:
                why = d.ignored_parameters(self.extractor)
                if why:
                    raise ValueError("--defenses %s: %s" % (d.label, why))
        for flag, value in (("--adaptive-goals", self.adaptive_goals),
                            ("--adaptive-routes", self.adaptive_routes)):
            if value and not any(t in self.threats for t in DEFENSE_AWARE):
                raise ValueError("%s narrows the defense-aware attacks, and the run has none: "
                                 "add --threat gray-box,adaptive" % flag)
        aware = [d for d in defenses if Threat.ADAPTIVE in d.threats]
        if self.adaptive_goals and not any(len(d.adaptive_goals()) > 1 for d in aware):
            raise ValueError("--adaptive-goals changes nothing here: each of the run's defenses "
                             "(%s) has one defense-aware run that serves both goals (a "
                             "classifier, a rejecting detector); it narrows a rectifying "
                             "UnMask's two runs -- drop it" % ", ".join(self.defenses))
        if self.adaptive_routes:
            from defense.threats import GOALS, Goal
            have = {r for d in aware for g in GOALS for r in d.adaptive_routes(Goal(g))}
            idle = [r for r in self.adaptive_routes if r not in have]
            if idle:
                raise ValueError("--adaptive-routes: %s is a route of none of the run's "
                                 "defenses (%s), whose routes are %s" % (
                                     ", ".join(idle), ", ".join(self.defenses),
                                     ", ".join(sorted(have)) or "none"))

    @classmethod
    def from_options(cls, options: Options) -> "EvalConfig":
        """The run of a command line's options, every value checked first (ValueError
        naming the option)."""
        if options.m.at_model is not None and "at_eps" in options.given:
            raise ValueError("--at-eps sets the budget of the AT model the run trains; "
                             "--at-model gives one already trained: drop --at-eps")
        cfg = cls(**options.m.resolve(options.data, options.k),
                  shards=options.grid.shards or 1)
        cfg.refuse_what_does_nothing()
        return cfg

    def engine_settings(self) -> EngineSettings:
        """How the adaptive engine runs the defense-aware attacks."""
        return EngineSettings(steps=self.adaptive_steps, restarts=self.adaptive_restarts,
                              max_targets=self.adaptive_targets)

    def adaptive_options(self) -> AdaptiveOptions:
        return AdaptiveOptions(gradient=self.adaptive_gradient, eot_samples=self.eot_samples,
                               routes=(None if self.adaptive_routes is None
                                       else tuple(self.adaptive_routes)))

    @property
    def m_name(self) -> str:
        """The models' name in the results' folders: the architecture, or ``own-NAME-SHA1``
        for your own classifier file ``NAME.h5`` (--m-model; the first 8 hex digits of its
        sha1, so two files of one name, or a file retrained in place, never share a folder),
        followed by ``+at-own-NAME-SHA1`` for your own AT model (--at-model): a run's saved
        records are found by their path, so runs of other models never share a folder."""
        name = self.arch if self.m_model is None else _own_name(self.m_model)
        return name if self.at_model is None else name + "+at-" + _own_name(self.at_model)

    @property
    def m_checkpoint(self) -> str:
        """The file M is loaded from: your own classifier (--m-model), or the best epoch of
        the M the run trains."""
        return self.m_model or os.path.join(self.m_dir, "best.h5")

    @property
    def at_checkpoint(self) -> str:
        """The file the AT model is loaded from: yours (--at-model), or the best epoch of the
        AT model the run trains beside M's folder."""
        from defense.adversarial_training import at_checkpoint_dir
        return self.at_model or os.path.join(at_checkpoint_dir(self.m_dir, self.at_eps),
                                             "best.h5")

    def own_models(self) -> Dict[str, str]:
        """The model files you gave (``"m"``: --m-model, ``"at"``: --at-model)."""
        return {k: v for k, v in (("m", self.m_model), ("at", self.at_model)) if v}

    @property
    def out_dir(self) -> str:
        return os.path.join(self.results_dir, self.class_set.code_name, self.m_name)

    @property
    def m_dir(self) -> str:
        """M's folder: class set, architecture, input size and every training setting that
        differs from the original recipe (``TrainConfig.folder_suffix``), so M trained with
        another ``--lr`` or ``--seed`` never reuses (or overwrites) another setting's."""
        return os.path.join(self.checkpoint_dir, "model_m", self.class_set.code_name,
                            "%s_%d%s%s" % (self.arch, self.input_size,
                                           self.train.folder_suffix(),
                                           "_imagenet" if self.weights else ""))


@functools.lru_cache(maxsize=16)
def _sha1_of(path: str, size: int, mtime_ns: int) -> str:
    return file_digest(path, "sha1")


def _own_name(path: str) -> str:
    """``own-NAME-SHA1`` of your model file ``.../NAME.h5``."""
    stem = os.path.splitext(os.path.basename(path.rstrip(os.sep)))[0]
    return "own-%s-%s" % (re.sub(r"[^A-Za-z0-9_.+-]", "-", stem) or "m",
                          _digest_of(path)[:8])


def _digest_of(path: str) -> str:
    """sha1 of the file at ``path``, read once while it is unchanged ("missing" when there is
    no file: the run refuses it before any work)."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return _sha1_of(os.path.abspath(path), st.st_size, st.st_mtime_ns)


# ----------------------------------------------------------------------------- config.json

def to_dict(cfg: EvalConfig) -> Dict[str, Any]:
    """``cfg`` as JSON values (every field; :func:`from_dict` reads it back)."""
    out = dataclasses.asdict(cfg)
    out["class_set"] = cfg.class_set.code_name
    out["vectors"] = [[name, float(eps)] for name, eps in cfg.vectors]
    out["defenses"] = list(cfg.defenses)
    out["threats"] = [str(t) for t in cfg.threats]
    return json.loads(json.dumps(out))


def from_dict(values: Mapping[str, Any]) -> EvalConfig:
    """The :class:`EvalConfig` of :func:`to_dict`'s output, every setting checked as the
    command line checks it (types, ranges, names; ValueError naming the setting)."""
    if not isinstance(values, Mapping):
        raise ValueError("the configuration must be an object of settings, got %s"
                         % type(values).__name__)
    names = {f.name for f in dataclasses.fields(EvalConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError("unknown setting(s) %s" % ", ".join(unknown))
    if "class_set" not in values:
        raise ValueError("setting 'class_set' is missing (a class set such as cs5-2)")
    hints = typing.get_type_hints(EvalConfig)
    for name, value in values.items():
        _check_setting(name, value, hints[name])
    kw = dict(values)
    try:
        kw["class_set"] = get_class_set(kw["class_set"])
        kw["train"] = _train_config(kw.get("train", {}))
        kw["vectors"] = tuple(_vector(v) for v in kw.get("vectors", ()))
        kw["defenses"] = tuple(kw.get("defenses", ())) or None
        if kw["defenses"] is not None:
            from defense.defenses import parse_defenses
            kw["defenses"] = tuple(parse_defenses(",".join(kw["defenses"])))
        kw["threats"] = tuple(kw.get("threats", (GRAY_BOX,)))
        kw["other_models"] = tuple(kw.get("other_models", ()))
        if kw.get("adaptive_routes") is not None:
            kw["adaptive_routes"] = parse_routes(",".join(kw["adaptive_routes"]))
        if kw.get("adaptive_goals") is not None:
            kw["adaptive_goals"] = parse_goals(",".join(kw["adaptive_goals"]))
        cfg = EvalConfig(**kw)
    except (KeyError, TypeError) as e:
        raise ValueError("not a run's configuration (%s: %s)" % (type(e).__name__, e)) from None
    _check_like_the_command_line(cfg)
    cfg.refuse_what_does_nothing()
    return cfg


def _check_like_the_command_line(cfg: EvalConfig) -> None:
    """The checks the command line makes on a run's settings taken together
    (:meth:`~evaluation.options.MOptions.resolve`), for a configuration read from a file."""
    from defense.thresholds import check_target_fpr
    from models.classifier import get_architecture
    check_target_fpr(cfg.target_fpr)
    arch = get_architecture(cfg.arch)
    if not arch.min_size <= cfg.input_size <= MAX_INPUT_SIZE:
        raise ValueError("setting 'input_size' must be in [%d, %d] for arch %s, got %d"
                         % (arch.min_size, MAX_INPUT_SIZE, arch.name, cfg.input_size))
    check_l2_budgets(cfg.vectors, cfg.input_size)


def _type_problem(value: Any, hint: Any) -> Optional[str]:
    """Why ``value`` (read from JSON) is not of the type ``hint`` (None when it is)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        problems = [_type_problem(value, a) for a in args if a is not type(None)]
        return None if any(p is None for p in problems) else problems[0]
    if hint is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if hint is int:
        return (None if isinstance(value, int) and not isinstance(value, bool)
                else "must be an integer")
    if hint is float:
        return (None if isinstance(value, (int, float)) and not isinstance(value, bool)
                else "must be a number")
    if hint is str:
        return None if isinstance(value, str) else "must be a text"
    if origin in (tuple, list, collections.abc.Sequence) or hint in (tuple, list):
        return None if isinstance(value, list) else "must be a list"
    if hint is ClassSet:
        return None if isinstance(value, str) else "must be a class set name such as cs5-2"
    if hint is TrainConfig:
        return None if isinstance(value, Mapping) else "must be an object of training settings"
    return None


def _check_setting(name: str, value: Any, hint: Any) -> None:
    """One setting of a recorded configuration checked as its command-line option is (type,
    then the option's range check); ValueError naming the setting."""
    problem = _type_problem(value, hint)
    if problem:
        raise ValueError("setting %r %s, got %r" % (name, problem, value))
    for options in (MOptions, DataOptions, KOptions):
        field = options.__dataclass_fields__.get(name)
        check = field.metadata.get("check") if field is not None else None
        if check is not None and value is not None and not isinstance(value, (list, dict)):
            try:
                check("setting %r" % name, value)
            except ValueError as e:
                raise ValueError(str(e)) from None
            return


def _train_config(values: Mapping[str, Any]) -> TrainConfig:
    """``train``'s settings checked (types, then :meth:`TrainConfig.validate`'s ranges)."""
    hints = typing.get_type_hints(TrainConfig)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError("unknown setting(s) train.%s" % ", train.".join(unknown))
    for name, value in values.items():
        problem = _type_problem(value, hints[name])
        if problem:
            raise ValueError("setting 'train.%s' %s, got %r" % (name, problem, value))
    train = TrainConfig(**values)
    train.validate()
    return train


def _vector(value: Any) -> Tuple[str, float]:
    """One attack vector ``[name, eps]`` of the setting ``vectors``, checked as ``--attacks``
    checks it."""
    if (not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], str)
            or isinstance(value[1], bool) or not isinstance(value[1], (int, float))):
        raise ValueError("setting 'vectors' must hold [attack name, eps] pairs, got %r"
                         % (value,))
    (vector,) = parse_vectors("%s:%r" % (value[0], float(value[1])))
    return vector


def defaults_used(cfg: EvalConfig) -> list:
    """The settings of ``cfg`` left at their default (the configuration's resolved values
    compared with those of a default run of the same class set)."""
    default = to_dict(EvalConfig(class_set=cfg.class_set))
    mine = to_dict(cfg)
    return sorted(k for k in mine if k != "class_set" and mine[k] == default[k])


def checkpoint(path: Optional[str]) -> Optional[Dict[str, str]]:
    """``{"path", "sha1"}`` of a checkpoint file (None when there is none)."""
    if not path or not os.path.isfile(path):
        return None
    return {"path": path, "sha1": file_digest(path, "sha1")}


def record(command: str, cfg: Optional[EvalConfig] = None,
           checkpoints: Optional[Mapping[str, Optional[str]]] = None,
           **extra: Any) -> Dict[str, Any]:
    """``config.json``'s content (module docstring) for ``command`` run with ``cfg`` (K's
    runner: with ``options``), the checkpoints it used (name -> file) and ``extra`` fields."""
    from evaluation.schema import package_versions

    if command not in COMMANDS:
        raise ValueError("command must be one of %s, got %r" % (", ".join(COMMANDS), command))
    out: Dict[str, Any] = {"version": CONFIG_VERSION, "command": command}
    if cfg is not None:
        out["config"] = to_dict(cfg)
        out["defaults"] = defaults_used(cfg)
    out.update(json.loads(json.dumps(extra, default=str)))
    out["versions"] = package_versions()
    out["checkpoints"] = {name: checkpoint(path) for name, path in (checkpoints or {}).items()
                          if checkpoint(path) is not None}
    return out


def read_record(path: str) -> Dict[str, Any]:
    """A ``config.json`` read back (ValueError / FileNotFoundError naming the file)."""
    if not os.path.isfile(path):
        raise FileNotFoundError("--config %s: no such file; give the config.json a run wrote "
                                "beside its results (results/<code>/<arch>/config.json, "
                                "results/grid/config.json or K's --k-results-dir)" % path)
    try:
        with open(path, encoding="utf-8") as f:
            rec = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError("--config %s cannot be read: %s" % (path, e)) from None
    if not isinstance(rec, dict) or rec.get("version") != CONFIG_VERSION \
            or rec.get("command") not in COMMANDS:
        raise ValueError("--config %s is not a run's config.json (version %d, command one of "
                         "%s)" % (path, CONFIG_VERSION, ", ".join(COMMANDS)))
    needs = {"evaluate": {"config": dict}, "grid": {"config": dict, "archs": list,
                                                   "class_sets": list},
             "k": {"options": dict}}[rec["command"]]
    for key, kind in needs.items():
        if not isinstance(rec.get(key), kind):
            raise ValueError("--config %s: a record of command %r needs %r (%s), %s; give the "
                             "config.json the run wrote" % (path, rec["command"], key,
                                                "an object" if kind is dict else "a list",
                                                "it is missing" if key not in rec
                                                else "got %r" % (rec[key],)))
    checkpoints = rec.get("checkpoints", {})
    if not isinstance(checkpoints, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("sha1"), str) for v in checkpoints.values()):
        raise ValueError("--config %s: 'checkpoints' must map each model to its path and sha1"
                         % path)
    return rec
