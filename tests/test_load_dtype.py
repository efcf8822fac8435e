"""config.json's dtype is the dtype ``from_pretrained`` loads the weights in: the scan checks overflow for it.

A trial saved a tiny Llama with fp32 weights, one RMSNorm weight at 70000, and ``"dtype": "float16"`` in its
config.json: the scan said PASS CLEAN, and ``AutoModelForCausalLM.from_pretrained(path)`` (transformers 5.x:
``dtype="auto"``, the config's) loaded it in fp16, the weight became Inf and ``generate`` died with
``probability tensor contains either inf, nan or element < 0``. The oracle here is transformers itself: the
loaded model's non-finite parameters, and whether ``generate`` runs.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

import nandoctor  # noqa: E402
from nandoctor.errors import OverflowRiskError  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.realruns import generate_ok  # noqa: E402

pytestmark = pytest.mark.integration

PLANTED = "model.layers.1.post_attention_layernorm.weight"  # 32 values, all planted: no outlier, not exploded
# config.json dtype keys as transformers reads them: "dtype" wins over the older "torch_dtype" unless null
CONFIGS = (
    {"dtype": "float16"},
    {"torch_dtype": "float16"},
    {"dtype": None, "torch_dtype": "half"},
    {"dtype": "float32", "torch_dtype": "float16"},
    {"dtype": "bfloat16"},
    {"dtype": "float32"},
    {},
)


def _save(folder, value: float, stored: torch.dtype, config: dict, *, pickle: bool = False, also: tuple[str, ...] = ()):
    """A tiny Llama saved by save_pretrained in ``stored``, ``PLANTED`` (and the tensors ``also`` names) filled with
    ``value``, its config.json's dtype keys replaced by ``config``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64))
    model = model.to(stored)
    with torch.no_grad():
        for name in (PLANTED, *also):
            model.get_parameter(name).fill_(value)
    if pickle:  # pytorch_model.bin: the dtypes are in the pickle, not a header
        folder.mkdir(parents=True)
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    else:
        model.save_pretrained(folder)
    path = folder / "config.json"
    data = json.loads(path.read_text())
    data.pop("dtype", None)
    data.pop("torch_dtype", None)
    path.write_text(json.dumps({**data, **config}))
    return folder


def _loaded_nonfinite(folder) -> dict[str, int]:
    """The oracle: what from_pretrained (dtype="auto", the default) makes of the weights, non-finite per parameter."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder))
    counts = {name: int((~torch.isfinite(p)).sum()) for name, p in model.named_parameters()}
    return {name: n for name, n in counts.items() if n}


@pytest.mark.parametrize("stored", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("value", [70000.0, 100.0])
def test_scan_fails_exactly_when_from_pretrained_cannot_generate(tmp_path, value, stored):
    for n, config in enumerate(CONFIGS):
        folder = _save(tmp_path / str(n), value, stored, config)
        broken = _loaded_nonfinite(folder)
        generates = generate_ok(folder)
        assert generates == (not broken), (config, broken)
        report = nandoctor.scan(str(folder), device="cpu")
        assert report.exit_code == (0 if generates else 1), (config, report.verdict)
        assert {t.name: t.overflow for t in report.tensors if t.overflow} == broken, config  # exact, per tensor
        assert run_cli("scan", folder, "--quiet").exit_code == report.exit_code

        loads_as = {"dtype": config.get("dtype")} if config.get("dtype") else {"torch_dtype": config.get("torch_dtype")}
        (key, value_written), = loads_as.items()
        narrow = {"float16": "fp16", "half": "fp16", "bfloat16": "bf16"}.get(value_written or "")
        # implied only where the stored dtype can overflow it: bf16 weights under "bfloat16" cost no overflow pass
        implied = narrow if narrow == "fp16" or (narrow == "bf16" and stored == torch.float32) else None
        assert report.extra.get("target_dtype") == implied, config
        if implied is None:
            assert "load_dtype" not in report.extra and not any("config.json" in note for note in report.notes)
            continue
        config_path = str(folder / "config.json")
        assert report.extra["load_dtype"] == {"config": config_path, "key": key, "value": value_written,
                                              "target_dtype": implied, "checked": True, "source": "config"}
        data = nandoctor.to_json(report)
        assert data["load_dtype"] == report.extra["load_dtype"] and data["target_dtype"] == implied
        note = next(note for note in report.notes if note.startswith("config.json loads these weights"))
        if broken:
            assert f"32 values of |x| ≥ 65520 (fp16's largest is 65504) would become Inf in {PLANTED}" in note
            assert f'set "{key}" to "bfloat16" or "float32" in {config_path}' in note
            # values the cast overflows are the overflow finding's, not also exploded under fp16's ceiling
            assert not any("exploded" in t.findings for t in report.tensors)
            with pytest.raises(OverflowRiskError) as raised:  # the cast's overflow named, not only "exploded"
                nandoctor.assert_finite(str(folder), device="cpu")
            assert f'set "{key}" to "bfloat16" or "float32" in {config_path}' in raised.value.hint
        else:
            assert "checked against its range" in note and note.endswith("(--target-dtype none skips this)")
            assert nandoctor.assert_finite(str(folder), device="cpu") is not None


@pytest.mark.parametrize("stored", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_overflow_counts_equal_what_from_pretrained_turns_into_inf_at_the_boundary(tmp_path, stored):
    # 65519 in fp32 rounds to fp16's 65504 (finite), 65520 to Inf; in bf16 both are 65536 already: Inf
    for value in (65519.0, 65520.0):
        folder = _save(tmp_path / f"{value:g}", value, stored, {"dtype": "float16"})
        report = nandoctor.scan(str(folder), device="cpu")
        assert {t.name: t.overflow for t in report.tensors if t.overflow} == _loaded_nonfinite(folder)
        assert report.extra["target_dtype"] == "fp16"
    assert report.exit_code == 1


def test_pickled_weights_are_checked_too(tmp_path):
    folder = _save(tmp_path / "bin", 70000.0, torch.float32, {"torch_dtype": "float16"}, pickle=True)
    assert _loaded_nonfinite(folder) == {PLANTED: 32} and not generate_ok(folder)
    report = nandoctor.scan(str(folder), device="cpu")
    assert report.exit_code == 1 and {t.name: t.overflow for t in report.tensors if t.overflow} == {PLANTED: 32}
    assert report.extra["load_dtype"]["checked"] is True


def test_pickled_weights_no_cast_can_overflow_are_said_as_safetensors_ones_are(tmp_path):
    """A new-user review: the same bf16 weights under a bfloat16 config.json were said differently as .bin (`; fits
    bf16 (max |x| 1)`, a note, load_dtype and target_dtype in the JSON) and as safetensors (nothing: the headers show
    no cast can overflow). The .bin's dtypes are known once the scan read them: the same report."""
    reports = [nandoctor.scan(str(_save(tmp_path / name, 0.5, torch.bfloat16, {"dtype": "bfloat16"}, pickle=pickle)),
                              device="cpu") for name, pickle in (("st", False), ("bin", True))]
    for report in reports:
        assert report.exit_code == 0 and "target_dtype" not in report.extra and "load_dtype" not in report.extra
        assert "fits" not in nandoctor.verdict.one_line(report) and not any("loads these weights" in n for n in report.notes)


def test_an_explicit_target_dtype_wins_and_none_turns_the_check_off(tmp_path):
    folder = _save(tmp_path / "m", 70000.0, torch.float32, {"dtype": "float16"})
    config_path = str(folder / "config.json")
    assert run_cli("scan", folder, "--quiet").exit_code == 1

    other = json.loads(run_cli("scan", folder, "--json", "--target-dtype", "bf16").output)
    assert other["summary"]["exit_code"] == 0 and other["target_dtype"] == "bf16"
    assert other["load_dtype"] == {"config": config_path, "key": "dtype", "value": "float16", "target_dtype": "fp16",
                                   "checked": False, "source": "config"}
    assert any("--target-dtype bf16 was checked instead" in note for note in other["notes"])

    off = json.loads(run_cli("scan", folder, "--json", "--target-dtype", "none").output)
    assert off["summary"]["exit_code"] == 0 and "target_dtype" not in off and off["summary"]["overflow"] == 0
    assert off["load_dtype"]["checked"] is False and any("(--target-dtype none)" in n for n in off["notes"])
    assert nandoctor.scan(str(folder), device="cpu", target_dtype="none").exit_code == 0
    assert nandoctor.assert_finite(str(folder), device="cpu", target_dtype="none") is not None
    assert run_cli("scan", folder, "--quiet", "--target-dtype", "none", "--fail-on", "overflow").exit_code == 2
    # config.json's dtype is a target: a gate on overflow alone checks it (it said "checks nothing", exit 2)
    assert run_cli("scan", folder, "--quiet", "--fail-on", "overflow").exit_code == 1
    with pytest.raises(nandoctor.OverflowRiskError):
        nandoctor.assert_finite(str(folder), device="cpu", fail_on="overflow")
    plain = _save(tmp_path / "plain", 70000.0, torch.float32, {})
    assert run_cli("scan", plain, "--quiet", "--fail-on", "overflow").exit_code == 2  # no dtype anywhere: usage error

    # and the other way round: config.json says bfloat16 (fits), fp16 asked for
    relaxed = _save(tmp_path / "bf16", 70000.0, torch.float32, {"dtype": "bfloat16"})
    assert nandoctor.scan(str(relaxed), device="cpu").exit_code == 0
    asked = nandoctor.scan(str(relaxed), device="cpu", target_dtype="fp16")
    assert asked.exit_code == 1 and asked.extra["load_dtype"]["checked"] is False


def test_gate_runs_and_split_scans_apply_it(tmp_path):
    from nandoctor.integrations.gate import CheckpointGate

    run = tmp_path / "run"
    # the same norm of both layers at 10000, then one at 70000 (one layer's alone at 10000 would be exploded
    # against its sibling: docs/health.md, "One tensor far above its siblings")
    sibling = PLANTED.replace("layers.1.", "layers.0.")
    _save(run / "checkpoint-10", 10000.0, torch.float32, {"dtype": "float16"}, also=(sibling,))
    bad = _save(run / "checkpoint-20", 70000.0, torch.float32, {"dtype": "float16"})
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(bad / "model.safetensors"))  # checkpoint-20's sibling as checkpoint-10 held it
    tensors[sibling] = torch.full_like(tensors[sibling], 10000.0)
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})

    gate = CheckpointGate()  # what the Trainer and Lightning callbacks scan each save with
    passed, report = gate.check(bad, 20)
    assert passed is False and report is not None and gate.report_json(report)["load_dtype"]["checked"] is True
    passed, _ = CheckpointGate(target_dtype="none").check(bad, 20)  # the callbacks take "none" as scan does
    assert passed is True

    scanned = nandoctor.scan_run(str(run), device="cpu")
    assert [(c.name, c.status) for c in scanned.checkpoints] == [("checkpoint-10", "clean"), ("checkpoint-20", "overflow")]
    assert scanned.exit_code() == 1 and run_cli("scan", run, "--quiet").exit_code == 1
    rows = json.loads(run_cli("scan", run, "--json").output)["run"]["checkpoints"]
    assert [r["report"]["load_dtype"]["checked"] for r in rows] == [True, True]

    part = run_cli("scan", bad, "--part", "0/1", "--json")
    assert part.exit_code == 0
    (tmp_path / "part-0.json").write_text(part.output)
    merged = run_cli("merge", tmp_path / "part-0.json", "--json")
    data = json.loads(merged.output)
    assert merged.exit_code == 1 and data["target_dtype"] == "fp16" and data["load_dtype"]["checked"] is True


def _loaded_dtype(folder) -> torch.dtype:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder)).dtype


@pytest.mark.parametrize("stored", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_weights_loaded_as_fp16_are_held_to_fp16s_exploded_ceiling(tmp_path, stored):
    """30000 fits fp16 (no overflow), but a norm weight of 30000 in fp16 makes the activations overflow:
    generate dies, as it does for the same weight stored in fp16, which the 2^14 ceiling already fails."""
    folder = _save(tmp_path / "m", 30000.0, stored, {"dtype": "float16"})
    assert not _loaded_nonfinite(folder) and not generate_ok(folder)  # the oracle: loads finite, cannot generate
    report = nandoctor.scan(str(folder), device="cpu")
    assert report.exit_code == 1 and [t.name for t in report.tensors if "exploded" in t.findings] == [PLANTED]
    assert not any(t.overflow for t in report.tensors)
    assert any("fp16's exploded ceiling" in n for n in report.notes)
    # loaded in its own dtype (--target-dtype none) the 1e5 ceiling holds: it generates, and the scan passes
    assert nandoctor.scan(str(folder), device="cpu", target_dtype="none").exit_code == 0


def _retype(file, names_to_fp16):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(file))
    save_file({k: v.half() if k in names_to_fp16 else v for k, v in tensors.items()}, str(file), metadata={"format": "pt"})


def test_without_a_config_dtype_the_first_floating_tensor_decides(tmp_path):
    """transformers' _get_dtype: no dtype in config.json → the first floating tensor's dtype (names sorted):
    one fp16 lm_head.weight makes every fp32 weight load as fp16, the 70000 one as Inf."""
    folder = _save(tmp_path / "m", 70000.0, torch.float32, {})
    _retype(folder / "model.safetensors", {"lm_head.weight"})
    assert _loaded_dtype(folder) == torch.float16 and _loaded_nonfinite(folder) == {PLANTED: 32}
    report = nandoctor.scan(str(folder), device="cpu")
    assert report.exit_code == 1 and {t.name: t.overflow for t in report.tensors if t.overflow} == {PLANTED: 32}
    load = report.extra["load_dtype"]
    assert load["source"] == "first_tensor" and load["key"] is None and load["value"] == "float16"
    assert "lm_head.weight in model.safetensors" in load["from"]
    # control: an fp16 tensor that sorts after the first fp32 one decides nothing
    control = _save(tmp_path / "c", 70000.0, torch.float32, {})
    _retype(control / "model.safetensors", {"model.norm.weight"})
    assert _loaded_dtype(control) == torch.float32 and generate_ok(control)
    assert nandoctor.scan(str(control), device="cpu").exit_code == 0


def test_a_dict_dtype_loads_everything_in_its_main_entry(tmp_path):
    folder = _save(tmp_path / "m", 70000.0, torch.float32, {"dtype": {"": "float16"}})
    assert _loaded_nonfinite(folder) == {PLANTED: 32}
    report = nandoctor.scan(str(folder), device="cpu")
    assert report.exit_code == 1 and report.extra["load_dtype"]["value"] == "float16"


def test_a_sharded_index_metadata_dtype_decides_without_a_config_dtype(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64))
    with torch.no_grad():
        model.get_parameter(PLANTED).fill_(70000.0)
    folder = tmp_path / "m"
    model.save_pretrained(folder, max_shard_size="20KB")
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["metadata"]["dtype"] = "float16"
    index_path.write_text(json.dumps(index))
    config = json.loads((folder / "config.json").read_text())
    config.pop("dtype", None), config.pop("torch_dtype", None)
    (folder / "config.json").write_text(json.dumps(config))
    assert _loaded_nonfinite(folder) == {PLANTED: 32}
    report = nandoctor.scan(str(folder), device="cpu")
    assert report.exit_code == 1 and report.extra["load_dtype"]["source"] == "index"


def _as_bin(folder, first_fp16: str | None = None, shards: int = 1, index_dtype: str | None = None):
    """``folder``'s safetensors weights re-saved as torch.save files (``pytorch_model.bin``, or ``shards`` shards with
    their ``pytorch_model.bin.index.json``, ``metadata.dtype`` = ``index_dtype`` where given), ``first_fp16`` put first
    in the pickle and stored in fp16."""
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(state)
    if first_fp16 is not None:
        names.remove(first_fp16)
        names.insert(0, first_fp16)
        state[first_fp16] = state[first_fp16].half()
    if shards == 1:
        torch.save({n: state[n] for n in names}, folder / "pytorch_model.bin")
        return folder
    size = -(-len(names) // shards)
    weight_map = {}
    for i in range(shards):
        file = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = names[i * size : (i + 1) * size]
        torch.save({n: state[n] for n in part}, folder / file)
        weight_map.update(dict.fromkeys(part, file))
    meta = {"total_size": 1, **({"dtype": index_dtype} if index_dtype else {})}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": meta, "weight_map": weight_map}))
    return folder


@pytest.mark.parametrize("layout", ["bin first fp16", "sharded bin first fp16", "bin index dtype"])
def test_pytorch_bin_weights_imply_their_load_dtype_as_transformers_takes_it(tmp_path, layout):
    """An adversarial round: .bin weights under a config.json naming no dtype passed CLEAN while from_pretrained
    loaded them as fp16 (a pytorch_model.bin.index.json's metadata.dtype, or the first floating tensor in pickle
    order: transformers' get_state_dict_dtype on torch.load's dict) and the 70000 became Inf. The scan implies the
    same dtype; a control whose first pickled tensor is fp32 loads, and passes, as fp32."""
    folder = _save(tmp_path / "m", 70000.0, torch.float32, {})
    if layout == "bin index dtype":
        _as_bin(folder, shards=2, index_dtype="float16")
    else:
        _as_bin(folder, first_fp16="model.norm.weight", shards=2 if layout.startswith("sharded") else 1)
    assert _loaded_dtype(folder) == torch.float16 and _loaded_nonfinite(folder) == {PLANTED: 32}  # the oracle
    report = nandoctor.scan(str(folder), device="cpu")
    assert report.exit_code == 1 and {t.name: t.overflow for t in report.tensors if t.overflow} == {PLANTED: 32}
    load = report.extra["load_dtype"]
    if layout == "bin index dtype":
        assert load["source"] == "index" and load["from"] == "pytorch_model.bin.index.json"
    else:
        assert load["source"] == "first_tensor" and "model.norm.weight in pytorch_model" in load["from"]
    control = _as_bin(_save(tmp_path / "c", 70000.0, torch.float32, {}))
    assert _loaded_dtype(control) == torch.float32 and generate_ok(control)
    assert nandoctor.scan(str(control), device="cpu").exit_code == 0
