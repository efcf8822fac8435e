"""Tied copies stored beside their partner: restored from that partner, so the two stay equal.

checkpoint/ties.py names the tensors a loader rebuilds from a partner (``lm_head.weight`` from the
input embeddings when ``config.json`` says ``tie_word_embeddings``). ``save_pretrained`` drops the
copy, so earlier checkpoints of a run hold only the partner; but a checkpoint may store both (a
save that kept the copy, or a copy written in later). When that copy is bad, no donor holds it by
name, and even one that did would be wrong: the model holds one tensor under both names, and
transformers ties the two stored copies again only when they are equal. So the plan restores the
copy as its partner stands in the repaired checkpoint: the target's own partner when it is healthy,
else the partner's donor tensor (restore/plan.py).
"""

from __future__ import annotations

from pathlib import Path

from nandoctor.checkpoint.ties import tie_candidates
from nandoctor.model import ScanReport


def tied_partners(report: ScanReport, config_dir: Path) -> dict[str, str]:
    """Tied copy → its partner, by the target's names: weights stored in the target under both names, with
    the same dtype and shape in separate bytes (one storage viewed twice, in a torch file, is written once
    anyway), when ``config_dir/config.json`` says ``"tie_word_embeddings": true``; empty otherwise (no
    config, an unreadable one, or a model that does not tie: then the copy is an ordinary tensor)."""
    from nandoctor.checkpoint.jsonfiles import read_json
    from nandoctor.layers import normalise

    try:
        config = read_json(config_dir / "config.json", limit=16 << 20)
    except (OSError, ValueError):
        return {}
    if not isinstance(config, dict) or config.get("tie_word_embeddings") is not True:
        return {}
    refs = report.tensors.refs
    by_norm: dict[str, list[int]] = {}
    for row, name in enumerate(refs.names):
        by_norm.setdefault(normalise(name), []).append(row)
    out: dict[str, str] = {}
    for row, name in enumerate(refs.names):
        candidates = tie_candidates(normalise(name))
        if not candidates or refs.roles[row] != "weight":
            continue
        partners = [r for c in candidates for r in by_norm.get(c, []) if r != row]
        if len(partners) != 1:  # none stored, or two that could be it: no guess
            continue
        copy, partner = refs[row], refs[partners[0]]
        if (copy.chunk is None and partner.chunk is None and copy.dtype == partner.dtype
                and tuple(copy.shape) == tuple(partner.shape) and copy.elements_key != partner.elements_key):
            out[name] = partner.name
    return out
