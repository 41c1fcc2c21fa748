#!/usr/bin/env python3
"""Build tiny random-weight MLX (mlx-community layout) checkpoints + reference outputs.

Usage (see tests/fixtures/mlx/README.md for the venv setup):

    /work/mlxvenv/bin/python scripts/mlx_fixtures.py            # every fixture
    /work/mlxvenv/bin/python scripts/mlx_fixtures.py --only llama qwen3
    /work/mlxvenv/bin/python scripts/mlx_fixtures.py --readme-only

For every fixture this script

1. builds the mlx-lm model class from a tiny config dict
   (``mlx_lm.models.<module>.Model(ModelArgs.from_dict(cfg))``),
2. fills its parameters with deterministic random values (numpy, fixed seed
   derived from the fixture name),
3. writes them as an *unconverted* Hugging Face style checkpoint (bf16
   safetensors with HF tensor names: per-expert MoE weights, fused kv_b_proj,
   torch-layout conv1d, (w) vs (1+w) norms, mxfp4 blocks for gpt-oss, ...)
   into a temporary directory together with a tiny byte-level tokenizer,
4. runs mlx-lm's own converter (``mlx_lm.convert.convert(..., quantize=True)``)
   on it, i.e. exactly the load -> sanitize -> cast -> quantize_model -> save
   path used to make mlx-community repos,
5. loads the result back with ``mlx_lm.load`` and records reference logits and
   greedy tokens in ``reference.json``.

Everything is deterministic and nothing is downloaded.
"""

import argparse
import copy
import glob
import importlib
import json
import math
import os
import shutil
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map

import mlx_lm
from mlx_lm.convert import convert
from mlx_lm.models.cache import make_prompt_cache

REPO = Path(__file__).resolve().parent.parent
OUT_ROOT = REPO / "tests" / "fixtures" / "mlx"

PROMPT_IDS = [1, 17, 42, 99, 7, 200, 3, 64]
N_GREEDY = 16
VOCAB = 320  # 256 byte tokens + 3 special tokens (ids 256..258) + padding to 320
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
EOS_ID = 258
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# --------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------


def _bytes_to_unicode():
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_tokenizer(path: Path):
    """Byte-level BPE: token id b == byte b (0..255), no merges, 3 specials."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    b2u = _bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [AddedToken(s, special=True, normalized=False) for s in SPECIAL_TOKENS]
    )
    tok.save(str(path / "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": 512,
        "clean_up_tokenization_spaces": False,
    }
    with open(path / "tokenizer_config.json", "w") as f:
        json.dump(cfg, f, indent=2)


# --------------------------------------------------------------------------
# random init
# --------------------------------------------------------------------------

F32_KEEP = ("A_log", "e_score_correction_bias")  # stored fp32 in HF checkpoints


FINAL_NORMS = ("model.norm.weight", "backbone.norm_f.weight")


def init_params(model, seed, offset_norm_names=(), emb_std=0.5, head_gain=4.0,
                final_norm_gain=1.0):
    """Return {name: np.float32 array} with deterministic values, MLX naming.

    * params whose default value is all-ones (norm scales, D, dt_bias,
      layer scalars, router scales) -> 1 + 0.1*N(0,1)
      (or 0.1*N(0,1) for names matching ``offset_norm_names``: gemma (1+w) norms);
      the final norm multiplier is additionally scaled by ``final_norm_gain``
      (used by tied-embedding models, whose embeddings are kept small so that the
      residual stream is not dominated by the input token's own embedding)
    * all-zero defaults (biases, sinks, score-correction biases) -> 0.1*N(0,1)
    * embeddings -> emb_std*N(0,1); lm_head -> head_gain/sqrt(fan_in)*N(0,1)
    * other matrices -> N(0,1)/sqrt(fan_in)
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, v in sorted(tree_flatten(model.parameters()), key=lambda kv: kv[0]):
        cur = np.array(v.astype(mx.float32))
        shape = cur.shape
        if name.endswith("A_log"):
            val = np.log(rng.uniform(1.0, 16.0, size=shape))
        elif "conv1d.weight" in name:
            val = rng.normal(size=shape) * 0.3
        elif cur.size and np.all(cur == 1.0):
            if any(name.endswith(s) for s in offset_norm_names):
                val = rng.normal(size=shape) * 0.1
            else:
                val = 1.0 + rng.normal(size=shape) * 0.1
        elif cur.size and np.all(cur == 0.0) and cur.ndim <= 2 and not (
            cur.ndim == 2 and "weight" in name
        ):
            val = rng.normal(size=shape) * 0.1
        elif "embed" in name and cur.ndim == 2:
            val = rng.normal(size=shape) * emb_std
        elif name.endswith("lm_head.weight"):
            val = rng.normal(size=shape) * head_gain / math.sqrt(shape[-1])
        elif cur.ndim >= 2:
            val = rng.normal(size=shape) / math.sqrt(shape[-1])
        else:
            val = rng.normal(size=shape) * 0.1
        if final_norm_gain != 1.0 and any(name.endswith(s) for s in FINAL_NORMS):
            if any(name.endswith(s) for s in offset_norm_names):
                val = (1.0 + val) * final_norm_gain - 1.0
            else:
                val = val * final_norm_gain
        out[name] = val.astype(np.float32)
    return out


# --------------------------------------------------------------------------
# MLX layout -> unconverted HF layout (the inverse of each model's sanitize)
# --------------------------------------------------------------------------


def unstack_experts(w, src_fmt, dst_fmt, names, n_experts):
    """switch_mlp.{gate,up,down}_proj.weight [E,...] -> experts.{e}.{name}.weight"""
    for k in list(w.keys()):
        for mlx_name, hf_name in names.items():
            suffix = src_fmt.format(n=mlx_name)
            if k.endswith(suffix):
                base = k[: -len(suffix)]
                stacked = w.pop(k)
                assert stacked.shape[0] == n_experts, (k, stacked.shape)
                for e in range(n_experts):
                    w[base + dst_fmt.format(e=e, n=hf_name)] = stacked[e]
    return w


def conv_to_torch(w):
    for k in list(w.keys()):
        if "conv1d.weight" in k:
            w[k] = np.ascontiguousarray(np.moveaxis(w[k], 2, 1))  # [C,K,1] -> [C,1,K]
    return w


def minus_one(w, suffixes):
    for k in list(w.keys()):
        if w[k].ndim == 1 and any(k.endswith(s) for s in suffixes):
            w[k] = w[k] - 1.0
    return w


def rename_prefix(w, old, new):
    return {(new + k[len(old):] if k.startswith(old) else k): v for k, v in w.items()}


def hf_identity(w, cfg):
    return w


def hf_gemma3_text(w, cfg):
    w.pop("lm_head.weight", None)  # tied: mlx-lm ties when lm_head is absent
    return w


def hf_gemma3(w, cfg):
    # HF Gemma 3 (transformers < 4.52 layout, the one mlx-lm's gemma3 sanitize reads):
    # `language_model.model.*`, tied (no lm_head), plus the vision tower and projector
    w.pop("language_model.lm_head.weight", None)
    w["vision_tower.vision_model.embeddings.patch_embedding.weight"] = np.ones((8, 3, 2, 2), np.float32)
    w["multi_modal_projector.mm_input_projection_weight"] = np.ones((8, 128), np.float32)
    return w


def hf_mistral3(w, cfg):
    w = rename_prefix(w, "language_model.model.", "model.language_model.")
    if "language_model.lm_head.weight" in w:
        w["lm_head.weight"] = w.pop("language_model.lm_head.weight")
    # a stand-in vision tower / projector: the converter must drop these
    w["model.vision_tower.patch_conv.weight"] = np.ones((8, 3, 2, 2), np.float32)
    w["model.multi_modal_projector.linear_1.weight"] = np.ones((64, 8), np.float32)
    return w


def hf_qwen3_moe(w, cfg):
    return unstack_experts(
        w,
        "mlp.switch_mlp.{n}.weight",
        "mlp.experts.{e}.{n}.weight",
        {n: n for n in ("gate_proj", "up_proj", "down_proj")},
        cfg["num_experts"],
    )


def _mxfp4_blocks(x):
    """[..., out, in] float -> HF gpt-oss (blocks uint8 [...,out,in/32,16], scales uint8)."""
    q, s = mx.quantize(mx.array(x).astype(mx.bfloat16), group_size=32, bits=4, mode="mxfp4")
    qb = np.array(q).view(np.uint8)  # [..., out, in/2]
    qb = qb.reshape(*qb.shape[:-1], qb.shape[-1] // 16, 16)
    return qb, np.array(s)


def hf_gpt_oss(w, cfg):
    out = {}
    for k, v in w.items():
        if ".mlp.experts." not in k:
            out[k] = v
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}.mlp.experts"
        g = w[f"{p}.gate_proj.weight"]
        u = w[f"{p}.up_proj.weight"]
        E, I, H = g.shape
        gu = np.empty((E, 2 * I, H), np.float32)
        gu[:, 0::2] = g  # interleaved: even rows gate, odd rows up
        gu[:, 1::2] = u
        blocks, scales = _mxfp4_blocks(gu)
        out[f"{p}.gate_up_proj_blocks"] = blocks
        out[f"{p}.gate_up_proj_scales"] = scales
        gb = np.empty((E, 2 * I), np.float32)
        gb[:, 0::2] = w[f"{p}.gate_proj.bias"]
        gb[:, 1::2] = w[f"{p}.up_proj.bias"]
        out[f"{p}.gate_up_proj_bias"] = gb
        blocks, scales = _mxfp4_blocks(w[f"{p}.down_proj.weight"])
        out[f"{p}.down_proj_blocks"] = blocks
        out[f"{p}.down_proj_scales"] = scales
        out[f"{p}.down_proj_bias"] = w[f"{p}.down_proj.bias"]
    return out


def hf_gemma4(w, cfg):
    w = rename_prefix(w, "language_model.model.", "model.language_model.")
    if "language_model.lm_head.weight" in w:
        w["lm_head.weight"] = w.pop("language_model.lm_head.weight")
    for k in list(w.keys()):
        if k.endswith(".experts.switch_glu.gate_proj.weight"):
            base = k[: -len(".switch_glu.gate_proj.weight")]
            g = w.pop(k)
            u = w.pop(f"{base}.switch_glu.up_proj.weight")
            w[f"{base}.gate_up_proj"] = np.concatenate([g, u], axis=-2)
            w[f"{base}.down_proj"] = w.pop(f"{base}.switch_glu.down_proj.weight")
    return w


QWEN_NEXT_NORMS = (
    ".input_layernorm.weight",
    ".post_attention_layernorm.weight",
    "model.norm.weight",
    ".q_norm.weight",
    ".k_norm.weight",
)


def hf_qwen3_5(w, cfg):
    w = rename_prefix(w, "language_model.model.", "model.language_model.")
    if "language_model.lm_head.weight" in w:
        w["lm_head.weight"] = w.pop("language_model.lm_head.weight")
    w = conv_to_torch(w)
    return minus_one(w, QWEN_NEXT_NORMS)


def hf_gemma3n(w, cfg):
    # HF names are mlx-lm's (`model.language_model.*`, no lm_head); the towers that
    # sanitize drops
    w["model.vision_tower.timm_model.conv_stem.conv.weight"] = np.ones((8, 3, 2, 2), np.float32)
    w["model.audio_tower.subsample_conv_projection.conv_0.conv.weight"] = np.ones((8, 1, 3, 3), np.float32)
    w["model.embed_vision.embedding.weight"] = np.ones((8, 64), np.float32)
    w["model.embed_audio.embedding.weight"] = np.ones((8, 64), np.float32)
    return w


def hf_qwen3_vl(w, cfg):
    # HF Qwen3-VL (transformers >= 4.57): `model.language_model.*`, `model.visual.*`,
    # `lm_head` at the top level
    w = rename_prefix(w, "language_model.model.", "model.language_model.")
    if "language_model.lm_head.weight" in w:
        w["lm_head.weight"] = w.pop("language_model.lm_head.weight")
    w["model.visual.patch_embed.proj.weight"] = np.ones((8, 3, 2, 2, 2), np.float32)
    return w


def hf_qwen3_vl_moe(w, cfg):
    # HF Qwen3-VL-MoE experts are stored transposed: `experts.gate_up_proj` [E, d, 2I]
    # (gate columns first), `experts.down_proj` [E, I, d], both without `.weight`
    for k in list(w.keys()):
        if k.endswith(".mlp.switch_mlp.gate_proj.weight"):
            base = k[: -len(".switch_mlp.gate_proj.weight")]
            g = w.pop(k)
            u = w.pop(f"{base}.switch_mlp.up_proj.weight")
            w[f"{base}.experts.gate_up_proj"] = np.concatenate(
                [np.swapaxes(g, -1, -2), np.swapaxes(u, -1, -2)], axis=-1)
            w[f"{base}.experts.down_proj"] = np.ascontiguousarray(
                np.swapaxes(w.pop(f"{base}.switch_mlp.down_proj.weight"), -1, -2))
    return hf_qwen3_vl(w, cfg)


def hf_qwen3_5_moe(w, cfg):
    # HF Qwen3.5-MoE: fused `experts.gate_up_proj` [E, 2I, d] (gate rows first) and
    # `experts.down_proj` [E, d, I], both without `.weight`
    for k in list(w.keys()):
        if k.endswith(".mlp.switch_mlp.gate_proj.weight"):
            base = k[: -len(".switch_mlp.gate_proj.weight")]
            g = w.pop(k)
            u = w.pop(f"{base}.switch_mlp.up_proj.weight")
            w[f"{base}.experts.gate_up_proj"] = np.concatenate([g, u], axis=-2)
            w[f"{base}.experts.down_proj"] = w.pop(f"{base}.switch_mlp.down_proj.weight")
    return hf_qwen3_5(w, cfg)


def hf_qwen3_next(w, cfg):
    w = hf_qwen3_moe(w, cfg)
    w = conv_to_torch(w)
    return minus_one(w, QWEN_NEXT_NORMS)


def hf_glm4_moe(w, cfg):
    return unstack_experts(
        w,
        "mlp.switch_mlp.{n}.weight",
        "mlp.experts.{e}.{n}.weight",
        {n: n for n in ("gate_proj", "up_proj", "down_proj")},
        cfg["n_routed_experts"],
    )


def hf_deepseek_v3(w, cfg):
    w = hf_glm4_moe(w, cfg)
    nope, vd = cfg["qk_nope_head_dim"], cfg["v_head_dim"]
    H, r = cfg["num_attention_heads"], cfg["kv_lora_rank"]
    for k in list(w.keys()):
        if k.endswith("self_attn.embed_q.weight"):
            p = k[: -len("embed_q.weight")]
            wk = w.pop(k)  # [H, r, nope]
            wv = w.pop(p + "unembed_out.weight")  # [H, vd, r]
            kv_b = np.concatenate([np.swapaxes(wk, -1, -2), wv], axis=1)  # [H, nope+vd, r]
            w[p + "kv_b_proj.weight"] = kv_b.reshape(H * (nope + vd), r)
    return w


def hf_minimax(w, cfg):
    return unstack_experts(
        w,
        "block_sparse_moe.switch_mlp.{n}.weight",
        "block_sparse_moe.experts.{e}.{n}.weight",
        {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"},
        cfg["num_local_experts"],
    )


def hf_nemotron_h(w, cfg):
    w = conv_to_torch(w)
    return unstack_experts(
        w,
        "mixer.switch_mlp.{n}.weight",
        "mixer.experts.{e}.{n}.weight",
        {"fc1": "up_proj", "fc2": "down_proj"},
        cfg["n_routed_experts"],
    )


def hf_granitemoehybrid(w, cfg):
    w = conv_to_torch(w)
    for k in list(w.keys()):
        if k.endswith("block_sparse_moe.switch_mlp.gate_proj.weight"):
            p = k[: -len("switch_mlp.gate_proj.weight")]
            g = w.pop(k)
            u = w.pop(p + "switch_mlp.up_proj.weight")
            w[p + "input_linear.weight"] = np.concatenate([g, u], axis=1)  # [E, 2I, H]
            w[p + "output_linear.weight"] = w.pop(p + "switch_mlp.down_proj.weight")
    return w


# --------------------------------------------------------------------------
# fixture definitions
# --------------------------------------------------------------------------

COMMON = dict(vocab_size=VOCAB, max_position_embeddings=512, eos_token_id=EOS_ID)


def dense(**kw):
    base = dict(
        hidden_size=64,
        num_hidden_layers=2,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rms_norm_eps=1e-6,
        **COMMON,
    )
    base.update(kw)
    return base


FIXTURES = {}
# tied embeddings: small embeddings (else greedy decoding just repeats the input
# token), logits brought back to a useful spread by the final norm multiplier
TIED_INIT = dict(emb_std=0.1, final_norm_gain=4.0)


def fixture(name, module, cfg, to_hf=hf_identity, bits=4, group_size=64, mode="affine",
            quant_predicate=None, offset_norms=(), seed_name=None, extra_src_cfg=None,
            note="", init=None, cached_prefill=False):
    if init is None:
        c = cfg.get("text_config", cfg)
        init = TIED_INIT if c.get("tie_word_embeddings", True) else {}
    FIXTURES[name] = dict(init=init,
        module=module, cfg=cfg, to_hf=to_hf, bits=bits, group_size=group_size,
        mode=mode, quant_predicate=quant_predicate, offset_norms=offset_norms,
        seed_name=seed_name or name, extra_src_cfg=extra_src_cfg or {}, note=note,
        cached_prefill=cached_prefill,
    )


LLAMA_CFG = dense(
    model_type="llama",
    rope_theta=500000.0,
    rope_scaling=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=64, rope_type="llama3"),
    tie_word_embeddings=False,
    rms_norm_eps=1e-5,
)
fixture("llama", "llama", LLAMA_CFG)

# Devstral-Small-2507 style `mistral` (mlx-lm maps it to its llama module): head_dim 32
# with d=64 and 4 heads (q/o are 128 wide, not d), rope_theta 1e9, no sliding window
fixture("mistral", "llama", dense(model_type="mistral", head_dim=32, rope_theta=1000000000.0,
                                   rms_norm_eps=1e-5, sliding_window=None,
                                   tie_word_embeddings=False))

fixture("qwen3", "qwen3", dense(model_type="qwen3", rope_theta=1000000.0,
                                 tie_word_embeddings=True))

_q2 = dense(model_type="qwen2", rope_theta=1000000.0, tie_word_embeddings=True)
del _q2["head_dim"]  # qwen2 derives head_dim = hidden/heads
fixture("qwen2", "qwen2", _q2)

fixture(
    "gemma3_text",
    "gemma3_text",
    dense(model_type="gemma3_text", num_hidden_layers=4, num_key_value_heads=1,
          query_pre_attn_scalar=16, sliding_window=6, sliding_window_pattern=2,
          rope_theta=1000000.0, rope_local_base_freq=10000.0,
          rope_scaling=dict(factor=8.0, rope_type="linear"),
          final_logit_softcapping=None, hidden_activation="gelu_pytorch_tanh"),
    to_hf=hf_gemma3_text,
    offset_norms=("norm.weight", "layernorm.weight"),
)

# the multimodal wrapper; its text_config is as sparse as real Gemma 3 ones (no head
# counts, rope_theta, eps, ...: mlx-lm's wrapper defaults 8 / 4 heads, gemma3_text's
# ModelArgs the rest), vocab_size only at the top level; d=128 so that sqrt(d) is not a
# bf16 number (gemma3_text scales the embeddings by sqrt(d) rounded to bf16; the
# unrounded scale still lands within the parity tolerance on this fixture)
fixture(
    "gemma3",
    "gemma3",
    dict(
        model_type="gemma3",
        text_config=dict(model_type="gemma3_text", hidden_size=128, num_hidden_layers=2,
                         intermediate_size=128, head_dim=16, query_pre_attn_scalar=16,
                         sliding_window=6, sliding_window_pattern=2,
                         rope_scaling=dict(factor=8.0, rope_type="linear")),
        vision_config=dict(model_type="siglip_vision_model", hidden_size=8,
                           num_hidden_layers=0),
        vocab_size=VOCAB, eos_token_id=EOS_ID, image_token_index=10,
    ),
    to_hf=hf_gemma3,
    offset_norms=("norm.weight", "layernorm.weight"),
    # sqrt(128) embedding scale and only 2 layers: smaller embeddings than TIED_INIT
    init=dict(emb_std=0.02, final_norm_gain=16.0),
)

_phi = dense(model_type="phi3", rms_norm_eps=1e-5, rope_theta=10000.0,
             partial_rotary_factor=0.75, original_max_position_embeddings=128,
             tie_word_embeddings=True,
             rope_scaling=dict(type="longrope",
                               short_factor=[1.0, 1.0, 1.1, 1.2, 1.5, 2.0],
                               long_factor=[1.0, 1.3, 1.9, 2.7, 4.0, 6.0]))
del _phi["head_dim"]
fixture("phi3", "phi3", _phi)

fixture(
    "mistral3",
    "mistral3",
    dict(
        model_type="mistral3",
        text_config=dense(
            model_type="ministral3",
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            rope_parameters=dict(rope_type="yarn", rope_theta=1000000.0, factor=64.0,
                                 original_max_position_embeddings=8, beta_fast=32.0,
                                 beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0,
                                 llama_4_scaling_beta=0.1),
        ),
        vision_config=dict(model_type="pixtral", hidden_size=8, num_hidden_layers=0),
        image_token_index=10,
        **COMMON,
    ),
    to_hf=hf_mistral3,
)

fixture("smollm3", "smollm3", dense(model_type="smollm3", num_hidden_layers=4,
                                     rope_theta=5000000.0, tie_word_embeddings=True,
                                     no_rope_layer_interval=4))

fixture("qwen3_moe", "qwen3_moe", dense(
    model_type="qwen3_moe", rope_theta=1000000.0, tie_word_embeddings=False,
    num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1, mlp_only_layers=[],
    moe_intermediate_size=64, norm_topk_prob=True), to_hf=hf_qwen3_moe)

fixture(
    "gpt_oss",
    "gpt_oss",
    dense(model_type="gpt_oss", intermediate_size=64, num_local_experts=4,
          num_experts_per_tok=2, sliding_window=4, rope_theta=150000.0,
          layer_types=["sliding_attention", "full_attention"],
          rope_scaling=dict(rope_type="yarn", factor=4.0, beta_fast=32.0, beta_slow=1.0,
                            original_max_position_embeddings=128, truncate=False),
          rms_norm_eps=1e-5, tie_word_embeddings=False),
    to_hf=hf_gpt_oss,
    bits=8,  # mlx-community "MXFP4-Q8": experts stay mxfp4, everything else affine q8
    extra_src_cfg=dict(quantization_config=dict(
        quant_method="mxfp4",
        modules_to_not_convert=["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                "model.embed_tokens", "lm_head"])),
)

_G4_TEXT = dict(
    model_type="gemma4_text", hidden_size=64, num_hidden_layers=6, intermediate_size=64,
    num_attention_heads=4, head_dim=16, global_head_dim=32, num_key_value_heads=2,
    rms_norm_eps=1e-6, vocab_size=VOCAB, vocab_size_per_layer_input=VOCAB,
    num_kv_shared_layers=3, hidden_size_per_layer_input=64, sliding_window=6,
    sliding_window_pattern=3, max_position_embeddings=512, final_logit_softcapping=30.0,
    use_double_wide_mlp=True, tie_word_embeddings=True,
    layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
    rope_parameters={
        "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0,
                           "rope_type": "proportional"},
        "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"},
    },
)
fixture("gemma4", "gemma4", dict(model_type="gemma4", text_config=_G4_TEXT,
                                 vocab_size=VOCAB, eos_token_id=EOS_ID,
                                 vision_config=dict(model_type="gemma4_vision")),
        to_hf=hf_gemma4)

_G4_MOE = dict(_G4_TEXT)
_G4_MOE.update(num_hidden_layers=4, num_kv_shared_layers=0, hidden_size_per_layer_input=0,
               use_double_wide_mlp=False, enable_moe_block=True, num_experts=4,
               top_k_experts=2, moe_intermediate_size=64, attention_k_eq_v=True,
               num_global_key_value_heads=1, sliding_window_pattern=2,
               layer_types=["sliding_attention", "full_attention"] * 2)
fixture("gemma4-moe", "gemma4", dict(model_type="gemma4", text_config=_G4_MOE,
                                     vocab_size=VOCAB, eos_token_id=EOS_ID),
        to_hf=hf_gemma4)

_LIN = dict(linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=16,
            linear_value_head_dim=16, linear_conv_kernel_dim=4, full_attention_interval=4)
fixture("qwen3_5", "qwen3_5", dict(
    model_type="qwen3_5",
    text_config=dense(model_type="qwen3_5_text", num_hidden_layers=4,
                      tie_word_embeddings=False, attention_bias=False,
                      rope_parameters=dict(rope_type="default", rope_theta=10000000.0,
                                           partial_rotary_factor=0.25,
                                           mrope_section=[1, 1, 0], mrope_interleaved=True),
                      **_LIN),
    vision_config=dict(model_type="qwen3_5_vision", depth=0),
    tie_word_embeddings=False, eos_token_id=EOS_ID,
), to_hf=hf_qwen3_5)

fixture("qwen3_5_moe", "qwen3_5_moe", dict(
    model_type="qwen3_5_moe",
    text_config=dense(model_type="qwen3_5_moe_text", num_hidden_layers=4,
                      tie_word_embeddings=False, attention_bias=False,
                      num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
                      shared_expert_intermediate_size=64, norm_topk_prob=True,
                      rope_parameters=dict(rope_type="default", rope_theta=10000000.0,
                                           partial_rotary_factor=0.25,
                                           mrope_section=[1, 1, 0], mrope_interleaved=True),
                      **_LIN),
    vision_config=dict(model_type="qwen3_5_moe_vision", depth=0),
    tie_word_embeddings=False, eos_token_id=EOS_ID,
), to_hf=hf_qwen3_5_moe)

# Qwen3-VL-4B style: mlx-lm runs the text model with its qwen3 module (plain RoPE: the
# interleaved M-RoPE of text-only positions is ordinary RoPE)
_MROPE = dict(mrope_interleaved=True, mrope_section=[2, 3, 3], rope_type="default")
fixture("qwen3_vl", "qwen3_vl", dict(
    model_type="qwen3_vl",
    text_config=dense(model_type="qwen3_vl_text", rope_theta=5000000.0,
                      rope_scaling=_MROPE, tie_word_embeddings=True, attention_bias=False),
    vision_config=dict(model_type="qwen3_vl", depth=0),
    tie_word_embeddings=True, eos_token_id=EOS_ID, image_token_id=10,
), to_hf=hf_qwen3_vl)

# Qwen3-VL-30B-A3B style: the text model is mlx-lm's qwen3_moe
fixture("qwen3_vl_moe", "qwen3_vl_moe", dict(
    model_type="qwen3_vl_moe",
    text_config=dense(model_type="qwen3_vl_moe_text", rope_theta=5000000.0,
                      rope_scaling=_MROPE, tie_word_embeddings=False, attention_bias=False,
                      num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1,
                      mlp_only_layers=[], moe_intermediate_size=64, norm_topk_prob=True),
    vision_config=dict(model_type="qwen3_vl_moe", depth=0),
    tie_word_embeddings=False, eos_token_id=EOS_ID, image_token_id=10,
), to_hf=hf_qwen3_vl_moe)

fixture("qwen3_next", "qwen3_next", dense(
    model_type="qwen3_next", num_hidden_layers=4, rope_theta=10000000.0,
    partial_rotary_factor=0.25, num_experts=4, num_experts_per_tok=2,
    decoder_sparse_step=1, shared_expert_intermediate_size=64, mlp_only_layers=[],
    moe_intermediate_size=64, norm_topk_prob=True, tie_word_embeddings=False, **_LIN),
    to_hf=hf_qwen3_next)

fixture("glm4_moe", "glm4_moe", dense(
    model_type="glm4_moe", rms_norm_eps=1e-5, rope_theta=1000000.0, rope_scaling=None,
    moe_intermediate_size=64, norm_topk_prob=True, n_group=1, topk_group=1,
    n_shared_experts=1, n_routed_experts=4, routed_scaling_factor=2.5,
    num_experts_per_tok=2, first_k_dense_replace=1, use_qk_norm=True,
    tie_word_embeddings=False, attention_bias=True, partial_rotary_factor=0.5),
    to_hf=hf_glm4_moe)

fixture("deepseek_v3", "deepseek_v3", dict(
    model_type="deepseek_v3", hidden_size=64, intermediate_size=128,
    moe_intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=2, n_shared_experts=1, n_routed_experts=4,
    routed_scaling_factor=2.5, kv_lora_rank=64, q_lora_rank=64, qk_rope_head_dim=16,
    v_head_dim=64, qk_nope_head_dim=64, topk_method="noaux_tc", scoring_func="sigmoid",
    norm_topk_prob=True, n_group=2, topk_group=1, num_experts_per_tok=2,
    moe_layer_freq=1, first_k_dense_replace=1, rms_norm_eps=1e-6, rope_theta=10000.0,
    rope_scaling=dict(type="yarn", factor=4.0, original_max_position_embeddings=128,
                      beta_fast=32, beta_slow=1, mscale=1.0, mscale_all_dim=1.0),
    attention_bias=False, tie_word_embeddings=False, **COMMON),
    to_hf=hf_deepseek_v3)

fixture("minimax", "minimax", dense(
    model_type="minimax", intermediate_size=64, num_experts_per_tok=2,
    num_local_experts=4, shared_intermediate_size=0, rope_theta=5000000.0,
    rotary_dim=8, tie_word_embeddings=False, scoring_func="sigmoid", use_qk_norm=True),
    to_hf=hf_minimax)

fixture("nemotron_h", "nemotron_h", dict(
    model_type="nemotron_h", hidden_size=64, intermediate_size=128,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, attention_bias=False,
    mamba_num_heads=4, mamba_head_dim=16, mamba_proj_bias=False, ssm_state_size=16,
    conv_kernel=4, n_groups=2, mlp_bias=False, layer_norm_epsilon=1e-5, use_bias=False,
    use_conv_bias=True, hybrid_override_pattern="M-*E", moe_intermediate_size=64,
    moe_shared_expert_intermediate_size=64, n_group=1, n_routed_experts=4,
    n_shared_experts=1, topk_group=1, num_experts_per_tok=2, norm_topk_prob=True,
    routed_scaling_factor=2.5, tie_word_embeddings=False, **COMMON),
    to_hf=hf_nemotron_h)

fixture("granitemoehybrid", "granitemoehybrid", dict(
    model_type="granitemoehybrid", hidden_size=64, intermediate_size=64,
    num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
    attention_bias=False, embedding_multiplier=12.0, attention_multiplier=0.1,
    logits_scaling=2.0, residual_multiplier=0.22, mamba_expand=1,
    layer_types=["mamba", "mamba", "attention", "mamba"], rms_norm_eps=1e-5,
    num_local_experts=4, num_experts_per_tok=2, shared_intermediate_size=128,
    mamba_n_heads=4, mamba_d_head=16, mamba_proj_bias=False, mamba_d_state=16,
    mamba_d_conv=4, mamba_n_groups=1, mamba_conv_bias=True,
    position_embedding_type="nope", tie_word_embeddings=True, rope_theta=10000.0,
    **COMMON), to_hf=hf_granitemoehybrid,
    # embedding_multiplier 12 and residual_multiplier 0.22: keep the embeddings tiny
    init=dict(emb_std=0.015, final_norm_gain=32.0))

# gemma-3n-E4B style, every feature at toy size: AltUp over 4 streams, LAuReL, per-layer
# inputs (a smaller per-layer vocabulary than the model's: ids >= 256 read row 0), KV
# sharing (layers 2, 3 reuse layers 0, 1), activation sparsity on the first two layers
fixture("gemma3n", "gemma3n", dict(
    model_type="gemma3n",
    text_config=dict(
        model_type="gemma3n_text", hidden_size=64, num_hidden_layers=4, intermediate_size=128,
        num_attention_heads=4, head_dim=16, rms_norm_eps=1e-6, vocab_size=VOCAB,
        num_key_value_heads=2, num_kv_shared_layers=2, vocab_size_per_layer_input=256,
        sliding_window=6, max_position_embeddings=512, rope_local_base_freq=10000.0,
        rope_theta=1000000.0, final_logit_softcapping=30.0,
        layer_types=["sliding_attention", "full_attention"] * 2,
        activation_sparsity_pattern=[0.95, 0.95, 0.0, 0.0], hidden_size_per_layer_input=16,
        altup_num_inputs=4, altup_coef_clip=120.0, altup_correct_scale=True,
        altup_active_idx=0, laurel_rank=8, query_pre_attn_scalar=16,
        hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
    ),
    vision_config=dict(model_type="gemma3n_vision"),
    audio_config=dict(model_type="gemma3n_audio"),
    vocab_size=VOCAB, eos_token_id=EOS_ID,
), to_hf=hf_gemma3n, cached_prefill=True)

for _b in (2, 3, 6, 8):
    fixture(f"llama-{_b}bit", "llama", LLAMA_CFG, bits=_b)

# --------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------


def build_source(name, spec, src: Path, seed: int):
    mod = importlib.import_module(f"mlx_lm.models.{spec['module']}")
    cfg = copy.deepcopy(spec["cfg"])
    model = mod.Model(mod.ModelArgs.from_dict(copy.deepcopy(cfg)))
    params = init_params(model, seed, offset_norm_names=spec["offset_norms"], **spec["init"])
    hf = spec["to_hf"](params, cfg.get("text_config", cfg))
    arrays = {}
    for k, v in hf.items():
        if v.dtype == np.uint8:
            arrays[k] = mx.array(v)
        elif any(k.endswith(s) for s in F32_KEEP):
            arrays[k] = mx.array(v.astype(np.float32))
        else:
            arrays[k] = mx.array(v.astype(np.float32)).astype(mx.bfloat16)
    src.mkdir(parents=True)
    mx.save_safetensors(str(src / "model.safetensors"), arrays, metadata={"format": "pt"})
    src_cfg = dict(cfg)
    src_cfg["torch_dtype"] = "bfloat16"
    src_cfg.update(spec["extra_src_cfg"])
    with open(src / "config.json", "w") as f:
        json.dump(src_cfg, f, indent=2)
    write_tokenizer(src)


def to_f32(model):
    def cast(x):
        return x.astype(mx.float32) if mx.issubdtype(x.dtype, mx.floating) else x

    model.update(tree_map(cast, model.parameters()))
    return model


def run_reference(model, cached_prefill=False):
    """``cached_prefill``: ``last_logits`` from a prefill into a fresh prompt cache, for
    models whose no-cache forward is not what generation computes (gemma3n)."""
    prompt = mx.array([PROMPT_IDS])
    if cached_prefill:
        last = model(prompt, cache=make_prompt_cache(model))[0, -1].astype(mx.float32)
    else:
        last = model(prompt)[0, -1].astype(mx.float32)
    mx.eval(last)

    cache = make_prompt_cache(model)
    logits = model(prompt, cache=cache)[:, -1, :]
    toks, margins, step_logits = [], [], []
    for _ in range(N_GREEDY):
        lf = logits[0].astype(mx.float32)
        step_logits.append(lf)
        t = int(mx.argmax(lf).item())
        srt = np.sort(np.array(lf))
        margins.append(float(srt[-1] - srt[-2]))
        toks.append(t)
        logits = model(mx.array([[t]]), cache=cache)[:, -1, :]

    # consistency: no-cache forward over prompt + generated must reproduce the tokens
    full = mx.array([PROMPT_IDS + toks[:-1]])
    fl = model(full)[0].astype(mx.float32)
    fl = fl[len(PROMPT_IDS) - 1:]
    nocache_tokens = [int(x) for x in np.array(mx.argmax(fl, axis=-1))]
    max_diff = float(mx.max(mx.abs(fl - mx.stack(step_logits))).item())
    return dict(
        last_logits=[round(float(x), 5) for x in np.array(last)],
        greedy_tokens=toks,
        greedy_top2_margins=[round(m, 5) for m in margins],
        nocache_check=dict(tokens_match=nocache_tokens == toks,
                           max_abs_logit_diff=round(max_diff, 5)),
    )


MAX_SALTS = 16
MIN_F32_MARGIN = 0.02  # every greedy step's top1-top2 gap (f32 path) must exceed this
MIN_DISTINCT = 5  # and the 16 greedy tokens must not collapse into a loop of 1-4 tokens


def seed_for(seed_name, salt):
    return zlib.crc32(seed_name.encode() if salt == 0 else f"{seed_name}#{salt}".encode())


def convert_and_reference(name, spec, salt, out):
    with tempfile.TemporaryDirectory(prefix=f"mlxfix-{name}-") as td:
        src = Path(td) / "src"
        build_source(name, spec, src, seed_for(spec["seed_name"], salt))
        convert(
            str(src),
            str(out),
            quantize=True,
            q_group_size=spec["group_size"],
            q_bits=spec["bits"],
            q_mode=spec["mode"],
            quant_predicate=spec["quant_predicate"],
        )
    # converter's model card (README.md) is not part of the fixture
    if (out / "README.md").exists():
        (out / "README.md").unlink()
    model, tokenizer, _ = mlx_lm.load(str(out), return_config=True)
    ref = run_reference(model, spec["cached_prefill"])
    ref32 = run_reference(to_f32(model), spec["cached_prefill"])
    return tokenizer, ref, ref32


def acceptable(ref32):
    return (min(ref32["greedy_top2_margins"]) >= MIN_F32_MARGIN
            and len(set(ref32["greedy_tokens"])) >= MIN_DISTINCT)


def build_fixture(name, spec):
    out = OUT_ROOT / name
    if out.exists():
        shutil.rmtree(out)
    best = None
    for salt in range(MAX_SALTS):
        tmp_out = OUT_ROOT / f".{name}.tmp"
        if tmp_out.exists():
            shutil.rmtree(tmp_out)
        tokenizer, ref, ref32 = convert_and_reference(name, spec, salt, tmp_out)
        score = (acceptable(ref32), min(ref32["greedy_top2_margins"]))
        print(f"[try] {name} salt={salt}: f32 min margin {score[1]:.4f}, "
              f"distinct {len(set(ref32['greedy_tokens']))}")
        if best is None or score > best[0]:
            if best is not None:
                shutil.rmtree(best[2])
            keep = OUT_ROOT / f".{name}.best"
            if keep.exists():
                shutil.rmtree(keep)
            tmp_out.rename(keep)
            best = (score, salt, keep, tokenizer, ref, ref32)
        else:
            shutil.rmtree(tmp_out)
        if score[0]:
            break
    score, salt, keep, tokenizer, ref, ref32 = best
    keep.rename(out)

    with open(out / "config.json") as f:
        saved_cfg = json.load(f)
    q = saved_cfg.get("quantization", {})
    reference = dict(
        fixture=name,
        model_type=saved_cfg["model_type"],
        mlx_lm_module=spec["module"],
        seed_salt=salt,
        prompt_ids=PROMPT_IDS,
        compute="weights as saved (bf16 non-quantized tensors / bf16 scales), as mlx_lm.load gives them",
        last_logits=ref["last_logits"],
        greedy_tokens=ref["greedy_tokens"],
        greedy_top2_margins=ref["greedy_top2_margins"],
        nocache_check=ref["nocache_check"],
        f32=dict(
            compute="same checkpoint, every floating tensor (incl. scales/biases) upcast to float32 before the forward",
            last_logits=ref32["last_logits"],
            greedy_tokens=ref32["greedy_tokens"],
            greedy_top2_margins=ref32["greedy_top2_margins"],
            nocache_check=ref32["nocache_check"],
        ),
        quantization={k: v for k, v in q.items() if not isinstance(v, dict)},
        per_layer_quantization_overrides={k: v for k, v in q.items() if isinstance(v, dict)},
        chat_template_check=tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
        ),
        mlx_version=mx.__version__,
        mlx_lm_version=mlx_lm.__version__,
    )
    with open(out / "reference.json", "w") as f:
        json.dump(reference, f, indent=1)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"[fixture] {name}: {size/1024:.1f} KiB salt={salt} acceptable={score[0]} "
          f"greedy={ref['greedy_tokens']}, f32 greedy={ref32['greedy_tokens']}, "
          f"nocache={ref['nocache_check']} f32 nocache={ref32['nocache_check']} "
          f"minmargin={min(ref['greedy_top2_margins'])}/{min(ref32['greedy_top2_margins'])}")
    return size


# --------------------------------------------------------------------------
# README
# --------------------------------------------------------------------------


def safetensors_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


README_HEAD = """# MLX fixtures (tiny random-weight mlx-community style checkpoints)

Generated by `scripts/mlx_fixtures.py` with mlx-lm's own converter. Each directory
holds a checkpoint exactly as `mlx_lm.convert --quantize` writes it
(`config.json`, `model.safetensors`, `model.safetensors.index.json`,
tokenizer files) plus `reference.json` with outputs of the mlx-lm model loaded
back from that directory with `mlx_lm.load`.

## Regenerate

```sh
python3 -m venv /work/mlxvenv
/work/mlxvenv/bin/pip install mlx-cpu mlx mlx-lm
/work/mlxvenv/bin/python scripts/mlx_fixtures.py                 # all fixtures + this README
/work/mlxvenv/bin/python scripts/mlx_fixtures.py --only llama    # some fixtures
/work/mlxvenv/bin/python scripts/mlx_fixtures.py --readme-only   # README from existing dirs
```

Versions used: mlx {mlx}, mlx-lm {mlx_lm}. Output is deterministic for a given
mlx/mlx-lm version: numpy RNG seeded with crc32 of the fixture name (or of
`name#salt`: salts 0,1,2,... are tried in order and the first one whose f32 greedy
run has every top1-top2 gap >= {min_margin} and >= {min_distinct} distinct tokens is kept;
`seed_salt` in reference.json). Each llama-Nbit variant has its own random weights.
Nothing is downloaded.

## How each fixture is made

1. `mlx_lm.models.<module>.Model(ModelArgs.from_dict(cfg))` with the tiny config,
   parameters filled from numpy: norm-like all-ones params -> 1+0.1·N(0,1)
   (gemma3 (1+w) norms -> 0.1·N(0,1)), zero-default vectors (biases, sinks,
   score-correction biases) -> 0.1·N(0,1), embeddings 0.5·N(0,1), lm_head
   4/sqrt(fan_in)·N(0,1), other matrices N(0,1)/sqrt(fan_in), `A_log` = log U(1,16),
   conv1d 0.3·N(0,1). Tied-embedding models use embeddings 0.1·N(0,1) and a final
   norm multiplier ×4 (gemma3: 0.02·N(0,1), ×16; granitemoehybrid: 0.015·N(0,1), ×32), otherwise greedy
   decoding of a random tied model just repeats its input token.
2. Those tensors are rewritten into the *unconverted Hugging Face layout*
   (the inverse of the module's `sanitize`: per-expert MoE tensors, fused
   `kv_b_proj`, torch conv1d layout `[C,1,K]`, (w-1) norms for Qwen3-Next/3.5,
   mxfp4 `*_blocks/_scales` for gpt-oss, `model.language_model.*` prefixes for
   multimodal wrappers, ...) and saved as bf16 (`A_log`, `e_score_correction_bias`
   as f32, like HF) with `torch_dtype: bfloat16`.
3. `mlx_lm.convert.convert(src, dst, quantize=True, q_group_size, q_bits)`
   (load -> sanitize -> cast with the model's `cast_predicate` -> `quantize_model`
   with the model's `quant_predicate` -> `save_model` / `save_config` /
   `tokenizer.save_pretrained`). The converter's model card `README.md` is deleted.
4. `mlx_lm.load(dst)` and the reference outputs.

Tokenizer: byte-level BPE, token id b == byte b for b in 0..255, no merges,
specials `<|endoftext|>`=256, `<|im_start|>`=257, `<|im_end|>`=258 (eos),
model `vocab_size` 320 (ids 259..319 unused). ChatML-like `chat_template`
(transformers 5 writes it to `chat_template.jinja`, not into `tokenizer_config.json`).

## reference.json

* `prompt_ids`: `{prompt}` (a single sequence, batch 1).
* `last_logits`: full-vocab logits at the last prompt position, no cache, computed
  with the checkpoint as loaded (bf16 activations, bf16 scales/biases),
  cast to f32 and rounded to 5 decimals. Exception: gemma3n, whose no-cache forward is
  not what generation computes (see its notes), takes them from a prefill into a fresh
  `make_prompt_cache(model)`.
* `greedy_tokens`: {n} argmax tokens continuing the prompt, prefill of the whole
  prompt into `make_prompt_cache(model)` then one token at a time (EOS ignored).
  `greedy_top2_margins`: top1-top2 logit gap at each step (small gap = fragile).
* `nocache_check`: the same tokens re-derived from one no-cache forward over
  prompt+generated (`tokens_match`) and the max |logit| difference to the cached steps.
* `f32`: same, with every floating tensor of the loaded model (non-quantized weights
  and quantization scales/biases) upcast to f32 first. A float32 Rust implementation
  should match these more tightly (packed weights are identical).
* `quantization`: the global block of config.json; `per_layer_quantization_overrides`:
  the per-module entries (path -> {{group_size, bits[, mode]}}).

## Gotchas when comparing

* The bf16 path (`last_logits`, `greedy_tokens`) has exact logit **ties**
  (`greedy_top2_margins` of 0.0; mlx argmax takes the lowest index) and bf16 rounding
  that depends on the exact op order (e.g. deepseek_v3's absorbed-MLA decode path vs
  its prefill path differ by up to ~0.7 in bf16: `nocache_check.tokens_match` is false
  there, while the f32 path agrees to 1e-5). For token-exact parity use `f32`, whose
  margins are all >= {min_margin}; compare bf16 logits with a tolerance.
* Only `model.safetensors` (+ index) matters for weights; `config.json` holds
  `quantization` and its copy `quantization_config`. `tokenizer_config.json` is
  written by transformers 5 (`tokenizer_class: TokenizersBackend`, chat template in
  `chat_template.jinja`). No fixture has a `generation_config.json`.
* Sizes below are whole directories (weights + tokenizer + reference.json).

## MLX quantized tensor layout (applies to all fixtures)

For every quantized module `P` (Linear, Embedding, SwitchLinear = stacked experts,
MultiLinear): `P.weight` uint32 `[..., out, in*bits/32]`, `P.scales` and (affine only)
`P.biases` `[..., out, in/group_size]`; `P.bias` (if the layer has one) stays a plain
float vector and is NOT quantized.

* **affine** (default, `mode` absent or `"affine"`): each row is a little-endian
  LSB-first bit stream: element i of the row occupies bits [i·bits, (i+1)·bits) of the
  row's uint32 words read as little-endian bytes (for 3/5/6 bits values straddle word
  boundaries; for 2/4/8 bits it is simply 32/bits values per word, lowest bits first).
  `w = q * scale + bias` per group of `group_size` consecutive input elements.
  `scales`/`biases` are **bf16** (same dtype as the source weights). Verified bit-exact
  against `mx.dequantize` for bits 2,3,4,5,6,8.
* **mxfp4** (gpt-oss experts): `group_size` 32, 8 fp4 (e2m1) values per uint32, low
  nibble first; nibble -> [0, .5, 1, 1.5, 2, 3, 4, 6, -0, -.5, -1, -1.5, -2, -3, -4, -6];
  `scales` **uint8** E8M0: factor 2^(s-127); no `biases`. mlx-lm infers the mode of a
  module from `scales.dtype == uint8`.
* Embeddings are quantized too (`embed_tokens.{{weight,scales,biases}}`); a tied
  lm_head uses the same quantized embedding (`as_linear`).
* A module is quantized iff `P.scales` exists. `quantize_model` silently skips
  modules whose input dim is not a multiple of the group size and any module that is
  not `nn.Linear`/`nn.Embedding`/`SwitchLinear`/`MultiLinear` (e.g. MoE gates that are
  a bare `weight` parameter, norms, conv1d, `A_log`...). Such modules are *not* listed
  in config.json. The loader (`load_model`) quantizes a module when the config says
  so or when `P.scales` exists, inferring bits/group size from the shapes.
* Per-module overrides appear in config.json `quantization` as
  `"model.layers.0.mlp.gate": {{"group_size": 64, "bits": 8}}` (from the model's
  `quant_predicate`, mostly MoE routers at 8 bit). `quantization_config` is a verbatim
  copy of `quantization`.
* Converter casting: every floating tensor is cast to `torch_dtype` (bf16) except those
  rejected by the model's `cast_predicate` (`A_log` for qwen3_5/nemotron_h,
  `e_score_correction_bias` for glm4_moe/deepseek_v3/minimax/nemotron_h stay f32).

## Fixtures

| fixture | model_type | mlx-lm module | config highlights | quant | size | notes |
| --- | --- | --- | --- | --- | --- | --- |
"""

NOTES = {
    "llama": dict(
        hl="L=2, d=64, 4 heads/2 kv, head_dim 16, ffn 128, untied lm_head, rope llama3 scaling (factor 8, orig 64), theta 5e5",
        notes="""Standard Llama: `h = x + o(attn(rmsnorm(x)))`, `h + down(silu(gate)*up)`. RoPE non-traditional (rotate-half, NeoX style), `Llama3RoPE` frequency remap: wavelen = 2π·base^(2i/d); wavelen > orig/low_freq_factor -> freq·factor; between orig/high and orig/low -> smooth interpolation `freq / ((1-s)/factor + s)`, s = (orig/wavelen - low)/(high - low). sanitize drops `rotary_emb.inv_freq` and `lm_head.weight` when tied."""),
    "mistral": dict(
        hl="Devstral-Small-2507 style: L=2, d=64, 4 heads/2 kv with head_dim 32 (q/o projections 128 wide, wider than d), ffn 128, rope_theta 1e9, sliding_window null, untied",
        notes="""mlx-lm has no `mistral` module: `MODEL_REMAPPING` loads `model_type: mistral` with `llama`, so everything in the llama notes applies (plain RoPE here, no scaling). Only `head_dim` differs from d/heads, as in Devstral (5120 / 32 heads, head_dim 128). mlx-lm's llama reads `sliding_window` only for layers that `layer_types` marks `sliding_attention`; Mistral configs have no `layer_types`, so every layer is full attention."""),
    "qwen3": dict(
        hl="L=2, d=64, 4/2 heads, head_dim 16, tied embeddings, q_norm/k_norm (per head, RMSNorm over head_dim), theta 1e6",
        notes="""q/k RMSNorm applied per head *before* RoPE. No biases. Tied: no lm_head tensor; logits = h @ dequant(embed_tokens)^T."""),
    "qwen2": dict(
        hl="L=2, d=64, 4/2 heads (head_dim = d/heads = 16), q/k/v biases, tied, theta 1e6",
        notes="""q_proj/k_proj/v_proj carry a float `.bias` (bf16, not quantized); o_proj has none."""),
    "gemma3_text": dict(
        hl="L=4, d=64, 4 heads/1 kv, head_dim 16, query_pre_attn_scalar 16, sliding_window 6, sliding_window_pattern 2 (layers 1,3 global), rope local 1e4 / global 1e6 with linear scaling factor 8 (global layers only), tied",
        notes="""**Norms are (1+w)**: `rms_norm(x) * (1 + w)` for input/post_attention/pre_feedforward/post_feedforward layernorms, q_norm/k_norm and final norm; stored weights are ~0. Embedding scaled by `sqrt(hidden)` (computed in the activation dtype: `mx.array(64**0.5, bf16)`). Sandwich norms: `h = x + post_attn_norm(attn(input_norm(x)))`, `out = h + post_ffn_norm(mlp(pre_ffn_norm(h)))`. MLP is GeGLU with tanh-approx gelu. Attention scale = query_pre_attn_scalar^-0.5. Layer i is global iff `(i+1) % sliding_window_pattern == 0`; sliding layers use rope_local_base_freq and **no** rope_scaling; global layers use rope_theta + rope_scaling. Sliding window: a query attends to keys with `q - k < window` (mlx RotatingKVCache of size `window`). Tied: mlx-lm sanitize deletes `lm_head` when the checkpoint has no `lm_head.weight`. `final_logit_softcapping` is ignored by mlx-lm gemma3_text."""),
    "gemma3": dict(
        hl="multimodal wrapper around gemma3_text; source text_config as sparse as real ones (d=128, L=2, head_dim 16, query_pre_attn_scalar 16, sliding_window 6, pattern 2, linear rope factor 8 on the global layer): 8 heads / 4 kv from the wrapper's defaults, rope_theta 1e6 / local 1e4 and eps 1e-6 from gemma3_text's; vocab_size top-level only; tied",
        notes="""mlx-lm's `gemma3.Model` wraps `gemma3_text.Model` as `language_model`: its `ModelArgs.__post_init__` copies the top-level `vocab_size` (default 262208) into `text_config` and defaults `num_attention_heads` to 8 and `num_key_value_heads` to 4 there; every other missing field takes gemma3_text's `ModelArgs` default (hidden 1152, head_dim 256, rope_theta 1e6, rope_local_base_freq 1e4, query_pre_attn_scalar 256, sliding_window 512, pattern 6, eps 1e-6). The converter writes the mutated `text_config` back, so this config.json carries `num_attention_heads`, `num_key_value_heads` and `vocab_size` in `text_config` but still lacks rope_theta, eps, ... . sanitize drops `vision_tower` / `multi_modal_projector`, and gemma3_text's sanitize ties the head when there is no `lm_head.weight` (`tie_word_embeddings` in the config is never read). The forward is gemma3_text's (see there); the embedding scale is `sqrt(hidden)` **rounded to bf16** (`mx.array(d**0.5, bfloat16)`), here sqrt(128) = 11.3137 -> 11.3125. Names under `language_model.model.*`."""),
    "phi3": dict(
        hl="L=2, d=64, 4/2 heads (head_dim 16), partial_rotary_factor 0.75 (12 rotary dims), longrope (su) scaling, orig_max 128, max 512, tied",
        notes="""Fused weights: `self_attn.qkv_proj` (rows: q [H·hd], k [KV·hd], v [KV·hd]) and `mlp.gate_up_proj` (rows: gate [ffn] then up [ffn]; `down(silu(gate)*up)`). **mlx-lm's SuScaledRoPE always uses `long_factor`** (never short_factor) and multiplies the rotated part of q and k by `sqrt(1 + ln(max/orig)/ln(orig))` (here max/orig = 4); freqs = long_factor[i] · base^(2i/rot_dims). Only the first 12 dims of each head are rotated (rotate-half within those 12)."""),
    "mistral3": dict(
        hl="multimodal wrapper, `text_config.model_type = ministral3`; L=2, d=64, 4/2 heads, head_dim 16, untied, rope yarn (factor 64, orig 8, beta 32/1, mscale 1/1), llama_4_scaling_beta 0.1",
        notes="""mlx-lm keeps only the language model: vision_tower / multi_modal_projector tensors are dropped by sanitize and `vision_config` is removed from config.json; all tensor names start with `language_model.` (`language_model.model.layers.N...`, `language_model.lm_head`). Ministral3 specifics: YaRN rope (freq blend + mscale applied to q/k — with mscale == mscale_all_dim the mscale is 1) and a Llama-4 style **query scale** `q *= 1 + beta·ln(1 + floor(pos / original_max_position_embeddings))` applied after rope (pos = absolute position; here orig = 8 so positions ≥ 8 are affected). Hidden layer layout otherwise llama."""),
    "smollm3": dict(
        hl="L=4, d=64, 4/2 heads, head_dim 16, tied, no_rope_layer_interval 4 (layer 3 has NO rope)",
        notes="""Llama with NoPE layers: `no_rope_layers[i] = int((i+1) % 4 != 0)`; 1 = use rope, 0 = skip rope entirely in that layer."""),
    "qwen3_moe": dict(
        hl="L=2, d=64, 4/2 heads, head_dim 16, 4 experts top-2, moe ffn 64, norm_topk_prob, untied",
        notes="""Experts stacked: `mlp.switch_mlp.{gate,up,down}_proj.{weight,scales,biases}` with leading expert dim `[E, out, in/...]` (HF per-expert `mlp.experts.{e}.*` are stacked by sanitize). Router `mlp.gate` is a Linear quantized at **8 bits** (per-layer override). Routing: softmax over all experts (f32, precise) -> top-k -> renormalise if norm_topk_prob -> weighted sum of SwiGLU experts."""),
    "gpt_oss": dict(
        hl="L=2 (sliding, full), d=64, 4/2 heads, head_dim 16, 4 experts top-2, ffn 64, sliding_window 4, attention sinks, yarn (factor 4, orig 128)",
        notes="""Quantization = mlx-community "MXFP4-Q8" recipe: the HF checkpoint ships experts in mxfp4 (`quantization_config.quant_method = mxfp4`), mlx-lm loads them as mxfp4 (`mode: mxfp4`, group 32, uint8 E8M0 scales, no biases), and `convert -q --q-bits 8` quantizes everything else affine 8-bit/64. Global `quantization` block is the mxfp4 one; **every other module has its own per-path entry** `{group_size 64, bits 8, mode affine}` (router also 8 bit). HF `gate_up_proj_blocks` is interleaved: sanitize splits even rows -> `gate_proj`, odd rows -> `up_proj`. Experts: `experts.{gate,up,down}_proj.{weight,scales,bias}` (bias float `[E, out]`). Activation SwigluOAI: `g = min(gate, 7); u = clip(up, -7, 7); out = (g * sigmoid(1.702 g)) * (u + 1)`. Router Linear with bias; top-k on raw logits, softmax over the k selected. Attention: q/k/v/o all with bias; `self_attn.sinks` [H] per-head logit added to the softmax denominator (sink column, not attended value). Sliding layers use window 4. Scale head_dim^-0.5. YaRN: mlx ignores `truncate`."""),
    "gemma4": dict(
        hl="wrapper `gemma4` + `text_config` gemma4_text; L=6, d=64, ffn 64 (128 on kv-shared layers), 4 heads/2 kv, head_dim 16 (sliding) / global_head_dim 32 (full), layer_types s,s,f,s,s,f, sliding_window 6, num_kv_shared_layers 3, per-layer inputs (64/layer), double-wide MLP on shared layers, final softcap 30, tied",
        notes="""E2B/E4B-style. Norms are plain `w` (nn.RMSNorm, **not** 1+w). Embedding × sqrt(d). Attention scale is **1.0** (q_norm/k_norm are RMSNorm with weights; v is RMS-normalised **without** weight). Sliding layers: rope default theta 1e4 over head_dim 16; full layers: head_dim = global_head_dim 32, "proportional" rope theta 1e6 with partial_rotary_factor 0.25 (only 8 dims rotated). KV sharing: the last `num_kv_shared_layers` layers have no k_proj/v_proj/k_norm and reuse the K/V (after norm+rope, incl. cache) of the last non-shared layer of the same type (here layers 3,4 <- 1; 5 <- 2); they also use the double-wide MLP (ffn 2×64 = 128). Per-layer inputs (computed once per forward): `e = embed_tokens_per_layer(ids) × sqrt(64)` reshaped [L, 64]; `p = RMSNorm_w(per_layer_projection_norm)(per_layer_model_projection(h0) × d^-0.5)` reshaped [L, 64] where h0 = embed_tokens(ids) × sqrt(d); `pli = (p + e) × 2^-0.5`; layer i, after its MLP residual, does `h += post_per_layer_input_norm(per_layer_projection(gelu_tanh(per_layer_input_gate(h)) * pli[i]))`. Each layer output × `layer_scalar` ([1]). Sandwich norms like gemma3. Final `tanh(x/30)*30`. Weights are under `language_model.model.*`."""),
    "gemma4-moe": dict(
        hl="gemma4 26B-A4B style: L=4 (s,f,s,f), MoE block (4 experts top-2, moe ffn 64) in parallel with dense MLP, attention_k_eq_v on full layers (1 global kv head), no per-layer inputs, no kv sharing",
        notes="""Same as gemma4 plus: full-attention layers have **no v_proj** (`attention_k_eq_v`: values = raw k_proj output, v_norm applied separately without rope) and use `num_global_key_value_heads`. MoE layer: `h1 = post_ffn_norm_1(mlp(pre_ffn_norm(h)))`, router on the un-normed h: `rms_norm(h) * router.scale * d^-0.5 -> router.proj -> top-k -> softmax over the k -> * router.per_expert_scale[idx]`; `h2 = post_ffn_norm_2(experts(pre_ffn_norm_2(h)))` (GeGLU SwitchGLU `experts.switch_glu.*`), then `post_feedforward_layernorm(h1 + h2)`. HF `experts.gate_up_proj` [E, 2I, d] is split in half (first half gate). `router.proj` quantized at 8 bits."""),
    "gemma3n": dict(
        hl="gemma-3n-E4B style at toy size: wrapper `gemma3n` + text_config; L=4 (s,f,s,f), d=64, 4 heads/2 kv, head_dim 16, ffn 128, AltUp 4 streams (active 0, coef clip 120, correct_scale), LAuReL rank 8, per-layer inputs 16/layer with vocab_size_per_layer_input 256 < vocab 320, num_kv_shared_layers 2, activation sparsity 0.95 on layers 0-1, sliding_window 6, softcap 30, tied",
        notes="""Plain `w` RMSNorms; attention scale 1 with q_norm/k_norm (weights) and v RMS-normalised without weight; RoPE (full head_dim) base `rope_local_base_freq` on sliding layers, `rope_theta` on full ones (`rope_scaling` unused). `h0 = embed × sqrt(d)`. **AltUp**: streams `[h0, p_i(h0) × rms(h0)/rms(p_i(h0))]` (`altup_projections.{0,1,2}`); per layer `predict`: m = tanh(modality_router(router_norm(x_active) / d)) ([n]); c = prediction_coefs(m) (weight clipped to ±altup_coef_clip, f32, not quantized: in-dim 4); stream q ← x_q + Σ_p c[q·n+p]·x_p. Block on the active prediction a: `n = input_layernorm(a)`; laurel = n + post_laurel_norm(linear_right(linear_left(n))); `g = a + post_attention_layernorm(attn(n))`; `l = (g + laurel)/sqrt2`; `y = l + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(l)))`. `correct`: coefs = correction_coefs(tanh(router(y))) + 1; stream i ← pred_i + coefs_i·(y − pred_active). Then `f = corrected[active] × altup.correct_output_scale`; `f = post_per_layer_input_norm(per_layer_projection(gelu_tanh(per_layer_input_gate(f)) × pli[layer]))`, added to streams **1..n** only. Per-layer inputs as gemma4 but token ids ≥ `vocab_size_per_layer_input` read row 0. MLP: GeGLU; on layers with sparsity s > 0 the gate becomes `gelu_tanh(max(0, g − (mean(g) + std(g)·sqrt2·erfinv(2s−1))))` (population std over the ffn dim). End: streams 1.. through `altup_unembed_projections`, rescaled to rms(stream 0), averaged; final norm; tied head; `tanh(x/30)·30`. **KV sharing**: layers ≥ L − num_kv_shared_layers attend over the cache of the last earlier layer of the same type (here 2 ← 0, 3 ← 1) — but only when there is a cache: mlx-lm's no-cache forward (`model(ids)`) runs their own k_proj/v_proj instead, so `nocache_check.tokens_match` is false here (max diff ≈ 7.8) and `last_logits` come from a cached prefill. Names under `model.language_model.*`; sanitize drops `vision_tower`, `audio_tower`, `embed_vision`, `embed_audio`."""),
    "qwen3_5": dict(
        hl="wrapper `qwen3_5` + text_config `qwen3_5_text`; L=4 (3 GatedDeltaNet + 1 full attention, full_attention_interval 4), d=64, attention 4/2 heads head_dim 16 with output gate, rope partial 0.25 (4 dims) theta 1e7, linear attn: 2 k-heads × 16, 4 v-heads × 16, conv kernel 4; dense MLP",
        notes="""**Norm weights are converted**: HF Qwen3.5 stores (1+w)-style norms; mlx-lm sanitize adds 1.0 to input_layernorm, post_attention_layernorm, model.norm, q_norm, k_norm when the checkpoint is unconverted (detected by conv1d shape), so MLX files hold the final multiplier (plain `rms_norm(x)*w`). `linear_attn.norm` (gated RMSNorm) is not offset. conv1d stored MLX-style `[C, K, 1]` (depthwise; C = 2·key_dim + value_dim = 128), no bias; causal conv with K-1 zero (or cached) left context then SiLU. Separate projections `in_proj_qkv` (q|k|v concatenated), `in_proj_z`, `in_proj_b`, `in_proj_a`. `A_log` is **float32**. Gated delta rule: q,k L2-normalised (q also × d_k^-0.5), beta = sigmoid(b), g = exp(-exp(A_log) · softplus(a + dt_bias)); state S[h] (Dv×Dk): `S = g·S; S += outer(beta·(v - S k), k); o = S q`; GQA: v-heads / k-heads = 2 (k-head j serves v-heads 2j, 2j+1). Output `out_proj(gated_rmsnorm(o, z))` with gated norm = `rms_norm(o)*w * silu(z)`. Full-attention layers: q_proj outputs 2× (per head [q(hd) | gate(hd)]), o_proj(attn * sigmoid(gate)); q_norm/k_norm per head; rope on first 25% dims. Names under `language_model.model.*`, `language_model.lm_head`."""),
    "qwen3_5_moe": dict(
        hl="wrapper `qwen3_5_moe` + text_config `qwen3_5_moe_text`; the qwen3_5 fixture's dims (3 GatedDeltaNet + 1 full attention), every layer MoE: 4 experts top-2 (moe ffn 64) + shared expert (64) with sigmoid shared_expert_gate, untied",
        notes="""mlx-lm's `qwen3_5_moe.Model` is `qwen3_5.Model` with its own sanitize: HF `mlp.experts.gate_up_proj` [E, 2I, d] (no `.weight`; first half of the rows gate, second half up) and `mlp.experts.down_proj` [E, d, I] become `mlp.switch_mlp.{gate,up,down}_proj`; then qwen3_5's sanitize (norms +1, conv1d to `[C,K,1]`). The feed-forward of **every** layer is `Qwen3NextSparseMoeBlock` (softmax router `mlp.gate` -> top-k -> renorm, + `shared_expert` × sigmoid(`shared_expert_gate`)), regardless of `decoder_sparse_step`; router and shared-expert gate quantized at 8 bits. `A_log` stays f32 (qwen3_5's cast_predicate). Names under `language_model.model.*`, `language_model.lm_head`."""),
    "qwen3_vl": dict(
        hl="Qwen3-VL-4B style wrapper `qwen3_vl` + text_config `qwen3_vl_text`: L=2, d=64, 4/2 heads, head_dim 16, q/k norms, theta 5e6, interleaved M-RoPE section [2,3,3] (rope_type default), tied",
        notes="""mlx-lm's `qwen3_vl.Model` is the **qwen3** text model under `language_model`, built from `text_config` (or from the whole config when there is none); `rope_scaling` with `rope_type: default` makes it plain RoPE (text-only M-RoPE positions are equal on all three axes). sanitize drops `visual` / `vision_tower`, lifts the newer HF `model.language_model.*` to `model.*` (dropping `model.visual`), then prefixes everything with `language_model.`; the qwen3 sanitize is not called. Tied: no `lm_head`, `tie_word_embeddings` read from `text_config`. Names under `language_model.model.*`."""),
    "qwen3_vl_moe": dict(
        hl="Qwen3-VL-30B-A3B style wrapper `qwen3_vl_moe` + text_config `qwen3_vl_moe_text`: L=2, d=64, 4/2 heads, head_dim 16, 4 experts top-2 (moe ffn 64) on every layer, norm_topk_prob, theta 5e6, M-RoPE section [2,3,3], untied",
        notes="""The text model is mlx-lm's **qwen3_moe** (see there: q/k norms, `nn.RoPE(head_dim, base=rope_theta)` ignoring `rope_scaling`, softmax router `mlp.gate` quantized at 8 bits). HF stores the experts transposed: `mlp.experts.gate_up_proj` [E, d, 2I] (first I columns gate) and `mlp.experts.down_proj` [E, I, d], no `.weight`; sanitize splits and transposes them into `mlp.switch_mlp.{gate,up,down}_proj.weight`. Newer HF layout `model.language_model.*` + top-level `lm_head` becomes `language_model.model.*` / `language_model.lm_head`; `visual` is dropped."""),
    "qwen3_next": dict(
        hl="L=4 (3 GatedDeltaNet + 1 attention), d=64, same linear-attn dims as qwen3_5, all layers MoE: 4 experts top-2 (moe ffn 64) + shared expert (64) with sigmoid shared_expert_gate",
        notes="""Like qwen3_5 (norm +1 folded in by sanitize, conv1d `[C,K,1]`, gated attention) except that `A_log` is **bf16** here (qwen3_next has no cast_predicate) but the linear attention uses **fused, head-grouped** projections: `in_proj_qkvz` output is reshaped to [num_k_heads, (dk | dk | (nv/nk)·dv | (nv/nk)·dv)] = per k-head q, k, v-group, z-group; `in_proj_ba` to [num_k_heads, (nv/nk) b | (nv/nk) a]. MoE: router `mlp.gate` (8-bit) softmax -> top-k -> renorm (norm_topk_prob) ; plus `shared_expert` SwiGLU × sigmoid(`shared_expert_gate` (Linear d->1, 8-bit)). Experts `mlp.switch_mlp.*` stacked."""),
    "glm4_moe": dict(
        hl="L=2 (layer 0 dense ffn 128, layer 1 MoE: 4 routed top-2 + 1 shared, moe ffn 64), d=64, 4/2 heads head_dim 16, qkv bias, qk-norm, partial rotary 0.5, sigmoid routing with e_score_correction_bias, routed_scaling_factor 2.5",
        notes="""Router `mlp.gate.weight` is a bare parameter (not quantized, bf16) and `mlp.gate.e_score_correction_bias` stays **f32**. Routing (noaux_tc): s = sigmoid(x·Wᵀ) (f32); choose top-k by s + bias (group-limited if n_group>1); weights = s (without bias) of the chosen, renormalised if norm_topk_prob, × routed_scaling_factor; + `shared_experts` SwiGLU. RoPE on the first head_dim·0.5 dims (non-traditional). q/k/v have bias, o_proj none. sanitize also drops a trailing MTP layer `model.layers.{num_hidden_layers}`."""),
    "deepseek_v3": dict(
        hl="L=2 (dense, MoE), d=64, MLA: 2 heads, q_lora 64, kv_lora 64, qk_nope 64, qk_rope 16, v_head 64; 4 routed experts top-2, n_group 2 / topk_group 1, 1 shared, scaling 2.5; yarn rope (factor 4, orig 128, mscale_all_dim 1)",
        notes="""MLA in **absorbed form**: HF `kv_b_proj` [H·(nope+v), kv_lora] is split by sanitize into `self_attn.embed_q` (MultiLinear weight [H, kv_lora, nope]) and `self_attn.unembed_out` ([H, v_head, kv_lora]), both quantized per head along the last dim (uint32 `[H, out, in/8]`, scales `[H, out, in/64]`). Forward: q = q_b(q_a_layernorm(q_a(x))) -> [H, nope | rope]; kv_a_proj_with_mqa(x) -> [kv_lora | k_rope(16)]; latent = kv_a_layernorm(...); rope (**traditional/interleaved pairs**, YaRN) on q_rope and the single shared k_rope head. Scores = (q_nope·W_kᵀ)·latentᵀ·scale + (q_rope·scale)·k_ropeᵀ, values = latent then unembed_out; scale = (nope+rope)^-0.5 × mscale² where mscale = 0.1·mscale_all_dim·ln(factor)+1. The KV cache stores latent (kv_lora) + k_rope. Router `mlp.gate.weight` bare bf16 param, `e_score_correction_bias` f32, group-limited top-k (group score = sum of top-2 in group). First `first_k_dense_replace` layers dense."""),
    "minimax": dict(
        hl="L=2, d=64, 4/2 heads head_dim 16, rotary_dim 8 (partial), qk-norm over the **whole** q / k projection, every layer MoE: 4 experts top-2 (ffn 64), sigmoid routing + e_score_correction_bias, untied",
        notes="""`q_norm` weight is [H·hd] = 64 and `k_norm` [KV·hd] = 32: RMSNorm over the full projected vector before the head split (not per head). RoPE (non-traditional) on the first `rotary_dim` dims of each head. MoE in `block_sparse_moe`: `gate` is a Linear (8-bit), evaluated in f32 (`x.astype(f32)`), sigmoid, top-k by score + `e_score_correction_bias` (f32), weights = sigmoid scores of the chosen / sum; experts `block_sparse_moe.switch_mlp.*` (HF w1=gate, w2=down, w3=up). No shared expert."""),
    "nemotron_h": dict(
        hl='pattern "M-*E": Mamba2, MLP, attention, MoE; d=64; mamba 4 heads × 16, state 16, n_groups 2, conv 4 (bias); attention 4/2 heads no rope; MLP relu²; MoE 4 experts top-2 + shared, sigmoid routing',
        notes="""Names under `backbone.*` (`backbone.embeddings`, `backbone.layers.N.norm`, `backbone.layers.N.mixer.*`, `backbone.norm_f`), untied `lm_head`. Every block: `x + mixer(rmsnorm(x))` (single norm per block). Mamba2 mixer: in_proj -> [gate z (64) | xBC (64 + 2·2·16) | dt (4)]; causal depthwise conv1d (`[C,K,1]`, with bias) + SiLU on xBC; SSM with A = -exp(A_log) (**A_log f32**), dt = softplus(dt + dt_bias) clipped to time_step_limit, D skip; output `norm(y, z)` = **grouped** gated RMSNorm: y·silu(z), RMS-normalised within each of n_groups groups (group size 64/2 = 32), × weight; then out_proj. Attention has no positional encoding at all. MLP & experts: `down(relu(up(x))²)` (no gate). MoE gate = bare `mixer.gate.weight` + f32 `e_score_correction_bias`, deepseek-style noaux_tc routing ×2.5, + shared_experts; experts `mixer.switch_mlp.fc1` (up) / `fc2` (down)."""),
    "granitemoehybrid": dict(
        hl="L=4 (mamba, mamba, attention, mamba), d=64, every layer MoE 4 experts top-2 (ffn 64) + shared MLP 128; embedding_multiplier 12, attention_multiplier 0.1, residual_multiplier 0.22, logits_scaling 2; position_embedding_type nope; tied",
        notes="""h = embed × 12; each layer: `x + r·mixer(input_layernorm(x))`, `h + r·(moe(n) + shared_mlp(n))` with n = post_attention_layernorm(h), r = 0.22; logits = lm(h)/2 (logits_scaling). Attention scale = attention_multiplier (not 1/sqrt(hd)); no rope ("nope"). Mamba2 mixer like nemotron_h but the gated norm is **not grouped** (RMS over all 64 channels) and A_log is cast to bf16 (no cast_predicate). `shared_mlp.input_linear` [2·128, d] (first half gate, second half up), `shared_mlp.output_linear`. MoE router `block_sparse_moe.router.layer` (Linear, 8-bit): top-k on logits, softmax over the k. HF `block_sparse_moe.input_linear` [E, 2I, d] is split by sanitize into switch_mlp gate (first half) / up."""),
}
for _b in (2, 3, 6, 8):
    NOTES[f"llama-{_b}bit"] = dict(
        hl=f"same config as `llama` (own random weights), quantized {_b}-bit affine, group 64",
        notes=f"{_b}-bit packing: see layout section (uint32 row width = in·{_b}/32).")


def write_readme():
    import mlx_lm as _m

    lines = [README_HEAD.format(mlx=mx.__version__, mlx_lm=_m.__version__,
                                prompt=PROMPT_IDS, n=N_GREEDY, min_margin=MIN_F32_MARGIN,
                                min_distinct=MIN_DISTINCT)]
    details = []
    missing = []
    for name, spec in FIXTURES.items():
        d = OUT_ROOT / name
        if not (d / "reference.json").exists():
            missing.append(name)
            continue
        ref = json.load(open(d / "reference.json"))
        size = sum(p.stat().st_size for p in d.iterdir() if p.is_file())
        q = ref["quantization"]
        qs = f"{q.get('mode', 'affine')} {q.get('bits')}b/g{q.get('group_size')}"
        n_over = len(ref["per_layer_quantization_overrides"])
        if n_over:
            qs += f" (+{n_over} per-layer)"
        note = NOTES.get(name, {})
        lines.append(
            f"| [{name}](#{name.replace('_', '_')}) | {ref['model_type']} | `{spec['module']}` | "
            f"{note.get('hl', '')} | {qs} | {size/1024:.0f} KiB | see below |\n")
        hdr = safetensors_header(d / "model.safetensors")
        hdr.pop("__metadata__", None)
        cfg = json.load(open(d / "config.json"))
        layer0 = sorted(k for k in hdr if ".layers.0." in k)
        other = sorted(k for k in hdr if ".layers." not in k)
        sec = [f"\n### {name}\n\n"]
        sec.append(f"- mlx-lm module `{spec['module']}`, model_type `{ref['model_type']}`, "
                   f"{len(hdr)} tensors, {size/1024:.0f} KiB on disk.\n")
        sec.append(f"- Quantization: `{json.dumps(q)}`")
        if n_over:
            ex = dict(list(ref["per_layer_quantization_overrides"].items())[:3])
            sec.append(f"; {n_over} per-layer entries, e.g. `{json.dumps(ex)}`")
        sec.append("\n")
        sec.append(f"- Reference: greedy `{ref['greedy_tokens']}` (f32: `{ref['f32']['greedy_tokens']}`), "
                   f"no-cache re-check tokens_match={ref['nocache_check']['tokens_match']}.\n")
        sec.append(f"- Notes: {note.get('notes', '')}\n\n")
        sec.append("<details><summary>config.json (forward-relevant fields)</summary>\n\n```json\n")
        show = {k: v for k, v in cfg.items()
                if k not in ("quantization", "quantization_config")}
        sec.append(json.dumps(show, indent=1) + "\n```\n</details>\n\n")
        sec.append("Tensors outside the layer stack and of layer 0 (name, dtype, shape):\n\n```\n")
        for k in other + layer0:
            sec.append(f"{k:<70} {hdr[k]['dtype']:<5} {hdr[k]['shape']}\n")
        # layers with a different structure than layer 0
        layer_sets = {}
        for k in hdr:
            if ".layers." in k:
                pre, rest = k.split(".layers.", 1)
                idx, suf = rest.split(".", 1)
                layer_sets.setdefault(int(idx), set()).add(
                    (suf, hdr[k]["dtype"], tuple(hdr[k]["shape"])))
        l0 = layer_sets.get(0, set())
        for idx in sorted(layer_sets):
            if idx and layer_sets[idx] != l0 and all(
                layer_sets[idx] != layer_sets[j] for j in sorted(layer_sets) if 0 < j < idx
            ):
                sec.append(f"-- layer {idx} (different tensors/shapes than the layers above):\n")
                for k in sorted(k for k in hdr if f".layers.{idx}." in k):
                    sec.append(f"{k:<70} {hdr[k]['dtype']:<5} {hdr[k]['shape']}\n")
        sec.append("```\n")
        details.append("".join(sec))
    lines.append("\n")
    if missing:
        lines.append(f"Not generated: {', '.join(missing)}\n\n")
    lines.append("## Per-fixture details\n")
    lines.extend(details)
    with open(OUT_ROOT / "README.md", "w") as f:
        f.write("".join(lines))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", help="fixture names (default: all)")
    ap.add_argument("--readme-only", action="store_true")
    args = ap.parse_args()
    mx.set_default_device(mx.cpu)
    OUT_ROOT.mkdir(parents=True, exist_ok=True)
    failed = {}
    if not args.readme_only:
        names = args.only or list(FIXTURES)
        for n in names:
            if n not in FIXTURES:
                sys.exit(f"unknown fixture {n}; known: {', '.join(FIXTURES)}")
        for n in names:
            try:
                build_fixture(n, FIXTURES[n])
            except Exception as e:  # keep going, report at the end
                import traceback

                traceback.print_exc()
                failed[n] = repr(e)
    write_readme()
    if failed:
        print("FAILED:", json.dumps(failed, indent=1))
        sys.exit(1)


if __name__ == "__main__":
    main()
