"""Serve the `build-cold-start/<name>` deployment from this process (README: Prefect server steps).

    python -m flows.serve [--name local]
then, from anywhere that reaches the same Prefect API:
    prefect deployment run 'build-cold-start/local' --param config=/abs/path/build.yaml
"""

from __future__ import annotations

import argparse

from flows.build_flow import build_cold_start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="local")
    ap.add_argument("--limit", type=int, default=None, help="concurrent flow runs served")
    args = ap.parse_args()
    build_cold_start.serve(name=args.name, limit=args.limit)


if __name__ == "__main__":
    main()
