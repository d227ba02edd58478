"""``python -m focusseg ...`` (what ``torchrun --nproc_per_node=N -m focusseg train ...`` starts on every rank)."""

import sys

from focusseg.cli import main

if __name__ == "__main__":
    sys.exit(main())
