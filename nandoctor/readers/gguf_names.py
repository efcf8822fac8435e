"""A GGUF file's architecture and tensor names against what llama.cpp loads for it.

A flipped bit in a GGUF header renames a tensor (``blk.1.attn_q.weight`` read as ``blk.1.attn_a.weight``), moves it
to a block the model does not have (``blk.3`` in a two-block model) or renames the architecture (``llama`` as
``lmama``). Every value reads finite, so the scan was CLEAN, while llama.cpp refuses the file ("missing tensor",
"wrong number of tensors", "unknown model architecture") and transformers' GGUF loader initialises the lost tensor at
random or refuses the architecture (a trial). The reference is gguf-py's own tables (``gguf.constants``: each
architecture's tensor name templates, ``blk.{bid}.attn_q``), kept in gguf_tensor_names.json and written by ``python
-m nandoctor.readers.gguf_names`` from the installed ``gguf`` package: nothing imports it at scan time.

Conservative by design, since converters and llama.cpp add names faster than any table: a problem only where one
changed character makes the name (or architecture) a known one whose tensor the file lacks, or where a block number
is past ``{arch}.block_count``; a name that is merely unknown is a note.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path

from nandoctor.layers import natural_key
from nandoctor.model import NAMES_KIND, UNLOADABLE_KIND, ScanProblem
from nandoctor.wording import first_few, plural

_FILE = Path(__file__).with_name("gguf_tensor_names.json")
_NUMBER = re.compile(r"(?:(?<=\.)|^)\d+(?=\.|$)")  # a whole dot-separated segment of digits: a block or expert index
_BID = "{bid}"
_LOST_HINT = ("the file lost tensors (a tool that drops or merges tensors, a cut copy): convert it again from its "
              "source model, or download it again")
_HINT = ("its header was damaged (a flipped bit, a bad copy): copy or download the file again, or convert it again "
         "from its source model")


@cache
def _tables() -> tuple[str, dict[str, frozenset[str]]]:
    """(the gguf version the table is of, architecture → its tensor name templates)."""
    data = json.loads(_FILE.read_text(encoding="utf-8"))
    names: list[str] = data["names"]
    return data["gguf"], {arch: frozenset(names[i] for i in indices) for arch, indices in data["archs"].items()}


def _template(name: str) -> tuple[str, list[str]]:
    """``name`` with its number segments made ``{bid}``, and those numbers in order."""
    return _NUMBER.sub(_BID, name), _NUMBER.findall(name)


def _expand(template: str, numbers: list[str]) -> str:
    for number in numbers:
        template = template.replace(_BID, number, 1)
    return template


def one_apart(a: str, b: str) -> bool:
    return len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1


def checked(path: str, architecture: object, block_counts: dict[str, int | None], names: Iterable[str],
            adapter: bool = False, whole: bool = True) -> tuple[list[ScanProblem], list[str]]:
    """(problems, notes) of a GGUF file whose ``general.architecture`` is ``architecture`` (None when absent), holding
    tensors ``names``; ``block_counts``: for each block prefix (``""`` for ``blk.N``, ``enc.``, ``dec.``) the count
    its metadata gives (``{arch}.block_count``, a T5 decoder's ``{arch}.decoder_block_count``), None when it gives
    none. A LoRA adapter (``general.type`` "adapter": ``blk.N.attn_q.weight.lora_a``) has its blocks checked only.
    ``whole``: the file holds the whole model (not one of gguf-split's files, which may cut a block between two):
    only then is a block missing a tensor the others hold a loss."""
    file = os.path.basename(path)
    version, archs = _tables()
    names = list(names)
    problems: list[ScanProblem] = []
    notes: list[str] = []
    for prefix, count in block_counts.items():
        held = _blocks(names, prefix)
        key = "block_count" if prefix != "dec." else "decoder_block_count (or block_count)"
        beyond = sorted(n for n in held if n >= count) if count is not None else []
        if beyond:
            problems.append(ScanProblem(
                path, f"holds tensors of {prefix}blk.{beyond[0]}{' and beyond' if len(beyond) > 1 else ''}, but its "
                f"{architecture}.{key} is {count}: llama.cpp refuses it ('wrong number of tensors', or a missing "
                "tensor of the block it should be in)", _HINT, kind=UNLOADABLE_KIND))
        if not whole or adapter:
            continue
        empty, missing = _empty_blocks(held, prefix, count)
        if missing:
            said = ", ".join(empty) + (f" and {missing - len(empty):,} more" if missing > len(empty) else "")
            problems.append(ScanProblem(
                path, f"{said} {'holds' if missing == 1 else 'hold'} no tensor, but its "
                f"{architecture}.{key} is {count}: llama.cpp refuses the file ('missing tensor') and transformers' "
                "GGUF loader initialises those layers at random", _LOST_HINT, kind=UNLOADABLE_KIND))
        lost = _lost_in_blocks(held, prefix)
        if lost:
            problems.append(ScanProblem(
                path, f"{plural(len(lost), 'tensor')} the other blocks hold {'is' if len(lost) == 1 else 'are'} "
                f"missing: {first_few(lost, 3, quoted=True)}; llama.cpp refuses the file ('missing tensor') and "
                "transformers' GGUF loader initialises the missing tensor at random", _LOST_HINT, kind=UNLOADABLE_KIND))
    if not isinstance(architecture, str) or adapter:
        return problems, notes
    templates = archs.get(architecture)
    if templates is None:
        # (a letter, not a digit: a newer llama.cpp's qwen4 or deepseek4 is one digit from a known architecture)
        near = [known for known in archs if one_apart(architecture, known)
                and not any(a != b and (a.isdigit() or b.isdigit()) for a, b in zip(architecture, known))]
        if near:
            problems.append(ScanProblem(
                path, f"its general.architecture is {architecture!r}, which is no architecture llama.cpp knows "
                f"(gguf {version}); {near[0]!r} is one character away: llama.cpp and transformers refuse it "
                "('unknown model architecture')", _HINT, kind=UNLOADABLE_KIND))
        else:
            notes.append(f"{file}: architecture {architecture!r} is not in gguf {version}'s tables; its tensor names "
                         "were not checked")
        return problems, notes
    present = set(names)
    renamed: list[str] = []
    unknown: list[str] = []
    for name in names:
        template, numbers = _template(name)
        base = template.rpartition(".")[0] or template
        if base in templates or template in templates:
            continue
        suffix = template[len(base):]
        lost = [_expand(known, numbers) + suffix for known in templates if one_apart(base, known)]
        lost = [expected for expected in lost if expected not in present]
        if lost:
            renamed.append(f"{name!r} (where {lost[0]!r} is missing)")
        else:
            unknown.append(name)
    if renamed:
        problems.append(ScanProblem(
            path, f"{len(renamed)} tensor name(s) one character from a tensor {architecture} needs that the file "
            f"lacks: {first_few(renamed, 3)}; llama.cpp refuses it ('missing tensor') and transformers initialises "
            "the missing one at random", _HINT, kind=NAMES_KIND))
    if unknown:
        notes.append(f"{file}: {len(unknown)} tensor name(s) not in gguf {version}'s list for {architecture} "
                     f"({first_few(unknown, 3)}): a llama.cpp that does not know them refuses the file ('wrong number "
                     "of tensors')")
    return problems, notes


def _blocks(names: list[str], prefix: str) -> dict[int, set[str]]:
    """What each ``{prefix}blk.N`` block holds: its number → the rest of its tensors' names."""
    block = re.compile(rf"^{re.escape(prefix)}blk\.(\d+)\.(.+)$")
    held: dict[int, set[str]] = {}
    for name in names:
        if (m := block.match(name)) is not None:
            held.setdefault(int(m.group(1)), set()).add(m.group(2))
    return held


def _empty_blocks(held: dict[int, set[str]], prefix: str, count: int | None) -> tuple[list[str], int]:
    """(the first three, how many) of the ``{prefix}blk.N`` blocks below the count the metadata gives that hold no
    tensor, where other blocks of that prefix do (``held``: :func:`_blocks`; a T5's ``enc.``/``dec.`` blocks and a
    decoder's plain ones are each their own prefix). The count is the file's: counted, never walked (2**40 would be
    10**12 names)."""
    if not held or not count:
        return [], 0
    missing = count - len([n for n in held if n < count])
    first = [f"{prefix}blk.{n}" for n in range(min(count, len(held) + 3)) if n not in held][:3]
    return first, missing


def _lost_in_blocks(held: dict[int, set[str]], prefix: str) -> list[str]:
    """The tensor one block lacks that its kind of block holds elsewhere: a block between the first and the last
    holding all but one of what three or more of the other blocks hold (``blk.7`` without the ``attn_q.weight`` of
    every other block). Blocks differ by design in ways this leaves alone: by more than one tensor (DeepSeek's
    dense and MoE layers, Jamba's Mamba and attention layers, Deci's layers without attention), by one *more*
    tensor (T5's first block, the relative attention bias; a multi-token-prediction layer), at the first or last
    block (ModernBERT's block 0 has no attention norm), or in a pattern over several blocks (Gemma 4's full-attention
    layers without attn_v, MiMo-V2's without attention sinks: trials, all loadable). ``held``: :func:`_blocks`."""
    kinds: dict[frozenset[str], list[int]] = {}
    for number, held_there in held.items():
        kinds.setdefault(frozenset(held_there), []).append(number)
    # each common kind less one of its tensors → that tensor (linear in the tensors: a crafted file of a million
    # blocks of distinct kinds is no quadratic walk)
    less_one: dict[frozenset[str], str] = {}
    for kind, numbers in kinds.items():
        if len(numbers) >= 3:
            for tensor in kind:
                less_one.setdefault(kind - {tensor}, tensor)
    ends = (min(held), max(held)) if held else ()
    lost = [f"{prefix}blk.{numbers[0]}.{less_one[kind]}" for kind, numbers in kinds.items()
            if len(numbers) == 1 and numbers[0] not in ends and kind in less_one]
    return sorted(lost, key=natural_key)


def main() -> None:  # pragma: no cover - run by hand when gguf-py changes
    """Write gguf_tensor_names.json from the installed gguf package's tables."""
    from gguf import constants

    names = sorted(set(constants.TENSOR_NAMES.values()))
    index = {name: i for i, name in enumerate(names)}
    archs = {constants.MODEL_ARCH_NAMES[arch]: sorted(index[constants.TENSOR_NAMES[t]] for t in tensors)
             for arch, tensors in constants.MODEL_TENSORS.items() if arch in constants.MODEL_ARCH_NAMES}
    from importlib.metadata import version

    data = {"gguf": version("gguf"), "names": names, "archs": dict(sorted(archs.items()))}
    _FILE.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"{len(archs)} architectures, {len(names)} tensor name templates (gguf {data['gguf']}) written to {_FILE}")


if __name__ == "__main__":  # pragma: no cover
    main()
