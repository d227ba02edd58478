"""Every corpus module, imported so that their entries register in :data:`corpus.CORPUS`: the first corpus
(datasets, runs, predictions) and the corpora of files shared by others (bundles, run and cross-validation folders,
probability files, JSON, DICOM). ``test_corpus.py`` and ``benchmarks/bench_reliability.py`` read it from here."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from .corpus import CORPUS, GROUP, Entry

for _mod in sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])):
    if _mod.startswith("corpus_"):
        importlib.import_module(f"{__package__}.{_mod}")

#: Entries added for files others made (bundles, shared folders, probability files, JSON, DICOM).
SHARED = sorted(n for n, g in GROUP.items() if g != "corpus")

__all__ = ["CORPUS", "GROUP", "SHARED", "Entry"]
