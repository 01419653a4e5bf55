"""Sampling options of `run` and `chat --plain` (--temperature --top-p --top-k --repeat-penalty
--seed): the settings screen's rules, and the same one-line refusal on top-1 builds (no device)."""

import dataclasses

import pytest

from tpuchat.chat.session import GenSettings
from tpuchat.errors import TpuchatError
from tpuchat.options import apply_sampling_options, check_can_sample, parse_devids
from tpuchat.tui.fake import fake_desc


def settings(**kw) -> GenSettings:
    s = GenSettings()
    apply_sampling_options(s, **kw)
    return s


def test_no_temperature_or_zero_is_greedy():
    assert settings().sampling() is None
    assert settings(temperature=0.0).sampling() is None


def test_temperature_samples_with_the_other_options():
    s = settings(temperature=0.7, top_p=0.9, top_k=40, repeat_penalty=1.1, seed=7)
    assert s.sampling() == {"sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 40,
                            "repetition_penalty": 1.1, "seed": 7}
    assert settings(temperature=0.5).sampling() == {"sample": True, "temperature": 0.5, "top_p": 1.0, "top_k": 0,
                                                    "repetition_penalty": 1.0, "seed": None}


@pytest.mark.parametrize("kw,words", [
    ({"temperature": -1}, "--temperature must be 0 (greedy) or above"),
    ({"temperature": 0.7, "top_p": 0}, "--top-p must be in (0, 1]"),
    ({"temperature": 0.7, "top_p": 1.5}, "--top-p must be in (0, 1]"),
    ({"temperature": 0.7, "top_k": -1}, "--top-k must be 0 (off) or more"),
    ({"temperature": 0.7, "repeat_penalty": 0}, "--repeat-penalty must be above 0 (1.0 is off)"),
    ({"top_k": 40}, "--top-k applies when sampling: set --temperature above 0"),
    ({"temperature": 0, "seed": 1, "top_p": 0.5}, "--top-p, --seed applies when sampling"),
])
def test_bad_values_give_one_line(kw, words):
    with pytest.raises(TpuchatError) as e:
        settings(**kw)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_top1_build_refuses_sampling_in_one_line():
    with pytest.raises(TpuchatError) as e:
        check_can_sample(settings(temperature=0.7), fake_desc())
    msg = str(e.value)
    assert msg.startswith("--temperature 0.7 asks for sampling, but this bmodel computes only the top-1 token")
    assert "--do_sample" in msg and "\n" not in msg
    check_can_sample(settings(), fake_desc())  # greedy is fine
    check_can_sample(settings(temperature=0.7), dataclasses.replace(fake_desc(), lm_head="logits"))


def test_devid_lists():
    assert parse_devids("2, 3") == [2, 3]
    for bad in ("", "a", "-1", "1,1"):
        with pytest.raises(TpuchatError):
            parse_devids(bad)


def test_the_chat_ui_does_not_import_the_cli():
    """No circle cli -> tui -> app -> cli: the app reaches device lists through options."""
    import subprocess
    import sys

    code = "import sys, tpuchat.tui.app; print('tpuchat.cli' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
