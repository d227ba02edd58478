"""Tversky loss (Salehi et al. 2017; used in FP-PET, paper 000 sec. 3.5, to cut false positive and false
negative volume).

Per class c, with ``tp = sum p g``, ``fp = sum p (1 - g)``, ``fn = sum (1 - p) g``::

    L_c = 1 - (tp + s_nr) / (tp + alpha fp + beta fn + s_dr),      L = mean_c w_c L_c

MONAI convention: ``alpha`` weights the false positives, ``beta`` the false negatives; ``alpha = beta = 0.5``
is the Dice loss. Defaults alpha 0.3, beta 0.7 are Salehi et al.'s recommendation (paper 000 cites that paper but
gives no values; with MONAI's 0.5/0.5 the Tversky term of the FP-PET compound would only repeat the Dice term).
Background handling, ``batch``, class weights and reductions are those of :class:`~focusseg.losses.dice.DiceLoss`.
"""

from __future__ import annotations

from torch import Tensor

from focusseg.losses._build import LOSSES
from focusseg.losses.dice import RegionLoss


@LOSSES.register("tversky")
class TverskyLoss(RegionLoss):
    """Tversky loss.

    Args:
        alpha: >= 0, weight of false positives.
        beta: >= 0, weight of false negatives.
        include_background, batch, smooth_nr, smooth_dr, activation, reduction, validate_labels, ignore_label:
            as for ``DiceLoss`` (ignored voxels add to no sum).
    """

    power = 1

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got {alpha}, {beta}")
        self.alpha = float(alpha)
        self.beta = float(beta)

    def class_loss(self, tp: Tensor, sum_p: Tensor, sum_g: Tensor) -> Tensor:
        # binary targets: fp = sum p - tp, fn = sum g - tp
        den = (tp + self.alpha * (sum_p - tp) + self.beta * (sum_g - tp) + self.smooth_dr).clamp_min(1e-8)
        return 1.0 - (tp + self.smooth_nr) / den
