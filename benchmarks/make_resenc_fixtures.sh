#!/usr/bin/env bash
# Writes tests/planning/fixtures/<dataset>.json: what nnU-Net's own Residual Encoder planners
# (nnUNetPlannerResEncM / L / XL) plan for the shared datasets, for tests/planning/test_resenc.py.
#
#   bash benchmarks/setup_nnunet_env.sh .bench-nnunet      # once: nnU-Net v2 in its own venv
#   bash benchmarks/make_resenc_fixtures.sh [ID ...]        # default: 4 101 102 103 104 105
#
# nnU-Net runs in a temporary folder: nnUNet_raw holds symlinks to ../shared/data/Dataset* (never copied or
# modified), nnUNet_preprocessed and nnUNet_results are temporary too and are removed at the end (rm removes the
# links, not what they point to). Per dataset: nnUNetv2_extract_fingerprint -d ID -np 1, then
# nnUNetv2_plan_experiment -d ID -pl nnUNetPlannerResEnc{M,L,XL}. A fixture keeps only derived numbers: the
# fingerprint fields the planner reads, three dataset.json counts and each configuration's plan.
# IDs 901 and 902 are synthetic fingerprints (written here, no images: the raw folder's imagesTr/labelsTr link to
# Dataset105's only so that nnU-Net can pick its image reader) for what the shared datasets do not reach:
# 901 a large CT-like dataset whose coarsest axis is x (a transpose, and a 3d_lowres configuration), 902 a
# thick-slice MR-like dataset with mixed slice spacings (the anisotropic target spacing's 10th percentile).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ENV="${NNUNET_ENV:-$ROOT/.bench-nnunet}"
DATA="${SHARED_DATA:-$ROOT/../shared/data}"
OUT="$ROOT/tests/planning/fixtures"
IDS="${*:-4 101 102 103 104 105 901 902}"
test -x "$ENV/bin/nnUNetv2_plan_experiment" || { echo "no nnU-Net venv at $ENV (run benchmarks/setup_nnunet_env.sh)" >&2; exit 2; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/raw" "$TMP/preprocessed" "$TMP/results" "$OUT"
for d in "$DATA"/Dataset*; do ln -s "$(cd "$d" && pwd)" "$TMP/raw/$(basename "$d")"; done
export nnUNet_raw="$TMP/raw" nnUNet_preprocessed="$TMP/preprocessed" nnUNet_results="$TMP/results"
export nnUNet_def_n_proc=1 nnUNet_n_proc_DA=1 OMP_NUM_THREADS=1
"$ENV/bin/python" - "$TMP" "$DATA/Dataset105_SpleenCase8" <<'EOF'
import json
import os
import sys
from pathlib import Path

import numpy as np

tmp, reader_example = Path(sys.argv[1]), Path(sys.argv[2]).resolve()
rng = np.random.default_rng(0)
n = 40
synthetic = {
    # (z, y, x) as nnU-Net reads them: x is the coarsest axis (about 2 mm), large images
    "Dataset901_SyntheticLargeCT": (
        {"0": "CT"}, {"background": 0, "liver": 1, "tumour": 2},
        np.round(np.stack([rng.uniform(0.9, 1.1, n), rng.uniform(0.7, 0.9, n), rng.uniform(1.8, 2.2, n)], 1), 4),
        np.stack([rng.integers(280, 420, n), rng.integers(350, 480, n), rng.integers(140, 220, n)], 1)),
    # thick slices (3 to 6 mm) and few of them: the anisotropic rule takes the slices' 10th-percentile spacing
    "Dataset902_SyntheticThickMR": (
        {"0": "T2", "1": "ADC"}, {"background": 0, "zone": 1, "lesion": 2, "ignore": 3},
        np.stack([rng.choice([3.0, 3.6, 4.0, 5.0, 6.0], n), np.full(n, 0.625), np.full(n, 0.625)], 1),
        np.stack([rng.integers(18, 30, n), rng.integers(300, 400, n), rng.integers(300, 400, n)], 1)),
}
for name, (channels, labels, spacings, shapes) in synthetic.items():
    raw = tmp / "raw" / name
    raw.mkdir()
    for sub in ("imagesTr", "labelsTr"):
        os.symlink(reader_example / sub, raw / sub)
    (raw / "dataset.json").write_text(json.dumps({"channel_names": channels, "labels": labels, "numTraining": n,
                                                  "file_ending": ".nii.gz"}))
    pre = tmp / "preprocessed" / name
    pre.mkdir(parents=True)
    props = {"mean": 0.0, "std": 1.0, "min": -1.0, "max": 1.0, "median": 0.0, "percentile_00_5": -1.0,
             "percentile_99_5": 1.0}
    (pre / "dataset_fingerprint.json").write_text(json.dumps({
        "spacings": spacings.tolist(), "shapes_after_crop": shapes.tolist(),
        "median_relative_size_after_cropping": 1.0,
        "foreground_intensity_properties_per_channel": {c: props for c in channels}}))
EOF
for id in $IDS; do
  if [ "$id" -lt 900 ]; then "$ENV/bin/nnUNetv2_extract_fingerprint" -d "$id" -np 1; fi
  for p in M L XL; do
    "$ENV/bin/nnUNetv2_plan_experiment" -d "$id" -pl "nnUNetPlannerResEnc$p" > /dev/null
  done
  "$ENV/bin/python" - "$id" "$TMP" "$OUT" <<'EOF'
import json
import sys
from importlib.metadata import version
from pathlib import Path

from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

dataset_id, tmp, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
name = maybe_convert_to_dataset_name(int(dataset_id))
pre = tmp / "preprocessed" / name
fp = json.loads((pre / "dataset_fingerprint.json").read_text())
dj = json.loads((tmp / "raw" / name / "dataset.json").read_text())
keep = ("batch_size", "patch_size", "median_image_size_in_voxels", "spacing", "architecture")
plans = {}
for preset in ("M", "L", "XL"):
    p = json.loads((pre / f"nnUNetResEncUNet{preset}Plans.json").read_text())
    plans[f"resenc-{preset.lower()}"] = {
        "planner": p["experiment_planner_used"],
        "transpose_forward": p["transpose_forward"],
        "configurations": {c: {k: cfg[k] for k in keep} for c, cfg in p["configurations"].items()
                           if "architecture" in cfg},
    }
fixture = {
    "dataset": name,
    "made_by": {"nnunetv2": version("nnunetv2"),
                "dynamic_network_architectures": version("dynamic_network_architectures"),
                "commands": [f"nnUNetv2_extract_fingerprint -d {dataset_id} -np 1"]
                + [f"nnUNetv2_plan_experiment -d {dataset_id} -pl nnUNetPlannerResEnc{p}" for p in ("M", "L", "XL")]},
    "fingerprint": {k: fp[k] for k in ("spacings", "shapes_after_crop", "median_relative_size_after_cropping")},
    "dataset_json": {"numTraining": dj["numTraining"], "n_channels": len(dj["channel_names"]),
                     "n_labels": len(dj["labels"])},
    "plans": plans,
}
path = out / f"{name}.json"
path.write_text(json.dumps(fixture, separators=(",", ":")) + "\n")
print(f"{path}: {path.stat().st_size} bytes")
EOF
done
