"""The disk cache (pipeline/diskcache.py) and the rewrite plan kept in it."""

from __future__ import annotations

import json

import pytest

from pipeline import diskcache, rewrite
from pipeline.rewrite import ModalityRewriter

TRACE = ("The description says there are three red circles. Based on the description, the caption reads "
         "'sale'. So the answer is B.")


def _fresh(monkeypatch, tmp_path):
    monkeypatch.setenv(diskcache.ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(rewrite, "_PLANS", {})  # the in-process cache would hide the disk one


def _entries(tmp_path):
    return sorted((tmp_path / "cache" / "rewrite-plans").glob("*.json"))


def test_a_stored_plan_is_the_computed_plan_and_skips_the_analysis(monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path)
    first = ModalityRewriter()
    assert len(_entries(tmp_path)) == 1
    monkeypatch.setattr(rewrite, "_PLANS", {})

    def no_analysis(*a, **k):
        raise AssertionError("the plan should come from the disk cache")

    monkeypatch.setattr(ModalityRewriter, "_plan", no_analysis)
    second = ModalityRewriter()
    assert second.plan == first.plan  # every field, the trigger pattern included
    assert second.plan is not first.plan
    assert second.rewrite(TRACE) == first.rewrite(TRACE) != TRACE


def test_a_malformed_or_foreign_entry_is_computed_again_and_replaced(monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path)
    good = ModalityRewriter().plan
    (entry,) = _entries(tmp_path)
    stored = json.loads(entry.read_bytes())
    for bad in (b"{not json", b"[]", json.dumps({**stored, "words": ["other"]}).encode(),
                json.dumps({**stored, "rules": [10_000]}).encode(), json.dumps({**stored, "keep": None}).encode()):
        entry.write_bytes(bad)
        monkeypatch.setattr(rewrite, "_PLANS", {})
        assert ModalityRewriter().plan == good
        assert json.loads(entry.read_bytes()) == stored  # written again


def test_the_entry_depends_on_the_rules_file(monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path)
    src = rewrite.DEFAULT_PROMPT_DIR / "rewrite_rules.v2.yaml"
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "rewrite_rules.v2.yaml").write_text(src.read_text() + "\n# an edit\n")
    ModalityRewriter()
    ModalityRewriter("rewrite_rules.v2", prompts)
    assert len(_entries(tmp_path)) == 2


def test_a_rules_file_that_fails_the_analysis_is_never_stored(monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text('residue: "descri"\nartifacts: ["xx"]\ntrigger:\n  pattern: "descri"\n  words: [descri]\n'
                    'rules:\n  - {pattern: "the picture", replace: "the image"}\n')
    for _ in range(2):  # fails the second time too: nothing stored lets it through
        with pytest.raises(ValueError, match="need not hold a trigger match"):
            ModalityRewriter("bad", tmp_path)
    assert _entries(tmp_path) == []


def test_an_empty_setting_disables_it_and_an_unwritable_folder_is_no_error(monkeypatch, tmp_path):
    monkeypatch.setattr(rewrite, "_PLANS", {})
    monkeypatch.setenv(diskcache.ENV, "")
    assert diskcache.cache_dir() is None
    assert ModalityRewriter().plan is not None
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(diskcache.ENV, str(blocker / "below-a-file"))
    monkeypatch.setattr(rewrite, "_PLANS", {})
    assert ModalityRewriter().plan is not None
    assert diskcache.load("rewrite-plans", "x") is None


def test_keys_are_length_prefixed():
    assert diskcache.key_of("ab", "c") != diskcache.key_of("a", "bc")
    assert diskcache.key_of("a", b"b") == diskcache.key_of(b"a", "b")
