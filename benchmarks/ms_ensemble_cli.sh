#!/usr/bin/env bash
# Issue 8: a 3-model weighted ensemble (three architectures) + mirror TTA predicts an MS-lesion case end to end
# from the CLI, with an uncertainty map. Short CPU trainings: this checks the pipeline, not the accuracy.
#   bash benchmarks/ms_ensemble_cli.sh [MINUTES_PER_MODEL]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../shared/data/Dataset101_MSLesionLjubljana
[ -d "$DATA" ] || { echo "skipped: $DATA is absent (needs ../shared/data)"; exit 0; }
MIN="${1:-1}"
FS=.venv/bin/focusseg
OUT=runs/ms_ensemble
mkdir -p "$OUT/in"
ln -sf "$(realpath "$DATA")"/imagesTr/patient26_000?.nii.gz "$OUT/in/"
common=(--fold 0 --time-budget "$MIN" --no-progress --set 'inference.mirror_axes=[0]' --set patch_size='[64,64,64]')
$FS train "$DATA" --out "$OUT/unet" "${common[@]}"
$FS train "$DATA" --out "$OUT/basic_unet" "${common[@]}" --preprocessed "$OUT/unet/preprocessed" \
  --set 'network={"_replace": true, "name": "basic_unet", "features": [16, 16, 32, 64, 128, 16], "act": "mish", "dropout": 0.1}'
$FS train "$DATA" --out "$OUT/dynunet" "${common[@]}" --preprocessed "$OUT/unet/preprocessed" \
  --set 'network={"_replace": true, "name": "dynunet", "base_features": 16, "max_features": 128}'
/usr/bin/time -v $FS predict "$OUT/unet" "$OUT/in" "$OUT/pred" --tta --ensemble "$OUT/basic_unet" \
  --ensemble "$OUT/dynunet" --weights 0.5,0.3,0.2 --uncertainty entropy 2> "$OUT/predict_time.log"
grep -E "Elapsed|Maximum resident" "$OUT/predict_time.log"
.venv/bin/python - "$OUT" "$DATA" <<'PY'
import sys, nibabel as nib, numpy as np
out, data = sys.argv[1], sys.argv[2]
ref = nib.load(f"{data}/imagesTr/patient26_0000.nii.gz")
seg, unc = nib.load(f"{out}/pred/patient26.nii.gz"), nib.load(f"{out}/pred/patient26_uncertainty.nii.gz")
assert seg.shape == unc.shape == ref.shape and np.allclose(seg.affine, ref.affine)
print("ensemble output", seg.shape, "labels", np.unique(np.asarray(seg.dataobj)).tolist(),
      "uncertainty range", float(np.asarray(unc.dataobj).min()), float(np.asarray(unc.dataobj).max()))
PY
