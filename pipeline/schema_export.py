"""Write the JSON Schemas of the config and the output records into schemas/ (kept in git).

    python -m pipeline.schema_export
A test fails when the committed files drift from the models.
"""

from __future__ import annotations

import json
from pathlib import Path

from .build_config import BuildConfig
from .config import ConvertConfig
from .records import Kept, Rejected

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
SCHEMAS = {
    "convert_config.schema.json": ConvertConfig,
    "build_config.schema.json": BuildConfig,
    "kept_record.schema.json": Kept,
    "rejected_record.schema.json": Rejected,
}


def render(model) -> str:
    return json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n"


def main() -> None:
    SCHEMA_DIR.mkdir(exist_ok=True)
    for name, model in SCHEMAS.items():
        (SCHEMA_DIR / name).write_text(render(model))
        print(f"wrote schemas/{name}")


if __name__ == "__main__":
    main()
