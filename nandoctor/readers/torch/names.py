"""Name every tensor inside an unpickled checkpoint object: nested containers become dotted names.

``{"state_dict": {"model.layers.3.mlp.up_proj.weight": t}}`` gives
``state_dict.model.layers.3.mlp.up_proj.weight``; list and tuple items are
numbered. An optimizer state dict (``{"state": {i: {...}}, "param_groups":
[...]}``, wherever it sits) names its moments ``state.<i>.exp_avg``, or
``state.<parameter name>.exp_avg`` when the groups carry ``param_names``.
Placeholders for unknown globals are walked too (their arguments by
position, their state by attribute name), so a tensor is never missed
because the object around it was unknown.
"""

from __future__ import annotations

import math
import re
import reprlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from nandoctor.checkpoint.roles import (
    MODEL_CONTAINER_KEYS,
    TRAINER,
    is_model_state,
    is_trainer_checkpoint,
    pickle_role,
)
from nandoctor.model import CONFIG_KIND, EPS_HARMFUL, ScanProblem
from nandoctor.readers.torch import nested, numpy_arrays
from nandoctor.readers.torch.stubs import (
    META_TENSOR_GLOBAL,
    Placeholder,
    StorageRef,
    TensorStub,
    attributes,
)

MAX_DEPTH = 200
MAX_NODES = 1_000_000  # containers and tensors visited; shared sub-objects count once per path (hostile DAGs)
# Of those, the ones reached again through a container already walked along another path. Real files share
# little (a state dict saved under two keys); a pickle memo makes 2**40 paths from 40 lists ([x, x] nested),
# so this bound keeps such a bomb to a fraction of a second.
MAX_SHARED_NODES = 250_000
PARAM_GROUPS = "param_groups"  # an optimizer state dict's hyperparameters (torch.optim.Optimizer.state_dict)
# The param_groups settings that a step multiplies the update by: a NaN or ±Inf there makes weights NaN at the next
# step. Others may be infinite by design (Prodigy's and D-Adaptation's growth_rate defaults to inf).
RATE_KEYS = frozenset({"lr", "initial_lr", "max_lr", "min_lr", "betas", "eps", "momentum", "dampening",
                       "weight_decay", "alpha", "rho", "lr_decay", "beta1", "beta2", "decay_rate"})


# A learning-rate scheduler's rates (torch.optim.lr_scheduler.LRScheduler.state_dict): it sets them into the
# optimizer's param_groups at its next step. (A ReduceLROnPlateau's best = inf is its design, and not among them.)
SCHEDULER_RATE_KEYS = frozenset({"base_lrs", "_last_lr", "max_lrs", "min_lrs"})


# A trainer checkpoint's saved constructor arguments of the model: Lightning's load_from_checkpoint builds the module
# from them (the datamodule's build no model: a review's fill_value = nan there was a missing-value marker).
HYPERPARAMETER_KEYS = frozenset({"hyper_parameters", "hparams"})
# Words of a setting that arithmetic reads: an infinite one is as bad as NaN there (x * inf, x / inf), a NaN is bad
# anywhere but in a sentinel's name (_SENTINEL_WORDS)
_ARITHMETIC_WORDS = frozenset({"eps", "epsilon", "lr", "rate", "scale", "scaling", "temperature", "temp", "tau", "std",
                               "momentum", "dropout", "alpha", "beta", "gamma", "decay", "factor", "theta", "base",
                               "norm", "clip", "softcap", "softcapping", "init", "weight", "margin", "smoothing",
                               "multiplier", "mult", "coef", "coeff", "lambda", "lambd", "sigma", "mu", "gain", "bias"})
_SENTINEL_WORDS = frozenset({"fill", "pad", "padding", "missing", "nan", "ignore", "mask", "sentinel", "null", "na",
                             "placeholder", "invalid", "empty", "default"})
_EPSILON_WORDS = frozenset({"eps", "epsilon"})
# Words of a bound or a switch, where Infinity is the usual "off": max_grad_norm = inf, gradient_clip_val = inf,
# early_stop_threshold = inf
_BOUND_WORDS = frozenset({"max", "min", "limit", "clip", "clipping", "threshold", "cap", "upper", "lower", "bound",
                          "patience", "grad", "gradient", "stop", "tol", "tolerance",
                          # (a schedule's point: lr_decay_steps = inf, "never")
                          "step", "steps", "epoch", "epochs", "every", "start", "until", "end", "after", "interval",
                          "freq", "frequency", "warmup", "iter", "iters", "period", "count", "num", "best", "seed"})
_NOT_A_NORM_EPSILON = frozenset({"log", "exponent", "exp", "decay", "greedy", "clip", "schedule", "min", "max"})


def _words(key: str) -> set[str]:
    """A hyperparameter name's words, snake_case or camelCase, digits aside (``beta1``: beta; ``initStd``: init, std)."""
    return set(_words_in_order(key))


def harmful_setting(key: str, value: float) -> str | None:
    """What a saved hyperparameter ``value`` under ``key`` does to the model built from it, if harm: a NaN (but in a
    sentinel's name: a fill or pad value), an infinite value where arithmetic reads it, a norm's epsilon at or below
    -1e-3 (the square root of a negative mean square); None otherwise."""
    words = _words(key)
    if math.isnan(value):  # (where arithmetic reads it: a NaN path or seed is a pandas sweep table's empty cell)
        return "NaN" if words & _ARITHMETIC_WORDS and not words & (_SENTINEL_WORDS | _BOUND_WORDS) else None
    if math.isinf(value):  # (an infinite epsilon makes a norm's output 0, finite: config.json's rule leaves it too)
        bad = words & _ARITHMETIC_WORDS and not words & (_SENTINEL_WORDS | _EPSILON_WORDS | _BOUND_WORDS)
        return f"{value}" if bad else None
    if _norm_epsilon(key, words) and value <= EPS_HARMFUL:  # (as config.json's epsilons are judged)
        return f"{value:g} (a norm's epsilon: the square root of a negative mean square is NaN)"
    return None


def _norm_epsilon(key: str, words: set[str]) -> bool:
    """A name that is a norm's epsilon (``eps``, ``layer_norm_eps``, ``rms_eps``), not a log or an exponent of one,
    nor an exploration or clipping epsilon (``log_eps``, ``eps_exponent``, ``epsilon_greedy``, ``eps_clip``)."""
    last = _words_in_order(key)[-1:]
    return bool(last) and last[0] in _EPSILON_WORDS and not words & _NOT_A_NORM_EPSILON


def _words_in_order(key: str) -> list[str]:
    return re.findall(r"[a-z]+", re.sub(r"(?<=[a-z])(?=[A-Z])", "_", key).lower())


def hyperparameter_problems(path: str, found: list[tuple[str, str]]) -> list[ScanProblem]:
    """BAD CONFIG for the saved hyperparameters ``found`` ((name, what it is)) of the trainer checkpoint at ``path``
    (an adversarial round: a LightningModule saved with ``eps = nan`` loaded, built LayerNorm(eps=nan), and every
    output was NaN, while its scan passed CLEAN; so did multiplier = nan, scale = inf and eps = -1)."""
    if not found:
        return []
    from nandoctor.wording import first_few

    said = [f"{name} is {what}" for name, what in found]
    return [ScanProblem(
        path, f"{first_few(said, 3)}: load_from_checkpoint builds the model from these saved hyperparameters as "
        "written (cls(**hyper_parameters)), and what it computes from them is NaN or Inf",
        "write the values the model was trained with into the checkpoint's hyper_parameters (torch.load it, set them, "
        "torch.save it), or pass them to load_from_checkpoint as keyword arguments, which override the saved ones",
        kind=CONFIG_KIND)]


# A loss scale at or below this is no scale: the GradScaler keeps it in float32, where a smaller one is 0 or its reciprocal
# (what unscale multiplies the gradients by) overflows to Inf (an adversarial round: 2^-130 and 1e-40 passed)
DEAD_SCALE = 2.0**-128


def scaler_problems(path: str, found: list[str]) -> list[ScanProblem]:
    """BAD CONFIG for gradient scalers saved with a loss scale at or below DEAD_SCALE (``found``: where each is): a resumed run
    multiplies every loss by it, unscales its gradients to NaN (0 × 1/0) and skips every step, its scale stuck at 0
    (the end of a long fp16 NaN streak halves it to 0; an adversarial round: scaler.pt's scale 0.0 scanned CLEAN)."""
    if not found:
        return []
    from nandoctor.wording import first_few

    return [ScanProblem(
        path, f"the gradient scaler's loss scale is 0, below 0 or too small for float32 ({first_few(found, 3)}): a "
        "training run resumed from it multiplies every loss by it, its gradients unscale to NaN and every step is "
        "skipped",
        "resume from an earlier checkpoint, or delete the scaler's state (a Trainer checkpoint's scaler.pt) so that "
        "the resumed run starts a fresh scaler", kind=CONFIG_KIND)]


def is_rate_path(path: list[str]) -> bool:
    """Whether ``path`` names a rate a training step uses: one of RATE_KEYS in an optimizer's param_groups, or of
    SCHEDULER_RATE_KEYS anywhere (or an item of one: ``betas.1``, ``base_lrs.0``)."""
    key = path[-1] if path else ""
    if key.isdigit() and len(path) > 1:
        key = path[-2]
    return key in SCHEDULER_RATE_KEYS or (key in RATE_KEYS and PARAM_GROUPS in path)


# What marks a scheduler's state: torch's (every ``state_dict()`` holds ``_last_lr``, and base_lrs, min_lrs or max_lrs:
# SCHEDULER_RATE_KEYS) and mmengine's ParamScheduler (``base_values``, ``_last_value``)
_SCHEDULER_MARKS = SCHEDULER_RATE_KEYS | {"base_values", "_last_value"}


def is_scheduler_state(value: Any) -> bool:
    """Whether the mapping ``value`` is a learning-rate (or parameter) scheduler's state (_SCHEDULER_MARKS)."""
    return any(key in value for key in _SCHEDULER_MARKS)


# torch.amp.GradScaler.state_dict(): what Trainer saves as scaler.pt and Lightning under "MixedPrecision"
_SCALER_KEYS = frozenset({"scale", "growth_factor", "backoff_factor", "growth_interval"})


# Megatron's DynamicGradScaler.state_dict(): its scale a one-element float tensor, which grows to 2^17 and more in a
# healthy fp16 run (a helper's run: every such save failed EXPLODED, the scale judged as a weight)
_SCALER_MARKS = frozenset({"growth_tracker", "hysteresis_tracker", "hysteresis", "growth_factor", "backoff_factor"})


def is_scaler_state(value: Any) -> bool:
    """Whether the mapping ``value`` is a gradient scaler's state (``GradScaler.state_dict()``, Megatron's: a
    ``scale`` beside its growth or hysteresis bookkeeping)."""
    return _SCALER_KEYS.issubset(value) or ("scale" in value and not _SCALER_MARKS.isdisjoint(value))


def breaks_a_step(path: list[str], value: float, in_scheduler: bool, in_scaler: bool = False) -> bool:
    """Whether the non-finite Python float ``value`` at ``path`` makes the next training step NaN once resumed: a NaN
    anywhere in an optimizer's param_groups or in a scheduler's state (``in_scheduler``): every setting there feeds
    the update or the next rate (Rprop's etas, ASGD's lambd, StepLR's gamma, CosineAnnealingLR's eta_min: a trial
    resumed each as NaN weights while the scan passed); ±Inf only at the rates (is_rate_path), since some settings
    are infinite by design (Prodigy's growth_rate, ReduceLROnPlateau's best). In a gradient scaler's state
    (``in_scaler``) every non-finite value: a NaN or infinite loss scale makes every step's gradients non-finite, and
    the scaler skips every step after the resume (an adversarial round: scaler.pt's scale NaN or Inf scanned CLEAN)."""
    return (math.isnan(value) and (in_scheduler or PARAM_GROUPS in path)) or is_rate_path(path) or in_scaler


_LEAVES = (str, bytes, bytearray, int, float, complex, bool, type(None), type, slice)
_MAX_KEY_CHARS = 200
# repr() of a key follows every path of a shared structure (2**40 of them from a few hundred bytes: once 34 s
# and 2 GB): reprlib stops at a few levels and items, whatever the key holds.
_BOUNDED = reprlib.Repr()
_BOUNDED.maxlevel, _BOUNDED.maxother, _BOUNDED.maxstring, _BOUNDED.maxlong = 3, 60, _MAX_KEY_CHARS, 60
_BOUNDED.maxtuple = _BOUNDED.maxlist = _BOUNDED.maxset = _BOUNDED.maxfrozenset = 6


class WalkLimitError(Exception):
    """The object graph is deeper or larger than any checkpoint (a hostile pickle)."""


@dataclass(frozen=True)
class NamedTensor:
    name: str
    tensor: TensorStub


@dataclass(frozen=True)
class NamedStorage:
    name: str
    storage: StorageRef


@dataclass
class Walk:
    tensors: list[NamedTensor] = field(default_factory=list)
    storages: list[NamedStorage] = field(default_factory=list)  # bare storages, not inside a tensor
    renamed: list[str] = field(default_factory=list)  # names made unique with a #n suffix
    unreached: list[str] = field(default_factory=list)  # tensors the pickle built that no name reached
    optimizers_named: int = 0  # optimizer state dicts whose ids were mapped to parameter names
    trainer: set[str] = field(default_factory=set)  # names of tensors/storages in trainer state (roles.pickle_role)
    # names of tensors/storages inside an optimizer state dict (its shape: is_optimizer_state), whatever key holds
    # it (fairseq's last_optimizer_state, a GAN's optimizer_G): moments and step counters, never weights
    optimizer: set[str] = field(default_factory=set)
    arrays: list[tuple[str, Placeholder]] = field(default_factory=list)  # pickled numpy arrays (numpy_arrays.py)
    streams: list[tuple[str, Placeholder]] = field(default_factory=list)  # pickled io.BytesIO values (nested.py)
    meta: list[str] = field(default_factory=list)  # names of tensors saved from the meta device (no values)
    # NaN/±Inf Python floats of an optimizer's param_groups (a learning rate, betas, eps) or a scheduler's settings
    # (breaks_a_step): not tensors, but a resume restores them, and one NaN lr makes every weight NaN at the next step
    group_floats: list[tuple[str, float]] = field(default_factory=list)
    # NaN Python floats of a trainer checkpoint's saved hyperparameters (Lightning's hyper_parameters): the module
    # load_from_checkpoint builds from them (cls(**hyper_parameters)) computes NaN (hyperparameter_problems)
    hyper_floats: list[tuple[str, str]] = field(default_factory=list)  # (name, what it is: "NaN", "inf", …)
    dead_scalers: list[str] = field(default_factory=list)  # gradient scalers' loss scales ≤ DEAD_SCALE (scaler_problems)
    _top: int = -1  # where the top-level dict's key stands in a path (-1: the pickle is no dict)
    _trainer_checkpoint: bool = False  # the top-level dict keeps a model or optimizer container (roles.py)
    # its top holds no tensor of more than one element: a one-element one there is the loop's (a best loss),
    # not the model's (a model's weights spread at the top beside an optimizer hold its learned scalars too)
    _scalars_are_state: bool = False
    _groups: tuple[str, ...] = ()  # the name of the param_groups value the whole pickle is (walk's ``groups``)
    # top-level key → (name, whether one element and no Parameter) of each tensor nested under it, kept only in a
    # trainer checkpoint whose model sits in a container (walk: a key holding one-element tensors alone is the loop's)
    _nested_scalars: dict[str, list[tuple[str, bool]]] | None = None
    _names: Counter[str] = field(default_factory=Counter)
    _nodes: int = 0
    _shared_nodes: int = 0
    _seen: set[int] = field(default_factory=set)  # ids of the containers walked at least once
    # ids of containers walked whole that held no tensor or storage: reached again (through the pickle
    # memo, a million times from a one-megabyte file), they are not walked again.
    _empty: set[int] = field(default_factory=set)


def segment(key: Any) -> str:
    """One name segment from a dict key or attribute; text from the file is kept printable-safe."""
    if isinstance(key, str):
        text = key
    elif isinstance(key, bytes):
        text = key.decode("utf-8", "backslashreplace")
    elif isinstance(key, (bool, int)) or key is None:
        text = str(key)
    elif isinstance(key, TensorStub):
        text = "<tensor>"  # a tensor as a dict key (the tensor itself is walked as <key i>)
    elif isinstance(key, StorageRef):
        text = f"<storage {key.key}>"
    else:
        text = _BOUNDED.repr(key) if not isinstance(key, Placeholder) else key.global_name
    # Lone surrogates (pickles may carry them) cannot be printed or written as UTF-8: escape them.
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= _MAX_KEY_CHARS else text[:_MAX_KEY_CHARS] + "…"


def is_optimizer_state(value: Any) -> bool:
    """Whether ``value`` is shaped as ``torch.optim.Optimizer.state_dict()``: a ``state`` dict of per-parameter dicts
    (a model's state dict stored under "state" holds tensors there, not dicts) and a ``param_groups`` list."""
    # dict.get, not value.get: a BUILD may have set an attribute named "get" (or "items") on an OrderedDict.
    if not isinstance(value, dict):
        return False
    state = dict.get(value, "state")
    return (isinstance(state, dict) and isinstance(dict.get(value, "param_groups"), list)
            and all(isinstance(moments, dict) for moments in dict.values(state)))


def parameter_names(optimizer: dict) -> dict[Any, str]:
    """Parameter id → name from ``param_groups[*].param_names`` (torch ≥ 2.5 named optimizers); {} if absent."""
    mapping: dict[Any, str] = {}
    for group in optimizer["param_groups"]:
        if not isinstance(group, dict):
            return {}
        ids, names = dict.get(group, "params"), dict.get(group, "param_names")
        if not isinstance(ids, list) or not isinstance(names, list) or len(ids) != len(names):
            return {}
        for pid, name in zip(ids, names):
            if not isinstance(name, str) or (pid in mapping and mapping[pid] != name):
                return {}
            try:
                mapping[pid] = name
            except TypeError:  # an unhashable id
                return {}
    if len(set(mapping.values())) != len(mapping):
        return {}  # two ids with one name would merge their moments
    return mapping


def walk(root: Any, prefix: str = "", groups: tuple[str, ...] = ()) -> Walk:
    """Every tensor and bare storage reachable from ``root``, named; ``prefix`` starts every name. ``groups``: the
    name, split at its dots, of the optimizer param_groups value ``root`` is (a DCP item ``optim.param_groups.0.lr``),
    whose non-finite rate is kept as a float of its param_groups is."""
    out = Walk(_groups=groups)
    if isinstance(root, dict):
        out._top = 1 if prefix else 0
        out._trainer_checkpoint = is_trainer_checkpoint(
            key for key, value in dict.items(root)
            if isinstance(key, str) and not isinstance(value, (TensorStub, StorageRef, *_LEAVES))
        )
        beside_a_model = any(key in MODEL_CONTAINER_KEYS and isinstance(value, dict) for key, value in dict.items(root))
        out._scalars_are_state = beside_a_model or not any(
            isinstance(value, TensorStub) and math.prod(value.size) > 1 for value in dict.values(root))
        out._nested_scalars = {} if beside_a_model and out._trainer_checkpoint else None
    _visit(root, [prefix] if prefix else [], out, set(), 0)
    if out._nested_scalars:
        # A top-level entry beside the model that holds nothing but one-element tensors is the loop's state (an
        # early-stopping callback's {"best_score": tensor(inf), "counter": 3}: a zoo trial's false NON-FINITE)
        for key, members in out._nested_scalars.items():
            if key not in MODEL_CONTAINER_KEYS and not is_model_state(key) and all(one for _, one in members):
                out.trainer.update(name for name, _ in members if name not in out.optimizer)
    return out


def add_unreached(out: Walk, built: Iterable[TensorStub], prefix: str = "") -> None:
    """Every tensor the unpickler built (its registry, ``built``) that the walk did not reach, added as
    ``<tensor i>``: torch loads it wherever it sits (an attribute of an empty hooks dict, of an optimizer's
    ``state``, a subclass state that replaced another), so it is scanned whatever the walker knows."""
    reached = {named.tensor.view_key for named in out.tensors}
    for stub in built:
        if stub.view_key in reached:
            continue
        reached.add(stub.view_key)
        name = _emit_name([*([prefix] if prefix else []), f"<tensor {len(out.unreached)}>"], out)
        out.tensors.append(NamedTensor(name, stub))
        out.unreached.append(name)


# What a value is inside of (``_visit``'s ``within``, bits): an optimizer's state dict, a scheduler's state
_IN_OPTIMIZER, _IN_SCHEDULER, _IN_SCALER = 1, 2, 4
OPTIMIZER_PARTS = ("state", PARAM_GROUPS)  # the keys of an optimizer state dict that hold its state


def _emit_name(path: list[str], out: Walk, scalar: bool = False, within: int = 0) -> str:
    name = ".".join(path) if path else "tensor"
    out._names[name] += 1
    if out._names[name] > 1:
        name = f"{name}#{out._names[name]}"
        out.renamed.append(name)
    if within & (_IN_OPTIMIZER | _IN_SCALER):  # (a loss scale tensor: optimizer state, its NaN a finding, its size none)
        out.optimizer.add(name)
    elif out._top >= 0 and pickle_role(path[out._top:], out._trainer_checkpoint, scalar) == TRAINER:
        out.trainer.add(name)
    return name


def _visit(value: Any, path: list[str], out: Walk, on_path: set[int], depth: int, shared: bool = False,
           within: int = 0) -> None:
    if isinstance(value, _LEAVES):
        # (numbers and strings hold no tensors, and are not counted: a long list of ints is fine)
        if value.__class__ is float and not math.isfinite(value) and breaks_a_step(
                [*out._groups, *path], value, bool(within & _IN_SCHEDULER), bool(within & _IN_SCALER)):
            out.group_floats.append((".".join(path), value))
        elif (within & _IN_SCALER and path and path[-1] == "scale" and isinstance(value, (int, float))
              and value <= DEAD_SCALE):
            out.dead_scalers.append(".".join(path))
        elif (isinstance(value, float) and out._trainer_checkpoint and 0 <= out._top < len(path) - 1
              and path[out._top] in HYPERPARAMETER_KEYS and (harm := harmful_setting(path[-1], value)) is not None):
            out.hyper_floats.append((".".join(path), harm))
        return
    out._nodes += 1
    if out._nodes > MAX_NODES:
        raise WalkLimitError(f"the pickled objects have more than {MAX_NODES:,} parts")
    if shared:
        out._shared_nodes += 1
        if out._shared_nodes > MAX_SHARED_NODES:
            raise WalkLimitError(
                f"the pickled objects have more than {MAX_SHARED_NODES:,} parts reached again through shared "
                "containers (an amplification bomb)"
            )
    if depth > MAX_DEPTH:
        raise WalkLimitError(f"the pickled objects nest more than {MAX_DEPTH} levels deep")
    if isinstance(value, TensorStub):
        # (a one-element nn.Parameter is a model's learned scalar, a logit_scale: never trainer state)
        one = math.prod(value.size) <= 1 and not value.parameter
        name = _emit_name(path, out, out._scalars_are_state and one, within)
        out.tensors.append(NamedTensor(name, value))
        if out._nested_scalars is not None and len(path) > out._top + 1:
            out._nested_scalars.setdefault(path[out._top], []).append((name, one))
        if value.state is not None:  # the tensor's Python attributes: p.extra for p.extra = tensor(...)
            _visit(value.state, path, out, on_path, depth + 1, shared, within)
        channels = getattr(value.quantizer, "channels", None)
        if channels is not None:  # (a per-channel quantized tensor's scales and zero points, named under it: a sweep
            # found them "where no name reaches them", scanned as '<tensor 0>')
            for part, stub in zip(("<scales>", "<zero_points>"), channels):
                out.tensors.append(NamedTensor(_emit_name([*path, part], out, within=within), stub))
        return
    if isinstance(value, StorageRef):
        out.storages.append(NamedStorage(_emit_name(path, out, within=within), value))
        return
    if isinstance(value, Placeholder) and value.global_name == META_TENSOR_GLOBAL:
        out.meta.append(".".join(path) if path else "tensor")
        return
    if nested.is_stream(value):  # a torch.save stream in a BytesIO, perhaps: read from memory by the reader
        if not shared:
            name = ".".join(path) if path else "stream"
            out.streams.append((name, value))
            if out._top >= 0 and pickle_role(path[out._top:], out._trainer_checkpoint) == TRAINER:
                out.trainer.add(name)
        return
    if numpy_arrays.is_array(value):  # its bytes are in the pickle, not a storage: counted by the reader
        if not shared:
            name = ".".join(path) if path else "array"
            out.arrays.append((name, value))
            if out._top >= 0 and pickle_role(path[out._top:], out._trainer_checkpoint) == TRAINER:
                out.trainer.add(name)  # (a logged metric's history, mmengine's message_hub: trainer state)
        held = numpy_arrays.objects(value)  # an object array's items may be tensors or arrays themselves
        if held and id(value) not in on_path:
            on_path.add(id(value))
            try:
                for key, child in held:
                    _visit(child, [*path, key], out, on_path, depth + 1, shared, within)
            finally:
                on_path.discard(id(value))
        return
    if id(value) in on_path:
        return  # a cycle (a list that contains itself): nothing new below
    if id(value) in out._empty:
        return  # walked whole before and held nothing to scan
    if id(value) in out._seen:
        shared = True  # walked before along another path: everything below is a repeat
    optimizer = isinstance(value, dict) and is_optimizer_state(value)
    if isinstance(value, dict) and is_scheduler_state(value):
        within |= _IN_SCHEDULER
    if isinstance(value, dict) and is_scaler_state(value):
        within |= _IN_SCALER
    out._seen.add(id(value))
    on_path.add(id(value))
    found_before = len(out.tensors) + len(out.storages)
    complete = False
    try:
        for key, child in _children(value, out):
            # (an optimizer's state and param_groups only: a model saved beside them in the same dict, as
            # {**optimizer.state_dict(), "model": …} does, keeps its weights' role)
            inner = within | _IN_OPTIMIZER if optimizer and key.split(".", 1)[0] in OPTIMIZER_PARTS else within
            _visit(child, [*path, key], out, on_path, depth + 1, shared, inner)
        complete = True
    finally:
        on_path.discard(id(value))
    # (A subtree cut short by a cycle may reach tensors through an ancestor on the path: those are found
    # from the ancestor itself, so "empty" still loses no tensor, only a second name for one.)
    if complete and len(out.tensors) + len(out.storages) == found_before:
        out._empty.add(id(value))


def _children(value: Any, out: Walk) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        if is_optimizer_state(value):
            return _optimizer_children(value, out)
        children = [(segment(k), v) for k, v in dict.items(value)]
        # Keys may be tensors too (torch loads them): named by position among the keys.
        children += [(f"<key {i}>", k) for i, k in enumerate(dict.keys(value)) if not isinstance(k, _LEAVES)]
        extra = getattr(value, "__dict__", None)  # an OrderedDict's BUILD state (e.g. _metadata)
        if isinstance(extra, dict):
            children += [(segment(k), v) for k, v in dict.items(extra)]
            children += [(f"<key {i}>", k) for i, k in enumerate(dict.keys(extra)) if not isinstance(k, _LEAVES)]
        return children
    if isinstance(value, (list, tuple)):
        # (leaves skipped, but a non-finite float: Adam's betas are a tuple in a param group)
        return [(str(i), v) for i, v in enumerate(value)
                if not isinstance(v, _LEAVES) or (v.__class__ is float and not math.isfinite(v))]
    if isinstance(value, (set, frozenset)):
        return [(str(i), v) for i, v in enumerate(value)]
    if isinstance(value, Placeholder):
        children = [(str(i), v) for i, v in enumerate(value.args)]
        children += [(segment(k), v) for k, v in dict.items(value.kwargs)]
        state = value.state
        if isinstance(state, tuple) and len(state) == 2 and all(isinstance(s, (dict, type(None))) for s in state):
            state = {**attributes(state[0]), **attributes(state[1])}  # (__dict__, __slots__ state)
        if isinstance(state, dict):
            children += [(segment(k), v) for k, v in _module_items(state)]
            children += [(f"<key {i}>", k) for i, k in enumerate(dict.keys(state)) if not isinstance(k, _LEAVES)]
        elif state is not None:
            children.append(("state", state))
        children += [(str(i), v) for i, v in enumerate(value.items)]
        children += [(segment(k), v) for k, v in value.entries]
        return children
    return []


_MODULE_TABLES = ("_parameters", "_buffers", "_modules")  # where an nn.Module keeps what state_dict() names


def _module_items(state: dict) -> list[tuple[Any, Any]]:
    """The attributes of a pickled object, an ``nn.Module``'s named as its ``state_dict()`` names them:
    ``torch.save(model)`` pickles ``model._modules["0"]._parameters["weight"]``, which a user (and the
    model's own state dict) calls ``0.weight``. Other attributes keep their names."""
    items = list(dict.items(state))
    if not any(k in _MODULE_TABLES and isinstance(v, dict) for k, v in items):
        return items
    flat: list[tuple[Any, Any]] = []
    for key, value in items:
        if key in _MODULE_TABLES and isinstance(value, dict):
            flat += [(k, v) for k, v in dict.items(value) if v is not None]  # (a None parameter: bias=False)
        else:
            flat.append((key, value))
    return flat


def _optimizer_children(optimizer: dict, out: Walk) -> list[tuple[str, Any]]:
    names = parameter_names(optimizer)
    if names:
        out.optimizers_named += 1
    children: list[tuple[str, Any]] = []
    for key, value in dict.items(optimizer):
        if key == "state" and isinstance(value, dict):
            for pid, moments in dict.items(value):
                try:
                    label = names.get(pid)
                except TypeError:
                    label = None
                children.append((f"state.{label if label is not None else segment(pid)}", moments))
            # Keys are parameter ids; a tensor there is loaded by torch all the same.
            children += [(f"state.<key {i}>", k) for i, k in enumerate(dict.keys(value)) if not isinstance(k, _LEAVES)]
        else:
            children.append((segment(key), value))
    return children
