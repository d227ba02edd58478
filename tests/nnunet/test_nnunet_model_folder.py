"""nnU-Net v2 model folders: read, checked, and the exact network rebuilt and loaded with a fold's weights; hostile or
broken folders refused in one line naming the file, and a code-running checkpoint never runs."""

from __future__ import annotations

import json
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("dynamic_network_architectures",
                    reason="dynamic-network-architectures is not installed (pip install 'focusseg[nnunet]')")

from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet  # noqa: E402
from nnunet_fixtures import (  # noqa: E402
    PLAIN,
    RESENC,
    checkpoint_dict,
    dataset_json,
    edit_plans,
    plans,
    reference_network,
    write_model_folder,
)

from focusseg.errors import CheckpointError, FocussegError, MissingFileError, PlanError  # noqa: E402
from focusseg.nnunet import (  # noqa: E402
    build_network,
    load_fold,
    load_nnunet_checkpoint,
    read_model_folder,
    read_postprocessing,
)
from focusseg.nnunet.checkpoint import NUMPY_SCALAR_GLOBALS  # noqa: E402


class Payload:
    """Unpickling this runs ``open(marker, 'w')``: the stand-in for a checkpoint that executes code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def one_line(exc: pytest.ExceptionInfo, *needles: str) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    for n in needles:
        assert n in text, (n, text)
    return text


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ----------------------------------------------------------------------------------------------- what works

@pytest.mark.parametrize("cls, expected", [(PLAIN, PlainConvUNet), (RESENC, ResidualEncoderUNet)])
def test_a_model_folder_loads_into_nnunets_exact_network(tmp_path: Path, cls: str, expected: type):
    folder, nets = write_model_folder(tmp_path, cls)
    model = read_model_folder(folder)
    assert model.trainer == "nnUNetTrainer" and model.plans_name == "nnUNetPlans"
    assert model.configuration.name == "3d_fullres" and model.configuration.patch_size == (16, 16, 16)
    assert model.configuration.spacing == (2.0, 1.0, 1.0)
    assert model.configuration.normalization_schemes == ("CTNormalization",)
    assert model.dataset.num_heads == 3 and model.dataset.channel_names == ("CT",)
    assert model.intensity_properties["0"]["percentile_99_5"] == 310.0
    assert list(model.checkpoints) == [0]

    network, ckpt = load_fold(model, 0)
    assert type(network) is expected
    assert ckpt.trainer_name == "nnUNetTrainer" and ckpt.configuration == "3d_fullres"
    assert ckpt.mirror_axes == (0, 1, 2)
    assert not network.training and network.decoder.deep_supervision is False
    _same_state(network, nets[0])

    # the same output as nnU-Net's own construction, deep supervision off, with the same weights
    ref = reference_network(plans(cls), "3d_fullres", 1, 3, deep_supervision=False)
    ref.load_state_dict(nets[0].state_dict())
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        out, want = network(x), ref.eval()(x)
    assert out.shape == (1, 3, 16, 16, 16)
    assert torch.allclose(out, want, atol=1e-5)


def test_2d_configuration_and_all_folds(tmp_path: Path):
    folder, nets = write_model_folder(tmp_path, configuration="2d", folds=(0, 1, "all"))
    model = read_model_folder(folder)
    assert model.configuration.dim == 2 and set(model.checkpoints) == {0, 1, "all"}
    net, _ = load_fold(model, "all")
    _same_state(net, nets["all"])
    assert build_network(model).encoder.conv_op is torch.nn.Conv2d


def test_the_checkpoint_keeps_only_what_inference_needs(tmp_path: Path):
    folder, nets = write_model_folder(tmp_path)
    ckpt = load_nnunet_checkpoint(folder / "fold_0" / "checkpoint_final.pth")
    assert set(vars(ckpt)) == {"path", "network_weights", "trainer_name", "configuration", "mirror_axes"}
    assert all(isinstance(t, torch.Tensor) and not t.is_meta for t in ckpt.network_weights.values())


def test_the_numpy_allowlist_is_minimal():
    names = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in NUMPY_SCALAR_GLOBALS}
    assert names == {"numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar", "numpy.dtype",
                     "numpy.dtypes.Float64DType", "numpy.dtypes.Float32DType", "numpy.dtypes.Int64DType"}


def test_meta_build_allocates_nothing(tmp_path: Path):
    folder, _ = write_model_folder(tmp_path)
    net = build_network(read_model_folder(folder))
    assert all(p.is_meta for p in net.parameters())


def test_batchnorm_trainer_is_rebuilt_with_batchnorm(tmp_path: Path):
    p = plans()
    p["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["norm_op"] = \
        "torch.nn.modules.batchnorm.BatchNorm3d"
    net = reference_network(p, "3d_fullres", 1, 3, deep_supervision=True)  # what nnUNetTrainerBN trains
    folder, _ = write_model_folder(tmp_path, trainer="nnUNetTrainerBN")
    torch.save(checkpoint_dict(net, plans(), "3d_fullres", dataset_json(), "nnUNetTrainerBN"),
               folder / "fold_0" / "checkpoint_final.pth")
    loaded, _ = load_fold(read_model_folder(folder), 0)
    _same_state(loaded, net)


def test_inherited_configuration_resolves(tmp_path: Path):
    def add_child(p):
        p["configurations"]["3d_fullres_bs4"] = {"inherits_from": "3d_fullres", "batch_size": 4}
    folder, _ = write_model_folder(tmp_path)
    edit_plans(folder, add_child)
    model = read_model_folder(folder, configuration="3d_fullres_bs4")
    assert model.configuration.batch_size == 4 and model.configuration.patch_size == (16, 16, 16)


def test_region_based_dataset_counts_regions(tmp_path: Path):
    from focusseg.nnunet.model_folder import check_dataset_json

    ds = {"channel_names": {"0": "T1", "1": "T2"}, "file_ending": ".nii.gz",
          "labels": {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3},
          "regions_class_order": [1, 2, 3]}
    parsed = check_dataset_json(ds, tmp_path / "dataset.json")
    assert parsed.has_regions and parsed.num_heads == 3 and parsed.regions_class_order == (1, 2, 3)
    del ds["regions_class_order"]
    with pytest.raises(PlanError) as e:
        check_dataset_json(ds, tmp_path / "dataset.json")
    one_line(e, "dataset.json", "regions_class_order")


# ----------------------------------------------------------------------------------------------- refused checkpoints

def test_a_payload_checkpoint_never_runs(tmp_path: Path):
    folder, nets = write_model_folder(tmp_path)
    marker = tmp_path / "PWNED"
    ck = checkpoint_dict(nets[0], plans(), "3d_fullres", dataset_json())
    ck["logging"]["extra"] = Payload(marker)
    path = folder / "fold_0" / "checkpoint_final.pth"
    torch.save(ck, path)
    with pytest.raises(CheckpointError) as e:
        load_fold(read_model_folder(folder), 0)
    one_line(e, str(path), "open")
    assert not marker.exists()


def test_numpy_scalars_beyond_the_allowlist_are_refused(tmp_path: Path):
    folder, nets = write_model_folder(tmp_path)
    ck = checkpoint_dict(nets[0], plans(), "3d_fullres", dataset_json())
    ck["logging"]["half"] = np.float16(1.0)
    path = folder / "fold_0" / "checkpoint_final.pth"
    torch.save(ck, path)
    with pytest.raises(CheckpointError) as e:
        load_nnunet_checkpoint(path)
    one_line(e, str(path), "Float16DType")


def test_numpy_arrays_are_refused(tmp_path: Path):
    folder, nets = write_model_folder(tmp_path)
    ck = checkpoint_dict(nets[0], plans(), "3d_fullres", dataset_json())
    ck["logging"]["array"] = np.zeros(3)
    path = folder / "fold_0" / "checkpoint_final.pth"
    torch.save(ck, path)
    with pytest.raises(CheckpointError) as e:
        load_nnunet_checkpoint(path)
    one_line(e, str(path), "refused", "_reconstruct")


def test_weights_of_another_network_are_one_line(tmp_path: Path):
    folder, _ = write_model_folder(tmp_path)
    other = plans()
    other["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] = [4, 8, 32]
    net = reference_network(other, "3d_fullres", 1, 3, deep_supervision=True)
    path = folder / "fold_0" / "checkpoint_final.pth"
    torch.save(checkpoint_dict(net, other, "3d_fullres", dataset_json()), path)
    with pytest.raises(CheckpointError) as e:
        load_fold(read_model_folder(folder), 0)
    one_line(e, str(path), "do not fit", "shape")


def test_missing_weights_are_one_line(tmp_path: Path):
    folder, nets = write_model_folder(tmp_path)
    ck = checkpoint_dict(nets[0], plans(), "3d_fullres", dataset_json())
    ck["network_weights"].pop(next(iter(ck["network_weights"])))
    path = folder / "fold_0" / "checkpoint_final.pth"
    torch.save(ck, path)
    with pytest.raises(CheckpointError) as e:
        load_fold(read_model_folder(folder), 0)
    one_line(e, str(path), "1 missing")


def test_nan_weights_are_refused(tmp_path: Path):
    folder, nets = write_model_folder(tmp_path)
    ck = checkpoint_dict(nets[0], plans(), "3d_fullres", dataset_json())
    name = next(k for k, v in ck["network_weights"].items() if v.is_floating_point())
    ck["network_weights"][name][...] = float("nan")
    path = folder / "fold_0" / "checkpoint_final.pth"
    torch.save(ck, path)
    with pytest.raises(CheckpointError) as e:
        load_nnunet_checkpoint(path)
    one_line(e, str(path), name, "NaN")


def test_another_configurations_checkpoint_is_refused(tmp_path: Path):
    folder, nets = write_model_folder(tmp_path)
    path = folder / "fold_0" / "checkpoint_final.pth"
    torch.save(checkpoint_dict(nets[0], plans(), "3d_lowres", dataset_json()), path)
    with pytest.raises(CheckpointError) as e:
        load_fold(read_model_folder(folder), 0)
    one_line(e, str(path), "3d_lowres")


@pytest.mark.parametrize("axes", [(0, 5), (1, 1), "xyz", (True,)])
def test_bad_mirror_axes_are_refused(tmp_path: Path, axes):
    folder, nets = write_model_folder(tmp_path)
    path = folder / "fold_0" / "checkpoint_final.pth"
    torch.save(checkpoint_dict(nets[0], plans(), "3d_fullres", dataset_json(), mirror=axes), path)
    with pytest.raises(CheckpointError) as e:
        load_nnunet_checkpoint(path)
    one_line(e, str(path), "inference_allowed_mirroring_axes")


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04truncated"])
def test_damaged_checkpoint_files_are_one_line(tmp_path: Path, content: bytes):
    path = tmp_path / "checkpoint_final.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        load_nnunet_checkpoint(path)
    one_line(e, str(path))


def test_truncated_checkpoint_is_one_line(tmp_path: Path):
    folder, _ = write_model_folder(tmp_path)
    path = folder / "fold_0" / "checkpoint_final.pth"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        load_nnunet_checkpoint(path)
    one_line(e, str(path))


def test_an_oversized_checkpoint_is_refused_before_reading(tmp_path: Path):
    folder, _ = write_model_folder(tmp_path)
    path = folder / "fold_0" / "checkpoint_final.pth"
    with pytest.raises(CheckpointError) as e:
        load_nnunet_checkpoint(path, max_bytes=1000)
    one_line(e, str(path), "bytes")


# ----------------------------------------------------------------------------------------------- refused plans

def _refused(tmp_path: Path, edit, *needles: str, configuration: str | None = None) -> None:
    folder, _ = write_model_folder(tmp_path)
    edit_plans(folder, edit)
    with pytest.raises(PlanError) as e:
        read_model_folder(folder, configuration=configuration)
    one_line(e, str(folder / "plans.json"), *needles)


def _arch(p: dict) -> dict:
    return p["configurations"]["3d_fullres"]["architecture"]


def test_unknown_network_class_is_refused(tmp_path: Path):
    def edit(p):
        _arch(p)["network_class_name"] = "evil_package.models.Trojan"
    _refused(tmp_path, edit, "network_class_name", "evil_package.models.Trojan")


def test_nan_spacing_is_refused(tmp_path: Path):
    folder, _ = write_model_folder(tmp_path)
    p = folder / "plans.json"
    data = json.loads(p.read_text())
    data["configurations"]["3d_fullres"]["spacing"] = [float("nan"), 1.0, 1.0]
    p.write_text(json.dumps(data))  # Python writes NaN
    with pytest.raises(PlanError) as e:
        read_model_folder(folder)
    one_line(e, str(p), "NaN")


def test_negative_spacing_is_refused(tmp_path: Path):
    def edit(p):
        p["configurations"]["3d_fullres"]["spacing"] = [2.0, -1.0, 1.0]
    _refused(tmp_path, edit, "spacing[1]")


def test_huge_patch_is_refused(tmp_path: Path):
    def edit(p):
        p["configurations"]["3d_fullres"]["patch_size"] = [4096, 4096, 4096]
    _refused(tmp_path, edit, "patch_size", "voxels")


def test_huge_features_are_refused(tmp_path: Path):
    def edit(p):
        _arch(p)["arch_kwargs"]["features_per_stage"] = [4, 8, 10**7]
    _refused(tmp_path, edit, "features_per_stage[2]")


def test_patch_not_divisible_by_the_strides_is_refused(tmp_path: Path):
    def edit(p):
        p["configurations"]["3d_fullres"]["patch_size"] = [16, 18, 16]
    _refused(tmp_path, edit, "strides", "axis 1")


def test_a_cascade_is_refused(tmp_path: Path):
    def edit(p):
        p["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    _refused(tmp_path, edit, "cascade", configuration="3d_cascade_fullres")


def test_import_of_os_system_is_refused(tmp_path: Path):
    def edit(p):
        _arch(p)["arch_kwargs"]["nonlin"] = "os.system"
    _refused(tmp_path, edit, "arch_kwargs.nonlin", "os.system", "nothing is imported")


def test_an_unknown_kw_requires_import_entry_is_refused(tmp_path: Path):
    def edit(p):
        _arch(p)["_kw_requires_import"].append("os.system")
        _arch(p)["arch_kwargs"]["os.system"] = "rm -rf /"
    _refused(tmp_path, edit, "os.system")


def test_conv_op_of_the_wrong_dimension_is_refused(tmp_path: Path):
    def edit(p):
        _arch(p)["arch_kwargs"]["conv_op"] = "torch.nn.Conv2d"
    _refused(tmp_path, edit, "conv_op", "3D")


def test_unknown_layer_kwargs_are_refused(tmp_path: Path):
    def edit(p):
        _arch(p)["arch_kwargs"]["norm_op_kwargs"]["device"] = "cuda"
    _refused(tmp_path, edit, "norm_op_kwargs.device")


def test_an_inheritance_cycle_is_refused(tmp_path: Path):
    def edit(p):
        p["configurations"]["a"] = {"inherits_from": "b"}
        p["configurations"]["b"] = {"inherits_from": "a"}
    _refused(tmp_path, edit, "cycle", configuration="a")


def test_bad_transpose_is_refused(tmp_path: Path):
    def edit(p):
        p["transpose_forward"] = [2, 0, 1]
        p["transpose_backward"] = [2, 0, 1]
    _refused(tmp_path, edit, "transpose_backward")


def test_ct_normalisation_needs_its_statistics(tmp_path: Path):
    def edit(p):
        del p["foreground_intensity_properties_per_channel"]["0"]["percentile_99_5"]
    _refused(tmp_path, edit, "percentile_99_5", "CTNormalization")


def test_old_plans_format_is_refused(tmp_path: Path):
    def edit(p):
        del p["configurations"]["3d_fullres"]["architecture"]
    _refused(tmp_path, edit, "old nnU-Net plans format")


def test_dataset_json_background_must_be_zero(tmp_path: Path):
    ds = dataset_json()
    ds["labels"]["background"] = 3
    folder, _ = write_model_folder(tmp_path, ds=ds)
    with pytest.raises(PlanError) as e:
        read_model_folder(folder)
    one_line(e, "dataset.json", "labels.background")


def test_missing_files_are_named(tmp_path: Path):
    folder, _ = write_model_folder(tmp_path)
    (folder / "fold_0" / "checkpoint_final.pth").unlink()
    with pytest.raises(MissingFileError) as e:
        read_model_folder(folder)
    one_line(e, "checkpoint_final.pth")
    (folder / "dataset.json").unlink()
    with pytest.raises(MissingFileError) as e:
        read_model_folder(folder)
    one_line(e, "dataset.json")


# ----------------------------------------------------------------------------------------------- post-processing

def _nnunet_pp_pickle(steps: list, kwargs: list) -> bytes:
    """A pickle as nnU-Net writes postprocessing.pkl: references to its function (made under a stand-in module)."""
    name = "nnunetv2.postprocessing.remove_connected_components"
    mod = types.ModuleType(name)

    def remove_all_but_largest_component_from_segmentation(segmentation, labels_or_regions, background_label=0):
        return segmentation

    fn = remove_all_but_largest_component_from_segmentation
    fn.__module__, fn.__qualname__ = name, fn.__name__
    mod.remove_all_but_largest_component_from_segmentation = fn
    saved = {k: sys.modules.get(k) for k in ("nnunetv2", "nnunetv2.postprocessing", name)}
    sys.modules.update({"nnunetv2": types.ModuleType("nnunetv2"),
                        "nnunetv2.postprocessing": types.ModuleType("nnunetv2.postprocessing"), name: mod})
    try:
        return pickle.dumps(([fn] * len(steps), kwargs))
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def test_postprocessing_json_and_pickle_read_without_code(tmp_path: Path):
    kwargs = [{"labels_or_regions": [1, 2]}, {"labels_or_regions": 2}]
    (tmp_path / "postprocessing.pkl").write_bytes(_nnunet_pp_pickle([1, 2], kwargs))
    want = (("remove_all_but_largest_component_from_segmentation", (1, 2)),
            ("remove_all_but_largest_component_from_segmentation", 2))
    assert read_postprocessing(tmp_path) == want
    (tmp_path / "postprocessing.json").write_text(json.dumps({
        "postprocessing_fns": ["remove_all_but_largest_component_from_segmentation"] * 2,
        "postprocessing_kwargs": kwargs}))
    assert read_postprocessing(tmp_path) == want
    assert read_postprocessing(tmp_path / "nothing-here") is None


def test_a_payload_postprocessing_pickle_never_runs(tmp_path: Path):
    marker = tmp_path / "PWNED"
    pkl = tmp_path / "postprocessing.pkl"
    pkl.write_bytes(pickle.dumps(([Payload(marker)], [{}])))
    with pytest.raises(PlanError) as e:
        read_postprocessing(tmp_path)
    one_line(e, str(pkl), "refused", "open")
    assert not marker.exists()


def test_unknown_postprocessing_step_is_refused(tmp_path: Path):
    js = tmp_path / "postprocessing.json"
    js.write_text(json.dumps({"postprocessing_fns": ["format_disk"], "postprocessing_kwargs": [{}]}))
    with pytest.raises(PlanError) as e:
        read_postprocessing(tmp_path)
    one_line(e, str(js), "format_disk")


def test_every_refusal_is_a_focusseg_error():
    assert issubclass(CheckpointError, FocussegError) and issubclass(PlanError, FocussegError)
