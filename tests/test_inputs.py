"""Tests for graphprune/inputs.py: example inputs derived from a Hugging Face model's own config, and
from the image size a timm model was built for."""
from __future__ import annotations

import pytest
import torch

import graphprune
from graphprune.inputs import default_inputs, hf_trace_inputs
from graphprune.testing import assert_prune_matches

transformers = pytest.importorskip("transformers")

SPEECH = dict(vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)


def _whisper():
    torch.manual_seed(0)
    cfg = transformers.WhisperConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                                     decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                     num_mel_bins=16, max_source_positions=24, max_target_positions=16, **SPEECH)
    return transformers.WhisperForConditionalGeneration(cfg).eval()


def _wav2vec2():
    torch.manual_seed(0)
    cfg = transformers.Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                                      conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
                                      num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4, vocab_size=16)
    return transformers.Wav2Vec2ForCTC(cfg).eval()


def test_whisper_gets_mel_features_of_the_length_its_encoder_wants_and_no_cache() -> None:
    _, kwargs = default_inputs(_whisper())
    features = kwargs["input_features"]
    assert features.dtype == torch.float32 and tuple(features.shape) == (1, 16, 48)  # 2 * max_source_positions
    assert kwargs["decoder_input_ids"].dtype == torch.long and kwargs["use_cache"] is False
    assert_prune_matches(_whisper(), kinds=("heads", "mlp"))


def test_wav2vec2_gets_float_samples_enough_for_its_feature_encoder() -> None:
    _, kwargs = default_inputs(_wav2vec2())
    values = kwargs["input_values"]
    assert values.dtype == torch.float32 and values.dim() == 2 and values.shape[1] >= 10 + 4 * 5
    groups = graphprune.find_groups(_wav2vec2())
    assert {g.unit for g in groups.prunable} >= {"head", "channel"}


def test_user_inputs_of_a_cached_model_are_traced_without_the_cache() -> None:
    model = _whisper()
    _, kwargs = default_inputs(model)
    mine = {k: v for k, v in kwargs.items() if k != "use_cache"}
    (args, traced), notes = hf_trace_inputs(model, ((), mine))
    assert traced["use_cache"] is False and "use_cache=False" in notes[0]
    assert graphprune.trace(model, mine).notes == notes


@pytest.mark.parametrize("kw, size", [(dict(img_size=64), (64, 64)),
                                      (dict(img_size=64, dynamic_img_size=True), (224, 224)), ({}, (224, 224))])
def test_a_timm_vit_built_for_another_image_size_gets_inputs_of_that_size(kw: dict, size: tuple) -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", depth=1, **kw).eval()
    (x,), _ = default_inputs(model)
    assert tuple(x.shape) == (1, 3, *size)
    assert model(x).shape == (1, 1000)  # the size it was built for runs


@pytest.mark.parametrize("empty", [torch.randn(0, 16), (torch.randn(0, 16),), {"x": torch.randn(0, 16)}])
def test_an_empty_batch_is_refused_before_anything_runs(empty) -> None:
    # its outputs are empty too, so the value check after surgery would pass whatever the surgery did
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(graphprune.TraceError, match=r"every tensor is empty: \(0, 16\).*a batch of 1"):
        graphprune.shrink(model, 0.3, example_inputs=empty, inplace=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
