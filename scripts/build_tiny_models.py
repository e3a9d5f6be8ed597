#!/usr/bin/env python
"""Build the project's tiny teacher/student pairs (SFT on the synthetic demonstrations) into the cache.

    python scripts/build_tiny_models.py                 # both pairs: tiny (math + toolqa), tiny_vl (vqa)
    python scripts/build_tiny_models.py tiny --force    # rebuild one pair
    python scripts/build_tiny_models.py --threads 2
    python scripts/build_tiny_models.py --force --ship  # rebuild and copy into reopold_agents/tiny/assets/

The package ships the pairs this script made (``--ship``), so the run CLI only copies them into the cache.
This script remakes them (seeded: same recipe, same weights on the same torch build) and prints timings
and the greedy success of each model on held-out tasks. Output: reopold_agents.tiny.cache_dir()/models/
(and, with ``--ship``, reopold_agents/tiny/assets/).
"""

from __future__ import annotations

import argparse
import logging
import time

from reopold_agents.tiny.recipes import RECIPES, build_tiny, is_built, ship


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", default=list(RECIPES), help=f"pairs to build ({', '.join(RECIPES)})")
    parser.add_argument("--force", action="store_true", help="rebuild even if already built")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--role", choices=["teacher", "student"], default=None,
                        help="build only this role (run one process per role to use two cores); implies --force")
    parser.add_argument("--ship", action="store_true", help="copy the built pairs into reopold_agents/tiny/assets/")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for name in args.names:
        if name not in RECIPES:
            parser.error(f"unknown pair {name!r}; choose from {', '.join(RECIPES)}")
        t0 = time.perf_counter()
        roles = (args.role,) if args.role else ("teacher", "student")
        report = build_tiny(name, force=args.force or bool(args.role), threads=args.threads, roles=roles)
        if report is None:
            print(f"{name}: already in the cache (version current); use --force to rebuild")
        else:
            print(f"{name}: built in {time.perf_counter() - t0:.0f}s")
            for role, per_env in report.success.items():
                envs = ", ".join(f"{env} {succ:.2f}" for env, succ in per_env.items())
                print(f"  {role:8s} final SFT loss {report.final_loss[role]:.3f}; greedy success on held-out tasks: {envs}")
        if args.role:
            continue
        assert is_built(name)
        if args.ship:
            for path in ship(name):
                print(f"  shipped {path}")


if __name__ == "__main__":
    main()
