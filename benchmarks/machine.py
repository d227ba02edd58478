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
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    try:
        import monai

        mon = f", monai {monai.__version__}"
    except ImportError:
        mon = ""
    return (f"{os.cpu_count()} cores ({cpu}), {gpu}; Python {platform.python_version()}, torch {torch.__version__}"
            f"{mon}; {datetime.date.today().isoformat()}")
