"""Quantized Hugging Face folders: tensors read as their quantizer reads them, and a folder that lost its quantizer.

A quantizer (config.json's ``quantization_config``) stores weights its own way, so their bytes mean what it makes
of them, not what the safetensors dtype says:

- **MXFP4** (gpt-oss; ``"quant_method": "mxfp4"``): an expert matrix is ``…_blocks`` (U8, two FP4 codes a byte)
  and ``…_scales`` (U8, one E8M0 exponent per 32 elements: 2^(byte - 127), 0xFF is NaN in the OCP MX spec).
  transformers dequantizes ``ldexp(fp4, byte - 127)``: a scale byte of 0xFD-0xFF gives Inf, one of 0xC8 weights
  of 5.7e22 (a trial: NaN logits, generate raised; CLEAN before, as U8 holds no NaN). The scales are judged as
  the E8M0 values they are (dtype F8_E8M0, as GGUF's MXFP4 lanes are: readers/gguf.py), so 0xFF is NaN, a scale
  above the exploded ceiling exploded, one 2^10 above its tensor's bulk an outlier; a note says so.
- **A quantizer's tensors where config.json names none** (a base model's config.json copied over a quantized
  one's, a conversion that dropped ``quantization_config``): from_pretrained takes them for unexpected keys and
  builds the model unquantized, so MXFP4 experts and GPTQ/AWQ layers (``qweight``) are initialized at random and
  FP8 weights load without their ``weight_scale_inv`` (values up to 448 unscaled: garbage, Inf in float16).
  NOT LOADABLE. Integer-stored ``.weight`` tensors (bitsandbytes, int8) are loadability.integer_weights' finding.
- **FP8 weights and their scales** (FineGrainedFP8's ``weight_scale_inv``, compressed-tensors' ``weight_scale``):
  paired here (:func:`scaled_pairs`) for the scan to judge each scale by the weights it dequantizes
  (engine/scaled.py): a per-tensor scale is one number, never an outlier in itself. Likewise BitNet's
  ``weight_scale``, which its BitLinear divides by: 0 makes Inf (NaN logits in a trial), 2^-100 of it weights of
  2^100 (all-zero logits), both scanned CLEAN before (an all-zero one was only ``zeroed``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nandoctor.checkpoint import loadconfig
from nandoctor.dtypes import INTEGERS
from nandoctor.model import RefTable, ScanProblem, TensorRef
from nandoctor.verdict import UNLOADABLE_KIND
from nandoctor.wording import first_few

E8M0 = "F8_E8M0"
_FP8_SCALE = re.compile(r"_scale(?:_inv)?$")
_SCALE_DTYPES = frozenset({"F32", "F16", "BF16", E8M0})
_MXFP4_SCALES = re.compile(r"_scales$")
_MXFP4_PART = re.compile(r"_(?:blocks|scales)$")
# A quantizer's own tensors, by what each format stores beside (or instead of) a ``.weight``
_FORMATS: tuple[tuple[str, re.Pattern[str], frozenset[str] | None], ...] = (
    ("MXFP4 blocks and scales", _MXFP4_PART, frozenset({"U8", E8M0})),  # (scales read as E8M0 by then)
    ("GPTQ/AWQ packed weights", re.compile(r"\.(?:qweight|qzeros)$"), INTEGERS),  # (a float qweight is a model's own)
    ("FP8 weight scales", re.compile(r"\.weight_scale(?:_inv)?$"), None),
)
_WHAT_FROM_PRETRAINED_DOES = {
    "MXFP4 blocks and scales": "initializes the expert weights they hold at random",
    "GPTQ/AWQ packed weights": "initializes the layers they hold at random",
    "FP8 weight scales": "loads the FP8 weights without them (unscaled, up to 448: the model computes garbage, and overflows in float16)",
}


@dataclass(frozen=True)
class ScaledPair:
    """A weight and the scale a quantizer makes its values with: ``weight × scale``, or ``weight / scale``
    (``divides``; ``weight`` None: ternary codes, at most 1 in magnitude)."""

    weight: TensorRef | None
    scale: TensorRef
    divides: bool = False


def as_quantizer_reads(root: Path, refs_by_file: dict[Path, Sequence[TensorRef]]
                       ) -> tuple[dict[Path, Sequence[TensorRef]], list[str]]:
    """(``refs_by_file`` with an MXFP4 folder's U8 ``…_scales`` read as E8M0, a note naming them); the same
    tensors and no note for any other folder."""
    tables = {file: refs if isinstance(refs, RefTable) else RefTable.of(refs)
              for file, refs in refs_by_file.items() if file.parent == root and file.suffix == ".safetensors"}
    scales = {file: [i for i, (name, dtype) in enumerate(zip(t.names, t.dtypes))
                     if dtype == "U8" and _MXFP4_SCALES.search(name)] for file, t in tables.items()}
    if not any(scales.values()) or loadconfig.quant_method(root) != "mxfp4":
        return refs_by_file, []
    read = dict(refs_by_file)
    for file, rows in scales.items():
        if rows:
            dtypes = list(tables[file].dtypes)
            for i in rows:
                dtypes[i] = E8M0
            read[file] = tables[file].with_dtypes(dtypes)
    names = [tables[file].names[i] for file, rows in scales.items() for i in rows]
    return read, [f"{root}: {len(names)} MXFP4 scale tensor(s) stored as U8 ({first_few(names, 2)}) judged as the E8M0 "
                  "exponents the mxfp4 quantizer reads them as (2^(byte - 127); 0xFF is NaN)"]


def scaled_pairs(root: Path, refs_by_file: dict[Path, Sequence[TensorRef]]) -> list[ScaledPair]:
    """The scales of a quantized folder's top-level weights that engine/scaled.py judges by the weights they make:
    each FP8 weight's float ``…weight_scale_inv`` / ``…weight_scale`` (multiplied), and in a BitNet folder each
    ternary weight's ``…weight_scale`` (BitLinear divides by it: 0 is Inf, a tiny one huge)."""
    tables = [refs if isinstance(refs, RefTable) else RefTable.of(refs) for file, refs in refs_by_file.items()
              if file.parent == root and file.suffix == ".safetensors"]
    # (a weight and its scale may lie in different shards: the FP8 weights of every file first)
    fp8 = {name: (table, i) for table in tables for i, (name, dtype) in enumerate(zip(table.names, table.dtypes))
           if dtype.startswith("F8_E") and dtype != E8M0}
    pairs: list[ScaledPair] = []
    for table in tables:
        for i, (name, dtype) in enumerate(zip(table.names, table.dtypes)):
            weight = _FP8_SCALE.sub("", name)
            if weight == name or dtype not in _SCALE_DTYPES:
                continue
            if weight in fp8:
                held, row = fp8[weight]
                pairs.append(ScaledPair(held[row], table[i]))
            elif name.endswith(".weight_scale"):
                pairs.append(ScaledPair(None, table[i], divides=True))
    if not pairs:
        return []
    method = loadconfig.quant_method(root)
    kept = [p for p in pairs if (method == "bitnet") == p.divides]
    return kept if kept and loadconfig.quantized(root) else []


def problems(root: Path, names: Sequence[str], shapes: Sequence[tuple[int, ...]],
             dtypes: Sequence[str]) -> list[ScanProblem]:
    """NOT LOADABLE where the weights from_pretrained reads in ``root`` hold a quantizer's own tensors that
    config.json's quantizer will not read: it names none (or, for MXFP4's, another or an unknown one: transformers
    skips a quantization type it does not know), or MXFP4 blocks and scales that do not pair up (one without the
    other, or scales not one per 32-element block: transformers' conversion raises)."""
    found: dict[str, list[str]] = {}
    for name, dtype in zip(names, dtypes):
        for what, pattern, stored_as in _FORMATS:
            if pattern.search(name) and (stored_as is None or dtype in stored_as):
                found.setdefault(what, []).append(name)
    mxfp4 = found.pop("MXFP4 blocks and scales", [])
    stems = [{n[: -len(suffix)] for n in mxfp4 if n.endswith(suffix)} for suffix in ("_blocks", "_scales")]
    paired = [n for n in mxfp4 if _MXFP4_PART.sub("", n) in stems[0] & stems[1]]
    if paired:  # (only in pairs, X_blocks beside X_scales: a model of its own may name one U8 buffer so)
        found = {"MXFP4 blocks and scales": paired, **found}
    if "FP8 weight scales" in found:  # (only beside FP8 weights: a model of its own may name a parameter so)
        fp8 = {name for name, dtype in zip(names, dtypes) if dtype.startswith("F8_E")}
        if not any(_FP8_SCALE.sub("", name) in fp8 for name in found["FP8 weight scales"]):
            del found["FP8 weight scales"]
    if not found:
        return []
    hint = ("put back config.json's quantization_config (copy config.json from where the quantized checkpoint came "
            "from), or save the dequantized weights")
    if not loadconfig.quantized(root):
        what, which = next(iter(found.items()))
        return [ScanProblem(
            str(root), f"holds {what} ({len(which)} tensor(s): {first_few(which, 2)}) where config.json names no "
            f"quantizer: from_pretrained takes them for unexpected keys and {_WHAT_FROM_PRETRAINED_DOES[what]}, so the "
            "model is not this checkpoint", hint, kind=UNLOADABLE_KIND)]
    if "MXFP4 blocks and scales" not in found:
        return []
    method = loadconfig.quant_method(root)
    if method != "mxfp4":
        return [ScanProblem(
            str(root), f"holds MXFP4 blocks and scales ({first_few(paired, 2)}) where config.json's quantization_config "
            f"names quant_method {method!r}, not 'mxfp4': transformers skips a quantization type it does not know (or "
            "reads them as another's), takes them for unexpected keys and initializes the expert weights at random",
            "write \"quant_method\": \"mxfp4\" in config.json's quantization_config (as the checkpoint was saved)",
            kind=UNLOADABLE_KIND)]
    shape_of = dict(zip(names, shapes))
    lone = sorted({n for n in mxfp4 if n not in paired} & set(shape_of))
    unequal = [stem for stem in sorted(stems[0] & stems[1])
               if shape_of[f"{stem}_scales"] != shape_of[f"{stem}_blocks"][:-1]]
    broken = [f"{n} without its {'scales' if n.endswith('_blocks') else 'blocks'}" for n in lone] + [
        f"{stem}_scales of shape {list(shape_of[f'{stem}_scales'])} for blocks of {list(shape_of[f'{stem}_blocks'])}"
        for stem in unequal]
    if not broken:
        return []
    return [ScanProblem(
        str(root), f"holds MXFP4 experts whose blocks and scales do not pair up ({first_few(broken, 2)}): transformers' "
        "MXFP4 conversion needs one scale per 32-element block and raises", "copy the weight files from where the "
        "quantized checkpoint came from (a save or a filter that dropped or cut tensors)", kind=UNLOADABLE_KIND)]


__all__ = ["E8M0", "ScaledPair", "as_quantizer_reads", "problems", "scaled_pairs"]
