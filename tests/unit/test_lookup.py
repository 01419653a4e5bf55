"""Prompt-lookup decoding, device-free part: drafts, acceptance, gate, pass accounting.

The "model" here is a scripted next-token function over the whole sequence,
with a KV-cache length that the chunk verifier must keep right; the device
path is tested against transformers on the simulator elsewhere.
"""

import random

import pytest

from tpuchat.runtime.lookup import (
    LookupGate, LookupStats, NgramDrafter, PassCost, accept, lookup_decode,
)


def test_drafter_proposes_what_followed_the_most_recent_match():
    d = NgramDrafter(max_ngram=2, max_draft=3)
    d.extend([1, 2, 3, 4, 9, 1, 2, 7, 8, 5, 1, 2])
    # "1 2" occurred twice before: the latest (followed by 7 8 5) wins.
    assert d.draft() == [7, 8, 5]
    assert d.draft(limit=1) == [7]
    assert d.draft(limit=0) == []


def test_drafter_prefers_longer_ngrams_and_never_matches_its_own_suffix():
    d = NgramDrafter(max_ngram=3, max_draft=2)
    d.extend([5, 6, 7, 1, 9, 6, 7, 2, 5, 6, 7])
    # 3-gram "5 6 7" earlier -> followed by 1 9; the 2-gram "6 7" alone would say 2 5.
    assert d.draft() == [1, 9]
    fresh = NgramDrafter()
    fresh.extend([1, 2, 3])
    assert fresh.draft() == []  # nothing repeats: no draft


def test_drafter_continues_runs_and_short_cycles():
    d = NgramDrafter(max_ngram=3, max_draft=4)
    d.extend([9, 5, 5, 5])
    assert d.draft() == [5, 5, 5, 5]  # "5 5" last ended one token ago: the run goes on
    c = NgramDrafter(max_ngram=2, max_draft=5)
    c.extend([1, 7, 8, 7, 8])
    assert c.draft() == [7, 8, 7, 8, 7]


def test_drafter_reset_forgets_the_old_sequence():
    d = NgramDrafter(max_ngram=1, max_draft=1)
    d.extend([4, 5, 4])
    assert d.draft() == [5]
    d.reset([7, 4])
    assert d.draft() == []


def test_accept_takes_the_agreeing_prefix_plus_the_models_pick():
    assert accept([5, 6, 7], [5, 6, 7, 8]) == [5, 6, 7, 8]
    assert accept([5, 6, 7], [5, 9, 1, 1]) == [5, 9]
    assert accept([5], [4, 3]) == [4]


class ScriptedModel:
    """Greedy 'model': the next token is a fixed function of the sequence so far.
    Keeps a KV length so that verify/drop misuse is caught."""

    def __init__(self, rule, prompt):
        self.rule = rule
        self.seq = list(prompt)  # tokens whose rows are "in the cache"
        self.passes = 0

    def decode(self, token):
        self.seq.append(token)
        self.passes += 1
        return self.rule(self.seq)

    def verify(self, token, draft):
        self.passes += 1
        picks = []
        for t in [token, *draft]:
            self.seq.append(t)
            picks.append(self.rule(self.seq))
        return picks

    def drop(self, n):
        assert 0 < n <= len(self.seq)
        del self.seq[-n:]


def greedy(rule, prompt, n):
    seq, out = list(prompt), []
    for _ in range(n):
        t = rule(seq)
        out.append(t)
        seq.append(t)
    return out


def copy_rule(text):
    """Copies `text` once the prompt has been seen: an edit-like workload."""
    def rule(seq):
        i = len(seq) - len(text) - 1
        return text[i % len(text)] if i >= 0 else 0
    return rule


def run_lookup(rule, prompt, n, cost, **drafter_kw):
    model = ScriptedModel(rule, prompt[:-1])
    drafter = NgramDrafter(**drafter_kw)
    drafter.extend(prompt)
    stats = LookupStats()
    first = model.decode(prompt[-1])
    drafter.extend([first])
    rest = list(lookup_decode(first, n - 1, drafter, LookupGate(cost), model.decode,
                              model.verify, model.drop, stats))
    return [first, *rest], model, stats


@pytest.mark.parametrize("heads_per_row", [True, False])
def test_lookup_equals_greedy_and_saves_passes_on_repeated_text(heads_per_row):
    rng = random.Random(1)
    text = [rng.randrange(2, 50) for _ in range(40)]
    prompt = text + [1]
    rule = copy_rule(text)
    cost = PassCost(head_share=0.08, heads_per_row=heads_per_row)
    got, model, stats = run_lookup(rule, prompt, 60, cost)
    assert got == greedy(rule, prompt, 60)
    # The cache holds the prompt and every generated token but the last.
    assert model.seq == prompt + got[:-1]
    assert stats.tokens == 59 and stats.chunk_passes > 0
    assert stats.accepted_per_chunk > 2
    assert model.passes < 30  # instead of 60 decode passes
    assert stats.passes_per_token < 0.6


def test_lookup_on_text_that_never_repeats_is_plain_decoding():
    rule = lambda seq: len(seq) + 100  # every token new: no n-gram ever repeats
    got, model, stats = run_lookup(rule, [1, 2, 3], 30, PassCost(0.08))
    assert got == greedy(rule, [1, 2, 3], 30)
    assert stats.chunk_passes == 0 and stats.passes_per_token == 1.0


def test_gate_pauses_lookup_when_guesses_keep_failing():
    # Drafts exist (the sequence cycles through few tokens) but are always wrong.
    rng = random.Random(7)
    picks = [rng.randrange(2, 6) for _ in range(400)]
    rule = lambda seq: picks[len(seq) % len(picks)]
    cost = PassCost(head_share=0.08)
    got, model, stats = run_lookup(rule, [2, 3, 4, 5, 2, 3], 200, cost)
    assert got == greedy(rule, [2, 3, 4, 5, 2, 3], 200)
    # Without the gate nearly every step would be a chunk pass.
    assert stats.chunk_passes < stats.decode_passes
    assert stats.passes_per_token < 1.1


def test_pass_cost_counts_one_head_launch_per_row_on_top1_builds():
    top1 = PassCost(head_share=0.1, heads_per_row=True)
    logits = PassCost(head_share=0.1, heads_per_row=False)
    assert top1.chunk(1) == pytest.approx(1.0)
    assert top1.chunk(5) == pytest.approx(0.9 + 0.5)
    assert logits.chunk(5) == pytest.approx(1.0)
