"""``python -m focusseg.cli ...``: the same as ``focusseg ...`` (and ``python -m focusseg ...``)."""

import sys

from focusseg.cli import main

if __name__ == "__main__":
    sys.exit(main())
