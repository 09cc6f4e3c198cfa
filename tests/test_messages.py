"""The message catalogue: every key in both languages, each key once across the files."""

from __future__ import annotations

import pytest
import yaml

from accident_service import messages


@pytest.fixture
def catalogue_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(messages, "_CATALOGUE_DIR", tmp_path)
    messages.catalogue.cache_clear()
    yield tmp_path
    messages.catalogue.cache_clear()


def test_a_key_defined_in_two_files_is_a_startup_error(catalogue_dir):
    (catalogue_dir / "a.yaml").write_text("greeting:\n  zh: 你好\n  en: Hello\n", encoding="utf-8")
    (catalogue_dir / "b.yaml").write_text("greeting:\n  zh: 您好\n  en: Hi\n", encoding="utf-8")
    with pytest.raises(messages.CatalogueError, match="'greeting' defined twice .*b.yaml"):
        messages.catalogue()


def test_a_key_without_one_of_the_languages_is_a_startup_error(catalogue_dir):
    (catalogue_dir / "a.yaml").write_text("greeting:\n  zh: 你好\n", encoding="utf-8")
    with pytest.raises(messages.CatalogueError, match=r"'greeting' in a.yaml lacks \['en'\]"):
        messages.catalogue()


def test_the_shipped_catalogue_reads_as_yaml_s_safe_loader_reads_it():
    """The catalogue is parsed with libyaml where PyYAML has it: what a driver reads is what the files say."""
    messages.catalogue.cache_clear()
    expected = {}
    for path in sorted(messages._CATALOGUE_DIR.glob("*.yaml")):
        for key, texts in yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader).items():
            expected[key] = {language: str(texts[language]) for language in messages.LANGUAGES}
    assert messages.catalogue() == expected
    assert len(expected) > 100
