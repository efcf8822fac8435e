"""Weight-normalized layers whose direction has a slice of zeros: every forward pass divides 0 by 0.

``torch.nn.utils.weight_norm`` (``weight_g``, ``weight_v``) and its parametrization
(``parametrizations.weight.original0`` / ``original1``) rebuild the weight at each forward as
``g * v / ‖v‖``, the norm taken over every dimension but ``dim`` (the one along which ``g`` is not 1). A slice of
``v`` along ``dim`` that is all zeros has norm 0: that slice of the weight is NaN, and so is everything it reaches
(wav2vec2's positional convolution, ``dim=2``, one kernel position zeroed: every output of the model NaN; an
adversarial round read CLEAN). HuBERT, WavLM, SEW, HiFi-GAN and EnCodec are weight-normalized alike.

Only a direction whose census counted at least one slice's worth of exact zeros is read (trained directions hold
none: a healthy scan reads nothing more); its slices are tested by their bits (a float zero is one whose bits but
the sign are 0), a block of rows at a time.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from nandoctor.checkpoint import tensorrows
from nandoctor.model import TensorResults

# the direction of a weight-normalized weight, and the name of its magnitude beside it
_DIRECTION = re.compile(r"^(?P<module>(?:.*\.)?)(?P<v>weight_v|parametrizations\.weight\.original1)$")
_MAGNITUDE = {"weight_v": "weight_g", "parametrizations.weight.original1": "parametrizations.weight.original0"}


def zero_slices(tensors: TensorResults) -> list[dict[str, Any]]:
    """The weight-norm directions among ``tensors`` with a slice of zeros along their norm's ``dim``: each as
    ``{"name", "dim" (None: the norm is over the whole tensor), "slices" (the first few indices), "of"}``."""
    refs = tensors.refs
    names = refs.names
    joined = "\n".join(names)  # (most checkpoints stop here: two C-level searches, no loop over a million names)
    if "weight_v" not in joined and "original1" not in joined:
        return []
    by_name = {name: i for i, name in enumerate(names)}
    found = []
    for i, name in enumerate(names):
        matched = _DIRECTION.match(name)
        if matched is None or not tensors.zeros[i]:
            continue
        g = by_name.get(matched["module"] + _MAGNITUDE[matched["v"]])
        shape, g_shape = tuple(refs.shapes[i]), tuple(refs.shapes[g]) if g is not None else None
        if g_shape is None or not shape or (g_shape and len(g_shape) != len(shape)):
            continue
        kept = [d for d, (n, m) in enumerate(zip(shape, g_shape)) if m == n > 1]
        if len(kept) > 1 or (not kept and any(m != 1 for m in g_shape)):
            continue  # (a magnitude of no shape weight_norm gives)
        dim = kept[0] if kept else None
        slice_size = math.prod(shape) // shape[dim] if dim is not None else math.prod(shape)
        if tensors.zeros[i] < slice_size or slice_size == 0:
            continue
        slices = _zero_slices(refs[i], dim)
        if slices:
            found.append({"name": name, "dim": dim, "slices": slices[:8], "of": shape[dim] if dim is not None else 1,
                          "count": len(slices)})
    return found


def _zero_slices(ref: Any, dim: int | None) -> list[int]:
    """The indices along ``dim`` of ``ref``'s slices that are all ±0 ([0] for a whole tensor of zeros, ``dim``
    None); [] where it cannot be read plainly (tensorrows.readable; fp8 directions are not read)."""
    if not tensorrows.readable(ref) or ref.dtype.startswith("F8"):
        return []
    shape, magnitude = tuple(ref.shape), tensorrows.magnitude(ref)
    nonzero = np.zeros(shape[dim] if dim is not None else 1, dtype=bool)
    try:
        for first, bits in tensorrows.row_blocks(ref):
            block = (bits & magnitude) != 0
            if dim is None:
                nonzero[0] |= bool(block.any())
            elif dim == 0:
                nonzero[first : first + len(block)] |= block.reshape(len(block), -1).any(axis=1)
            else:
                nonzero |= np.moveaxis(block, dim, 0).reshape(shape[dim], -1).any(axis=1)
    except OSError:
        return []
    return np.flatnonzero(~nonzero).tolist()


__all__ = ["zero_slices"]
