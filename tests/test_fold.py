"""The hook-free fast path equals the hook path wherever it is allowed, and survives torch.compile."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, make_tiny

from emoexp import find_layers, steer
from emoexp.fold import NotFoldable, fold_into_bias


def _ids(t: int = 7) -> torch.Tensor:
    return torch.randint(3, VOCAB, (2, t), generator=torch.Generator().manual_seed(11))


@pytest.mark.parametrize("site", ["residual", "attn", "mlp"])
def test_fold_equals_hooks_or_refuses(tiny, site):
    n, h = len(find_layers(tiny)), tiny.get_input_embeddings().weight.shape[1]
    d = torch.randn(n, h, generator=torch.Generator().manual_seed(5))
    ids = _ids()
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    with steer(tiny, d, site=site):
        expected = tiny(ids).logits
        expected_gen = tiny.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None)
    if tiny.config.model_type == "gemma2" and site == "residual":
        with pytest.raises(NotFoldable, match="use steer"), fold_into_bias(tiny, d, site=site):
            pass
    else:
        with fold_into_bias(tiny, d, site=site):
            assert (tiny(ids).logits - expected).abs().max() <= 1e-4
            got_gen = tiny.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None)
            assert torch.equal(got_gen, expected_gen)
    # restored bit-exactly, including biases that did not exist before
    after = tiny.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)


def test_folded_model_steers_under_torch_compile():
    model = make_tiny("llama")
    n, h = len(find_layers(model)), model.config.hidden_size
    d = torch.randn(n, h, generator=torch.Generator().manual_seed(6))
    ids = _ids()
    base = model(ids).logits
    with steer(model, d):
        expected = model(ids).logits
    with fold_into_bias(model, d):
        compiled = torch.compile(model, backend="eager", fullgraph=False)
        got = compiled(ids).logits
    assert (got - expected).abs().max() <= 1e-4 and (got - base).abs().max() > 1e-3
    # hooks added after compiling would be ignored silently: steer() refuses instead
    with pytest.raises(RuntimeError, match="torch.compile"), steer(compiled, d):
        pass


def test_bias_slots_rewrite_in_place_and_follow_every_direction():
    """The slots keep the same bias tensors (what a compiled step or CUDA graph holds on to)
    while their values follow each new direction exactly as the hook path would."""
    from emoexp.fold import BiasSlots

    model = make_tiny("qwen2")  # qwen2's o_proj has no bias: the slots add one
    n, h = len(find_layers(model)), model.config.hidden_size
    d = torch.randn(n, h, generator=torch.Generator().manual_seed(8))
    ids = _ids()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    slots = BiasSlots(model, site="attn")
    slots.verify(d)
    held = [p.bias for p in slots.projs]
    for scale in (1.0, -2.0, 0.0, 0.5):
        slots.set(None)
        with steer(model, scale * d, site="attn"):
            expected = model(ids).logits
        slots.set(scale * d)
        assert all(p.bias is b for p, b in zip(slots.projs, held))
        assert (model(ids).logits - expected).abs().max() <= 1e-4
    slots.remove()
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)


def test_bias_slots_refuse_where_the_fold_is_not_exact():
    from emoexp.fold import BiasSlots

    model = make_tiny("gemma2")
    n, h = len(find_layers(model)), model.config.hidden_size
    slots = BiasSlots(model, site="residual")
    with pytest.raises(NotFoldable, match="use steer"):
        slots.verify(torch.randn(n, h, generator=torch.Generator().manual_seed(9)))
    ids = _ids()
    before = model(ids).logits  # after a refused verify the biases hold their original values
    slots.remove()
    assert torch.equal(model(ids).logits, before)


def test_bias_slots_restore_existing_biases_into_the_same_tensors():
    """gpt2's projections have biases: the slots write into them and put the original values
    back into the very same tensors, leaving requires_grad as it was."""
    from emoexp.fold import BiasSlots

    model = make_tiny("gpt2").requires_grad_(True)
    n, h = len(find_layers(model)), model.config.hidden_size
    slots = BiasSlots(model, site="attn")
    held = [(p.bias, p.bias.detach().clone()) for p in slots.projs]
    slots.set(torch.randn(n, h, generator=torch.Generator().manual_seed(10)))
    assert any(not torch.equal(b, saved) for b, saved in held)
    slots.remove()
    for p, (b, saved) in zip(slots.projs, held):
        assert p.bias is b and torch.equal(b, saved) and b.requires_grad
