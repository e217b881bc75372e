"""Capture during decoding equals a forward pass over prompt + response, on every architecture.

``DecodeCapture`` sums the site's outputs while ``generate`` runs (prompt in the prefill,
each response token when it is fed back, one extra step for the last token, nothing after a
stop token). Its sums must match :func:`emoexp.activations.capture_groups` over the finished
sequences up to floating-point reassociation, with exactly the same token counts.
"""

from __future__ import annotations

import pytest
import torch

from emoexp.activations import DecodeCapture, capture_groups, scope_mask
from emoexp.extraction import extract_batch, extraction_items
from emoexp.generation import capture_batch, generate, left_pad

PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [20, 21, 22, 23, 24], [30, 31]]
GROUPS = torch.tensor([0, 1, 0, 1])
NEW = 8


class Tok:
    """The two tokenizer attributes generation needs (ids in, ids out)."""

    pad_token_id = 0
    eos_token_id = None

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def _with_stop(model) -> int:
    """Make the 4th greedy token of row 0 a stop token, so some rows end early and others run out."""
    model.generation_config.eos_token_id = None
    free = generate(model, Tok(), PROMPTS, max_new_tokens=NEW)
    stop = free[0].response_ids[3]
    model.generation_config.eos_token_id = stop
    return stop


def _close(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("scope", ["response", "all"])
def test_decode_capture_equals_forward_capture(tiny, scope):
    stop = _with_stop(tiny)
    _, prompt_mask = left_pad(PROMPTS, 0)
    with DecodeCapture(tiny, prompt_mask, scope, [stop], max_response=NEW, site="attn") as cap:
        gens = generate(tiny, Tok(), PROMPTS, max_new_tokens=NEW, feed_last=True)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in tiny.modules())
    lengths = [len(g.response_ids) for g in gens]
    assert any(g.finished for g in gens) and NEW in lengths  # both endings are exercised
    ids, mask, width = capture_batch(PROMPTS, [g.response_ids for g in gens], 0)
    ref = capture_groups(tiny, ids, mask, scope_mask(mask, width, scope), GROUPS, 2, site="attn")
    got = cap.groups(GROUPS, 2)
    for g, r in zip(got, ref):
        assert g.n_rows == r.n_rows and torch.equal(g.n_tokens, r.n_tokens)
        assert _close(g.row_mean_sum, r.row_mean_sum) <= 1e-4
        assert _close(g.token_sum, r.token_sum) <= 1e-4
        assert _close(g.norm_sum, r.norm_sum) <= 1e-4


@pytest.mark.parametrize("scope", ["prompt", "last"])
def test_prompt_scopes_are_read_in_the_prefill(scope):
    from conftest import make_tiny

    model = make_tiny("llama")
    _, prompt_mask = left_pad(PROMPTS, 0)
    with DecodeCapture(model, prompt_mask, scope, [], max_response=NEW, site="residual") as cap:
        gens = generate(model, Tok(), PROMPTS, max_new_tokens=NEW, feed_last=True)
    ids, mask, width = capture_batch(PROMPTS, [g.response_ids for g in gens], 0)
    ref = capture_groups(model, ids, mask, scope_mask(mask, width, scope), GROUPS, 2, site="residual")
    for g, r in zip(cap.groups(GROUPS, 2), ref):
        assert torch.equal(g.n_tokens, r.n_tokens) and _close(g.token_sum, r.token_sum) <= 1e-5


def test_last_token_needs_the_extra_step():
    """Without ``feed_last`` the last token of a full-length row is never fed back, so the
    counts fall short of the forward capture: the extra step is what makes them equal."""
    from conftest import make_tiny

    model = make_tiny("qwen2")
    _, prompt_mask = left_pad(PROMPTS, 0)
    with DecodeCapture(model, prompt_mask, "response", [], max_response=NEW, site="attn") as cap:
        generate(model, Tok(), PROMPTS, max_new_tokens=NEW)
    assert int(cap.groups(GROUPS, 2)[0].n_tokens[0]) == 2 * (NEW - 1)


def test_feed_last_keeps_the_same_tokens_when_sampling():
    from conftest import make_tiny

    model = make_tiny("mistral")
    a = generate(model, Tok(), PROMPTS, max_new_tokens=NEW, do_sample=True, seed=7)
    b = generate(model, Tok(), PROMPTS, max_new_tokens=NEW, do_sample=True, seed=7, feed_last=True)
    assert [x.response_ids for x in a] == [x.response_ids for x in b]
    assert all(len(x.response_ids) == NEW for x in b)


def test_extract_batch_decode_equals_forward():
    from conftest import make_tiny

    from emoexp.datasets import Query

    model = make_tiny("llama")
    _with_stop(model)
    qs = [Query(id=f"q{i}", index=i, query=f"q{i}", emotion=e) for i, e in enumerate(["joy", "joy", "anger", "anger"])]
    items = extraction_items(qs, ["joy", "anger"])
    prompts = [PROMPTS[i % 4] + [40 + i] for i in range(len(items))]
    out = {}
    for mode in ("decode", "forward"):
        out[mode] = extract_batch(model, Tok(), items, prompts, site="attn", scope="response", max_new_tokens=NEW,
                                  capture=mode)
    sums_d, rows_d = out["decode"]
    sums_f, rows_f = out["forward"]
    assert rows_d == rows_f and sorted(sums_d) == sorted(sums_f)
    for k in sums_f:
        assert torch.equal(sums_d[k].n_tokens, sums_f[k].n_tokens) and sums_d[k].n_rows == sums_f[k].n_rows
        assert _close(sums_d[k].row_mean_sum, sums_f[k].row_mean_sum) <= 1e-4
    with pytest.raises(ValueError, match="valid: decode, forward"):
        extract_batch(model, Tok(), items, prompts, site="attn", scope="response", max_new_tokens=NEW, capture="x")


@pytest.mark.parametrize("arch", ["llama", "opt", "gpt2"])
def test_pad_equal_to_stop_and_sampling(arch):
    """Padding with the stop token itself, and sampled responses: still the same tokens counted."""
    from conftest import make_tiny

    model = make_tiny(arch)
    stop = _with_stop(model)

    class PadIsStop(Tok):
        pad_token_id = stop

    prompts = [[t if t != stop else 1 for t in p] for p in PROMPTS]
    _, prompt_mask = left_pad(prompts, stop)
    with DecodeCapture(model, prompt_mask, "response", [stop], max_response=NEW, site="mlp") as cap:
        gens = generate(model, PadIsStop(), prompts, max_new_tokens=NEW, feed_last=True, do_sample=True, seed=3)
    ids, mask, width = capture_batch(prompts, [g.response_ids for g in gens], stop)
    ref = capture_groups(model, ids, mask, scope_mask(mask, width, "response"), GROUPS, 2, site="mlp")
    for g, r in zip(cap.groups(GROUPS, 2), ref):
        assert torch.equal(g.n_tokens, r.n_tokens) and g.n_rows == r.n_rows
        assert _close(g.row_mean_sum, r.row_mean_sum) <= 1e-4


def test_forced_stop_token_falls_back_to_the_forward_pass():
    """A model that forces a stop token at the length limit cannot run one step past it:
    generate(feed_last) refuses, and extraction uses the exact forward capture instead."""
    from conftest import make_tiny

    from emoexp.datasets import Query

    model = make_tiny("llama")
    stop = _with_stop(model)
    model.generation_config.forced_eos_token_id = stop
    with pytest.raises(ValueError, match="forced_eos_token_id"):
        generate(model, Tok(), PROMPTS, max_new_tokens=NEW, feed_last=True)
    qs = [Query(id="a", index=0, query="a", emotion="joy"), Query(id="b", index=1, query="b", emotion="joy")]
    items = extraction_items(qs, ["joy"])
    prompts = PROMPTS[: len(items)]
    got, rows = extract_batch(model, Tok(), items, prompts, site="attn", scope="response", max_new_tokens=NEW)
    ref, ref_rows = extract_batch(model, Tok(), items, prompts, site="attn", scope="response", max_new_tokens=NEW,
                                  capture="forward")
    assert rows == ref_rows and all(r["finished"] for r in rows)
    for k in ref:
        assert torch.equal(got[k].token_sum, ref[k].token_sum)


def test_extra_stop_ids_end_replies_like_a_stop_token():
    """``stop_ids`` (a base model's line breaks) end a reply before the first one, never before
    its first token, and decode capture still equals the forward pass over what was kept."""
    from conftest import make_tiny

    from emoexp.datasets import Query

    model = make_tiny("llama")
    model.generation_config.eos_token_id = None
    free = generate(model, Tok(), PROMPTS, max_new_tokens=NEW)
    stops = [free[0].response_ids[3], free[1].response_ids[0]]  # row 1 would stop at once
    got = generate(model, Tok(), PROMPTS, max_new_tokens=NEW, stop_ids=stops)
    assert len(got[1].response_ids) >= 1 and got[1].response_ids[0] != free[1].response_ids[0]
    for f, g in zip(free, got):
        if f.response_ids[0] not in stops:  # otherwise the first step differs (stops are suppressed there)
            cut = next((i for i, t in enumerate(f.response_ids) if t in stops), None)
            assert g.response_ids == f.response_ids[:cut] and g.finished == (cut is not None)
    assert got[0].finished and len(got[0].response_ids) <= 3
    for g in got:
        assert not set(g.response_ids) & set(stops)
    qs = [Query(id=f"q{i}", index=i, query=f"q{i}", emotion=e) for i, e in enumerate(["joy", "anger"])]
    items = extraction_items(qs, ["joy", "anger"])
    prompts = [PROMPTS[i % 4] for i in range(len(items))]
    out = {mode: extract_batch(model, Tok(), items, prompts, site="attn", scope="response", max_new_tokens=NEW,
                               capture=mode, stop_ids=stops) for mode in ("decode", "forward")}
    assert out["decode"][1] == out["forward"][1] and any(r["finished"] for r in out["decode"][1])
    for k, f in out["forward"][0].items():
        d = out["decode"][0][k]
        assert torch.equal(d.n_tokens, f.n_tokens) and _close(d.row_mean_sum, f.row_mean_sum) <= 1e-4


def test_principal_direction_of_paired_differences():
    """Pairs that differ along one direction give the mean EV; otherwise the mean projected on the
    direction of largest (uncentred) spread, whatever sign the SVD picks."""
    from emoexp.extraction import principal_direction

    g = torch.Generator().manual_seed(0)
    u = torch.randn(3, 16, generator=g, dtype=torch.float64)  # one direction per layer
    diffs = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64)[:, None, None] * u
    assert torch.allclose(principal_direction(diffs), diffs.mean(0), atol=1e-12)
    e1, e2 = torch.eye(2, dtype=torch.float64)
    two = torch.stack([3 * e1, e2])[:, None, :]  # [Q=2, L=1, H=2]: the larger pair wins
    assert torch.allclose(principal_direction(two)[0], 1.5 * e1, atol=1e-12)
    assert torch.allclose(principal_direction(-two)[0], -1.5 * e1, atol=1e-12)


def test_pca_method_keeps_per_query_sums_and_projects_the_mean_ev():
    """method=pca: the same responses keyed per query give the same mean EV as the half keys, and
    the PCA EV is the mean EV's projection on one direction per layer (pca . mean == |pca|^2)."""
    from conftest import make_tiny

    from emoexp.datasets import Query
    from emoexp.extraction import Accumulator, vectors_from

    model = make_tiny("llama")
    qs = [Query(id=f"q{i}", index=i, query=f"q{i}", emotion=e) for i, e in enumerate(["joy"] * 3 + ["anger"] * 3)]
    accs = {}
    for per_query in (False, True):
        items = extraction_items(qs, ["joy", "anger"], per_query=per_query)
        prompts = [PROMPTS[i % 4] + [40 + i] for i in range(len(items))]
        sums, _ = extract_batch(model, Tok(), items, prompts, site="attn", scope="response", max_new_tokens=NEW)
        acc = Accumulator.empty(items, model.config.num_hidden_layers, model.config.hidden_size)
        for k, s in sums.items():
            acc.add(k, s)
        accs[per_query] = acc
    assert len(accs[True].keys) == 12 and len(accs[False].keys) == 8  # anger/joy x neutral/emotional x 3 vs 2
    mean, stab = vectors_from(accs[False], ["joy", "anger"])
    mean_q, stab_q = vectors_from(accs[True], ["joy", "anger"])
    pca, stab_p = vectors_from(accs[True], ["joy", "anger"], method="pca")
    assert set(stab) == set(stab_q) == set(stab_p) == {"joy", "anger"}
    for e in ("joy", "anger"):
        assert _close(mean_q[e], mean[e]) <= 1e-5
        assert not torch.allclose(pca[e], mean[e])  # three pairs that differ in more than one direction
        dot, sq = (pca[e] * mean[e]).sum(-1), (pca[e] * pca[e]).sum(-1)
        assert torch.allclose(dot, sq, rtol=1e-4) and bool((sq <= (mean[e] ** 2).sum(-1) * (1 + 1e-5)).all())
    with pytest.raises(ValueError, match="extract with method=pca"):
        vectors_from(accs[False], ["joy"], method="pca")
    with pytest.raises(ValueError, match="valid: mean, pca"):
        vectors_from(accs[True], ["joy"], method="median")
