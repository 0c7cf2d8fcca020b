"""Run a build directly (no server needed: Prefect's ephemeral API).

    python -m flows.run --config build.yaml
"""

from __future__ import annotations

import argparse
import json

from flows.build_flow import build_cold_start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="build YAML")
    args = ap.parse_args()
    print(json.dumps(build_cold_start(config=args.config), indent=2))


if __name__ == "__main__":
    main()
