"""What each tensor is: a model ``weight``, a ``buffer``, ``optimizer`` state or ``trainer`` state.

Decided once, when a checkpoint is opened, from the tensor's container path
(its dotted name) and the file it came from; the verdict judges each tensor by
its role (a Lightning ``ModelCheckpoint.kth_value = inf`` sentinel is trainer
state, not a poisoned weight; a GPT-2 ``masked_bias`` of -1e4 is a buffer, not
an exploded weight). docs/formats.md lists the rules.

Trainer state is where a trainer keeps it, never a word in a parameter name: a
file named like it (``scheduler.pt``, ``rng_state.pth``), or a top-level key of a
pickled trainer checkpoint (``callbacks``, ``loops``, ``lr_schedulers`` …) that
keeps its model or optimizer in a container beside them (``state_dict``,
``optimizer_states``, ``model``, DeepSpeed's ``module`` …), which only the pickle
reader sees (:func:`pickle_role`). A model's parameter called ``scaler`` (a key of a
plain state dict: no such container beside it) or ``scaler.weight`` is a weight, and
so is every tensor of a model weight file (``pytorch_model*.bin``), of a safetensors
or GGUF file and every parameter of a live module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

WEIGHT, BUFFER, OPTIMIZER, TRAINER = "weight", "buffer", "optimizer", "trainer"
ROLES = (WEIGHT, BUFFER, OPTIMIZER, TRAINER)

# Files beside the weights, judged by their name alone.
_OPTIMIZER_FILE = re.compile(r"^(optimizer(_\d+)?\.(pt|pth|bin)|[\w.-]*optim_states\.pt)$")
_TRAINER_FILE = re.compile(r"^(scheduler|scaler|rng_state(_\d+)?|random_states_\d+|custom_checkpoint_\d+)\.(pt|pth|bin|pkl)$")

# Path segments that hold optimizer or trainer state, wherever they stand in a nested save.
_OPTIMIZER_SEGMENTS = frozenset({
    "optimizer", "optimizers", "optimizer_states", "optimizer_state", "optimizer_state_dict",
    "optim", "optim_state", "optim_state_dict", "base_optimizer_state", "fp32_flat_groups",
    "single_partition_of_fp32_groups",
})
# Top-level keys of a pickled trainer checkpoint that hold trainer state (Lightning's .ckpt: callbacks,
# loops, lr_schedulers, hyper_parameters, the precision plugin's scaler; DeepSpeed's lr_scheduler and
# ds_config; a hand-written {"model": ..., "scheduler": ..., "scaler": ..., "rng_state": ...}).
TRAINER_KEYS = frozenset({
    "callbacks", "loops", "lr_schedulers", "lr_scheduler", "scheduler", "schedulers", "scaler",
    "grad_scaler", "rng_state", "rng_states", "random_states", "hparams", "hyper_parameters",
    "datamodule_hyper_parameters", "trainer_state", "ds_config", "lr_scheduler_state", "MixedPrecision",
    "native_amp_scaling_state", "amp_scaling_state",
    "message_hub", "param_schedulers", "meta",  # (mmengine's Runner: logged scalars, scheduler states, run info)
})
# Top-level keys of a trainer checkpoint that hold the model or the optimizer as a container: only beside one
# of them is a top-level trainer key trainer state. A plain state dict (``{"scaler": tensor, …}``, a model whose
# parameter is called ``scaler``) has none, so its trainer words are parameter names.
TRAINER_CHECKPOINT_KEYS = frozenset({
    "state_dict", "optimizer_states", "model", "model_state_dict", "model_state", "module", "optimizer",
    "optimizer_state_dict", "optimizer_state",
})
# Of those, the ones that hold the model itself: beside one, a one-element tensor at the top is the loop's (a best
# loss, an epoch), whatever else sits there (a loss history of many elements)
MODEL_CONTAINER_KEYS = frozenset({"state_dict", "model", "model_state_dict", "model_state", "module"})
# Files Hugging Face loaders read as model weights: every tensor in them is model state, whatever its key.
_MODEL_FILE = re.compile(r"^(pytorch_model|adapter_model|diffusion_pytorch_model)([-.][\w.-]*)?\.bin$")
# Model states kept in trainer state that become the model's weights: Lightning's StochasticWeightAveraging
# swaps its ``average_model_state`` into the model when training ends, an EMA callback its shadow weights.
# Judged as weights (NaN there is NaN in the model that ships), not as trainer state.
MODEL_STATE_KEYS = frozenset({"average_model_state", "ema_state_dict", "ema_model_state", "shadow_params"})
# Any key whose words say an averaged copy (``ema``, ``shadow``, ``swa``, ``average(d)``) of a model (``model``,
# ``weights``, ``params``, ``state_dict``): ``ema_model``, ``ema_weights``, ``ema_params``, ``averaged_model_state``,
# ``swa_model`` (an adversarial round: NaN under each passed as trainer state). An ``ema_decay`` or ``ema_loss``
# stays trainer state.
_AVERAGED = re.compile(r"(?:^|_)(?:ema|shadow|swa|averaged?|avg|teacher)(?:_|$)")
# ("state" alone is not one: an ema_state is as often the averaging's own bookkeeping, bests at +Inf, a trial's)
_OF_A_MODEL = re.compile(r"(?:^|_)(?:model|weights?|params|parameters|state_dict|module|net|network|teacher)(?:_|$)")


def is_model_state(key: str) -> bool:
    """Whether a key of trainer state holds a model's state that becomes its weights (MODEL_STATE_KEYS, or a key
    whose words name an averaged copy of a model; ``ema`` or ``shadow`` alone), also as the first part of a
    dotted key (ema-pytorch's flat ``ema_model.layer.weight`` in a callback's state)."""
    if key in MODEL_STATE_KEYS:
        return True
    lowered = key.partition(".")[0].lower()
    if lowered in ("ema", "shadow", "swa", "teacher"):
        return True
    return _AVERAGED.search(lowered) is not None and _OF_A_MODEL.search(lowered) is not None

# Last segments of buffers that hold -Inf/+Inf by design: attention masks (GPT-J's fp16 ``masked_bias`` of
# -1e9 is -Inf), clipping bounds (Gemma4's ClippableLinear: input_min = -Inf … output_max = +Inf until
# calibrated), torch.ao observers' running extremes (min_val = +Inf, max_val = -Inf until a batch passes),
# RT-DETR's anchors (Inf at invalid border positions). Their ±Inf are counted, never a finding; NaN still is.
_SENTINEL_LEAVES = frozenset({
    "masked_bias", "causal_mask", "attn_mask", "input_min", "input_max", "output_min", "output_max",
    "min_val", "max_val", "min_vals", "max_vals", "anchors", "valid_mask",
})
# Last segments of non-learned constants that loaders recompute or ignore, and running statistics whose size
# grows with training (BatchNorm's, an RL observation normaliser's sample count and Welford sum, an EMA's
# update count): their magnitude says nothing about health (NaN/Inf still do).
_BUFFER_LEAVES = _SENTINEL_LEAVES | frozenset({
    "inv_freq", "position_ids", "running_mean", "running_var", "num_batches_tracked", "cos_cached", "sin_cached",
    "freqs_cis", "_float_tensor", "token_type_ids", "running_variance", "running_std", "count",
    "normalization_steps", "num_updates",
})
# Delayed-scaling fp8 state (torchao Float8Linear's fp8_amax_history_weight, fp8_scale_grad_output: ~57344 /
# amax, 1e8 and more) and a per-tensor global scale (compressed-tensors NVFP4: 448 * 6 / amax(W), above 1e5 for
# a layer whose largest weight is below 0.027): scales, not weights.
_BUFFER_LEAF = re.compile(r"^(?:fp8_(?:amax|scale)\w*|(?:weight|input|output)_global_scale)$")
# GPT-2 / GPT-J ``h.N.attn.bias`` is the causal mask; ``attn.c_attn.bias`` stays a weight.
_MASK_BIAS = re.compile(r"(^|\.)(attn|attention)\.bias$")


def _state_words() -> str:
    """The names of a container segment that holds optimizer state."""
    return "(?:" + "|".join(map(re.escape, sorted(_OPTIMIZER_SEGMENTS, key=len, reverse=True))) + ")"


# Optimizer state, in one C-level search per name instead of a Python loop over its segments: an optimizer
# container whose tensors sit in an optimizer state dict's ``state`` or ``param_groups`` further down
# (``optimizer.state.3.exp_avg``, Lightning's ``optimizer_states.0.state.3.exp_avg``), or a flat partition of
# DeepSpeed's. The container's word alone is not enough: ``optimizer.weight`` of a module named ``optimizer``
# (a model part, as ``model.safetensors`` or a live module holds it) is a weight.
_FLAT_STATE = ("fp32_flat_groups", "single_partition_of_fp32_groups", "base_optimizer_state")
_STATE_SEGMENT = re.compile(
    r"(?:^|\.)(?:" + _state_words() + r"\.(?:.+\.)?(?:state|param_groups)\."
    + r"|(?:" + "|".join(_FLAT_STATE) + r")\.)"  # (a container too, as the prefilter below has it)
)
_LEAVES = "|".join(map(re.escape, sorted(_BUFFER_LEAVES, key=len, reverse=True)))
# A name that is not a plain weight (a state segment, a buffer's last segment, the attention mask bias),
# searched for in all names at once, each after a line break: one C pass over a million names (its leading
# character class lets the search skip to the dots, the first letters to the segments that can be one),
# where role_of per name costs a call each.
_FIRST_LETTERS = "".join(sorted({word[0] for word in (*_OPTIMIZER_SEGMENTS, *_BUFFER_LEAVES, "attn", "fp8", "weight",
                                                         "input", "output")}))
_NOT_WEIGHT = re.compile(
    rf"[.\n](?=[{re.escape(_FIRST_LETTERS)}])(?:" + _state_words()
    + rf"(?=\.)|(?:{_LEAVES})$|(?:attn|attention)\.bias$|fp8_(?:amax|scale)\w*$|(?:weight|input|output)_global_scale$)",
    re.MULTILINE,
)


def role_of(name: str, file_name: str = "") -> str:
    """The role of the tensor ``name`` read from the file called ``file_name``."""
    if file_name:
        role = file_role(file_name)
        if role is not None:
            return role
    if _STATE_SEGMENT.search(name) is not None:
        return OPTIMIZER
    leaf = name.rpartition(".")[2]
    if leaf in _BUFFER_LEAVES or _BUFFER_LEAF.match(leaf) or _MASK_BIAS.search(name):
        return BUFFER
    return WEIGHT


# Optimizer states and running statistics that are variances (or maxima of magnitudes): never negative by how they are
# made (Adam's exp_avg_sq is a running mean of squares), and a square root or a division by one follows them: one
# sign-flipped value makes the next optimizer step's update NaN (a trial: exp_avg_sq -103.5 among 1e-4s, CLEAN, and
# one resumed Adam step put NaN in the weights), or a BatchNorm's output NaN.
_VARIANCE_STATES = frozenset({"exp_avg_sq", "max_exp_avg_sq", "exp_avg_sq_row", "exp_avg_sq_col", "square_avg",
                              "acc_delta", "exp_inf"})
_VARIANCE_LEAVES = frozenset({"running_var"})  # BatchNorm's
# Every per-parameter optimizer state entry that is a moment (a running mean of gradients or of their squares): the
# variances above, and Adam's exp_avg, SGD's momentum_buffer, centered RMSprop's grad_avg, Adagrad's sum
OPTIMIZER_MOMENTS = _VARIANCE_STATES | {"exp_avg", "momentum_buffer", "grad_avg", "sum"}


def moment_segment(name: str) -> int | None:
    """The index of the dotted segment of ``name`` that names an optimizer moment (``state.3.exp_avg``, ZeRO's
    ``global_step6.mp_rank_01.exp_avg.model.layers.3.weight``), or None."""
    parts = name.split(".")
    return next((i for i, part in enumerate(parts) if part in OPTIMIZER_MOMENTS and (i or len(parts) > 1)), None)


# DeepSpeed ZeRO's fp32 master weights, as checkpoint/zero.py names their pieces (``fp32.<param>``, after a ZeRO
# set's prefix ``global_step6.mp_rank_01.``): optimizer state by where they are kept, but the weights a resumed run
# (and zero_to_fp32) takes, so judged as weights are (exploded, outliers).
MASTER_WEIGHTS = "fp32"
_MASTER = re.compile(rf"^(?:[^/]*\.mp_rank_\d+\.)?{MASTER_WEIGHTS}\.")


def is_master_weight(name: str, role: str) -> bool:
    """Whether optimizer state ``name`` is a master copy of a model weight (see MASTER_WEIGHTS)."""
    return role == OPTIMIZER and _MASTER.match(name) is not None


def judged_as_weight(name: str, role: str) -> bool:
    """Whether tensor ``name`` of ``role`` is judged as a model weight is (exploded, outliers): a weight, or an
    optimizer's master copy of one."""
    return role == WEIGHT or is_master_weight(name, role)


def is_variance(name: str, role: str) -> bool:
    """Whether tensor ``name`` of ``role`` can never hold a negative value (see _VARIANCE_STATES): an optimizer state
    so named in any segment (``state.3.exp_avg_sq``, ZeRO's ``exp_avg_sq.<param>``; Adagrad's ``state.3.sum``), or a
    ``running_var`` buffer."""
    if role == OPTIMIZER:
        return not _VARIANCE_STATES.isdisjoint(name.split(".")) or name.endswith(".sum")
    return role == BUFFER and name.rpartition(".")[2] in _VARIANCE_LEAVES


def holds_sentinels(name: str) -> bool:
    """Whether the buffer ``name`` may hold ±Inf by design (a mask, a bound, an observer's extreme: see
    _SENTINEL_LEAVES); its NaN are still a finding."""
    return name.rpartition(".")[2] in _SENTINEL_LEAVES or _MASK_BIAS.search(name) is not None


def file_role(file_name: str) -> str | None:
    """The role of every tensor of a file named like optimizer or trainer state; None otherwise."""
    if _OPTIMIZER_FILE.match(file_name):
        return OPTIMIZER
    if _TRAINER_FILE.match(file_name):
        return TRAINER
    return None


def is_trainer_checkpoint(containers: Iterable[str]) -> bool:
    """True for a pickle whose top is a dict with a model or optimizer container among ``containers`` (its
    top-level keys whose values are containers, not tensors): a trainer checkpoint, not a state dict."""
    return not TRAINER_CHECKPOINT_KEYS.isdisjoint(containers)


def pickle_role(path: list[str], trainer_checkpoint: bool, scalar: bool = False) -> str | None:
    """TRAINER for a tensor of a pickled trainer checkpoint (``trainer_checkpoint``: :func:`is_trainer_checkpoint`
    of its top-level dict) whose container path (the dict keys from the top of the pickle, ``path``) starts with a
    trainer key, outside a model state kept there, or that is a one-element tensor at its top beside the model
    (``"best_val_loss": tensor(inf)``, an epoch or a score: what a training loop keeps, never a model's weight);
    None otherwise (its name decides). A plain state dict's ``"scaler"`` or ``"scaler.weight"`` is a parameter's
    name, never a ``scaler`` container."""
    if not (trainer_checkpoint and path):
        return None
    # (under "callbacks" the next key is the callback's own name, "EMA" among them: its state's keys say what it holds)
    inner = path[2:] if path[0] == "callbacks" else path[1:]
    # (a model's averaged copy is a container of tensors, or a flat state dict's dotted names: a key holding one tensor
    # itself, a trial's per-task loss "ema_weights", is the callback's own number)
    held_by_model_state = any(is_model_state(key) for key in inner[:-1]) or (
        bool(inner) and "." in inner[-1] and is_model_state(inner[-1]))
    if path[0] in TRAINER_KEYS and not held_by_model_state:
        return TRAINER
    return TRAINER if scalar and len(path) == 1 and path[0] not in TRAINER_CHECKPOINT_KEYS else None


def roles_of(names: list[str], file_name: str = "", given: list[str] | None = None) -> list[str]:
    """``role_of`` of every name read from the file ``file_name``, in order; ``given`` (the roles the reader
    set from a pickle's structure: its trainer state, :func:`pickle_role`; an optimizer state dict under any key)
    keeps its TRAINER and OPTIMIZER rows, except in a model weight file."""
    whole_file = file_role(file_name) if file_name else None
    if whole_file is not None:
        return [whole_file] * len(names)
    if given is not None and (TRAINER in given or OPTIMIZER in given) and not _MODEL_FILE.match(file_name):
        named = roles_of(names)
        return [was if was in (TRAINER, OPTIMIZER) else role for was, role in zip(given, named)]
    joined = "\n" + "\n".join(names)  # every name after a line break
    if joined.count("\n") != len(names):  # a name with a line break of its own: one search per name
        return [role_of(name) for name in names]
    roles = [WEIGHT] * len(names)
    line, counted = -1, 0
    for found in _NOT_WEIGHT.finditer(joined):
        line += joined.count("\n", counted, found.start() + 1)
        counted = found.start() + 1
        roles[line] = role_of(names[line])
    return roles
