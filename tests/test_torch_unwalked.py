"""Tensors torch loads that a name walker could miss, and pickles that try to rewrite nandoctor's stand-ins.

Each file here holds a NaN that ``torch.load`` returns; a scan that called it clean would be the worst
failure nandoctor can have. Found by an adversarial review; each case failed (exit 0, "CLEAN") before.
"""

from __future__ import annotations

import collections
from pathlib import Path
from pickle import BUILD, EMPTY_DICT, MARK, NEWFALSE, SETITEM

import numpy as np
import pytest

from nandoctor.engine import scan
from tests.torch_helpers import (
    p_call,
    p_dict,
    p_global,
    p_int,
    p_storage,
    p_str,
    p_tensor,
    p_tuple,
    pickle_bytes,
    torch_zip,
)

torch = pytest.importorskip("torch")
NAN = float("nan")
RAW = torch.tensor([1.0, NAN, float("inf"), 2.0]).numpy().tobytes()


def counts(report) -> dict[str, tuple[int, int, int]]:
    return {t.name: (t.nan, t.posinf, t.neginf) for t in report.tensors}


def test_a_tensor_used_as_a_dict_key_is_scanned(tmp_path: Path) -> None:
    path = tmp_path / "a.pt"
    torch.save({torch.tensor([1.0, NAN]): "k"}, path)
    report = scan(path, device="cpu")
    assert counts(report) == {"<key 0>": (1, 0, 0)} and report.exit_code == 1


def test_a_parameters_python_attributes_are_scanned(tmp_path: Path) -> None:
    p = torch.nn.Parameter(torch.ones(3))
    p.extra = torch.tensor([NAN])
    path = tmp_path / "b.pt"
    torch.save({"p": p}, path)
    assert torch.isnan(torch.load(path, weights_only=True)["p"].extra).all()  # torch brings it back
    report = scan(path, device="cpu")
    assert counts(report) == {"p": (0, 0, 0), "p.extra": (1, 0, 0)} and report.exit_code == 1


class Tagged(torch.Tensor):
    pass


def test_a_tensor_subclass_state_is_scanned(tmp_path: Path) -> None:
    x = torch.ones(2).as_subclass(Tagged)
    x.extra = torch.tensor([NAN])
    path = tmp_path / "c.pt"
    torch.save({"x": x}, path)
    report = scan(path, device="cpu")
    assert counts(report)["x.extra"] == (1, 0, 0) and report.exit_code == 1


def test_tensor_keys_inside_ordered_dict_metadata(tmp_path: Path) -> None:
    od = collections.OrderedDict(a=torch.ones(1))
    od._metadata = {torch.tensor([NAN]): 1}
    path = tmp_path / "d.pt"
    torch.save(od, path)
    report = scan(path, device="cpu")
    assert counts(report)["_metadata.<key 0>"] == (1, 0, 0) and report.exit_code == 1


def test_an_ordered_dict_whose_items_attribute_was_overwritten(tmp_path: Path) -> None:
    """BUILD sets an attribute named "items" on the OrderedDict; torch still loads the weight."""
    body = (
        p_call(p_global("collections", "OrderedDict"), [])
        + p_str("weight") + p_tensor(p_storage("0", 4), 0, (1, 4), (4, 1)) + SETITEM
        + EMPTY_DICT + p_str("items") + p_global("builtins", "set") + SETITEM + BUILD
    )
    path = tmp_path / "e.bin"
    torch_zip(path, pickle_bytes(body), {"0": RAW})
    assert torch.isnan(torch.load(path, weights_only=True)["weight"]).any()
    report = scan(path, device="cpu")
    assert counts(report)["weight"] == (1, 1, 0) and report.exit_code == 1


def test_storages_no_walked_tensor_views_are_scanned_whole(tmp_path: Path) -> None:
    """A tensor built where the walk loses it is still scanned (the unpickler's registry). The vehicle this test
    used, a torch.device() argument the stand-in turned into text, is refused now, as torch refuses it
    (torch.device of a tensor: TypeError); so is a bare untyped storage passed there."""
    hidden = p_call(p_global("torch", "device"), [p_tensor(p_storage("0", 4), 0, (4,), (1,))])
    path = tmp_path / "f.pt"
    torch_zip(path, pickle_bytes(p_dict([(p_str("o"), hidden)])), {"0": RAW})
    report = scan(path, device="cpu")
    assert report.exit_code == 3 and "the pickle calls torch.device with" in report.errors[0].message

    untyped = p_tuple([p_str("storage"), p_global("torch", "UntypedStorage"), p_str("0"), p_str("cpu"), p_int(16)])
    hidden = p_call(p_global("torch", "device"), [untyped + b"Q"])
    path = tmp_path / "g.pt"
    torch_zip(path, pickle_bytes(p_dict([(p_str("o"), hidden)])), {"0": RAW})
    report = scan(path, device="cpu")
    assert report.exit_code == 3 and "the pickle calls torch.device with" in report.errors[0].message


def test_a_tensor_the_walk_does_not_reach_is_scanned_from_the_registry(tmp_path: Path, monkeypatch) -> None:
    """Every tensor the unpickler builds is registered (issue 14): one the name walk misses is found all the same,
    named by the registry, with a note that no name reaches it."""
    from nandoctor.readers.torch import file as torch_file
    from nandoctor.readers.torch.names import Walk

    monkeypatch.setattr(torch_file, "walk", lambda root, prefix="", groups=(): Walk())  # (reaches nothing)
    path = tmp_path / "f.pt"
    torch_zip(path, pickle_bytes(p_dict([(p_str("o"), p_tensor(p_storage("0", 4), 0, (4,), (1,)))])), {"0": RAW})
    report = scan(path, device="cpu")
    assert counts(report) == {"<tensor 0>": (1, 1, 0)} and report.exit_code == 1
    assert any("no name reaches them" in n for n in report.notes)


def test_build_cannot_relabel_a_float_storage(tmp_path: Path) -> None:
    storage_type = p_global("torch", "FloatStorage") + b"}" + p_str("dtype") + p_str("I32") + b"s" + b"b"
    sid = p_tuple([p_str("storage"), storage_type, p_str("0"), p_str("cpu"), p_int(4)]) + b"Q"
    path = tmp_path / "m.pt"
    torch_zip(path, pickle_bytes(p_dict([(p_str("w"), p_tensor(sid, 0, (4,), (1,)))])), {"0": RAW})
    report = scan(path, device="cpu")
    assert report.exit_code == 3 and not report.tensors
    assert "sets the state of a StorageType" in report.errors[0].message


def test_build_cannot_write_into_nandoctors_own_functions(tmp_path: Path) -> None:
    from nandoctor.readers.torch import rebuilds

    body = p_global("torch._utils", "_rebuild_tensor_v2") + EMPTY_DICT + p_str("pwned") + p_int(1) + SETITEM + BUILD
    path = tmp_path / "g.pt"
    torch_zip(path, pickle_bytes(p_dict([(p_str("f"), body)])), {})
    report = scan(path, device="cpu")
    assert report.exit_code == 3 and "_rebuild_tensor_v2" in report.errors[0].message
    assert not hasattr(rebuilds._rebuild_tensor_v2, "pwned")


def test_an_empty_view_far_past_its_storage_beside_a_nan(tmp_path: Path) -> None:
    """torch accepts an empty view at any offset int64 holds; nandoctor once overflowed int64 locating NaN for it.
    One past int64 torch refuses ("Overflow when unpacking long long"): exit 3 (readers/shapes.py)."""
    storage = p_storage("0", 4)
    for offset, loads in ((2**63 - 1, True), (2**63, False)):
        body = p_dict([(p_str("w"), p_tensor(storage, 0, (4,), (1,))), (p_str("e"), p_tensor(storage, offset, (0,), (1,)))])
        path = tmp_path / f"e{offset}.pt"
        torch_zip(path, pickle_bytes(body), {"0": RAW})
        try:
            torch.load(path, weights_only=True)
            loaded = True
        except (ValueError, RuntimeError, TypeError):
            loaded = False
        assert loaded is loads  # the oracle
        report = scan(path, device="cpu")
        if loads:
            assert counts(report) == {"w": (1, 1, 0), "e": (0, 0, 0)} and report.exit_code == 1
        else:
            assert report.exit_code == 3 and "does not fit int64" in report.errors[0].message


def test_a_huge_integer_loss_in_the_trainer_log_is_finite(tmp_path: Path) -> None:
    from nandoctor.checkpoint.runs import read_train_log

    path = tmp_path / "trainer_state.json"
    path.write_text('{"log_history":[{"step":5,"loss":1' + "0" * 400 + "}]}")
    log = read_train_log(path)
    assert log.error is None and log.first_nonfinite_step is None and log.last_step == 5


def test_a_dtensor_is_read_through_its_local_shard(tmp_path: Path) -> None:
    """A DTensor pickles as a wrapper subclass whose data is its _local_tensor state, plus
    torch.serialization._get_layout (in torch's weights_only allowlist); it was refused as unsafe."""
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        t = torch.randn(4, 4)
        t[1, 2] = NAN
        torch.save({"w": distribute_tensor(t, init_device_mesh("cpu", (1,)), [Shard(0)])}, tmp_path / "d.pt")
    finally:
        dist.destroy_process_group()
    report = scan(tmp_path / "d.pt", device="cpu")
    assert not report.errors
    assert {t.name: (t.nan, t.first_bad) for t in report.bad_tensors} == {"w._local_tensor": (1, 6)}



# -- a second adversarial round: a float view hidden behind an integer view of the same bytes -------------
NAN4 = np.array([np.nan, 1, np.inf, 2], dtype="<f4").tobytes()
CLEAN4 = np.array([1, 2, 3, 4], dtype="<f4").tobytes()


def v3(storage: bytes, dtype: str, size: int = 4) -> bytes:
    return p_call(p_global("torch._utils", "_rebuild_tensor_v3"),
                  [storage, p_int(0), p_tuple([p_int(size)]), p_tuple([p_int(1)]), NEWFALSE,
                   p_call(p_global("collections", "OrderedDict"), []), p_global("torch", dtype)])


def untyped(key: str = "0", nbytes: int = 16) -> bytes:
    return p_storage(key, nbytes, "UntypedStorage").replace(b"ctorch\nUntypedStorage\n", b"ctorch.storage\nUntypedStorage\n")


def never_clean(tmp_path: Path, body: bytes, storages: dict[str, bytes]) -> None:
    """torch loads a NaN from this file; nandoctor may refuse it or count the NaN, never pass it."""
    path = tmp_path / "f.pt"
    torch_zip(path, pickle_bytes(body), storages)
    report = scan(path, device="cpu")
    assert report.exit_code in (1, 3), counts(report)
    assert report.exit_code == 3 or report.nan >= 1


def test_build_that_repoints_a_tensor_is_refused(tmp_path: Path) -> None:
    t = p_tensor(p_storage("0", 4), 0, (4,), (1,)) + p_tuple([p_storage("1", 4), p_int(0), p_tuple([p_int(4)]),
                                                               p_tuple([p_int(1)])]) + BUILD
    never_clean(tmp_path, p_dict([(p_str("x"), v3(p_storage("1", 4), "int32")), (p_str("t"), t)]),
                {"0": CLEAN4, "1": NAN4})


@pytest.mark.parametrize("storage", ["typed", "untyped"])
def test_equal_tensor_keys_stay_two_entries(tmp_path: Path, storage: str) -> None:
    """Tensors hash by identity in torch: two equal-looking keys are two entries, each value kept."""
    s = p_storage("0", 4) if storage == "typed" else untyped()
    k1, k2 = (p_tensor(p_storage("1", 1), 0, (1,), (1,)) for _ in range(2))
    value = p_tensor(s, 0, (4,), (1,)) if storage == "typed" else v3(s, "float32")
    body = p_dict([(p_str("x"), v3(s, "int32")), (p_str("d"), p_dict([(k1, value), (k2, p_int(0))]))])
    never_clean(tmp_path, body, {"0": NAN4, "1": CLEAN4[:4]})


def test_tensors_as_optimizer_state_keys(tmp_path: Path) -> None:
    opt = p_dict([(p_str("state"), p_dict([(v3(untyped(), "float32"), EMPTY_DICT)])), (p_str("param_groups"), b"]")])
    never_clean(tmp_path, p_dict([(p_str("x"), v3(untyped(), "int32")), (p_str("opt"), opt)]), {"0": NAN4})
    report = scan(tmp_path / "f.pt", device="cpu")
    assert "opt.state.<key 0>" in report.errors[0].message  # found, and then the two dtypes conflict


def test_the_legacy_tensor_constructor_views_a_storage_as_float32(tmp_path: Path) -> None:
    t = p_call(p_global("torch", "Tensor"), [p_storage("1", 4)])
    path = tmp_path / "alone.pt"
    torch_zip(path, pickle_bytes(p_dict([(p_str("t"), t)])), {"1": NAN4})
    assert counts(scan(path, device="cpu")) == {"t": (1, 1, 0)}
    never_clean(tmp_path, p_dict([(p_str("x"), v3(p_storage("1", 4), "int32")), (p_str("t"), t)]), {"1": NAN4})


def test_backward_hooks_are_walked(tmp_path: Path) -> None:
    t = p_call(p_global("torch._utils", "_rebuild_tensor_v2"),
               [p_storage("1", 1), p_int(0), p_tuple([p_int(1)]), p_tuple([p_int(1)]), NEWFALSE,
                p_dict([(p_str("h"), v3(untyped(), "float32"))])])
    never_clean(tmp_path, p_dict([(p_str("x"), v3(untyped(), "int32")), (p_str("t"), t)]), {"0": NAN4, "1": CLEAN4[:4]})


def test_a_cast_on_load_is_refused_not_guessed(tmp_path: Path) -> None:
    """float32 1e10 becomes inf in float16: the cast's result is not in the file."""
    big = np.array([1e10, -1e10, 1.0, 2.0], "<f4").tobytes()
    t = p_call(p_global("torch._utils", "_rebuild_device_tensor_from_cpu_tensor"),
               [p_tensor(p_storage("0", 4), 0, (4,), (1,)), p_global("torch", "float16"), p_str("cpu"), NEWFALSE])
    path = tmp_path / "cast.pt"
    torch_zip(path, pickle_bytes(p_dict([(p_str("w"), t)])), {"0": big})
    report = scan(path, device="cpu")
    assert report.exit_code == 3 and "cast from F32 to float16" in report.errors[0].message


def test_a_float_storage_viewed_only_as_integers_is_also_scanned_as_declared(tmp_path: Path) -> None:
    path = tmp_path / "ints.pt"
    torch_zip(path, pickle_bytes(p_dict([(p_str("x"), v3(p_storage("0", 4), "int32"))])), {"0": NAN4})
    report = scan(path, device="cpu")
    assert counts(report) == {"x": (0, 0, 0), "<storage 0 as F32>": (1, 1, 0)} and report.exit_code == 1


def test_a_shared_container_of_plain_values_is_walked_once(tmp_path: Path) -> None:
    """One list of 200k ints referenced 2,000 times through the pickle memo (a 0.4 MB file): the walk
    once re-iterated it on every path (minutes); a container that held no tensor is not walked again."""
    from nandoctor.readers.torch import names as torchnames

    ints = b"]" + b"r\x00\x00\x00\x00" + MARK + b"K\x01" * 200_000 + b"e"
    body = p_dict([(p_str("w"), p_tensor(p_storage("0", 4), 0, (4,), (1,))),
                   (p_str("meta"), b"]" + MARK + ints + b"j\x00\x00\x00\x00" * 1999 + b"e")])
    path = tmp_path / "memo.pt"
    torch_zip(path, pickle_bytes(body), {"0": CLEAN4})
    calls = 0
    children = torchnames._children

    def counting(value, out):
        nonlocal calls
        calls += 1
        return children(value, out)

    import unittest.mock

    with unittest.mock.patch.object(torchnames, "_children", counting):
        report = scan(path, device="cpu")
    assert report.exit_code == 0 and counts(report) == {"w": (0, 0, 0)}
    assert calls < 10  # the root, "meta", the shared list once


def test_attributes_are_read_past_a_shadowed_keys_method(tmp_path: Path) -> None:
    """dict(x) and {**x} call x.keys() on a dict subclass: a BUILD that set "keys" on the parameter's
    state (an OrderedDict) made its attributes look empty, hiding p.extra behind an int32 alias."""
    state = (p_call(p_global("collections", "OrderedDict"), [])
             + p_str("extra") + v3(untyped("1"), "float32") + SETITEM
             + EMPTY_DICT + p_str("keys") + p_global("builtins", "set") + SETITEM + BUILD)
    param = p_call(p_global("torch._utils", "_rebuild_parameter_with_state"),
                   [p_tensor(p_storage("0", 1), 0, (1,), (1,)), NEWFALSE,
                    p_call(p_global("collections", "OrderedDict"), []), state])
    never_clean(tmp_path, p_dict([(p_str("x"), v3(untyped("1"), "int32")), (p_str("p"), param)]),
                {"0": CLEAN4[:4], "1": NAN4})


def test_nan_in_bytes_no_tensor_views_says_where_and_gives_the_resave_that_fixes_it(tmp_path):
    """A slice saved alone writes its whole storage: a NaN past the slice is in the file, read by no tensor.
    The verdict says so (never "0 of 1 tensors hold NaN/Inf"), fails the gate, and next: is the re-save that
    works, not a repair by name that refuses."""
    from tests.conftest import run_cli

    path = tmp_path / "view.pt"
    big = torch.ones(100)
    big[90] = float("nan")
    torch.save({"view": big[:50]}, path)
    quiet = run_cli("scan", path, "--quiet")
    assert (quiet.exit_code, quiet.output) == (1, f"FAIL NON-FINITE (POISONED) {path}: 1 NaN in storage bytes no tensor "
                                                  f"views (storage data/0 of {path})\n")
    full = run_cli("scan", path, "--no-progress")
    lines = full.output.splitlines()
    assert f"✗ FAIL NON-FINITE (POISONED): 1 NaN in storage bytes no tensor views (storage data/0 of {path})" in lines
    assert "nandoctor repair" not in full.output
    resave = lines[lines.index(f"  next: NaN/Inf in bytes no tensor of {path} views: re-save it with only the bytes "
                               "its tensors view") + 1].strip()
    assert resave.endswith(f"{path} {tmp_path / 'view-resaved.pt'}")
    import subprocess
    assert subprocess.run(resave, shell=True, check=False).returncode == 0  # the command it gives works
    assert run_cli("scan", tmp_path / "view-resaved.pt", "--quiet").exit_code == 0
