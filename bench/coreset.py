"""greedy_coreset against the loop it replaced, side by side in one run (the README's coreset numbers).

    .venv/bin/python bench/coreset.py [--n 26000 53000] [--k 1024] [--dim 150]

The old loop computed ``((x - x[i]) ** 2).sum(1)`` for every pick: two n x d allocations per iteration, whose
cost depends on the machine's allocator. Both run twice on the same random rows, alternating; the script prints
seconds per run and whether the picks are identical.
"""

from __future__ import annotations

import argparse
import time

import torch

from monitor.scorers.patch_dictionary import greedy_coreset


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
    ap.add_argument("--n", type=int, nargs="+", default=[26000, 53000])
    ap.add_argument("--k", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=150)
    args = ap.parse_args()
    for n in args.n:
        x = torch.randn(n, args.dim, generator=torch.Generator().manual_seed(1))
        times = {"allocating": [], "in place": []}
        picks = {}
        for _ in range(2):
            for name, f in (("allocating", allocating_coreset), ("in place", greedy_coreset)):
                t = time.perf_counter()
                picks[name] = f(x, args.k)
                times[name].append(time.perf_counter() - t)
        same = bool(torch.equal(picks["allocating"], picks["in place"]))
        print(f"n={n} k={args.k} d={args.dim}: " + ", ".join(f"{k} {' / '.join(f'{t:.2f}' for t in v)} s"
                                                        for k, v in times.items()) + f"; identical picks: {same}")


if __name__ == "__main__":
    main()
