"""Slow tier of the random-model fuzzer (``tests/fuzz``): thousands of seeds, in chunks, each model
checked by the zero-then-prune oracle. A silently wrong model fails its chunk; models the oracle
cannot check (everything frozen, with reasons) and pruned forwards that break loudly are counted."""
from __future__ import annotations

import collections

import pytest
import torch

from tests.fuzz.check import LOUD, WRONG, check

CHUNK, CHUNKS = 100, {"mixed": 30, "recurrent": 5, "source": 5}  # 3,000 mixed seeds, 500 of the others
CASES = [pytest.param(family, i * CHUNK, id=f"{'' if family == 'mixed' else family + '-'}seeds{i * CHUNK}")
         for family, n in CHUNKS.items() for i in range(n)]


@pytest.mark.fuzz
@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("family,start", CASES)
def test_fuzz_chunk(family: str, start: int, zoo_case: dict) -> None:
    torch.set_num_threads(1)
    seeds = range(start, start + CHUNK)
    label = "" if family == "mixed" else f"{family} "
    zoo_case.update(source="fuzz", family=f"{label}seeds {seeds[0]}-{seeds[-1]}", model="random models")
    outcomes = [check(seed, family=family) for seed in seeds]
    counts = collections.Counter(o.result for o in outcomes)
    zoo_case["oracle"] = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    loud = [o for o in outcomes if o.result == LOUD]
    if loud:
        zoo_case["note"] = f"loud: seed {loud[0].seed} {loud[0].recipe}: {loud[0].detail[:200]}"
    wrong = [o for o in outcomes if o.result == WRONG]
    assert not wrong, "; ".join(f"seed {o.seed} {o.recipe}: {o.detail}" for o in wrong[:3])
