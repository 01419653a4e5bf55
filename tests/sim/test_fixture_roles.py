"""The llm_convert fixtures' own files match their convention in the shim's role table
(tests/unit/test_roles.py checks the table on synthetic descriptions)."""

import pytest

from tpuchat.runtime.binding import match_roles


@pytest.mark.parametrize("variant", ["qwen2-bf16", "qwen2-sample", "qwen2-dynamic", "qwen2-2dev"])
def test_llm_convert_fixtures_match_their_convention(build, variant):
    from tests.fixtures import models
    from tpuchat.runtime import bmodel_nets

    build(variant)
    r = match_roles(bmodel_nets.read(models.bmodel_path(variant)).nets)
    assert r["convention"] == "llm_convert" and r["num_layers"] == 2
    assert r["num_device"] == (2 if variant == "qwen2-2dev" else 1)
    if variant == "qwen2-sample":
        assert r["sample_inputs"] == {"logits": 0, "input_ids": 1, "penalty": 2, "temperature": 3, "top_k": 4,
                                      "top_p": 5}
