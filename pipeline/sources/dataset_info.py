"""Read a LLaMA-Factory `dataset_info.json` entry into the sharegpt settings, as LLaMA-Factory does.

LLaMA-Factory (src/llamafactory/data/parser.py) starts from its defaults and, when an entry has a
`columns` (or `tags`) mapping, sets every known column (tag) from it, so a name the mapping leaves
out becomes None rather than keeping its default. We follow that rule so a file reads the same here
as in the trainer. Media paths resolve from the dataset_dir, the folder of dataset_info.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import ConvertConfig

_COLUMNS = ("messages", "images", "system")
_TAGS = ("role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag")
_REQUIRED = ("messages", "role_tag", "content_tag", "user_tag", "assistant_tag")


def read_entry(info_file: Path, name: str | None) -> dict[str, Any]:
    """The entry named `name`; a ValueError that names the entries there when it is absent or unusable."""
    if not name:
        raise ValueError("dataset_info needs --dataset NAME (the entry to read)")
    try:
        info = json.loads(Path(info_file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read dataset_info {info_file}: {exc}") from None
    if not isinstance(info, dict) or name not in info:
        names = ", ".join(sorted(info)) if isinstance(info, dict) else "none"
        raise ValueError(f"dataset {name!r} is not in {info_file} (entries: {names})")
    entry = info[name]
    if not isinstance(entry, dict):
        raise ValueError(f"{info_file}: entry {name!r} is not an object")
    if entry.get("formatting", "alpaca") != "sharegpt":
        raise ValueError(f"{info_file}: entry {name!r} is {entry.get('formatting', 'alpaca')!r}; only sharegpt is read")
    if entry.get("ranking"):
        raise ValueError(f"{info_file}: entry {name!r} is a ranking (preference) set; only SFT conversations are read")
    if "file_name" not in entry:
        hub = entry.get("hf_hub_url") or entry.get("ms_hub_url") or entry.get("script_url")
        raise ValueError(f"{info_file}: entry {name!r} has no file_name"
                         + (f" (hub dataset {hub!r}: use --source-format hf --input {hub})" if hub else ""))
    return entry


def sharegpt_mapping(entry: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    mapping = dict(defaults)
    for group, keys in (("columns", _COLUMNS), ("tags", _TAGS)):
        if isinstance(entry.get(group), dict):
            for key in keys:
                mapping[key] = entry[group].get(key)
    missing = [k for k in _REQUIRED if not mapping.get(k)]
    if missing:
        raise ValueError(f"the dataset_info entry leaves {', '.join(missing)} unset "
                         "(LLaMA-Factory cannot read it either)")
    return mapping


def apply_dataset_info(cfg: "ConvertConfig") -> None:
    """Fill source_format, input, image_root and the sharegpt mapping from the entry (explicit settings win
    for input and image_root)."""
    from ..config import ShareGptMapping

    assert cfg.dataset_info is not None
    if "source_format" not in cfg.model_fields_set:
        cfg.source_format = "sharegpt"
    elif cfg.source_format != "sharegpt":
        raise ValueError(f"dataset_info is read for --source-format sharegpt, not {cfg.source_format}")
    entry = read_entry(cfg.dataset_info, cfg.dataset)
    dataset_dir = Path(cfg.dataset_info).parent
    cfg.sharegpt = ShareGptMapping(**sharegpt_mapping(entry, ShareGptMapping().model_dump()))
    if cfg.input is None:
        cfg.input = dataset_dir / entry["file_name"]
    if cfg.image_root is None:
        cfg.image_root = dataset_dir  # LLaMA-Factory's media_dir defaults to its dataset_dir
