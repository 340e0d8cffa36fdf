"""Which one transformation breaks parity: bisection over a list of them.

The list is what actually changed the graph: onnxruntime's graph transformers that reported
a change at verbose logging, or the rewrites a ``fold`` made. The caller has seen the failure
with every one applied and knows it away with none (optimizations off; the original model),
so halving the suspects takes ceil(log2 N) runs and one more confirms a culprit that was only
inferred: at most log2(N) + 2. A failure that needs two of them together is reported as such.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from normonnx.results import Bisection


def bisect(kind: str, candidates: Sequence[str], fails: Callable[[frozenset[str]], bool]) -> Bisection:
    """The one of ``candidates`` whose application alone reproduces the failure.

    ``fails(applied)`` runs the check with only ``applied`` of the candidates in effect.
    """
    suspects, runs = list(candidates), 0
    seen_failing = len(suspects) == 1  # then "all of them" is this one, and the caller saw it fail
    if not suspects:
        return Bisection(kind, [], None, 0, "nothing was applied, so nothing to blame")
    while len(suspects) > 1:
        half = suspects[: len(suspects) // 2]
        runs += 1
        if fails(frozenset(half)):
            suspects, seen_failing = half, True
        else:
            suspects, seen_failing = suspects[len(half) :], False
    culprit = suspects[0]
    if not seen_failing:
        runs += 1
        if not fails(frozenset([culprit])):
            return Bisection(
                kind, list(candidates), None, runs,
                "no single one reproduces the failure: it takes several of them together",
            )  # fmt: skip
    return Bisection(kind, list(candidates), culprit, runs)
