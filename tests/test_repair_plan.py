"""Repair planning on in-memory reports and donors: no file is read, every rule is checked."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from nandoctor.errors import CorruptCheckpointError
from nandoctor.layers import summarize
from nandoctor.model import Region, ScanReport, TensorRef, TensorResult, UnviewedBad
from nandoctor.layers import normalise
from nandoctor.restore.plan import plan_repair
from nandoctor.verdict import judged


def ref(name: str, dtype: str = "F32", shape: tuple[int, ...] = (4, 4), file: str = "t.safetensors", **kw) -> TensorRef:
    key = kw.pop("key", name)
    nbytes = kw.pop("nbytes", 4 * max(1, len(shape) and shape[0] * (shape[1] if len(shape) > 1 else 1)))
    return TensorRef(name, dtype, shape, Region(file, kw.pop("offset", 0), nbytes, dtype, key), **kw)


def report(*results: TensorResult, unviewed: tuple[UnviewedBad, ...] = ()) -> ScanReport:
    return judged(ScanReport("target", ("t.safetensors",), tuple(results), summarize(results), unviewed=unviewed))


def bad(name: str, nan: int = 1, **kw) -> TensorResult:
    return TensorResult(ref(name, **kw), nan=nan)


def good(name: str, **kw) -> TensorResult:
    return TensorResult(ref(name, **kw))


@dataclass
class FakeDonor:
    label: str
    tensors: dict[str, TensorRef]
    nonfinite_of: dict[str, int] = field(default_factory=dict)
    step: int | None = None
    broken: bool = False
    loads: int = 0
    checked: list[str] = field(default_factory=list)

    def refs(self):
        self.loads += 1
        if self.broken:
            raise CorruptCheckpointError(self.label, "header is not valid JSON")
        return self.tensors

    fingerprints: dict = field(default_factory=dict)

    def unhealthy(self, r: TensorRef) -> str | None:
        self.checked.append(r.name)
        bad = self.nonfinite_of.get(r.name, 0)
        return f"holds {bad:,} NaN/Inf values" if bad else None

    def all_zero(self, r: TensorRef) -> bool:  # (plan.DonorCatalog: no copy of these fakes is all zero)
        return False


def donor(label: str, *names: str, step: int | None = None, **kw) -> FakeDonor:
    return FakeDonor(label, {n: ref(n, file=f"{label}.safetensors") for n in names}, step=step, **kw)


def test_bad_tensor_taken_from_first_good_donor_and_clean_ones_left_alone():
    rep = report(good("a.weight"), bad("b.weight", nan=3), good("c.weight"))
    d1 = donor("ckpt-200", "a.weight", "b.weight", "c.weight", step=200)
    plan = plan_repair(rep, [d1])
    assert not plan.refused
    assert [r.name for r in plan.restorations] == ["b.weight"]
    r = plan.restorations[0]
    assert (r.donor, r.donor_name, r.nan, r.reason, r.via) == (0, "b.weight", 3, "bad", None)
    assert r.donor_ref is d1.tensors["b.weight"]
    assert plan.donors[0].step == 200
    assert d1.checked == ["b.weight"]  # only the tensor it would give is read


def test_donor_order_and_fallback_on_dtype_shape_and_nonfinite():
    rep = report(bad("x"), bad("y"), bad("z"))
    d1 = FakeDonor(
        "d1",
        {"x": ref("x", dtype="F16", file="d1"), "y": ref("y", shape=(2, 8), file="d1"), "z": ref("z", file="d1")},
        nonfinite_of={"z": 5},
    )
    d2 = donor("d2", "x", "y", "z")
    plan = plan_repair(rep, [d1, d2])
    assert not plan.refused
    assert {r.name: r.donor for r in plan.restorations} == {"x": 1, "y": 1, "z": 1}


def test_first_donor_wins_when_both_are_good():
    rep = report(bad("x"))
    d1, d2 = donor("d1", "x"), donor("d2", "x")
    plan = plan_repair(rep, [d1, d2])
    assert plan.restorations[0].donor == 0
    assert d2.loads == 0  # never opened: nothing needed it


def test_missing_everywhere_is_refused_with_a_reason_per_donor():
    rep = report(bad("x", nan=2), bad("y"))
    d1 = FakeDonor("d1", {"x": ref("x", dtype="BF16", file="d1")}, step=100)
    d2 = FakeDonor("d2", {"x": ref("x", file="d2"), "y": ref("y", file="d2")}, nonfinite_of={"x": 7})
    plan = plan_repair(rep, [d1, d2])
    assert plan.refused
    assert [r.name for r in plan.restorations] == ["y"]
    (u,) = plan.unrestorable
    assert (u.name, u.nan) == ("x", 2)
    assert u.reasons == (
        "d1 (step 100): dtype BF16, the target's is F32",
        "d2: holds 7 NaN/Inf values itself",
    )


def test_no_donor_at_all_is_refused():
    plan = plan_repair(report(bad("x")), [])
    assert plan.refused and plan.unrestorable[0].reasons == ("no donor given",)


def test_shape_mismatch_reason():
    rep = report(bad("x"))
    d = FakeDonor("d", {"x": ref("x", shape=(4, 2), file="d")})
    (u,) = plan_repair(rep, [d]).unrestorable
    assert u.reasons == ("d: shape [4, 2], the target's is [4, 4]",)


@pytest.mark.parametrize(
    "target, donor_name",
    [
        ("model.layers.0.w", "module.model.layers.0.w"),
        ("module.encoder.w", "encoder.w"),
        ("_orig_mod.h.0.w", "h.0.w"),
        ("model.layers.0.w", "base_model.model.model.layers.0.w"),
    ],
)
def test_prefixes_are_normalised_when_the_exact_name_is_missing(target, donor_name):
    plan = plan_repair(report(bad(target)), [donor("d", donor_name)])
    (r,) = plan.restorations
    assert r.donor_name == donor_name


def test_exact_name_beats_a_normalised_match_in_the_same_donor():
    plan = plan_repair(report(bad("model.w")), [donor("d", "module.model.w", "model.w")])
    assert plan.restorations[0].donor_name == "model.w"


def test_ambiguous_normalised_match_is_not_guessed():
    plan = plan_repair(report(bad("w")), [donor("d", "module.w", "model.w")])
    assert plan.refused
    assert "ambiguous" in plan.unrestorable[0].reasons[0]


def test_normalise():
    assert normalise("module._orig_mod.model.x.weight") == "x.weight"
    assert normalise("base_model.model.model.layers.1.q") == "layers.1.q"
    assert normalise("model.") == "model."  # never strip to nothing
    assert normalise("modelx.w") == "modelx.w"


def test_unreadable_donor_is_skipped_and_noted():
    rep = report(bad("x"))
    broken = donor("broken", broken=True)
    plan = plan_repair(rep, [broken, donor("ok", "x")])
    assert not plan.refused and plan.restorations[0].donor == 1
    assert any("broken" in n and "not valid JSON" in n for n in plan.notes)
    assert broken.loads == 1  # tried once, not once per tensor


def test_scope_layer_restores_the_whole_layer_from_one_donor():
    rep = report(
        good("h.1.ln.weight"),
        bad("h.1.attn.weight"),
        good("h.2.ln.weight"),
        good("h.2.attn.weight"),
        bad("lm_head.weight"),
        good("wte.weight"),
    )
    # d1 has a finite attn for layer 1 but its ln is non-finite: the layer must not mix donors.
    d1 = FakeDonor("d1", {n: ref(n, file="d1") for n in ("h.1.ln.weight", "h.1.attn.weight")}, nonfinite_of={"h.1.ln.weight": 1})
    d2 = donor("d2", "h.1.ln.weight", "h.1.attn.weight", "lm_head.weight", "wte.weight")
    plan = plan_repair(rep, [d1, d2], scope="layer")
    assert not plan.refused
    got = {r.name: (r.donor, r.reason) for r in plan.restorations}
    assert got == {"h.1.ln.weight": (1, "layer"), "h.1.attn.weight": (1, "bad"), "lm_head.weight": (1, "bad")}


def test_scope_layer_refuses_when_a_clean_member_has_no_donor():
    rep = report(good("h.1.ln.weight"), bad("h.1.attn.weight"))
    plan = plan_repair(rep, [donor("d", "h.1.attn.weight")], scope="layer")
    assert plan.refused
    assert [u.name for u in plan.unrestorable] == ["h.1.ln.weight", "h.1.attn.weight"]
    attn = plan.unrestorable[1]
    assert attn.reasons == ("d: another tensor of its layer has no good copy here",)


def test_scope_tensor_vs_layer_selection():
    rep = report(good("h.1.a"), bad("h.1.b"), good("h.2.a"))
    d = donor("d", "h.1.a", "h.1.b", "h.2.a")
    assert [r.name for r in plan_repair(rep, [d], scope="tensor").restorations] == ["h.1.b"]
    assert [r.name for r in plan_repair(rep, [d], scope="layer").restorations] == ["h.1.a", "h.1.b"]
    with pytest.raises(ValueError):
        plan_repair(rep, [d], scope="model")


def test_tied_views_are_written_once_and_a_donor_lacking_the_tied_copy_still_works():
    # A torch file: lm_head.weight and wte.weight are the same storage view; safetensors donors drop one.
    shared = Region("t.bin", 64, 64, "F32", "0")
    wte = TensorResult(TensorRef("transformer.wte.weight", "F32", (4, 4), shared), nan=2)
    head = TensorResult(TensorRef("lm_head.weight", "F32", (4, 4), shared), nan=2)
    rep = report(wte, head)
    d = donor("d", "transformer.wte.weight")
    plan = plan_repair(rep, [d])
    assert not plan.refused
    by = {r.name: r for r in plan.restorations}
    assert by["transformer.wte.weight"].via is None
    assert by["lm_head.weight"].via == "transformer.wte.weight"
    assert by["lm_head.weight"].donor_ref is d.tensors["transformer.wte.weight"]
    assert [r.name for r in plan.writes] == ["transformer.wte.weight"]


def test_overlapping_but_different_views_are_both_written():
    storage = Region("t.bin", 64, 64, "F32", "0")
    whole = TensorResult(TensorRef("a", "F32", (16,), storage), nan=1)
    part = TensorResult(TensorRef("b", "F32", (4,), storage, storage_offset=4), nan=1)
    d = FakeDonor("d", {"a": ref("a", shape=(16,), file="d"), "b": ref("b", shape=(4,), file="d")})
    plan = plan_repair(report(whole, part), [d])
    assert [r.name for r in plan.writes] == ["a", "b"]


def test_bytes_in_no_view_make_the_plan_refused():
    rep = report(good("a"), unviewed=(UnviewedBad("t.bin", "3", 1, 0, 0),))
    plan = plan_repair(rep, [donor("d", "a")])
    assert plan.refused and not plan.unrestorable and plan.unviewed


def test_clean_target_needs_nothing():
    plan = plan_repair(report(good("a")), [donor("d", "a")])
    assert not plan.refused and plan.restorations == ()


def test_a_donor_tensor_that_cannot_be_read_moves_on_to_the_next_donor():
    class Truncated(FakeDonor):
        def unhealthy(self, r):
            raise CorruptCheckpointError(self.label, "tensor data lies past the end of the file")

    rep = report(bad("x"))
    broken = Truncated("d1", {"x": ref("x", file="d1")})
    plan = plan_repair(rep, [broken, donor("d2", "x")])
    assert plan.restorations[0].donor == 1
    broken_only = plan_repair(rep, [broken])
    assert "cannot be read" in broken_only.unrestorable[0].reasons[0]
