"""Each compiled fixture's cache key covers only what that fixture is made from,
so editing one builder route rebuilds only its fixtures (no compiler runs here)."""

from __future__ import annotations

import pytest

from tpuchat.compiler import build


def _keys():
    return {name: build.variant_hash(v) for name, v in build.VARIANTS.items()}


def _edit(monkeypatch, tmp_path, attr: str) -> None:
    """Point build.<attr> at a copy of that script with one more line."""
    src = getattr(build, attr)
    copy = tmp_path / src.name
    copy.write_bytes(src.read_bytes() + b"\n# edited\n")
    monkeypatch.setattr(build, attr, copy)


def _changed(before: dict, after: dict) -> set:
    return {n for n in before if before[n] != after[n]}


def test_the_vision_driver_keys_only_the_vision_fixture(monkeypatch, tmp_path):
    before = _keys()
    _edit(monkeypatch, tmp_path, "CONVERT_DRIVER")
    assert _changed(before, _keys()) == {"mllama"}


@pytest.mark.parametrize("attr", ["SEED_EXPORT", "SEED_BUILD", "SEED_REPLAY"])
def test_the_onnx_exporter_keys_only_the_seed_format_fixtures(monkeypatch, tmp_path, attr):
    before = _keys()
    _edit(monkeypatch, tmp_path, attr)
    seeds = {n for n, v in build.VARIANTS.items() if v.route in build.SEED_ROUTES}
    if attr == "SEED_REPLAY":  # the share-cache route has its own replay (seed_share.py)
        seeds = {n for n in seeds if build.VARIANTS[n].route != "share-cache"}
    assert seeds and _changed(before, _keys()) == seeds


def test_the_share_cache_module_keys_only_its_fixture(monkeypatch, tmp_path):
    before = _keys()
    _edit(monkeypatch, tmp_path, "SEED_SHARE")
    assert _changed(before, _keys()) == {"seed-share-cache"}


def test_the_bigcode_source_script_keys_only_the_wizardcoder_fixture(monkeypatch, tmp_path):
    before = _keys()
    _edit(monkeypatch, tmp_path, "TINY_BIGCODE")
    assert _changed(before, _keys()) == {"seed-wizardcoder"}


def test_the_source_model_script_keys_every_fixture(monkeypatch, tmp_path):
    before = _keys()
    _edit(monkeypatch, tmp_path, "TINYMODELS")
    assert _changed(before, _keys()) == set(build.VARIANTS)


def test_a_parameter_keys_its_own_fixture_only():
    v = build.VARIANTS["qwen2-bf16"]
    import dataclasses

    other = dataclasses.replace(v, seq_length=v.seq_length * 2)
    assert build.variant_hash(other) != build.variant_hash(v)
    assert build.variant_hash(dataclasses.replace(v)) == build.variant_hash(v)


@pytest.mark.parametrize("name", sorted(build.VARIANTS))
def test_sources_are_files_of_the_compiler_package(name):
    for path in build.variant_sources(build.VARIANTS[name]):
        assert path.is_file() and path.parent == build.HERE
