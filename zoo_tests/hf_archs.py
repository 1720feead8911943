"""Hugging Face architectures of the zoo, as data: small configs (no downloads) and the classes built
from them. Sizes keep hidden, intermediate and head widths distinct so no two kinds are confused."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TEXT = dict(vocab_size=96, max_position_embeddings=64)
DECODER = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, use_cache=False, **TEXT)
ENCODER = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4, **TEXT)
VISION = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4, image_size=32,
              patch_size=8)


@dataclass(frozen=True)
class Arch:
    name: str
    config: str
    kwargs: dict[str, Any]
    classes: tuple[str, ...]
    decoder: bool = False  # greedy generate() is checked
    extra: dict[str, Any] = field(default_factory=dict)
    known: dict[str, str] = field(default_factory=dict)  # check -> why it fails today (strict xfail)


ARCHS = [
    Arch("bert", "BertConfig", ENCODER, ("BertModel", "BertForSequenceClassification")),
    Arch("roberta", "RobertaConfig", dict(ENCODER, pad_token_id=1), ("RobertaModel", "RobertaForSequenceClassification")),
    Arch("distilbert", "DistilBertConfig", dict(dim=64, hidden_dim=160, n_layers=2, n_heads=4, **TEXT),
         ("DistilBertModel", "DistilBertForSequenceClassification")),
    Arch("gpt2", "GPT2Config", dict(n_embd=64, n_inner=160, n_layer=2, n_head=4, vocab_size=96, n_positions=64,
                                    use_cache=False), ("GPT2LMHeadModel", "GPT2ForSequenceClassification"), decoder=True),
    Arch("opt", "OPTConfig", dict(hidden_size=64, ffn_dim=160, num_hidden_layers=2, num_attention_heads=4,
                                  word_embed_proj_dim=64, use_cache=False, **TEXT), ("OPTForCausalLM",), decoder=True),
    Arch("llama", "LlamaConfig", DECODER, ("LlamaForCausalLM", "LlamaForSequenceClassification", "LlamaModel"), decoder=True),
    Arch("mistral", "MistralConfig", DECODER, ("MistralForCausalLM",), decoder=True),
    Arch("qwen2", "Qwen2Config", DECODER, ("Qwen2ForCausalLM", "Qwen2ForSequenceClassification"), decoder=True),
    Arch("gemma", "GemmaConfig", dict(DECODER, head_dim=16), ("GemmaForCausalLM",), decoder=True),
    Arch("phi3", "Phi3Config", dict(DECODER, pad_token_id=0), ("Phi3ForCausalLM",), decoder=True),
    Arch("mixtral", "MixtralConfig", dict(DECODER, num_local_experts=4, num_experts_per_tok=2),
         ("MixtralForCausalLM",), decoder=True),
    Arch("t5", "T5Config", dict(d_model=64, d_ff=160, d_kv=16, num_layers=2, num_decoder_layers=2, num_heads=4,
                                vocab_size=96, use_cache=False, decoder_start_token_id=0),
         ("T5ForConditionalGeneration",), decoder=True),
    Arch("vit", "ViTConfig", VISION, ("ViTModel", "ViTForImageClassification"), extra=dict(num_labels=10)),
    Arch("clip", "CLIPConfig", dict(projection_dim=32, text_config=dict(ENCODER, max_position_embeddings=32),
                                    vision_config=VISION), ("CLIPModel",)),
    # beyond the list issue 3 asked for: nothing in graphprune names these, they work from the graph
    Arch("qwen3", "Qwen3Config", dict(DECODER, head_dim=16), ("Qwen3ForCausalLM",), decoder=True),
    Arch("gemma2", "Gemma2Config", dict(DECODER, head_dim=16), ("Gemma2ForCausalLM",), decoder=True),
    Arch("olmo2", "Olmo2Config", DECODER, ("Olmo2ForCausalLM",), decoder=True,
         known={"oracle": "q_norm/k_norm normalise over every head at once, so removing a head changes the "
                          "others: its heads are pruned as inexact and no exact oracle can hold"}),
    Arch("granite", "GraniteConfig", DECODER, ("GraniteForCausalLM",), decoder=True),
    Arch("stablelm", "StableLmConfig", DECODER, ("StableLmForCausalLM",), decoder=True),
    Arch("phi", "PhiConfig", dict(ENCODER, use_cache=False), ("PhiForCausalLM",), decoder=True),
    Arch("gpt_neox", "GPTNeoXConfig", dict(ENCODER, use_cache=False), ("GPTNeoXForCausalLM",), decoder=True),
    Arch("falcon", "FalconConfig", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, use_cache=False,
                                        multi_query=False,
                                        vocab_size=96), ("FalconForCausalLM",), decoder=True),
    Arch("bart", "BartConfig", dict(d_model=64, encoder_ffn_dim=160, decoder_ffn_dim=160, encoder_layers=2,
                                    decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                                    use_cache=False, **TEXT), ("BartForConditionalGeneration",), decoder=True),
    Arch("deit", "DeiTConfig", VISION, ("DeiTForImageClassification",), extra=dict(num_labels=10)),
    # partial rotary by pairs (rotate_every_two): rotary_dim / 2 == n_head, which no head count may bind by value
    Arch("gptj", "GPTJConfig", dict(n_embd=64, n_inner=160, n_layer=2, n_head=4, rotary_dim=8, vocab_size=96,
                                    n_positions=64, use_cache=False), ("GPTJForCausalLM",), decoder=True),
    # v3-style: heads folded into the batch dim, the head count passed to a helper, relative positions
    Arch("deberta_v2", "DebertaV2Config", dict(ENCODER, relative_attention=True, pos_att_type=["p2c", "c2p"],
                                               position_biased_input=False, max_relative_positions=-1,
                                               position_buckets=32, share_att_key=True, norm_rel_ebd="layer_norm"),
         ("DebertaV2Model", "DebertaV2ForSequenceClassification")),
    # audio: example inputs come from the config (mel frames for Whisper's encoder, raw samples for wav2vec2)
    Arch("whisper", "WhisperConfig", dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                                          decoder_attention_heads=4, encoder_ffn_dim=160, decoder_ffn_dim=160,
                                          num_mel_bins=16, max_source_positions=32, max_target_positions=32,
                                          vocab_size=96, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                          decoder_start_token_id=1, use_cache=False),
         ("WhisperForConditionalGeneration",)),
    Arch("wav2vec2", "Wav2Vec2Config", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=160, conv_dim=(32, 32), conv_stride=(5, 2),
                                            conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                                            num_conv_pos_embedding_groups=4, vocab_size=32), ("Wav2Vec2ForCTC",)),
]


def build(arch: Arch, cls_name: str):
    """The model, random init, eval mode."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = getattr(transformers, arch.config)(**arch.kwargs, **arch.extra)
    return getattr(transformers, cls_name)(config).eval()


def cases() -> list[tuple[Arch, str]]:
    return [(a, c) for a in ARCHS for c in a.classes]
