"""Conformance of layer discovery, capture and steering over many architectures.

Every check reads activations with our own hooks (``output_hidden_states`` may not show
hook edits in transformers 5.x).
"""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB

from emoexp import capture, find_layers, scope_mask, self_test, steer
from emoexp.activations import forward_kwargs
from emoexp.layers import hidden_of, site_module
from emoexp.steering import _hidden_size


def _ids(b: int = 1, t: int = 7, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (b, t), generator=g)


def _direction(model, layer: int, scale: float = 0.5, seed: int = 2) -> torch.Tensor:
    n, h = len(find_layers(model)), _hidden_size(model)
    d = torch.zeros(n, h)
    d[layer] = torch.randn(h, generator=torch.Generator().manual_seed(seed)) * scale
    return d


class _Reader:
    """Reads a module's output (forward hook) or its input (forward pre-hook)."""

    def __init__(self, module, pre: bool = False):
        self.value = None
        if pre:
            self.h = module.register_forward_pre_hook(self._pre, with_kwargs=True)
        else:
            self.h = module.register_forward_hook(self._post)

    def _pre(self, m, args, kwargs):
        self.value = (args[0] if args else kwargs["hidden_states"]).detach().clone()

    def _post(self, m, args, out):
        self.value = hidden_of(out).detach().clone()

    def close(self):
        self.h.remove()


def test_find_layers_matches_config(tiny):
    blocks = find_layers(tiny)
    assert len(blocks) == 2
    assert len({type(b) for b in blocks}) == 1


@pytest.mark.parametrize("site", ["residual", "attn", "mlp"])
def test_steering_one_layer_shifts_exactly_that_site(tiny, site):
    ids = _ids()
    blocks = find_layers(tiny)
    for layer in range(len(blocks)):
        mod = site_module(blocks[layer], site)
        r = _Reader(mod)
        tiny(ids)
        base = r.value
        r.close()
        d = _direction(tiny, layer)
        with steer(tiny, d, layers=[layer], site=site):
            r = _Reader(mod)  # registered after the steering hook: sees the steered output
            tiny(ids)
            r.close()
        assert (r.value - base - d[layer]).abs().max() <= 1e-5


def test_residual_steering_is_the_next_block_input(tiny):
    """Block l's output, as block l+1 receives it, moves by exactly d at steered positions only."""
    ids = _ids(t=6)
    blocks = find_layers(tiny)
    nxt = _Reader(blocks[1], pre=True)
    tiny(ids)
    base = nxt.value
    d = _direction(tiny, 0)
    for positions, steered in (("all", slice(0, 6)), ("generated", slice(5, 6))):
        with steer(tiny, d, layers=[0], positions=positions):
            tiny(ids)
        diff = nxt.value - base
        assert (diff[:, steered] - d[0]).abs().max() <= 1e-5, positions
        untouched = torch.ones(6, dtype=torch.bool)
        untouched[steered] = False
        assert not untouched.any() or diff[:, untouched].abs().max() == 0, positions
    nxt.close()


def test_zero_direction_is_bit_identical_and_model_restored(tiny):
    ids = _ids(t=5)
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    base = tiny(ids).logits
    n, h = len(find_layers(tiny)), _hidden_size(tiny)
    for site in ("residual", "attn", "mlp"):
        for positions in ("all", "generated"):
            with steer(tiny, torch.zeros(n, h), site=site, positions=positions):
                assert torch.equal(tiny(ids).logits, base)
    with pytest.raises(RuntimeError, match="boom"), steer(tiny, torch.ones(n, h), site="residual"):
        raise RuntimeError("boom")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in tiny.modules())
    assert torch.equal(tiny(ids).logits, base)
    assert all(torch.equal(v, state[k]) for k, v in tiny.state_dict().items())


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_cached_equals_uncached_greedy_under_steering(tiny, positions):
    ids = _ids(t=6)
    n, h = len(find_layers(tiny)), _hidden_size(tiny)
    d = torch.randn(n, h, generator=torch.Generator().manual_seed(3)) * 2.0
    kw = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0, "eos_token_id": None,
              "return_dict_in_generate": True, "output_scores": True}
    plain = tiny.generate(ids, attention_mask=torch.ones_like(ids), **kw)
    runs = {}
    for use_cache in (True, False):
        with steer(tiny, d, positions=positions):
            runs[use_cache] = tiny.generate(ids, attention_mask=torch.ones_like(ids), use_cache=use_cache, **kw)
    assert torch.equal(runs[True].sequences, runs[False].sequences)
    for a, b in zip(runs[True].scores, runs[False].scores):
        assert (a - b).abs().max() <= _tol(b)
    # and steering did something during decoding (not only at the prompt)
    assert any((a - b).abs().max() > 1e-3 for a, b in zip(plain.scores[1:], runs[True].scores[1:]))


def _tol(ref: torch.Tensor) -> float:
    """1e-4 absolute plus float32 rounding relative to the tensor's scale (real models' logits
    reach ~100, where one ulp of float32 accumulated over 18 layers is ~1e-4)."""
    return 1e-4 + 1e-5 * float(ref.abs().max())


def _padded(rows: list[torch.Tensor], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_left_padded_batch_equals_rows_alone(tiny, positions):
    rows = [_ids(t=7, seed=5)[0], _ids(t=4, seed=6)[0]]
    ids, mask = _padded(rows)
    n, h = len(find_layers(tiny)), _hidden_size(tiny)
    d = torch.randn(n, h, generator=torch.Generator().manual_seed(4))
    with steer(tiny, d, positions=positions):
        batch_logits = tiny(**forward_kwargs(tiny, ids, mask)).logits[:, -1]
        batch_caps = capture(tiny, ids, mask, scope_mask(mask, ids.shape[1], "all"), site="residual")
        alone = []
        for r in rows:
            one = r.unsqueeze(0)
            m1 = torch.ones_like(one)
            alone.append((tiny(one).logits[0, -1], capture(tiny, one, m1, m1.bool(), site="residual")))
    for i, (logits, _) in enumerate(alone):
        assert (batch_logits[i] - logits).abs().max() <= _tol(logits)
    total = alone[0][1] + alone[1][1]
    assert batch_caps.n_rows == 2 and int(batch_caps.n_tokens[0]) == 11 == int(total.n_tokens[0])
    assert (batch_caps.row_mean_sum - total.row_mean_sum).abs().max() <= _tol(total.row_mean_sum)
    assert (batch_caps.token_sum - total.token_sum).abs().max() <= _tol(total.token_sum)


@pytest.mark.parametrize("site", ["residual", "attn", "mlp"])
def test_self_test_every_layer_changes_logits(tiny, site):
    changes = self_test(tiny, _ids(), site=site)
    assert sorted(changes) == [0, 1] and all(v > 0 for v in changes.values())


def test_nested_contexts_add_up(tiny):
    ids = _ids()
    r = _Reader(find_layers(tiny)[1], pre=True)
    d = _direction(tiny, 0)
    with steer(tiny, 2 * d):
        tiny(ids)
    once = r.value
    with steer(tiny, d), steer(tiny, d):
        tiny(ids)
    r.close()
    assert (once - r.value).abs().max() <= 1e-5


def test_dose_is_reported(tiny):
    d = _direction(tiny, 1, scale=1.0)
    with steer(tiny, d, layers=[1], record_dose=True) as s:
        tiny(_ids())
    doses = s.doses()
    assert list(doses) == [1] and 0 < doses[1] < float("inf")


@pytest.mark.parametrize("site", ["residual", "mlp"])
@pytest.mark.parametrize("positions", ["all", "generated"])
def test_per_row_directions_equal_rows_alone(tiny, positions, site):
    """One batch holding several (target, alpha) rows computes what each row computes alone
    under its own direction; a zero row is bit-identical to unsteered. (OPT's mlp site returns
    [batch * length, hidden]: rows and positions must not be mixed up there.)"""
    rows = [_ids(t=7, seed=5)[0], _ids(t=4, seed=6)[0], _ids(t=6, seed=7)[0]]
    ids, mask = _padded(rows)
    n, h = len(find_layers(tiny)), _hidden_size(tiny)
    g = torch.Generator().manual_seed(12)
    per_row = torch.stack([torch.randn(n, h, generator=g), -2.0 * torch.randn(n, h, generator=g), torch.zeros(n, h)])
    kw = forward_kwargs(tiny, ids, mask)
    plain = tiny(**kw).logits[:, -1]
    with steer(tiny, per_row, positions=positions, per_row=True, record_dose=True, site=site) as s:
        batch_logits = tiny(**kw).logits[:, -1]
    doses = s.row_doses()
    assert doses[0] > 0 and doses[1] > 0 and doses[2] == 0.0
    assert torch.equal(batch_logits[2], plain[2])
    for i, r in enumerate(rows[:2]):
        with steer(tiny, per_row[i], positions=positions, record_dose=True, site=site) as one:
            alone = tiny(r.unsqueeze(0)).logits[0, -1]
        assert (batch_logits[i] - alone).abs().max() <= 1e-4
        assert (batch_logits[i] - plain[i]).abs().max() > 1e-4
        # the row's dose counts its own real tokens only, not the batch's left padding
        assert abs(doses[i] - one.row_doses()[0]) <= 1e-4 * one.row_doses()[0]
    with pytest.raises(RuntimeError, match="directions for 3 rows"), steer(tiny, per_row, per_row=True):
        tiny(ids[:2])
    with pytest.raises(ValueError, match=r"\[batch, num_layers, hidden_size\]"), steer(tiny, per_row[0], per_row=True):
        pass
