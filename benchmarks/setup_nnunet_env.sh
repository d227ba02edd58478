#!/usr/bin/env bash
# A separate venv with nnU-Net v2 for peer benchmarks (never a focusseg dependency).
# nnunetv2 would pull a CUDA torch: pin the CPU build that is on disk with a constraints file, then drop
# torchvision/timm (the CUDA torchvision raises at import; nnU-Net's predictor does not need them).
set -euo pipefail
ENV="${1:-.bench-nnunet}"
test -x "$ENV/bin/python" || python3 -m venv "$ENV"
"$ENV/bin/pip" install -q --upgrade pip
"$ENV/bin/pip" install -q torch==2.13.0
echo "torch==2.13.0" > "$ENV/constraints.txt"
"$ENV/bin/pip" install -q -c "$ENV/constraints.txt" nnunetv2
"$ENV/bin/pip" uninstall -y -q torchvision timm 2>/dev/null || true
"$ENV/bin/python" -c "import nnunetv2, torch; print('nnunetv2 ready, torch', torch.__version__)"
# nnU-Net's trainer lookup imports every trainer module; its Primus trainers need timm (and so torchvision), which
# the CPU torch cannot import: remove that subpackage in this benchmark venv only
PKG=$("$ENV/bin/python" -c "import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))")
rm -rf "$PKG/training/nnUNetTrainer/primus"
