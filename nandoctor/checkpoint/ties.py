"""Which tensors loaders rebuild from another one, so that a checkpoint may save them once.

Tied weights share one storage in memory. ``torch.save`` writes the storage
once and both names view it (``TensorRef.elements_key`` is equal); safetensors
refuses shared storage, so ``save_pretrained`` drops the tied copy
(``lm_head.weight``, T5's ``encoder.embed_tokens.weight``) and the loader ties
it again from ``config.json``'s ``tie_word_embeddings``. A tensor present in
one checkpoint and absent from another is therefore not missing when it is
tied to a partner present on both sides.
"""

from __future__ import annotations

# A tensor name (wrapper prefixes stripped, restore/plan.py's normalise) → the names it may be tied to.
_EMBEDDINGS = (
    "embed_tokens.weight", "model.embed_tokens.weight", "transformer.wte.weight", "wte.weight",
    "gpt_neox.embed_in.weight", "tok_embeddings.weight", "shared.weight", "word_embeddings.weight",
    "embeddings.word_embeddings.weight", "bert.embeddings.word_embeddings.weight",
    "model.decoder.embed_tokens.weight", "decoder.embed_tokens.weight", "transformer.word_embeddings.weight",
)
TIE_PARTNERS: dict[str, tuple[str, ...]] = {
    "lm_head.weight": _EMBEDDINGS,
    "embed_out.weight": _EMBEDDINGS,
    "output.weight": _EMBEDDINGS,
    "cls.predictions.decoder.weight": _EMBEDDINGS,
    "encoder.embed_tokens.weight": ("shared.weight",),
    "decoder.embed_tokens.weight": ("shared.weight",),
}


def tie_candidates(name: str) -> tuple[str, ...]:
    """The (normalised) names ``name`` may be a tied copy of; empty for a tensor nobody ties."""
    return TIE_PARTNERS.get(name, ())
