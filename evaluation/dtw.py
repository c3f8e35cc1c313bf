"""Dynamic time warping for the DDC metric (a small DP; avoids the GPL dtw-python package).

Step pattern: **symmetric2** (the usual symmetric pattern, dtw-python's default). With local cost
``c(i, j) = |x_i - y_j|`` (or the Euclidean norm for vector-valued series)::

    D(0, 0) = c(0, 0)
    D(i, j) = min( D(i-1, j-1) + 2 c(i, j),     # diagonal step counts twice
                   D(i-1, j)   +   c(i, j),     # vertical / horizontal steps count once
                   D(i,   j-1) +   c(i, j) )

The path must start at (0, 0) and end at (N-1, M-1) (no open ends). Every admissible path has the same
total weight (N + M - 1 with the start cell counted once), which is what makes this pattern normalisable:
the **normalised distance** is ``D(N-1, M-1) / (N + M)``, the normalisation dtw-python uses for
symmetric2 (``normalizedDistance``). It is (almost) a weighted mean of |x_i - y_j| along the best
alignment and comparable between curves of different lengths; DDC reports it.
``DTWResult.distance`` is the unnormalised cost.

Example (used in the tests): x = [1, .5, .25, 0] and the same process delayed by one keyframe
y = [1, 1, .5, .25]: the best path (0,0) (0,1) (1,2) (2,3) (3,3) costs 0 + 0 + 2*0 + 2*0 + |0 - .25| = .25,
normalised .25 / 8 = 0.03125.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class DTWResult:
    distance: float  # unnormalised symmetric2 cost
    normalized_distance: float  # distance / (N + M)
    path: list[tuple[int, int]]  # alignment from (0, 0) to (N-1, M-1)
    cost_matrix: np.ndarray  # accumulated cost D


def local_costs(x, y) -> np.ndarray:
    """|x_i - y_j| for 1-D series, Euclidean distance for (N, d) / (M, d) series."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if y.ndim == 1:
        y = y[:, None]
    return np.sqrt(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))


def dtw(x, y) -> DTWResult:
    """symmetric2 DTW between two series (see the module docstring)."""
    c = local_costs(x, y)
    n, m = c.shape
    if n == 0 or m == 0:
        raise ValueError("DTW needs two non-empty series")
    big = np.inf
    acc = np.full((n, m), big)
    acc[0, 0] = c[0, 0]
    for i in range(n):
        for j in range(m):
            if i == 0 and j == 0:
                continue
            best = big
            if i > 0 and j > 0:
                best = acc[i - 1, j - 1] + 2 * c[i, j]
            if i > 0:
                best = min(best, acc[i - 1, j] + c[i, j])
            if j > 0:
                best = min(best, acc[i, j - 1] + c[i, j])
            acc[i, j] = best
    # backtrack; ties prefer the diagonal (the shortest path)
    path = [(n - 1, m - 1)]
    i, j = n - 1, m - 1
    while (i, j) != (0, 0):
        cands = []
        if i > 0 and j > 0:
            cands.append((acc[i - 1, j - 1] + 2 * c[i, j], 0, (i - 1, j - 1)))
        if i > 0:
            cands.append((acc[i - 1, j] + c[i, j], 1, (i - 1, j)))
        if j > 0:
            cands.append((acc[i, j - 1] + c[i, j], 1, (i, j - 1)))
        i, j = min(cands)[2]
        path.append((i, j))
    path.reverse()
    total = float(acc[-1, -1])
    return DTWResult(total, total / (n + m), path, acc)
