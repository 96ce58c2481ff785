"""Randomized routing with known propensities, so logged traffic can evaluate other routers.

With exploration rate e over the K models the policy considers, a request is routed by the
router's decision with probability 1 - e and to a model drawn uniformly from the K with
probability e; the chosen model's propensity, (1 - e) * [it is the decision] + e / K, goes to
the ledger. Draws come from a hash of the request id: reproducible, and independent of the
prompt. ``stable_unit`` gives the same hashing for experiment arm assignment.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def stable_unit(*parts: str) -> float:
    """A number in [0, 1) fixed by ``parts`` (SHA-256 based)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def explore(
    request_id: str, decision: str, considered: Sequence[str], rate: float
) -> tuple[str, float]:
    """The model to route to and its propensity under the exploring policy."""
    k = len(considered)
    if rate <= 0 or k < 2:
        return decision, 1.0
    if stable_unit(request_id, "explore") < rate:
        chosen = considered[int(stable_unit(request_id, "pick") * k)]
    else:
        chosen = decision
    propensity = (1 - rate) * (chosen == decision) + rate / k
    return chosen, propensity
