"""A hand-written training loop's saves, one file a save in one folder (``torch.save(state, f"step_{n}.pt")``), are
a run: a timeline, growth since the first healthy save, donors for ``--from auto``.

A helper's trial: a plain loop (AdamW, a GradScaler) saved ``step_5.pt`` … ``step_30.pt``; the learning rate raised
to 1e3 at step 17 left finite weights 8,000 times their size. ``nandoctor scan`` of the folder read the six files
as one checkpoint (CLEAN, "696 tensors healthy"), and ``repair step_30.pt --from auto`` said "the source itself is
fine to use"; the same files in ``step-N/`` folders read DIVERGED from step 20."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import nandoctor  # noqa: E402
from tests.conftest import run_cli  # noqa: E402


def _loop(folder: Path, *, blow_up_at: int | None, name: str = "step_{}.pt", every: int = 5, steps: int = 25) -> dict:
    """Train a small regression net, saving ``name`` every ``every`` steps; from ``blow_up_at`` the learning rate is
    1e4 for one step. Returns each save's evaluation loss (the oracle)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.Tanh(),
                              torch.nn.Linear(32, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    x, y = torch.randn(256, 8), torch.randn(256, 1)
    losses = {}
    folder.mkdir(parents=True)
    for step in range(1, steps + 1):
        for group in opt.param_groups:
            group["lr"] = 1e4 if step == blow_up_at else 0.05 if blow_up_at is None or step < blow_up_at else 0.0
        loss = torch.nn.functional.mse_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0:
            torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "step": step},
                       folder / name.format(step))
            with torch.no_grad():
                losses[step] = float(torch.nn.functional.mse_loss(net(x), y))
    return losses


def test_a_loops_numbered_saves_are_a_run_whose_diverged_saves_fail(tmp_path):
    run = tmp_path / "run"
    losses = _loop(run, blow_up_at=17)
    assert losses[15] < 2 and losses[20] > 1e3  # the oracle: the saves from step 20 on are broken
    report = nandoctor.scan_run(run, device="cpu")
    assert [c.step for c in report.checkpoints] == [5, 10, 15, 20, 25]
    assert [Path(c.path).name for c in report.checkpoints][-1] == "step_25.pt"
    assert [c.status for c in report.checkpoints] == ["clean"] * 3 + ["diverged"] * 2
    assert Path(report.last_healthy.path).name == "step_15.pt" and Path(report.first_bad.path).name == "step_20.pt"
    assert report.exit_code() == 1 and not report.ok
    quiet = run_cli("scan", str(run), "-q")
    assert quiet.exit_code == 1 and "last healthy: step_15.pt · first bad: step_20.pt" in quiet.output, quiet.output
    # one save alone is judged within its run, and --from auto refuses to stitch a diverged save together
    alone = run_cli("scan", str(run / "step_25.pt"), "-q")
    assert alone.exit_code == 1 and alone.output.startswith("FAIL DIVERGED"), alone.output
    refused = run_cli("repair", str(run / "step_25.pt"), "--from", "auto", "--out", str(tmp_path / "fixed"))
    assert refused.exit_code == 3 and "step_15.pt" in refused.output and not (tmp_path / "fixed").exists()
    whole = run_cli("repair", str(run), "--from", "auto", "--out", str(tmp_path / "fixed"))
    assert whole.exit_code == 3 and "a training run folder (5 step_N.pt files)" in whole.output, whole.output


def test_a_healthy_loops_saves_pass_as_a_timeline(tmp_path):
    run = tmp_path / "run"
    _loop(run, blow_up_at=None, name="ckpt-{}.pth", every=10, steps=30)
    (run / "last.pth").write_bytes((run / "ckpt-30.pth").read_bytes())  # a loop's copy of its newest save
    result = run_cli("scan", str(run), "--json")
    assert result.exit_code == 0, result.output[-2000:]
    rows = json.loads(result.output)["run"]["checkpoints"]
    assert [(r["step"], Path(r["path"]).name) for r in rows][:3] == [(10, "ckpt-10.pth"), (20, "ckpt-20.pth"),
                                                                     (30, "ckpt-30.pth")]
    assert all(r["status"] == "clean" for r in rows)


def test_files_no_step_places_are_rows_of_their_own_and_decide_too(tmp_path):
    """Saves numbered by step and by epoch in one folder: the most common template is the timeline, and every other
    weight file (epoch_1.pt, a loop's best.pt) is a row of its own, read and judged beside it, never a resume point (an
    adversarial round: NaN in fairseq's checkpoint_best.pt, ultralytics' best.pt and a second template's files was
    named in a note, "scan them on their own", and the run passed with a check)."""
    run = tmp_path / "run"
    _loop(run, blow_up_at=None, name="step_{}.pt", every=5, steps=15)
    (run / "epoch_1.pt").write_bytes((run / "step_15.pt").read_bytes())
    report = nandoctor.scan_run(run, device="cpu")
    assert [Path(c.path).name for c in report.checkpoints] == ["step_5.pt", "step_10.pt", "step_15.pt", "epoch_1.pt"]
    assert report.exit_code() == 0 and Path(report.last_healthy.path).name == "step_15.pt"
    state = torch.load(run / "step_15.pt", weights_only=True)
    state["model"]["0.weight"][0, 0] = float("nan")
    torch.save(state, run / "best.pt")
    report = nandoctor.scan_run(run, device="cpu")
    rows = {Path(c.path).name: c.status for c in report.checkpoints}
    assert rows["best.pt"] == "poisoned" and report.exit_code() == 1
    assert Path(report.last_healthy.path).name == "step_15.pt"  # (a row of its own is never a resume point)
    repaired = run_cli("repair", str(run / "best.pt"), "--from", "auto", "--out", str(tmp_path / "fixed"))
    assert repaired.exit_code == 0, repaired.output
    assert torch.isfinite(torch.load(tmp_path / "fixed" / "best.pt", weights_only=True)["model"]["0.weight"]).all()


def test_the_models_saves_are_the_timeline_beside_as_many_optimizer_saves(tmp_path):
    """An adversarial round: model_step_N.pt and optimizer_step_N.pt, three of each: the timeline was the optimizer's
    (by name order) and the model's saves, one poisoned, went unread. The model's are the timeline; the optimizer's
    are rows of their own, read and judged, that decide only where they hold the model (an EMA copy's newest save),
    else a caution as an older row's poison is (a review); one scanned alone is not compared with the model's saves;
    a file of no tensors (a loop's args.pt) is a note, never a failing row."""
    run = tmp_path / "run"
    _loop(run, blow_up_at=None, name="model_step_{}.pt", every=5, steps=15)
    for step in (5, 10, 15):
        moments = {"state": {0: {"step": torch.tensor(float(step)), "exp_avg": torch.zeros(8),
                                 "exp_avg_sq": torch.ones(8)}}, "param_groups": [{"lr": 1e-3, "params": [0]}]}
        if step == 5:
            moments["state"][0]["exp_avg"][0] = float("nan")
        torch.save(moments, run / f"optimizer_step_{step}.pt")
    torch.save({"lr": 0.05, "steps": 15}, run / "args.pt")
    state = torch.load(run / "model_step_10.pt", weights_only=True)
    state["model"]["0.weight"][0, 0] = float("nan")
    torch.save(state, run / "model_step_10.pt")
    report = nandoctor.scan_run(run, device="cpu")
    names = [Path(c.path).name for c in report.checkpoints]
    assert names == ["model_step_5.pt", "model_step_10.pt", "model_step_15.pt", "optimizer_step_5.pt",
                     "optimizer_step_10.pt", "optimizer_step_15.pt"], names  # (in number order: a helper's trial)
    assert report.exit_code() == 0 and bool(report.ok)
    behind = {Path(c.path).name for c in report.bad_behind()}
    assert behind == {"model_step_10.pt", "optimizer_step_5.pt"}  # (said, as an older row's poison is)
    assert any("args.pt: holds no tensors" in note for note in report.notes), report.notes
    assert nandoctor.scan(run / "optimizer_step_10.pt").exit_code == 0  # (not compared with the model's names)
    state = torch.load(run / "optimizer_step_15.pt", weights_only=True)
    state["state"][0]["exp_avg_sq"][0] = float("nan")
    torch.save(state, run / "optimizer_step_15.pt")
    # (no file off the timeline that holds no model decides: a caution, as an older row's poison; a loop's
    # data_stats.pt with an empty class's Inf mean the same)
    torch.save({"class_mean": torch.tensor([0.5, float("inf")])}, run / "data_stats.pt")
    report = nandoctor.scan_run(run, device="cpu")
    assert report.exit_code() == 0
    assert {"optimizer_step_15.pt", "data_stats.pt"} <= {Path(c.path).name for c in report.bad_behind()}
    ema = torch.load(run / "model_step_15.pt", weights_only=True)["model"]  # (an EMA copy holds the model: it decides)
    ema["2.weight"][0, 0] = float("nan")
    torch.save({f"ema.{k}": v for k, v in ema.items()}, run / "ema_step_15.pt")
    assert nandoctor.scan_run(run, device="cpu").exit_code() == 1


@pytest.mark.parametrize("names", [("fold_1.pt", "fold_2.pt"), ("model_1.pt", "model_2.pt"), ("rank_0.pt", "rank_1.pt")])
def test_files_numbered_by_something_else_than_training_are_no_run(tmp_path, names):
    """A fold, a second model or a process's file is numbered too: no word that counts training steps, no run."""
    torch.manual_seed(0)
    for name in names:
        torch.save(torch.nn.Linear(4, 4).state_dict(), tmp_path / name)
    with pytest.raises(nandoctor.UnsupportedFormatError):
        nandoctor.scan_run(tmp_path, device="cpu")
    assert nandoctor.scan(tmp_path).exit_code == 0


def test_run_folder_edges_an_adversarial_round_found(tmp_path):
    """Each a case that passed with exit 0 while a file a user would load was bad, or failed while healthy: a model's
    saves beside as many trainer-state saves (the state's were taken for the timeline by name order), a file named
    final_metrics.pt (taken for the final model), a newest step file that is a dangling link (dropped unsaid)."""
    run = tmp_path / "net"
    _loop(run, blow_up_at=None, name="net_step_{}.pt", every=5, steps=15)
    for step in (5, 10, 15):
        torch.save({"state": {0: {"exp_avg": torch.zeros(4)}}, "param_groups": [{"lr": 0.1, "params": [0]}]},
                   run / f"state_step_{step}.pt")
    state = torch.load(run / "net_step_15.pt", weights_only=True)
    state["model"]["0.weight"][0, 0] = float("nan")
    torch.save(state, run / "net_step_15.pt")
    report = nandoctor.scan_run(run, device="cpu")
    assert Path(report.first_bad.path).name == "net_step_15.pt" and report.exit_code() == 1

    run = tmp_path / "metrics"
    _loop(run, blow_up_at=None, name="step_{}.pt", every=5, steps=15)
    torch.save({"val_loss": torch.tensor([0.5, float("nan")])}, run / "final_metrics.pt")
    torch.save({"lr": 0.1}, run / "final_config.pt")
    report = nandoctor.scan_run(run, device="cpu")
    assert report.exit_code() == 0 and not any(c.final and not c.saved_into for c in report.checkpoints)

    (run / "step_20.pt").symlink_to(run / "gone.pt")  # (the newest save, unreadable: never dropped unsaid)
    assert nandoctor.scan_run(run, device="cpu").exit_code() == 3


def test_torch_saves_named_tar_are_read_and_real_tar_archives_are_not(tmp_path):
    """An adversarial round: PyTorch's tutorial names a general checkpoint model.tar (MoCo, pytorch/examples:
    checkpoint.pth.tar, model_best.pth.tar). A NaN model_best.pth.tar beside step files went unread, and a run of
    checkpoint_N.tar read as no checkpoint. A real tar archive beside the weights (a dataset) is no weight file."""
    import tarfile

    run = tmp_path / "run"
    _loop(run, blow_up_at=None, name="checkpoint_{}.pth.tar", every=5, steps=15)
    assert [c.step for c in nandoctor.scan_run(run, device="cpu").checkpoints] == [5, 10, 15]
    state = torch.load(run / "checkpoint_15.pth.tar", weights_only=True)
    state["model"]["0.weight"][0, 0] = float("nan")
    torch.save(state, run / "model_best.pth.tar")
    (tmp_path / "notes.txt").write_text("data")
    with tarfile.open(run / "dataset.tar", "w") as archive:
        archive.add(tmp_path / "notes.txt", arcname="notes.txt")
    (run / "stats.npy").write_bytes(b"\x93NUMPY")  # (a data file no reader opens: said, as in a checkpoint folder)
    report = nandoctor.scan_run(run, device="cpu")
    names = {Path(c.path).name: c.status for c in report.checkpoints}
    assert names.get("model_best.pth.tar") == "poisoned" and "dataset.tar" not in names and report.exit_code() == 1
    assert any("not scanned" in note and "stats.npy" in note for note in report.notes), report.notes


def test_a_second_templates_save_takes_donors_saved_before_it(tmp_path):
    """An adversarial round: --from auto for ema_step_10.pt (a second template's save) tried step_15.pt first, a
    save made after it. Its donors are the timeline's saves before its own step."""
    run = tmp_path / "run"
    _loop(run, blow_up_at=None, name="step_{}.pt", every=5, steps=15)
    ema = torch.load(run / "step_10.pt", weights_only=True)
    ema["model"]["0.weight"][0, 0] = float("nan")
    for step in (5, 10):
        torch.save(ema if step == 10 else torch.load(run / "step_5.pt", weights_only=True), run / f"ema_step_{step}.pt")
    plan = run_cli("repair", str(run / "ema_step_10.pt"), "--from", "auto", "--dry-run", "--json")
    donors = [Path(d["path"]).name for d in json.loads(plan.output)["donors"]]
    assert donors and "step_15.pt" not in donors and "step_10.pt" not in donors, donors


def test_model_saves_paired_with_optimizer_saves_are_a_run(tmp_path):
    """A helper's trial: a loop saving model_N.pt and optim_N.pt each time read as one checkpoint (every save one
    verdict, no timeline). An optimizer's saves of the same numbers make the model's a run; model_1.pt and model_2.pt
    alone stay two models (test_files_numbered_by_something_else_than_training_are_no_run)."""
    run = tmp_path / "run"
    losses = _loop(run, blow_up_at=12, name="model_{}.pt", every=5, steps=20)
    assert losses[10] < 2 and losses[15] > 1e3
    for step in (5, 10, 15, 20):
        torch.save(torch.load(run / f"model_{step}.pt", weights_only=True)["optimizer"], run / f"optim_{step}.pt")
    report = nandoctor.scan_run(run, device="cpu")
    assert [c.step for c in report.checkpoints if not c.saved_into] == [5, 10, 15, 20]
    assert Path(report.last_healthy.path).name == "model_10.pt" and Path(report.first_bad.path).name == "model_15.pt"
    assert report.exit_code() == 1


def _llama_loop(folder: Path, *, blow_up: bool, wrap: str | None = None) -> dict:
    """A tiny Llama trained by a plain loop that saves ``{"model": sd, "optimizer": …, "step": n}`` every 10 steps and
    its final ``state_dict()`` as pytorch_model.bin beside config.json (as a helper's real runs did); from step 22 the
    learning rate is 10 where ``blow_up``; ``wrap``: "dp" (DataParallel) or "compile". Returns each save's loss."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        vocab_size=64, max_position_embeddings=64))
    folder.mkdir(parents=True)
    base.config.save_pretrained(folder)
    model = (torch.nn.DataParallel(base) if wrap == "dp" else torch.compile(base, backend="eager") if wrap == "compile"
             else base)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = torch.randint(0, 64, (8, 16))
    losses = {}
    for step in range(1, 41):
        if blow_up and step == 22:
            for group in opt.param_groups:
                group["lr"] = 10.0
        loss = model(input_ids=data, labels=data).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step},
                       folder / f"step_{step}.pt")
            losses[step] = float(loss)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return losses


def test_a_final_model_saved_bare_beside_wrapped_step_files_is_judged_by_its_growth(tmp_path):
    """A helper's real runs: the step files keep the model under "model" (model.model.layers…), the final
    pytorch_model.bin is the bare state_dict (model.layers…): no name in common, so the final model's growth was not
    measured, and a final model that had diverged with the run (its loss 900 against 4.8) read CLEAN, exit 0."""
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    _llama_loop(run, blow_up=True)
    model = AutoModelForCausalLM.from_pretrained(run)
    data = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert float(model(input_ids=data, labels=data).loss) > 50  # the oracle: the final model is broken
    report = nandoctor.scan_run(run, device="cpu")
    assert [(Path(c.path).name, c.status) for c in report.checkpoints] == [
        ("step_10.pt", "clean"), ("step_20.pt", "clean"), ("step_30.pt", "diverged"), ("step_40.pt", "diverged"),
        ("pytorch_model.bin", "diverged")]
    quiet = run_cli("scan", str(run), "-q")
    assert quiet.exit_code == 1 and quiet.output.startswith("FAIL DIVERGED") and "model.layers." in quiet.output


@pytest.mark.parametrize(("wrap", "prefix"), [("dp", "module."), ("compile", "_orig_mod.")])
def test_a_wrapped_final_model_in_a_run_is_not_loadable_as_it_is_alone(tmp_path, wrap, prefix):
    """A helper's real runs: a DataParallel or torch.compile model's final state_dict() beside config.json among a
    loop's step files read CLEAN in its run, and NOT LOADABLE copied into a folder alone; from_pretrained finds none of
    its names and initializes every weight at random."""
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    _llama_loop(run, blow_up=False, wrap=wrap)
    _, info = AutoModelForCausalLM.from_pretrained(run, output_loading_info=True)
    assert info["missing_keys"]  # the oracle: the model is not this checkpoint
    quiet = run_cli("scan", str(run), "-q")
    assert quiet.exit_code == 3 and quiet.output.startswith("FAIL NOT LOADABLE"), quiet.output
    assert f"every weight name starts with a training wrapper's prefix" in quiet.output and prefix in quiet.output


def test_separate_saves_of_one_model_in_a_folder_are_judged_each_by_its_own_weights(tmp_path):
    """A helper's real run: a loop that overwrites checkpoint.pt ({"model": sd, "optimizer": …}) every epoch and keeps
    best_model.pt (the bare state_dict); NaN from epoch 5 on made checkpoint.pt NaN throughout. The folder read
    POISONED, "26 of 46 tensors" counted over both files, its hint a repair; checkpoint.pt alone is DIVERGED."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(),
                              torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    folder = tmp_path / "run"
    folder.mkdir()
    for epoch in range(8):
        loss = torch.nn.functional.mse_loss(net(x), y * (float("nan") if epoch == 5 else 1.0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if epoch < 5:
            torch.save(net.state_dict(), folder / "best_model.pt")
        torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch}, folder / "checkpoint.pt")
    assert all(torch.isnan(p).all() for p in torch.load(folder / "checkpoint.pt")["model"].values())  # the oracle
    assert not any(torch.isnan(p).any() for p in torch.load(folder / "best_model.pt").values())
    result = run_cli("scan", str(folder))
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and "NON-FINITE (DIVERGED)" in said, result.output
    assert "6 of 6 weight tensors of checkpoint.pt are NaN/Inf" in said
    assert "│ checkpoint.pt │" in result.output  # (the tensor table names each bad tensor's file)


def test_a_timm_style_run_offers_its_healthy_best_file_when_every_save_is_bad(tmp_path):
    """A helper's timm-style run (CheckpointSaver: last.pth.tar written, then copied to checkpoint-N.pth.tar, a
    model_best.pth.tar kept): every checkpoint-N was poisoned, and the next step asked for "an earlier clean
    checkpoint" without naming the healthy model_best.pth.tar beside them; checkpoint-9, last.pth.tar's own copy,
    was said to be "saved after the final model: the run went on past what would be loaded"."""
    import os
    import shutil

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"epoch": 5, "state_dict": net.state_dict()}, run / "model_best.pth.tar")
    for epoch in (7, 8, 9):
        state = {k: v.clone() for k, v in net.state_dict().items()}
        state["2.weight"][0, :3] = float("nan")
        torch.save({"epoch": epoch, "state_dict": state}, run / "last.pth.tar")
        shutil.copyfile(run / "last.pth.tar", run / f"checkpoint-{epoch}.pth.tar")
    stamp = (run / "checkpoint-9.pth.tar").stat().st_mtime
    os.utime(run / "last.pth.tar", (stamp - 1, stamp - 1))  # (written first, then copied)
    result = run_cli("scan", str(run))
    said = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert "went on past what would be loaded" not in said
    line = next(line.strip() for line in result.output.splitlines() if line.strip().startswith("nandoctor repair"))
    assert f"--from {run / 'model_best.pth.tar'}" in line and "model_best.pth.tar beside them is" in said
    done = run_cli(*line.split()[1:])
    assert done.exit_code == 0, done.output
    fixed = torch.load(next((tmp_path / "run").glob("last.pth-repaired*/last.pth.tar")), weights_only=True)
    assert all(torch.isfinite(v).all() for v in fixed["state_dict"].values())  # the oracle
