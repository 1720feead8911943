"""Run the fuzzer's slow tier outside pytest, one JSON line per seed (resumable, countable):
``python -m tests.fuzz.run START COUNT OUT.jsonl [FAMILY]`` (``mixed``, the default, or ``recurrent``),
then ``python -m tests.fuzz.run --summary OUT.jsonl``
prints the counts docs/zoo_status.md quotes (exact, frozen by reason, loud, silently wrong)."""
from __future__ import annotations

import collections
import json
import sys
import time

import torch


def run(start: int, count: int, out: str, family: str = "mixed") -> None:
    from .check import check

    torch.set_num_threads(1)
    with open(out, "a") as fh:
        for seed in range(start, start + count):
            t0 = time.perf_counter()
            o = check(seed, family=family)
            fh.write(json.dumps({"seed": seed, "result": o.result, "recipe": o.recipe, "detail": o.detail,
                                 "seconds": round(time.perf_counter() - t0, 2)}) + "\n")
            fh.flush()


def summary(path: str) -> str:
    rows = [json.loads(line) for line in open(path)]
    by = collections.Counter(r["result"] for r in rows)
    frozen = collections.Counter(r["detail"] for r in rows if r["result"] == "frozen")
    loud = collections.Counter(r["detail"].split(":")[0] for r in rows if r["result"] == "loud")
    secs = sorted(r["seconds"] for r in rows)
    lines = [f"seeds {min(r['seed'] for r in rows)}-{max(r['seed'] for r in rows)}: {len(rows)} models, "
             f"{sum(secs) / 60:.0f} min (median {secs[len(secs) // 2]:.2f} s, max {secs[-1]:.1f} s per model)",
             *(f"- {k}: {by[k]}" for k in ("exact", "frozen", "loud", "wrong")),
             *(f"  - frozen, {k}: {n}" for k, n in frozen.most_common()),
             *(f"  - loud, {k}: {n}" for k, n in loud.most_common())]
    lines += [f"  - WRONG seed {r['seed']} {r['recipe']}: {r['detail']}" for r in rows if r["result"] == "wrong"]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1] == "--summary":
        print(summary(sys.argv[2]))
    else:
        run(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], *sys.argv[4:5])
