"""Machine description for benchmark reports: cores, CPU model, GPU, library versions, date."""

from __future__ import annotations

import datetime
import os
import platform


def machine_line() -> str:
    import torch

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    simd = ("AVX512-BF16" if "avx512_bf16" in flags else "AVX-512, no BF16" if "avx512f" in flags
            else "AVX2 only" if "avx2" in flags else "no AVX2")
    cpu = f"{cpu}, {simd}"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    try:
        import monai

        mon = f", monai {monai.__version__}"
    except ImportError:
        mon = ""
    return (f"{os.cpu_count()} cores ({cpu}), {gpu}; Python {platform.python_version()}, torch {torch.__version__}"
            f"{mon}; {datetime.date.today().isoformat()}")
