"""Fine-tuning (issue 15 part 6): ``--init-from RUN_OR_CHECKPOINT [--freeze-encoder-epochs N] [--warmup-epochs N]``.

Tiny runs on a tiny synthetic dataset (one torch thread): every tensor loads when classes and channels match (the
first forward equals the source network's), the head is re-initialised with other classes, the first convolution
with other channels; the encoder stays bit-identical while frozen and trains after; the learning rate rises
linearly over the warmup; a resumed run does not load the source again; bad sources are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from focusseg_testdata import write_tiny_dataset

from focusseg.engine import finetune
from focusseg.io.checkpoint import load_checkpoint
from focusseg.nets import build_network
from focusseg.nets.from_plan import build_network_from_plan
from focusseg.runfolder import EpochLog
from focusseg.workflows.train import run_training

UNET = {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1}
TINY = {"network": UNET, "patch_size": [16, 16, 16], "batch_size": 2,
        "training": {"max_epochs": 2, "iterations_per_epoch": 2, "augmentation": "light", "amp": "none"},
        "inference": {"mirror_axes": []}}
HEAD = ("model.2.",)  # MONAI UNet: the top up-layer makes the logits
FIRST_CONV = ("model.0.conv.unit0.conv.weight", "model.0.residual.weight")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _tiny(**training) -> dict:
    return {**TINY, "training": {**TINY["training"], **training}}


def _train(data: Path, run: Path, overrides: dict | None = None, **kwargs) -> dict:
    return run_training(data, run, fold=0, overrides=overrides or TINY, progress=False, final_validation=False,
                        device="cpu", **kwargs)


def _events(run: Path, name: str) -> list[dict]:
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in lines if r.get("event") == name]


def _two_classes(root: Path) -> Path:
    """The tiny dataset with one foreground class (the cube merged into the sphere's label)."""
    write_tiny_dataset(root, n_cases=5, seed=1)
    for f in sorted((root / "labelsTr").glob("*.nii.gz")):
        img = nib.load(f)
        lab = np.asarray(img.dataobj).astype(np.uint8)
        nib.save(nib.Nifti1Image(np.minimum(lab, 1), img.affine), f)
    ds = json.loads((root / "dataset.json").read_text())
    ds["labels"] = {"background": 0, "blob": 1}
    (root / "dataset.json").write_text(json.dumps(ds))
    return root


class FirstBatch:
    """Records the network(s) just before the first step of the run (after ``--init-from`` was applied)."""

    def __init__(self, x: torch.Tensor | None = None) -> None:
        self.x, self.state, self.out = x, None, None

    def before_batch(self, trainer, requests) -> None:
        if self.state is not None:
            return
        net = trainer.parts.task.network
        self.state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        if self.x is not None:
            net.eval()
            with torch.no_grad():
                self.out = net(self.x)
            net.train()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset, trained source run)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ft")
    data = write_tiny_dataset(root / "D", n_cases=5)
    _train(data, root / "source")
    torch.set_num_threads(n)
    return data, root / "source"


def _source_network(run: Path) -> tuple[torch.nn.Module, dict]:
    state = load_checkpoint(run / "checkpoint_best.pt")
    net = build_network_from_plan(state["plan"])
    net.load_state_dict(state["network"])
    return net.eval(), state


# ------------------------------------------------------------------------------------------------- loading


def test_same_classes_loads_every_tensor_and_the_first_forward_equals_the_source(source, tmp_path, capfd):
    data, src = source
    src_net, src_state = _source_network(src)
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    first = FirstBatch(x)
    _train(data, tmp_path / "ft", init_from=src, callbacks=[first])
    with torch.no_grad():
        expected = src_net(x)
    assert torch.equal(first.out, expected)
    for k, v in src_state["network"].items():
        assert torch.equal(first.state[k], v), k
    (event,) = _events(tmp_path / "ft", "init_from")
    assert event["loaded"] == len(src_state["network"]) and event["mismatched"] == 0
    assert event["reinitialised"] == 0 and event["unused"] == 0
    entry = json.loads((tmp_path / "ft" / "plan.json").read_text())["training"]["init_from"]
    assert entry == {"source": str((src / "checkpoint_best.pt").resolve()),
                     "sha256": finetune.file_sha256(src / "checkpoint_best.pt"),
                     "freeze_encoder_epochs": 0, "warmup_epochs": 0, "reinitialised": []}
    assert event["sha256"] == entry["sha256"]
    assert "--init-from" in capfd.readouterr().err  # the table was printed


def test_other_classes_reinitialise_the_head_and_load_the_rest(source, tmp_path, capfd):
    _, src = source
    data = _two_classes(tmp_path / "D2")
    src_state = load_checkpoint(src / "checkpoint_best.pt")["network"]
    first = FirstBatch()
    _train(data, tmp_path / "ft", init_from=src / "checkpoint_final.pt", callbacks=[first])
    (event,) = _events(tmp_path / "ft", "init_from")
    mismatched = {m["name"] for m in event["mismatched_tensors"]}
    assert mismatched and all(n.startswith(HEAD) for n in mismatched)
    assert set(event["loaded_tensors"]) == set(src_state) - mismatched
    plan = json.loads((tmp_path / "ft" / "plan.json").read_text())
    assert plan["training"]["init_from"]["reinitialised"] == [m["name"] for m in event["mismatched_tensors"]]
    final = load_checkpoint(src / "checkpoint_final.pt")["network"]
    for k in event["loaded_tensors"]:
        assert torch.equal(first.state[k], final[k]), k
    for m in event["mismatched_tensors"]:
        assert list(first.state[m["name"]].shape) == m["network"] != m["source"]
    err = capfd.readouterr().err
    assert "mismatched: re-initialised" in err and "model.2.1.conv.unit0.conv.weight" in err


def test_other_channel_count_reinitialises_the_first_convolution(source):
    _, src = source
    plan = load_checkpoint(src / "checkpoint_best.pt")["plan"]
    two = build_network_from_plan({**plan, "channel_names": {"0": "a", "1": "b"}})
    before = {k: v.clone() for k, v in two.state_dict().items()}
    report = finetune.load_matching(two, finetune.read_source(src).weights)
    assert {n for n, _, _ in report.mismatched} == set(FIRST_CONV)
    for name, s, t in report.mismatched:
        assert s[1] == 1 and t[1] == 2
        assert torch.equal(two.state_dict()[name], before[name])  # kept as initialised
    assert not report.missing and not report.unused
    assert len(report.loaded) == len(before) - len(FIRST_CONV)
    text = finetune.report_table(report)
    assert text.row_count == len(FIRST_CONV) + 1


def test_prefixes_and_weight_keys_of_other_checkpoints(tmp_path):
    net = build_network("unet", in_channels=1, out_channels=3, **{k: v for k, v in UNET.items() if k != "name"})
    sd = net.state_dict()
    for state in ({"network_weights": {f"module.{k}": v for k, v in sd.items()}},
                  {f"_orig_mod.{k}": v for k, v in sd.items()},
                  {"task": {"network": sd}, "epoch": 3}):
        assert set(finetune.network_weights(state)) == set(sd)
    with pytest.raises(finetune.CheckpointError, match="no network weights"):
        finetune.network_weights({"epoch": 1, "plan": {}})


# -------------------------------------------------------------------------------------------------- encoder


@pytest.mark.parametrize("name,kwargs,patch,encoder,rest", [
    ("unet", {k: v for k, v in UNET.items() if k != "name"}, (16, 16, 16),
     ("model.0.", "model.1.submodule.0.", "model.1.submodule.1.submodule."), ("model.1.submodule.2.", "model.2.")),
    ("dynunet", {"n_stages": 3, "deep_supervision": True, "deep_supr_num": 1}, (16, 16, 16),
     ("input_block.", "downsamples.", "bottleneck."), ("upsamples.", "output_block.", "deep_supervision_heads.")),
    ("basic_unet", {"features": [4, 4, 8, 8, 16, 4]}, (32, 32, 32), ("conv_0.", "down_"), ("upcat_", "final_conv.")),
    ("stunet_s", {}, (64, 64, 64), ("encoder.",), ("upsample.", "decoder.", "heads.")),
    # channels-last transformer tokens (its MLPs widen the last axis) and no meta support: probed on the CPU
    ("swin_unetr", {"feature_size": 12}, (64, 64, 64), ("swinViT.", "encoder"), ("decoder", "out.")),
])
def test_encoder_rule_per_network_family(name, kwargs, patch, encoder, rest):
    device = "cpu" if name == "swin_unetr" else "meta"
    with torch.device(device):
        net = build_network(name, in_channels=1, out_channels=3, spatial_dims=3, patch_size=patch, **kwargs)
        names = set(finetune.encoder_parameter_names(net, torch.zeros(1, 1, *patch)))
    params = [n for n, _ in net.named_parameters()]
    assert names == {n for n in params if n.startswith(encoder)}
    assert {n for n in params if n not in names} == {n for n in params if n.startswith(rest)}
    assert net.training  # the probe restored the mode


def test_reinitialised_encoder_tensors_train_while_the_rest_is_frozen(tmp_path):
    from types import SimpleNamespace

    plan = {"network": UNET, "channel_names": {"0": "a", "1": "b"}, "n_classes": 3, "patch_size": [16, 16, 16]}
    net = build_network_from_plan(plan)
    trainer = SimpleNamespace(epoch=0, run_dir=tmp_path, log=EpochLog(tmp_path), plan=plan, parts=SimpleNamespace(
        task=SimpleNamespace(network=net)))
    cb = finetune.FreezeEncoder(1, plan, keep_trainable=FIRST_CONV)
    cb.on_train_start(trainer)
    grads = dict(net.named_parameters())
    assert all(grads[n].requires_grad for n in FIRST_CONV)
    assert cb.names and all(not grads[n].requires_grad for n in cb.names)
    assert set(cb.names) == set(finetune.planned_encoder_names(plan)) - set(FIRST_CONV)
    trainer.epoch = 1
    cb.before_batch(trainer, [])
    assert all(p.requires_grad for p in net.parameters())


def test_a_cycle_runs_members_map_onto_each_network():
    w = {f"members.{i}.a.weight": torch.full((1,), float(i)) for i in range(3)}
    assert finetune.member_weights(w, 1) == {"a.weight": w["members.1.a.weight"]}
    assert finetune.member_weights(w, 4)["a.weight"].item() == 1.0
    plain = {"a.weight": torch.zeros(1)}
    assert finetune.member_weights(plain, 2) is plain


def test_no_upsampling_means_no_encoder():
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1), torch.nn.Conv3d(2, 3, 1))
    assert finetune.encoder_parameter_names(net, torch.zeros(1, 1, 8, 8, 8)) == []


# ---------------------------------------------------------------------------------------- freeze and warmup


class Recorder:
    """Encoder/decoder weights at every epoch boundary and the learning rate of every step."""

    def __init__(self, encoder: list[str]) -> None:
        self.encoder = encoder
        self.at_epoch: list[dict[str, torch.Tensor]] = []
        self.lrs: list[float] = []

    def _snap(self, trainer) -> None:
        self.at_epoch.append({k: v.detach().clone() for k, v in trainer.parts.task.network.state_dict().items()})

    def before_batch(self, trainer, requests) -> None:
        if not self.at_epoch:  # after --init-from (on_train_start), before the first step
            self._snap(trainer)

    def after_batch(self, trainer, step) -> None:
        self.lrs.append(trainer.parts.task.optimizers[0].param_groups[0]["lr"])

    def on_epoch_end(self, trainer, record) -> None:
        self._snap(trainer)


@pytest.fixture(scope="module")
def frozen_run(source, tmp_path_factory) -> tuple[Path, Recorder]:
    """Fine-tuned 3 epochs of 3 steps: encoder frozen for 2, warmup over 2, constant lr 0.01 (SGD momentum
    0.99, weight decay 3e-5: what must not move frozen weights)."""
    data, src = source
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    plan = load_checkpoint(src / "checkpoint_best.pt")["plan"]
    rec = Recorder(finetune.planned_encoder_names(plan))
    run = tmp_path_factory.mktemp("frozen") / "ft"
    _train(data, run, FROZEN, init_from=src, freeze_encoder_epochs=2, warmup_epochs=2, callbacks=[rec])
    torch.set_num_threads(n)
    return run, rec


FROZEN = _tiny(max_epochs=3, iterations_per_epoch=3, lr_schedule={"_replace": True, "name": "constant"},
               optimizer={"_replace": True, "name": "sgd", "lr": 0.01, "momentum": 0.99, "weight_decay": 3e-5,
                          "nesterov": True})


def test_frozen_encoder_is_bit_identical_then_trains(frozen_run):
    run, rec = frozen_run
    assert len(rec.at_epoch) == 4 and rec.encoder
    start, after1, after2, after3 = rec.at_epoch
    decoder = [k for k in start if k not in rec.encoder]
    for k in rec.encoder:
        assert torch.equal(after1[k], start[k]) and torch.equal(after2[k], start[k]), f"{k} moved while frozen"
    assert any(not torch.equal(after3[k], after2[k]) for k in rec.encoder), "the encoder never trained after"
    assert any(not torch.equal(after1[k], start[k]) for k in decoder), "the decoder did not train while frozen"
    (freeze,) = _events(run, "freeze_encoder")
    (unfreeze,) = _events(run, "unfreeze_encoder")
    assert freeze["at_epoch"] == 0 and freeze["tensors"] == len(rec.encoder) and unfreeze["at_epoch"] == 2
    entry = json.loads((run / "plan.json").read_text())["training"]["init_from"]
    assert entry["freeze_encoder_epochs"] == 2 and entry["warmup_epochs"] == 2


def test_warmup_rises_linearly_to_the_scheduled_rate(frozen_run):
    run, rec = frozen_run
    w = 2 * 3
    expected = [0.01 * (i + 1) / w for i in range(w)] + [0.01] * 3
    np.testing.assert_allclose(rec.lrs, expected, rtol=1e-12)
    state = load_checkpoint(run / "checkpoint_latest.pt")
    assert state["lr"]["lr"] == 0.01  # the controller's own (unscaled) state is what the checkpoint holds


def test_warmup_wraps_poly_without_compounding_on_the_validation_call():
    from focusseg.strategies.lr import PolyLR

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    poly = PolyLR(opt, 0.1, max_iterations=100)
    lr = finetune.WarmupLR(poly, [opt], 10)
    for it in range(12):
        lr.step(it)
        want = 0.1 * (1 - it / 100) ** 0.9 * min(1.0, (it + 1) / 10)
        assert opt.param_groups[0]["lr"] == pytest.approx(want)
        lr.step(it, metric=0.5)  # poly leaves the rate alone here: it must not be scaled twice
        assert opt.param_groups[0]["lr"] == pytest.approx(want)
    lr.max_iterations = 50
    assert poly.max_iterations == 50 and lr.state_dict() == poly.state_dict()


# ----------------------------------------------------------------------------------------------------- resume


def test_resume_does_not_load_the_source_again(source, tmp_path, capfd):
    data, src = source
    run = tmp_path / "ft"
    _train(data, run, init_from=src, warmup_epochs=1)
    latest = load_checkpoint(run / "checkpoint_latest.pt")["network"]
    first = FirstBatch()
    capfd.readouterr()
    _train(data, run, _tiny(max_epochs=3), resume=True, init_from=src, callbacks=[first])
    assert "not applied again on --resume" in capfd.readouterr().err
    for k, v in latest.items():
        assert torch.equal(first.state[k], v), f"{k}: the resumed run did not start from its checkpoint"
    assert len(_events(run, "init_from")) == 1
    plan = json.loads((run / "plan.json").read_text())
    assert plan["training"]["init_from"]["warmup_epochs"] == 1 and plan["training"]["max_epochs"] == 3
    from focusseg.errors import UsageError

    with pytest.raises(UsageError, match="cannot change freeze-encoder-epochs"):
        _train(data, run, _tiny(max_epochs=3), resume=True, init_from=src, freeze_encoder_epochs=1)


class Crash:
    def before_batch(self, trainer, requests) -> None:
        if trainer.iteration == 4:  # inside epoch 1: frozen encoder, warmup under way
            raise KeyboardInterrupt("crash")


def test_a_crashed_fine_tuning_run_resumes_to_the_same_weights(source, frozen_run, tmp_path):
    data, src = source
    straight, _ = frozen_run
    run = tmp_path / "ft"
    with pytest.raises(KeyboardInterrupt):
        _train(data, run, FROZEN, init_from=src, freeze_encoder_epochs=2, warmup_epochs=2, callbacks=[Crash()])
    assert load_checkpoint(run / "checkpoint_latest.pt")["epoch"] == 1
    _train(data, run, FROZEN, resume=True)
    a = load_checkpoint(straight / "checkpoint_final.pt")["network"]
    b = load_checkpoint(run / "checkpoint_final.pt")["network"]
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    assert [e["at_epoch"] for e in _events(run, "freeze_encoder")] == [0, 1]  # frozen again on resume


# ----------------------------------------------------------------------------------------------------- errors


def _cli(args: list[str], capfd) -> tuple[int, str]:
    from focusseg.cli import main

    capfd.readouterr()
    rc = main(args)
    return rc, capfd.readouterr().err


@pytest.fixture
def tiny_recipe(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"name": "tiny", "plan": TINY}))
    return path


def test_bad_sources_are_one_line_errors(source, tmp_path, tiny_recipe, capfd):
    data, src = source
    not_ours = tmp_path / "other.pt"
    torch.save({"epoch": 3, "weights": [1, 2]}, not_ours)
    foreign = tmp_path / "foreign.pt"
    torch.save({"network": {"encoder.stem.weight": torch.zeros(2, 2)}}, foreign)
    garbage = tmp_path / "garbage.pt"
    whole = (src / "checkpoint_best.pt").read_bytes()
    garbage.write_bytes(whole[: len(whole) // 2])  # a copy cut short
    (tmp_path / "empty_run").mkdir()
    cases = [
        (["--init-from", str(tmp_path / "nope")], "no such run folder or checkpoint", 1),
        (["--init-from", str(tmp_path / "empty_run")], "has no checkpoint_best.pt or checkpoint_final.pt", 1),
        (["--init-from", str(not_ours)], "not a focusseg checkpoint", 1),
        (["--init-from", str(garbage)], "corrupt checkpoint", 1),
        (["--init-from", str(foreign)], "none of the checkpoint's 1 tensors matches", 1),
        (["--freeze-encoder-epochs", "2"], "need --init-from", 2),
        (["--init-from", str(src), "--warmup-epochs", "-1"], "--warmup-epochs must be", 2),
    ]
    for i, (extra, message, code) in enumerate(cases):
        out = tmp_path / f"run{i}"
        rc, err = _cli(["train", str(data), "--out", str(out), "--recipe", str(tiny_recipe), "--no-progress",
                        "--device", "cpu", *extra], capfd)
        assert rc == code, (extra, err)
        assert "Traceback (most recent call last)" not in err and message in err, (extra, err)
        first = err.splitlines()[0]
        assert first.startswith("error: ") and message in first, (extra, err)
        assert not (out / "preprocessed").exists()  # refused before any preprocessing
    rc, err = _cli(["train", str(data), "--out", str(src), "--overwrite", "--recipe", str(tiny_recipe),
                    "--no-progress", "--init-from", str(src)], capfd)
    assert rc == 2 and "names the run folder being trained" in err
    assert (src / "checkpoint_best.pt").is_file()
