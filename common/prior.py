"""The answer of a detector that has no model yet: its label prior.

With n_k labels of class k out of N, the prior is (n_k + 1) / (N + K) (Laplace's rule): before any
label every class has 1/K, so the first class answers with confidence 1/K; afterwards the most
frequent label answers with its smoothed frequency. Such an answer is never confident enough to
stand alone: whoever gives it also escalates the query, so a person answers and the detector learns.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PriorAnswer:
    label: str
    confidence: float
    probabilities: list[float]


def label_prior(labels: list[str], counts: list[int] | None = None) -> PriorAnswer:
    """The most frequent label (ties: the first in key order) and the smoothed prior probabilities."""
    if len(labels) < 2:
        raise ValueError("a detector has at least two labels")
    n = [max(0, int(c)) for c in (counts or [])][: len(labels)]
    n += [0] * (len(labels) - len(n))
    total = sum(n) + len(labels)
    probabilities = [(c + 1) / total for c in n]
    best = max(range(len(labels)), key=lambda i: (probabilities[i], -i))
    return PriorAnswer(labels[best], probabilities[best], probabilities)
