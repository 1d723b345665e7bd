"""Which class, if any, the reverse-engineered masks' sizes name as the backdoor's target: numpy only, so
that the results table and the matrix can apply the rule to the sizes an earlier build recorded.

Two conditions, both on the log mask sizes. The cheapest class must sit more than ANOMALY_THRESHOLD robust
standard deviations below the classes' median (Neural Cleanse's anomaly index). And it must stand alone:
a backdoor is one shortcut into one class, so its mask is cheaper than the next cheapest class's by a clear
step, whereas a clean model's cheapest class is the tail of a continuum. The second condition was added
when the masks of two clean digits/ResNet models came out so bunched (47-72 pixels of 256) that a class
13% under the median had an index of 3.7: across the 64 records of docs/cells, requiring the next cheapest
class to be at least MIN_SEPARATION times larger dropped three of the six false names (a clean model's,
two weak SIG backdoors' wrong classes: next cheapest 1.01x) and none of the 42 right ones (the closest
1.04x). The margin is narrow and was read off those records, and of the first three builds made under it
one lost a marginal right name (index 2.02, next cheapest 1.012x; docs/METHODS.md, session 45).
"""

from __future__ import annotations

import numpy as np

# 1.4826 * MAD estimates a normal distribution's standard deviation; Neural Cleanse
# flags a class whose index exceeds 2.
MAD_TO_STD = 1.4826
ANOMALY_THRESHOLD = 2.0
MIN_SEPARATION = 1.03  # the next cheapest class's mask over the named one's


def anomaly_index(mask_sizes: np.ndarray) -> np.ndarray:
    """How far below the classes' median each class's log mask size sits, in robust standard deviations
    (positive: cheaper than the median class)."""
    logs = np.log(np.maximum(mask_sizes, 1e-6))
    median = np.median(logs)
    mad = MAD_TO_STD * np.median(np.abs(logs - median))
    return (median - logs) / max(mad, 1e-6)


def separation(mask_sizes: np.ndarray) -> float:
    """The next cheapest class's mask size over the cheapest one's."""
    cheapest, runner_up = np.sort(np.maximum(mask_sizes, 1e-6))[:2]
    return float(runner_up / cheapest)


def name_target(mask_sizes: np.ndarray, threshold: float = ANOMALY_THRESHOLD,
                min_separation: float = MIN_SEPARATION) -> int | None:
    """The cheapest class when its anomaly index exceeds `threshold` and no other class comes within
    `min_separation` of its mask size; else None."""
    sizes = np.asarray(mask_sizes, dtype=float)
    index = anomaly_index(sizes)
    cheapest = int(np.argmax(index))
    return cheapest if index[cheapest] > threshold and separation(sizes) >= min_separation else None
