"""The CLI contract on the simulator: info, run, bench, chat --plain."""

import json
import os
import subprocess
import sys

import pytest

from tests.fixtures import models

pytestmark = pytest.mark.sim

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tpuchat(*args, input=None, tmp_path=None, timeout=300):
    env = dict(os.environ)
    if tmp_path is not None:
        env["TPUCHAT_STATE"] = str(tmp_path)
    return subprocess.run([sys.executable, "-m", "tpuchat.cli", *args], capture_output=True, text=True,
                          input=input, timeout=timeout, env=env)


@pytest.fixture
def demo(sim_lib, build):
    build("qwen2-bf16")
    return str(models.bmodel_path("qwen2-bf16"))


def test_token_config_is_the_demo_models_tokenizer(build):
    """token_config/ (the default tokenizer dir) is generated: keep it in sync."""
    config = build("demo") / "config"
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json"):
        with open(os.path.join(REPO, "token_config", name), "rb") as f:
            assert f.read() == (config / name).read_bytes(), f"token_config/{name} is stale: copy it from {config}"


@pytest.mark.parametrize("variant", ["qwen2-bf16", "qwen2-f16", "qwen2-w8bf16", "qwen2-w4bf16", "qwen2-dynamic",
                                     "qwen2-sample", "qwen2-history", "qwen2-maxinput", "llama-bf16"])
def test_info_json_on_every_variant(variant, sim_lib, build, tmp_path):
    build(variant)
    r = tpuchat("info", str(models.bmodel_path(variant)), "--json", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)  # nothing but JSON on stdout: the simulator's noise went to the log
    assert d["num_layers"] == 2 and d["kv_len"] == 256 and d["chip"] == "BM1684X"
    assert d["quantization"] in variant or d["quantization"] == "bf16"
    assert d["dynamic"] == (variant in ("qwen2-dynamic", "qwen2-history"))


def test_info_table(demo, tmp_path):
    r = tpuchat("info", demo, tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    for text in ("prefill length S", "256", "top-1 token on device", "simulator", "block_cache_1"):
        assert text in r.stdout


def test_run_json_gives_transformers_tokens(demo, tmp_path):
    from tpuchat.text import load_tokenizer

    r = tpuchat("run", "--model", demo, "--json", "-n", "6", "--ignore-eos", "Tell me about the sea.", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("text", "token_ids", "prompt_tokens", "ftl_s", "tokens_per_s", "device_ms_per_token",
                "host_us_per_token"):
        assert key in out
    tok = load_tokenizer(models.tokenizer_dir("qwen2-bf16"))
    prompt = tok.encode_chat([{"role": "user", "content": "Tell me about the sea."}])
    assert out["prompt_tokens"] == len(prompt)
    assert out["token_ids"] == models.reference_greedy("qwen2-bf16", [prompt], 6)[0]
    assert out["text"] == tok.decode(out["token_ids"])


def test_run_raw_completion_from_stdin(demo, tmp_path):
    from tpuchat.text import load_tokenizer

    r = tpuchat("run", "--model", demo, "--no-template", "--json", "-n", "4", input="Once upon a time",
                tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    ids = load_tokenizer(models.tokenizer_dir("qwen2-bf16")).encode("Once upon a time")
    assert out["prompt_tokens"] == len(ids)
    assert out["token_ids"][:4] == models.reference_greedy("qwen2-bf16", [ids], 4)[0][: len(out["token_ids"])]


def test_run_streams_text_and_prints_stats(demo, tmp_path):
    r = tpuchat("run", "--model", demo, "-n", "3", "hi", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("\n") and "cmodel" not in r.stdout
    assert "FTL" in r.stderr and "TPS" in r.stderr and "µs/token" in r.stderr


def test_run_prompt_too_long(demo, tmp_path):
    r = tpuchat("run", "--model", demo, "--no-template", "word " * 400, tmp_path=tmp_path)
    assert r.returncode == 6
    assert "holds at most 256" in r.stderr


def test_bench_json(sim_lib, build, tmp_path):
    # The block_kv build always reuses; static builds choose by measured cost.
    build("qwen2-history")
    r = tpuchat("bench", "--model", str(models.bmodel_path("qwen2-history")), "--json", "--runs", "2", "-n", "3", "--turns", "2", "--no-lengths",
                tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    b = json.loads(r.stdout)
    assert b["prompt"] == "请使用python写一段冒泡排序算法。" and len(b["runs"]) == 2
    for key in ("ftl_s", "tokens_per_s", "device_ms_per_token", "host_us_per_token"):
        assert b[key]["min"] <= b[key]["median"] <= b[key]["max"] and b[key]["min"] > 0
    assert all(run["new_tokens"] == 3 for run in b["runs"])
    turn1, turn2 = b["turns"]
    assert turn1["reused_tokens"] == 0 and turn2["reused_tokens"] > turn1["prompt_tokens"] // 2
    assert b["prompt_lengths"] == []
    # host time covers the whole path of a token: the worker's share is part of it
    assert 0 < b["worker_host_us_per_token"]["median"] <= b["host_us_per_token"]["median"]
    assert {"ftl_s", "host_us_per_token", "worker_host_us_per_token", "passes_per_token"} <= set(b["covers"])
    # --lookup is the default on a block_kv build: passes per token are reported, and one plain run beside them.
    assert 0 < b["passes_per_token"]["median"] and b["lookup"]["without"]["passes_per_token"] == 1.0


def test_plain_chat_three_turns(demo, tmp_path):
    script = "Hello!\n/system You are terse.\nWhat is 2+2?\n/clear\nAnd now?\n/exit\n"
    r = tpuchat("chat", "--plain", "--model", demo, "-n", "4", input=script, tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("FTL") == 3 and r.stderr.count("TPS") == 3
    assert "(system prompt set)" in r.stderr and "(history cleared)" in r.stderr
    assert len([l for l in r.stdout.splitlines() if l.strip()]) >= 3


def test_plain_chat_with_a_shared_prefix_file(sim_lib, build, tmp_path):
    """--prefix-file: the document is computed once; after /clear the new
    conversation starts from its pinned rows instead of recomputing them."""
    build("qwen2-history")
    doc = tmp_path / "doc.txt"
    doc.write_text("The TPU has 32 lanes. " * 12, encoding="utf-8")
    script = "How many lanes?\n/clear\nAnd the clock?\n/exit\n"
    r = tpuchat("chat", "--plain", "--model", str(models.bmodel_path("qwen2-history")), "-n", "3",
                "--prefix-file", str(doc), input=script, tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    pinned = int(r.stderr.split("(shared prefix: ")[1].split(" tokens")[0])
    assert pinned > 60
    cached = [int(line.split("(")[1].split(" of")[0]) for line in r.stderr.splitlines()
              if line.startswith("FTL") and "cached" in line]
    assert cached == [pinned, pinned]  # both conversations, the second one after /clear


def test_bad_prefix_files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\xff\xfe\x00bad")
    cases = [(["--prefix-file", str(tmp_path / "missing.txt")], "cannot read it"),
             (["--prefix-file", str(empty)], "the file is empty"),
             (["--prefix-file", str(binary)], "not UTF-8 text"),
             (["--prefix-file", str(empty), "--system", "hi"], "either --system or --prefix-file")]
    for extra, message in cases:
        r = tpuchat("chat", "--plain", "--model", "nothing.bmodel", *extra, input="", tmp_path=tmp_path)
        assert r.returncode != 0 and message in r.stderr, (extra, r.stderr)
        assert r.stderr.count("\n") == 1


def test_run_and_plain_chat_refuse_sampling_on_a_top1_build_in_one_line(demo, tmp_path):
    for args in (["run", "--model", demo, "--temperature", "0.7", "hi"],
                 ["chat", "--plain", "--model", demo, "--temperature", "0.7"]):
        r = tpuchat(*args, input="hi\n/exit\n", tmp_path=tmp_path)
        assert r.returncode == 1, r.stderr
        assert "--temperature 0.7 asks for sampling, but this bmodel computes only the top-1 token" in r.stderr
        assert r.stderr.count("\n") == 1


def test_run_samples_with_a_seed_on_a_do_sample_build(sim_lib, build, tmp_path):
    """--temperature with --seed: the same seed gives the same answer, and the answer is sampled
    (at a high temperature it leaves the greedy path on this random-weight model)."""
    build("qwen2-sample")
    m = str(models.bmodel_path("qwen2-sample"))

    def run(*extra):
        r = tpuchat("run", "--model", m, "--json", "-n", "5", "--ignore-eos", *extra, "Tell me about the sea.",
                    tmp_path=tmp_path)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["token_ids"]

    greedy = run()
    hot = ["--temperature", "1.5", "--top-k", "0", "--seed"]
    a, b, c = run(*hot, "1"), run(*hot, "1"), run(*hot, "2")
    assert a == b and len(a) == 5
    assert a != greedy or c != greedy
