"""Parquet shards are written a row group at a time: every row, in order, in bounded batches."""

import pyarrow.parquet as pq

from pipeline import writers
from pipeline.records import Kept


def _kept(i: int) -> Kept:
    return Kept(index=i, id=f"row-{i}", source="s", images=[f"{i}.png"], source_images=[f"{i}.png"],
                image_sha256=["0" * 64], question=f"q{i}", answer="A", pred_answer="A", match="letter",
                pseudo_cot="p", description="d", reasoning=f"r{i}", reasoning_original=f"r{i}", final_text="",
                conversations=[{"from": "human", "value": "<image>q"}, {"from": "gpt", "value": "a"}],
                usage={}, models={}, prompts={})


def test_shards_hold_every_row_in_order_in_bounded_row_groups(tmp_path, monkeypatch):
    monkeypatch.setattr(writers, "ROW_GROUP_ROWS", 3)
    seen = []

    def rows():
        for i in range(17):
            seen.append(i)
            yield _kept(i)

    names = writers.write_parquet_shards(tmp_path, rows(), total=17, shard_rows=7)
    assert names == [f"data/train-{i:05d}-of-00003.parquet" for i in range(3)]
    ids, groups = [], []
    for name in names:
        f = pq.ParquetFile(tmp_path / name)
        groups += [f.metadata.row_group(g).num_rows for g in range(f.num_row_groups)]
        ids += f.read().column("id").to_pylist()
    assert ids == [f"row-{i}" for i in range(17)]
    assert groups == [3, 3, 1, 3, 3, 1, 3] and max(groups) <= 3


def test_a_run_that_kept_nothing_writes_a_valid_empty_shard(tmp_path):
    (name,) = writers.write_parquet_shards(tmp_path, iter(()), total=0, shard_rows=5)
    table = pq.read_table(tmp_path / name)
    assert table.num_rows == 0 and table.schema.equals(writers.PARQUET_SCHEMA)
    # No empty row group: `datasets` would take its size, 0, as a batch size and fail on it.
    assert pq.ParquetFile(tmp_path / name).num_row_groups == 0


def test_the_arrow_table_equals_from_pylist_for_a_fully_populated_row():
    import pyarrow as pa

    k = Kept.model_validate({**_kept(0).model_dump(), **{
        "question": 'Quote "x", tab\t, newline\n, é ✓ 漢字 and a \\ backslash', "options": [
            {"letter": "A", "text": "1/3"}, {"letter": "B", "text": ""}],
        "context": [{"question": "q0", "answer": "a0", "turn_images": 1}], "system": "Be brief.",
        "pass_rate": 1 / 3, "k": 4, "k_correct": 1, "answer_judge_response": "",
        "ocr": [{"text": "STOP", "box": [1, 2, 3, 4], "score": 0.987654321}],
        "objects": [{"label": "dog", "box": [0, 0, 10, 10], "score": 0.5}],
        "usage": {"pseudo_cot": {"prompt_tokens": 10, "completion_tokens": 20, "requests": 1}},
        "models": {"vlm": "v", "reasoner": "r"}, "prompts": {"pseudo_cot": "pseudo_cot.v1@abc"},
        "images": ["a.png", "b.png"], "reasoning": "x" * 200_000}})
    rows = [writers.parquet_row(k), writers.parquet_row(_kept(1))]
    got = writers.arrow_table(rows)
    assert got.schema.equals(writers.PARQUET_SCHEMA)
    assert got.equals(pa.Table.from_pylist(rows, schema=writers.PARQUET_SCHEMA))
    assert got.column("pass_rate").to_pylist()[0] == pa.scalar(1 / 3, pa.float32()).as_py()


def test_a_field_the_schema_lacks_is_an_error_not_dropped():
    import pyarrow as pa
    import pytest

    row = writers.parquet_row(_kept(0))
    row["unexpected"] = "value"
    with pytest.raises(pa.ArrowInvalid):
        writers.arrow_table([row])
