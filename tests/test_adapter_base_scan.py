"""A PEFT adapter alone is judged with the local base model its adapter_config.json names (nandoctor/adapterbase.py),
held to transformers 5.25 and peft 0.21: from_pretrained of the adapter folder loads that base and puts the adapter on
it, so one NaN in the base makes generate die ("probability tensor contains either inf, nan or element < 0") while
the adapter alone read CLEAN. The base is judged under the command's own gate and limits, read once per process
(a run of adapter checkpoints, a Trainer's saves), and never called clean when it cannot be read."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import nandoctor
from nandoctor import adapterbase

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
from tests.conftest import run_cli  # noqa: E402
from tests.trainer_checkpoints import tiny_llama  # noqa: E402  (needs torch and transformers)

IDS = torch.tensor([[1, 5, 9, 17]])
PLANTED = "model.layers.1.mlp.down_proj.weight"


@pytest.fixture(autouse=True)
def _fresh():
    """Each test reads its bases afresh (the verdicts are kept per process)."""
    adapterbase.forget()
    yield
    adapterbase.forget()


@pytest.fixture(scope="module")
def clean_base(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("base") / "llama"
    tiny_llama().save_pretrained(folder)
    return folder


def _adapter(base: Path, folder: Path, seed: int = 0) -> Path:
    """A LoRA of ``base`` saved by PEFT into ``folder``, "trained": every LoRA parameter moved off its start."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(base)
    adapted = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    adapted.save_pretrained(folder)
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    return folder


def _plant(base: Path, value: float, name: str = PLANTED, at: tuple[int, int] = (3, 5)) -> None:
    """``value`` written into tensor ``name`` of the base at ``at``, by safetensors (its metadata kept)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = base / "model.safetensors"
    with safe_open(path, "pt") as f:
        metadata = f.metadata()
    tensors = load_file(path)
    tensors[name][at] = value
    save_file(tensors, path, metadata=metadata)


def _adapted(adapter: Path):
    """The oracle: transformers' own from_pretrained of the adapter folder (base loaded, adapter put on it)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(adapter)
    assert model.peft_config  # (the adapter is on it)
    return model.eval()


@pytest.fixture
def copies(clean_base, tmp_path):
    """A copy of the clean base, and an adapter trained on it that names the copy."""
    base = shutil.copytree(clean_base, tmp_path / "base")
    return base, _adapter(base, tmp_path / "adapter")


def test_nan_in_the_local_base_fails_the_adapter_naming_the_base_tensor(copies):
    base, adapter = copies
    healthy = _adapted(adapter)  # the healthy neighbour: loads, finite, generates
    with torch.no_grad():
        assert torch.isfinite(healthy(input_ids=IDS).logits).all()
    healthy.generate(IDS, do_sample=True, max_new_tokens=3, pad_token_id=0)
    report = nandoctor.scan(adapter)
    assert report.exit_code == 0 and report.verdict == "CLEAN", report.verdict
    assert not any("not read" in note for note in report.notes), report.notes
    quiet = run_cli("scan", adapter, "-q")
    assert quiet.exit_code == 0 and f"its base model {str(base)!r} scanned too: 21 tensors healthy" in quiet.output

    _plant(base, float("nan"))
    broken = _adapted(adapter)
    with torch.no_grad():
        assert not torch.isfinite(broken(input_ids=IDS).logits).all()
    with pytest.raises(RuntimeError, match="probability tensor contains either"):
        broken.generate(IDS, do_sample=True, max_new_tokens=3, pad_token_id=0)

    report = nandoctor.scan(adapter)
    assert (report.exit_code, report.verdict) == (1, "BASE MODEL NON-FINITE")
    data = nandoctor.to_json(report)
    assert data["summary"]["base_failing"] == ["nonfinite"] and data["summary"]["failing"] == []
    assert data["adapter_base_scan"]["tensors"] == [
        {"name": PLANTED, "findings": ["nonfinite"], "nan": 1, "posinf": 0, "neginf": 0, "first_bad": [3, 5],
         "max_abs": data["adapter_base_scan"]["tensors"][0]["max_abs"]}]
    shown = run_cli("scan", adapter)
    assert shown.exit_code == 1 and PLANTED in shown.output and "(1 NaN, first at [3, 5])" in shown.output
    assert f"nandoctor repair {base} --from" in shown.output.replace("\n", " ")
    with pytest.raises(nandoctor.NonFiniteWeightsError, match="base model"):
        nandoctor.assert_finite(adapter)


def test_the_base_is_judged_by_the_commands_own_gate_and_limits(copies):
    """A base weight of 1e6 among 0.05s is exploded (and an outlier): the adapter fails exactly where `nandoctor scan
    <base>` with the same --fail-on, --max-abs and --outlier-factor fails (the reverted attempt judged it by the
    default gate whatever --fail-on said)."""
    base, adapter = copies
    _plant(base, 1e6)
    for args, code in [((), 1), (("--fail-on", "zeroed"), 0), (("--fail-on", "nonfinite,exploded"), 1),
                       (("--max-abs", "1e7", "--outlier-factor", str(2.0**30)), 0)]:
        alone, applied = run_cli("scan", base, "-q", *args), run_cli("scan", adapter, "-q", *args)
        assert alone.exit_code == applied.exit_code == code, (args, alone.output, applied.output)
    passed = run_cli("scan", adapter, "--fail-on", "zeroed")
    assert "BASE MODEL EXPLODED" in passed.output and "(reported only)" in passed.output, passed.output
    assert "reported, not failed" in passed.output
    report = nandoctor.scan(adapter, max_abs=1e7, outlier_factor=2.0**30)
    assert report.exit_code == 0 and report.extra["adapter_base_scan"]["findings"] == []


@pytest.mark.parametrize("break_it, words, said", [
    ("truncated", "BASE MODEL UNREADABLE", "could not be read"),
    ("no config.json", "BASE MODEL NOT LOADABLE", "fails its own scan (NOT LOADABLE)"),
])
def test_a_base_that_cannot_be_read_is_never_called_clean(copies, break_it, words, said):
    base, adapter = copies
    if break_it == "truncated":
        path = base / "model.safetensors"
        path.write_bytes(path.read_bytes()[:200])
    else:
        (base / "config.json").unlink()
    from safetensors import SafetensorError

    with pytest.raises((OSError, ValueError, SafetensorError)):  # the oracle: the adapted model does not load
        _adapted(adapter)
    report = nandoctor.scan(adapter)
    assert report.exit_code == 3 and [e.kind for e in report.errors] == ["base"], report.errors
    assert report.verdict == words and said in report.errors[0].message, report.errors[0].message
    assert str(base) in report.errors[0].path


def test_a_base_in_the_hub_cache_is_scanned_and_one_in_no_cache_keeps_the_note(copies, tmp_path, monkeypatch):
    base, adapter = copies
    _plant(base, float("nan"))
    config = adapter / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": "someone/tiny-llama"}))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    report = nandoctor.scan(adapter)
    assert report.exit_code == 0 and "adapter_base_scan" not in report.extra
    assert "an adapter alone: its base model 'someone/tiny-llama' is not scanned here" in run_cli(
        "scan", adapter, "-q").output
    repo = tmp_path / "hub" / "models--someone--tiny-llama"
    shutil.copytree(base, repo / "snapshots" / ("a" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    # (the same base as the first test's, whose oracle generate dies; huggingface_hub reads HF_HUB_CACHE once, at import)
    report = nandoctor.scan(adapter)
    assert report.verdict == "BASE MODEL NON-FINITE" and report.extra["adapter_base_scan"]["path"] == str(
        repo / "snapshots" / ("a" * 40))


def _counting(monkeypatch, base: Path) -> list[str]:
    """Every read of ``base`` by the scan engine, from now on."""
    import nandoctor.engine

    reads: list[str] = []
    scan = nandoctor.engine.scan

    def counted(path, **how):
        if Path(path).resolve() == base.resolve():
            reads.append(str(path))
        return scan(path, **how)

    monkeypatch.setattr(nandoctor.engine, "scan", counted)
    return reads


def test_a_run_of_adapters_reads_its_base_once_says_it_once_and_agrees_with_each_checkpoint(copies, monkeypatch):
    base, adapter = copies
    run = adapter.parent / "run"
    for step in (1, 2, 3):
        _adapter(base, run / f"checkpoint-{step}", seed=step)
    _plant(base, float("nan"))
    reads = _counting(monkeypatch, base)
    timeline = nandoctor.scan_run(run)
    assert len(reads) == 1 and timeline.exit_code() == 1
    for row in timeline.checkpoints:  # each row as the checkpoint scanned on its own says it
        alone = nandoctor.scan(row.path)
        assert (alone.exit_code, alone.verdict) == (row.report.exit_code, row.report.verdict) == (1, "BASE MODEL NON-FINITE")
    assert len(reads) == 1  # (kept by the base's file identity)
    shown = run_cli("scan", run)
    assert shown.exit_code == 1 and shown.output.count(PLANTED) == 1, shown.output
    assert "checkpoint-1, checkpoint-2, checkpoint-3 are applied to it), scanned once" in shown.output
    data = json.loads(run_cli("scan", run, "--json").output)
    assert [b["checkpoints"] for b in data["run"]["adapter_bases"]] == [["checkpoint-1", "checkpoint-2", "checkpoint-3"]]
    assert all("adapter_base_scan" not in c["report"] for c in data["run"]["checkpoints"])
    assert len(reads) == 1
    # a base file that changes is read again
    model = base / "model.safetensors"
    os.utime(model, ns=(model.stat().st_atime_ns, model.stat().st_mtime_ns + 10**9))
    assert nandoctor.scan(run / "checkpoint-2").exit_code == 1 and len(reads) == 2


def test_a_trainer_with_the_callback_and_a_lora_model_reads_the_base_once(tmp_path, monkeypatch):
    """Two saves of a real Trainer run of a LoRA model, each checked by nandoctor's callback (a scan of the save,
    whose adapter names the base): the base is read once, by the first check."""
    from nandoctor.integrations.transformers import NanDoctorCallback
    from tests.pattern_runs import tiny_llama as pattern_llama
    from tests.pattern_runs import train

    base = tmp_path / "base"
    pattern_llama().save_pretrained(base)
    model = peft.get_peft_model(transformers.AutoModelForCausalLM.from_pretrained(base),
                                peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    reads = _counting(monkeypatch, base)
    callback = NanDoctorCallback()
    train(tmp_path / "out", model=model, steps=4, save_steps=2, callbacks=[callback])
    checked = callback.gate.reports
    assert sorted(checked) == [2, 4] and len(reads) == 1, (list(checked), reads)
    assert all(r.extra["adapter_base_scan"]["path"] == str(base) and r.exit_code == 0 for r in checked.values())


def test_repair_of_an_adapter_on_a_bad_base_is_refused_naming_the_base(copies, clean_base, tmp_path):
    """A user repairing the adapter expects the model to generate afterwards; restoring the adapter's tensors never
    would: refused (exit 3, nothing written), with the base's own repair, which then works."""
    base, adapter = copies
    _plant(base, float("nan"))
    out = tmp_path / "fixed"
    refused = run_cli("repair", adapter, "--from", adapter, "--out", out)
    assert refused.exit_code == 3 and not out.exists(), refused.output
    said = refused.output.replace("\n", " ")
    assert "fails its own scan" in said and f"nandoctor repair {base} --from" in said
    fixed = tmp_path / "base-fixed"
    assert run_cli("repair", base, "--from", clean_base, "--out", fixed).exit_code == 0
    config = adapter / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": str(fixed)}))
    assert nandoctor.scan(adapter).exit_code == 0
    with torch.no_grad():
        assert torch.isfinite(_adapted(adapter)(input_ids=IDS).logits).all()


def test_an_adapter_on_an_adapter_is_judged_by_the_model_under_the_chain(copies, tmp_path):
    """A trial: a LoRA whose base_model_name_or_path names another adapter folder, whose own base holds a NaN, read
    CLEAN ("its base model scanned too: 8 tensors healthy": the inner adapter's LoRA tensors). PEFT's AutoPeftModel
    loads the chain and its logits are NaN. The model under the chain is judged; a clean chain passes; a chain that
    loops stops."""
    base, inner = copies
    model = peft.AutoPeftModelForCausalLM.from_pretrained(inner)
    outer_model = peft.get_peft_model(model.merge_and_unload(), peft.LoraConfig(r=2, target_modules=["k_proj"]))
    outer = tmp_path / "outer"
    outer_model.save_pretrained(outer)
    config = json.loads((outer / "adapter_config.json").read_text())
    (outer / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(inner)}))
    assert nandoctor.scan(outer).exit_code == 0  # the clean chain
    _plant(base, float("nan"))
    adapterbase.forget()
    chained = peft.AutoPeftModelForCausalLM.from_pretrained(outer)  # the oracle: PEFT loads the chain
    with torch.no_grad():
        assert not torch.isfinite(chained(input_ids=IDS).logits).all()
    report = nandoctor.scan(outer)
    assert (report.exit_code, report.verdict) == (1, "BASE MODEL NON-FINITE"), report.verdict
    assert nandoctor.to_json(report)["adapter_base_scan"]["tensors"][0]["name"] == PLANTED
    config = json.loads((inner / "adapter_config.json").read_text())
    (inner / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(outer)}))
    adapterbase.forget()
    looped = run_cli("scan", outer, "-q")  # (a loop: stops, no recursion error; the model under it is not read)
    assert looped.exit_code == 0 and "is not scanned here" in looped.output, looped.output


def test_an_adapter_that_does_not_fit_the_base_it_names_is_not_loadable(copies, tmp_path):
    """A trial: a LoRA trained for hidden size 32 whose adapter_config.json names a base of hidden size 64 read CLEAN
    ("its base model scanned too: … healthy"), and PEFT's load raises "size mismatch"."""
    _, adapter = copies
    wide = tmp_path / "wide"
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    transformers.LlamaForCausalLM(config).save_pretrained(wide)
    saved = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**saved, "base_model_name_or_path": str(wide)}))
    with pytest.raises(RuntimeError, match="size mismatch"):  # the oracle
        peft.AutoPeftModelForCausalLM.from_pretrained(adapter)
    report = nandoctor.scan(adapter)
    assert report.exit_code == 3 and [p.kind for p in report.errors] == ["unloadable"], report.errors
    assert "do not fit the base model" in report.errors[0].message and "lora_A" in report.errors[0].message


def test_healthy_adapters_a_review_found_failing_stay_clean(copies, tmp_path, monkeypatch):
    """A review of the base scan: (1) a LoRA saved after resize_token_embeddings (PEFT stores the resized embeddings
    and head beside it, and loads them onto a base resized alike) read NOT LOADABLE, "do not fit the base"; (2) a base
    that holds a weight packed as a 4-bit quantizer stores it (uint8 [n/2, 1]) was compared with the LoRA's sizes;
    (3) a repo whose snapshot in the HF cache holds its config.json alone (PEFT's save and AutoConfig fetch it; from_pretrained
    downloads the rest) read BASE MODEL UNREADABLE; (4) a chain whose model is not local said "scanned too"."""
    base, _ = copies
    model = transformers.AutoModelForCausalLM.from_pretrained(base)
    model.resize_token_embeddings(model.config.vocab_size + 10)
    peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(
        tmp_path / "resized")
    resized = transformers.AutoModelForCausalLM.from_pretrained(base)
    resized.resize_token_embeddings(model.config.vocab_size)
    peft.PeftModel.from_pretrained(resized, tmp_path / "resized").generate(IDS, max_new_tokens=2)  # the oracle
    report = nandoctor.scan(tmp_path / "resized")
    assert report.exit_code == 0
    # (but onto the base as saved it does not load: a trial's adapter read CLEAN with nothing said; now a note says
    # which copies differ and how to load it)
    with pytest.raises(RuntimeError, match="size mismatch"):
        peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base), tmp_path / "resized")
    said = [n for n in report.notes if "differ in rows from its base's" in n]
    assert len(said) == 1 and f"resize_token_embeddings({model.config.vocab_size})" in said[0], report.notes
    assert "embed_tokens.weight" in said[0]

    from safetensors.torch import load_file, save_file  # (2) a packed weight in the base

    packed = shutil.copytree(base, tmp_path / "packed")
    tensors = load_file(packed / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    tensors[name] = torch.zeros(tensors[name].numel() // 2, 1, dtype=torch.uint8)
    save_file(tensors, packed / "model.safetensors", metadata={"format": "pt"})
    adapter = _adapter(base, tmp_path / "on-packed")
    config = adapter / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": str(packed)}))
    assert not any(p.kind == "unloadable" for p in nandoctor.scan(adapter).errors)

    config.write_text(json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": "someone/half"}))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # (3) config.json alone in the cache
    repo = tmp_path / "hub" / "models--someone--half"
    (repo / "snapshots" / ("b" * 40)).mkdir(parents=True)
    shutil.copy(base / "config.json", repo / "snapshots" / ("b" * 40) / "config.json")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("b" * 40)
    report = nandoctor.scan(adapter)
    assert report.exit_code == 0 and "adapter_base_scan" not in report.extra, report.errors

    outer = _adapter(base, tmp_path / "outer", seed=1)  # (4) outer -> adapter -> someone/half (no weights here)
    config = outer / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": str(adapter)}))
    quiet = run_cli("scan", outer, "-q")
    assert quiet.exit_code == 0 and "is not scanned here" in quiet.output and "scanned too" not in quiet.output


def test_the_bases_read_is_said_beside_the_adapters_own(copies):
    """A trial: the header said "2.4 MB read · 0.03 s" for an adapter whose 325 MB base was read too."""
    base, adapter = copies
    said = run_cli("scan", adapter).output
    size = sum(f.stat().st_size for f in base.glob("*.safetensors"))
    data = nandoctor.to_json(nandoctor.scan(adapter))["adapter_base_scan"]
    assert size * 0.9 <= data["bytes"] <= size and "+ its base model: 21 tensors" in said, said
