"""EmotionVectors: file format, combine, the authors' importer, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_tiny
from safetensors import safe_open
from safetensors.torch import save_file

from emoexp import EmotionVectors, VectorFileError, find_layers, import_official, steer
from emoexp.layers import LayerDiscoveryError

OFFICIAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "official" / "EMVector" / "qwen2.5"


def _evs() -> EmotionVectors:
    g = torch.Generator().manual_seed(0)
    vecs = {e: torch.randn(3, 8, generator=g) for e in ("anger", "joy", "sadness")}
    return EmotionVectors(vecs, {"model_id": "tiny", "site": "residual", "token_scope": "response",
                                 "n_queries": {"anger": 4, "joy": 4, "sadness": 4}})


def test_save_load_roundtrip_one_file_one_tensor_per_emotion(tmp_path):
    evs = _evs()
    path = evs.save(tmp_path / "evs.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert sorted(f.keys()) == ["anger", "joy", "sadness"]
        assert all(f.get_tensor(k).dtype == torch.float32 for k in f.keys())  # noqa: SIM118 - not a dict
        meta = json.loads(f.metadata()["emoexp"])
    assert meta["site"] == "residual" and meta["model_id"] == "tiny"
    assert len(meta["per_layer_norms"]["joy"]) == 3 and "torch" in meta["library_versions"]
    back = EmotionVectors.load(path)
    assert back.emotions == evs.emotions and (back.num_layers, back.hidden_size) == (3, 8)
    for e in evs.emotions:
        assert torch.equal(back[e], evs[e])
    assert back.metadata["n_queries"] == {"anger": 4, "joy": 4, "sadness": 4}


def test_combine_and_base():
    evs = _evs()
    got = evs.combine({"joy": 2.0, "anger": -1.0})
    assert torch.allclose(got, 2 * evs["joy"] - evs["anger"])
    base = (evs["anger"] + evs["joy"] + evs["sadness"]) / 3
    assert torch.allclose(evs.combine({"base": 1.0}), base)
    assert torch.allclose(evs.cosine().diagonal(), torch.ones(3))


def test_centred_keeps_what_tells_the_emotions_apart():
    evs = _evs()
    c = evs.centred()
    base = evs["base"]
    for e in evs.emotions:
        assert torch.allclose(c[e], evs[e] - base)
        # differences between emotions are untouched
        assert torch.allclose(c[e] - c["joy"], evs[e] - evs["joy"], atol=1e-6)
    assert torch.allclose(c["base"], torch.zeros(3, 8), atol=1e-6)
    assert c.metadata["centred"] is True and "centred" not in evs.metadata
    assert torch.equal(evs["anger"], _evs()["anger"])  # the original is not modified
    with pytest.raises(ValueError, match="at least 2 emotions"):
        EmotionVectors({"joy": torch.ones(3, 8)}).centred()


def test_reliable_layers_zero_only_the_unreliable_ones():
    evs = _evs()
    evs.metadata["split_half_cosine"] = {"anger": [0.9, 0.2, 0.5], "joy": [0.1, 0.95, 0.3], "sadness": [0.3] * 3}
    r = evs.reliable_layers(0.3)
    assert r.metadata["reliable_layers"] == {"anger": [0, 2], "joy": [1, 2], "sadness": [0, 1, 2]}
    for e, keep in r.metadata["reliable_layers"].items():
        for layer in range(3):
            want = evs[e][layer] if layer in keep else torch.zeros(8)
            assert torch.equal(r[e][layer], want), (e, layer)
    with pytest.raises(ValueError, match="no split-half cosine"):
        _evs().reliable_layers(0.3)


def test_bad_emotion_and_weights():
    evs = _evs()
    with pytest.raises(KeyError, match="anger, joy, sadness"):
        evs.combine({"fear": 1.0})
    with pytest.raises(ValueError, match="finite"):
        evs.combine({"joy": float("nan")})
    with pytest.raises(ValueError, match="NaN or inf"):
        EmotionVectors({"joy": torch.tensor([[float("inf"), 0.0]])})


def test_corrupt_and_foreign_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(VectorFileError, match="not a readable safetensors"):
        EmotionVectors.load(bad)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(foreign))
    with pytest.raises(VectorFileError, match="not an emoexp vector file"):
        EmotionVectors.load(foreign)
    with pytest.raises(VectorFileError, match="no vector file"):
        EmotionVectors.load(tmp_path / "missing.safetensors")
    # a truncated copy of a good file
    good = _evs().save(tmp_path / "good.safetensors")
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(good.read_bytes()[:-20])
    with pytest.raises(VectorFileError):
        EmotionVectors.load(trunc)


@pytest.mark.skipif(not OFFICIAL.is_dir(), reason="the authors' vectors are not beside this checkout")
def test_import_official_vectors_marked_attn():
    evs = import_official(OFFICIAL, model_id="Qwen/Qwen2.5-7B-Instruct")
    assert evs.emotions == ["anger", "disgust", "fear", "joy", "sadness"]
    assert (evs.num_layers, evs.hidden_size) == (28, 3584)
    assert evs.metadata["site"] == "attn" and evs.metadata["source"] == "official"
    assert "attention-output" in evs.metadata["note"]
    raw = json.loads((OFFICIAL / "qwen2.5_joy.json").read_text())
    assert torch.allclose(evs["joy"][5], torch.tensor(raw["5"][0]))


def test_import_official_bad_json(tmp_path):
    (tmp_path / "m_joy.json").write_text('{"0": [[1.0, 2.0]], "1": [[1.0, ')
    with pytest.raises(VectorFileError, match="line 1 column"):
        import_official(tmp_path)
    with pytest.raises(VectorFileError, match="no authors"):
        import_official(tmp_path / "nothing")


def test_steer_bad_input_raises_before_work():
    model = make_tiny("llama")
    n, h = len(find_layers(model)), model.config.hidden_size
    with pytest.raises(ValueError, match=f"hidden size {h + 1}.*hidden size is {h}"), steer(model, torch.zeros(n, h + 1)):
        pass
    with pytest.raises(IndexError, match="out of range.*2 layers"), steer(model, torch.zeros(n, h), layers=[2]):
        pass
    with pytest.raises(ValueError, match="residual, attn, mlp"), steer(model, torch.zeros(n, h), site="ffn"):
        pass
    with pytest.raises(ValueError, match="all, generated"), steer(model, torch.zeros(n, h), positions="last"):
        pass
    nan = torch.zeros(n, h)
    nan[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"), steer(model, nan):
        pass
    with pytest.raises(LayerDiscoveryError, match="model.layers: 2 x LlamaDecoderLayer"):
        find_layers(model, layers_path="model.nope")
    assert all(not m._forward_hooks for m in model.modules())


def test_no_block_list_lists_candidates():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(LayerDiscoveryError, match="Candidate module lists"):
        find_layers(model)


def test_negative_layers_and_compiled_model_refused():
    model = make_tiny("qwen2")
    n, h = len(find_layers(model)), model.config.hidden_size
    with steer(model, torch.zeros(n, h), layers=[-1]) as s:
        assert s.layers == [1]
    compiled = torch.compile(model)
    with pytest.raises(RuntimeError, match="torch.compile"), steer(compiled, torch.zeros(n, h)):
        pass
