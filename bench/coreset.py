"""greedy_coreset against the loops it replaced, side by side in one run (the README's coreset numbers).

    .venv/bin/python bench/coreset.py [--n 26000 53000 200000] [--k 4096] [--dim 147]

Three versions on the same random rows, alternating, twice each:
* allocating: the first loop, ``((x - x[i]) ** 2).sum(1)`` for every pick: two n x d allocations per iteration,
  whose cost depends on the machine's allocator;
* one pass: in place (one matrix-vector product into buffers allocated once) over all rows; the same picks;
* composed (the default): the one-pass selection per block of 16,384 rows, then over the blocks' picks.
Printed: seconds per run, whether one pass picks what the allocating loop picks, and the covering quality of each
(mean and largest distance from 5,000 sampled rows to their nearest pick). The allocating loop is skipped above
--max-allocating rows (minutes).
"""

from __future__ import annotations

import argparse
import time

import torch

from monitor.model.scorers.patch_dictionary import greedy_coreset


def allocating_coreset(x: torch.Tensor, k: int, seed: int = 0, proj_dim: int = 128) -> torch.Tensor:
    """The previous implementation, kept here only to compare against."""
    n = len(x)
    g = torch.Generator(device="cpu").manual_seed(seed)
    if x.shape[1] > proj_dim:
        x = x @ (torch.randn(x.shape[1], proj_dim, generator=g) / proj_dim**0.5)
    first = int(torch.randint(n, (1,), generator=g))
    selected = torch.empty(k, dtype=torch.long)
    selected[0] = first
    mind = ((x - x[first]) ** 2).sum(1)
    for i in range(1, k):
        nxt = int(torch.argmax(mind))
        selected[i] = nxt
        mind = torch.minimum(mind, ((x - x[nxt]) ** 2).sum(1))
    return selected


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[26000, 53000, 200000])
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=147)
    ap.add_argument("--max-allocating", type=int, default=60000)
    args = ap.parse_args()
    for n in args.n:
        x = torch.randn(n, args.dim, generator=torch.Generator().manual_seed(1))
        q = x[torch.randperm(n, generator=torch.Generator().manual_seed(2))[:5000]]
        versions = {"allocating": allocating_coreset, "one pass": lambda x, k: greedy_coreset(x, k, compose_above=n),
                    "composed": greedy_coreset}
        if n > args.max_allocating:
            del versions["allocating"]
        times = {name: [] for name in versions}
        picks = {}
        for _ in range(2):
            for name, f in versions.items():
                t = time.perf_counter()
                picks[name] = f(x, args.k)
                times[name].append(time.perf_counter() - t)
        print(f"n={n} k={args.k} d={args.dim}: " + ", ".join(f"{k} {' / '.join(f'{t:.2f}' for t in v)} s"
                                                        for k, v in times.items()), end="")
        if "allocating" in picks:
            same = bool(torch.equal(picks['allocating'], picks['one pass']))
            print(f"; one pass picks what allocating picks: {same}",
                  end="")
        for name, idx in picks.items():
            d = torch.cdist(q, x[idx]).min(1).values
            print(f"; {name} nearest-pick distance mean {d.mean():.3f} max {d.max():.3f}", end="")
        print(flush=True)


if __name__ == "__main__":
    main()
