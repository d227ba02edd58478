"""Model-wise cross validation (FP-PET, paper 000 §1.1): one distinct held-out set per architecture of an ensemble.

FP-PET trains STU-Net, V-Net and SwinUNETR once each instead of 5 folds each, every model holding out its own 50
cases (30 lesion + 20 normal), so the ensemble members see different training sets and each gets an honest
validation score. Here: the (sorted, then seeded-shuffled) cases are dealt round-robin into ``M = len(models)``
disjoint validation sets, as k-fold with ``k = M`` does, so together they cover the data (``val_size=None``), or
each set takes only ``val_size`` cases (FP-PET's 50; sets stay disjoint, the rest is trained on by everyone).
With ``groups`` (case -> stratum, e.g. "lesion"/"normal") the dealing runs stratum by stratum, so every
validation set gets the strata in the same proportions (to within one case); with ``val_size``, each set takes
its quota from every stratum in proportion (largest remainders).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence


def modelwise_splits(
    case_ids: Sequence[str],
    model_names: Sequence[str],
    seed: int = 0,
    val_size: int | None = None,
    groups: Mapping[str, str] | None = None,
) -> dict[str, dict[str, list[str]]]:
    """``{model: {"train": [...], "val": [...]}}`` with pairwise disjoint ``val`` lists; lists are sorted.

    Args:
        case_ids: unique case identifiers.
        model_names: unique names of the ensemble members (M >= 1; M = 1 gives one hold-out set).
        seed: shuffling seed (same inputs and seed -> same splits, independent of the input order).
        val_size: cases per validation set, ``M * val_size <= len(case_ids)``; None = cover all cases.
        groups: optional stratum per case for stratified dealing.
    """
    cases = sorted(set(case_ids))
    models = list(model_names)
    if len(cases) != len(case_ids) or len(set(models)) != len(models):
        raise ValueError("case_ids and model_names must be unique")
    m = len(models)
    if m == 0 or len(cases) < m:
        raise ValueError(f"need at least one model and one case per model ({len(cases)} cases, {m} models)")
    if val_size is not None and not 1 <= val_size * m <= len(cases):
        raise ValueError(f"{m} validation sets of {val_size} cases do not fit in {len(cases)} cases")
    rng = random.Random(seed)
    strata: dict[str, list[str]] = {}
    for c in cases:
        strata.setdefault("" if groups is None else str(groups[c]), []).append(c)
    folds: list[list[str]] = [[] for _ in range(m)]
    if val_size is None:
        turn = 0
        for name in sorted(strata):
            members = strata[name]
            rng.shuffle(members)
            for c in members:  # continue the round-robin across strata so fold sizes differ by <= 1
                folds[turn % m].append(c)
                turn += 1
    else:
        quotas = _proportional_quota({k: len(v) for k, v in strata.items()}, val_size)
        for name in sorted(strata):
            members = strata[name]
            rng.shuffle(members)
            for f in range(m):
                folds[f].extend(members[f * quotas[name] : (f + 1) * quotas[name]])
        used = {c for fold in folds for c in fold}
        leftover = [c for name in sorted(strata) for c in strata[name] if c not in used]
        for fold in folds:  # a small stratum may not fill every set's quota: top up from the rest
            while len(fold) < val_size:
                fold.append(leftover.pop(0))
    all_cases = set(cases)
    return {model: {"train": sorted(all_cases - set(fold)), "val": sorted(fold)} for model, fold in zip(models, folds)}


def _proportional_quota(sizes: Mapping[str, int], total: int) -> dict[str, int]:
    """Split ``total`` over strata in proportion to ``sizes`` (largest remainder), never beyond a stratum's
    share of the available cases."""
    n = sum(sizes.values())
    exact = {k: total * s / n for k, s in sizes.items()}
    quota = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: (quota[k] - exact[k], k))[: total - sum(quota.values())]:
        quota[k] += 1
    return quota
