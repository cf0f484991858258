"""CoSENT: pairwise ranking of cosine scores (Su 2022)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mtlkit.losses._common import check_labels, check_same, check_scale, cosine
from mtlkit.losses.registry import register

__all__ = ["CoSENTLoss", "cosent_loss"]


def cosent_loss(u: Tensor, v: Tensor, scores: Tensor, scale: float = 20.0) -> Tensor:
    """CoSENT loss (Su 2022, "CoSENT: A more efficient sentence vector scheme than
    Sentence-BERT", kexue.fm/archives/8847).

    With ``c_i = cos(u_i, v_i)`` and gold similarity scores ``s``, every pair of pairs
    (i, j) whose gold scores say ``s_i > s_j`` should also have ``c_i > c_j``::

        loss = log(1 + Σ_{(i, j): s_i > s_j} exp(scale * (c_j - c_i)))

    computed stably as a ``logsumexp`` over ``{0} ∪ {scale (c_j - c_i)}``. The loss only
    depends on the *order* of the scores (ties contribute nothing), so it is invariant to
    any strictly increasing transform of them. It is one term over the whole batch, so
    there is no ``reduction``; it costs O(N²) memory.

    Relations: the scores need no normalisation: STS scores in [0, 5] and the same
    scores divided by 5 give the same loss, since only their order counts, and so do
    binary labels written as 1 / 0 or as 1 / -1. A batch whose scores are all equal has
    no ordered pair and a loss of exactly 0 (log 1). Unlike a regression on ``cos``
    (e.g. an MSE against the scores), the loss never pulls ``c_i`` towards a score value,
    only the ``c_i`` into the order of the scores.

    Args:
        u, v: ``(N, D)`` floating-point embeddings of the two sides of each pair.
        scores: ``(N,)`` gold similarity scores (higher = more similar), any real dtype
            and range; they are labels and get no gradient.
        scale: inverse temperature (> 0); default 20.

    Returns:
        A scalar tensor.
    """
    check_same(("u", "v"), u, v)
    check_labels("scores", scores, u.shape[0])
    scale = check_scale(scale)
    c = scale * cosine(u, v)
    diff = c[None, :] - c[:, None]  # diff[i, j] = scale * (c_j - c_i)
    s = scores.detach()
    ordered = s[:, None] > s[None, :]  # s_i > s_j
    diff = diff.masked_fill(~ordered, -math.inf)
    zero = torch.zeros(1, dtype=c.dtype, device=c.device)
    return torch.logsumexp(torch.cat([zero, diff.flatten()]), dim=0)


@register("cosent")
class CoSENTLoss(nn.Module):
    """Module form of :func:`cosent_loss` (Su 2022); registered as ``"cosent"``.

    ``forward(u, v, scores)``: ``u``, ``v`` ``(N, D)``, gold ``scores`` ``(N,)`` (any real
    range, higher = more similar); returns a scalar (no ``reduction``).

    Args:
        scale: inverse temperature (> 0); default 20.
    """

    def __init__(self, scale: float = 20.0) -> None:
        super().__init__()
        self.scale = check_scale(scale)

    def forward(self, u: Tensor, v: Tensor, scores: Tensor) -> Tensor:
        return cosent_loss(u, v, scores, self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
