"""Config loading and the committed JSON Schemas."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.config import load_config
from pipeline.schema_export import SCHEMA_DIR, SCHEMAS, render


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_committed_schemas_match_models(name):
    assert (SCHEMA_DIR / name).read_text() == render(SCHEMAS[name]), "run: python -m pipeline.schema_export"


def test_example_config_validates_and_overrides_apply():
    cfg = load_config(SCHEMA_DIR / "convert.example.yaml", {"limit": 10, "reasoner.max_concurrency": 4, "out": None})
    assert cfg.limit == 10 and cfg.reasoner.max_concurrency == 4
    assert cfg.out == Path("outputs/llava_cot")  # None overrides are ignored
    assert cfg.reasoner.sampling.max_tokens == 16384
    assert cfg.max_in_flight == 2 * (64 + 4)
    cfg.require_run_fields()


def test_unknown_keys_are_errors(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("vlm: {urll: http://x}\n")
    with pytest.raises(ValidationError, match="urll"):
        load_config(bad)


def test_missing_run_fields_are_named():
    with pytest.raises(ValueError, match="--input, --image-root, --vlm-url"):
        load_config(None, {}).require_run_fields()


def test_example_build_config_validates():
    from pipeline.build_config import load_build_config

    build = load_build_config(SCHEMA_DIR / "build.example.yaml")
    assert [d.name for d in build.datasets] == ["llava_cot", "mulberry", "mine"]
    assert build.convert.reasoner.endpoints == ["http://r1-0:8001/v1", "http://r1-1:8001/v1", "http://r1-2:8001/v1"]
    assert build.build_dir == Path("outputs/builds/vision-r1-cold")
