"""Privacy accounting shared by the robots and the coordinator (Opacus' RDP accountant).

Both sides evaluate Rényi DP at the same integer orders :data:`ORDERS`: Opacus' default set
adds fractional orders whose evaluation is pure-Python series (about 2 s per ε on a robot's
CPU, against 0.1 s here), for a bound at most a few percent tighter. Any set of orders gives a
valid upper bound on ε.
"""

from __future__ import annotations

import math
import warnings

ORDERS: list[float] = [float(a) for a in [*range(2, 65), 80, 96, 128, 256]]
_SMALLEST = "Optimal order is the smallest alpha"
History = list[tuple[float, float, int]]  # (noise multiplier, sample rate, steps)


def steps_per_round(examples: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """(sample rate, DP-SGD steps) of one round: Poisson batches of expected ``batch_size``
    out of ``examples``, ``ceil(examples / batch_size)`` steps an epoch (Opacus' convention)."""
    per_epoch = max(1, math.ceil(examples / batch_size))
    return 1.0 / per_epoch, per_epoch * epochs


def spent_epsilon(history: History, delta: float) -> float:
    """ε at ``delta`` after the DP-SGD steps in ``history``; infinite when a round had no
    noise, 0 for an empty history."""
    from opacus.accountants import RDPAccountant

    if not history:
        return 0.0
    if any(sigma <= 0 for sigma, _, _ in history):
        return math.inf
    accountant = RDPAccountant()
    accountant.history = list(history)
    with warnings.catch_warnings():
        # at a very large ε the smallest order is optimal and Opacus says so; the bound is
        # still valid (only looser), and such an ε is past any budget anyway
        warnings.filterwarnings("ignore", message=_SMALLEST)
        return float(accountant.get_epsilon(delta, alphas=ORDERS))


def calibrate_noise(epsilon: float, delta: float, *, rounds: int, examples: int,
                    batch_size: int, epochs: int) -> float:
    """The noise multiplier that spends at most (``epsilon``, ``delta``) over ``rounds``
    rounds."""
    from opacus.accountants.utils import get_noise_multiplier

    rate, steps = steps_per_round(examples, batch_size, epochs)
    with warnings.catch_warnings():  # the search tries small noise, where ε is huge
        warnings.filterwarnings("ignore", message=_SMALLEST)
        return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta,
                                          sample_rate=rate, steps=steps * rounds,
                                          accountant="rdp", alphas=ORDERS))
