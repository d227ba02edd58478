"""The focal Tversky loss (Abraham & Khan, "A novel focal Tversky loss function with improved attention U-Net for
lesion segmentation", ISBI 2019).

Per class c, the Tversky index with ``tp = sum p g``, ``fp = sum p (1 - g)``, ``fn = sum (1 - p) g``::

    TI_c = (tp + s) / (tp + alpha fp + beta fn + s),      L = mean_c w_c (1 - TI_c) ** (1 / gamma)

``alpha`` weights false positives, ``beta`` false negatives (beta > alpha favours recall, for small structures);
``gamma > 1`` raises the loss of classes that are already well segmented less than that of hard ones, since
``(1 - TI) ** (1 / gamma)`` is steeper near TI = 1 (the paper uses gamma = 4/3, alpha 0.3, beta 0.7).
"""

from __future__ import annotations

from torch import Tensor

from focusseg.losses import TverskyLoss


class FocalTverskyLoss(TverskyLoss):
    """Focal Tversky loss: the Tversky loss per class raised to ``1 / gamma``.

    Args:
        alpha: >= 0, weight of false positives.
        beta: >= 0, weight of false negatives.
        gamma: >= 1, the focal exponent's inverse (1: the Tversky loss).
        kwargs: as for focusseg's Dice loss (include_background, batch, smoothing, activation, reduction,
            ignore_label).
    """

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, gamma: float = 4.0 / 3.0, **kwargs: object) -> None:
        super().__init__(alpha=alpha, beta=beta, **kwargs)
        if not gamma >= 1.0:
            raise ValueError(f"gamma must be >= 1, got {gamma}")
        self.gamma = float(gamma)

    def class_loss(self, tp: Tensor, sum_p: Tensor, sum_g: Tensor) -> Tensor:
        tversky = super().class_loss(tp, sum_p, sum_g).clamp_min(0.0)  # 1 - TI, in [0, 1]
        # (x + eps) ** (1/gamma): a finite gradient where a class is perfectly segmented (x = 0)
        return (tversky + 1e-7) ** (1.0 / self.gamma)
