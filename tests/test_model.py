"""The model: Hugging Face parity in both directions, HF names, the chunked loss, loading official layouts."""
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import small_config

from checkpoint import from_pretrained, hf_config, save_pretrained
from model import Qwen3, Qwen3Config, chunked_cross_entropy


@pytest.mark.parametrize("tied", [True, False])
def test_ours_loads_in_transformers_with_identical_logits(tmp_path, tied):
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    x = torch.randint(0, 320, (2, 33))
    ours = Qwen3(small_config(tie_word_embeddings=tied)).eval()
    save_pretrained(ours, tmp_path, dtype=torch.float32)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    with torch.no_grad():
        assert (ours(x)[0] - hf(x).logits).abs().max() <= 1e-4


@pytest.mark.parametrize("tied", [True, False])
def test_transformers_model_loads_in_ours_with_identical_logits(tmp_path, tied):
    from transformers import Qwen3Config as HFConfig, Qwen3ForCausalLM
    torch.manual_seed(0)
    x = torch.randint(0, 320, (2, 33))
    hf_cfg = HFConfig(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=24, tie_word_embeddings=tied, rope_theta=10000.0,
                      max_position_embeddings=256)
    hf = Qwen3ForCausalLM(hf_cfg).eval()
    for p in hf.parameters():  # HF inits norms to 1; perturb everything so the test can fail
        p.data.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert (ours(x)[0] - hf(x).logits).abs().max() <= 1e-4
    keys = set(ours.state_dict())
    assert ("lm_head.weight" in keys) == (not tied)
    assert keys == set(hf.state_dict()) - ({"lm_head.weight"} if tied else set())
    if tied:
        return
    # what transformers reads in a config.json as its Qwen3's defaults or as plain RoPE, ours reads alike: no
    # tie_word_embeddings key (transformers: untied), a 4.x rope_scaling of type default, a stored RoPE table
    import json
    from safetensors.torch import load_file, save_file
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("tie_word_embeddings"), cfg.update(rope_scaling={"rope_type": "default"})
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    sd = load_file(tmp_path / "model.safetensors")
    save_file({**sd, "model.rotary_emb.inv_freq": torch.ones(12)}, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with torch.no_grad():
        assert (from_pretrained(tmp_path).eval()(x)[0] - hf(x).logits).abs().max() <= 1e-4
    # and what it computes otherwise is refused, not loaded as plain Qwen3
    for change in ({"use_sliding_window": True, "sliding_window": 8}, {"hidden_act": "gelu"},
                   {"layer_types": ["full_attention", "sliding_attention"]}, {"rope_scaling": {"rope_type": "linear"}}):
        (tmp_path / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(ValueError, match="variants of Qwen3 this model does not compute"):
            from_pretrained(tmp_path)


def test_full_config_parameter_count():
    """Built on the meta device: the count without allocating (or initialising) 2.4 GB of weights."""
    from mfu import count_params
    with torch.device("meta"):
        model = Qwen3(Qwen3Config())
    assert sum(p.numel() for p in model.parameters()) == 596_049_920
    assert count_params(Qwen3Config()) == 596_049_920


def test_matmul_flops_count_each_weight_matrix_once_tied_or_not():
    """6 FLOPs a token per weight a token multiplies: the lm_head once; an untied input embedding is a lookup (it
    was counted too: +18.7% for an untied 0.6B). By hand: 28 layers of q, k, v, o, gate, up, down, then the lm_head."""
    from mfu import flops_per_token_matmul
    c = Qwen3Config()
    per_layer = c.hidden_size * c.head_dim * (2 * c.num_attention_heads + 2 * c.num_key_value_heads) \
        + 3 * c.hidden_size * c.intermediate_size
    by_hand = 6 * (c.num_hidden_layers * per_layer + c.vocab_size * c.hidden_size) \
        + 12 * c.num_hidden_layers * c.num_attention_heads * c.head_dim * 2048
    assert flops_per_token_matmul(c, 2048) == by_hand
    assert flops_per_token_matmul(Qwen3Config(tie_word_embeddings=False), 2048) == by_hand


def test_state_dict_names_are_hf():
    keys = set(Qwen3(small_config(num_hidden_layers=1)).state_dict())
    expected = {"model.embed_tokens.weight", "model.norm.weight"} | {
        f"model.layers.0.{k}.weight" for k in
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "self_attn.q_norm",
         "self_attn.k_norm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm",
         "post_attention_layernorm"]}
    assert keys == expected


def test_chunked_loss_equals_full_cross_entropy_value_and_gradients():
    torch.manual_seed(1)
    h = torch.randn(3, 50, 64, requires_grad=True)
    w = torch.randn(320, 64, requires_grad=True)
    t = torch.randint(0, 320, (3, 50))
    t[0, :7] = -100
    loss = chunked_cross_entropy(h, w, t, chunk_rows=16)  # 150 rows -> 10 chunks
    ref = F.cross_entropy((h @ w.T).reshape(-1, 320), t.reshape(-1), ignore_index=-100)
    assert torch.allclose(loss, ref, atol=1e-5)
    for a, b in zip(torch.autograd.grad(loss, (h, w)), torch.autograd.grad(ref, (h, w))):
        assert torch.allclose(a, b, atol=1e-6)


def test_model_loss_equals_transformers_loss(tmp_path):
    """targets = next tokens in ours; HF shifts labels inside. Same number, also with ignored labels."""
    from transformers import Qwen3ForCausalLM
    model = Qwen3(small_config()).eval()
    save_pretrained(model, tmp_path, dtype=torch.float32)
    hf = Qwen3ForCausalLM.from_pretrained(tmp_path).eval()
    x = torch.randint(0, 320, (2, 40))
    labels = x.clone()
    labels[1, 30:] = -100
    with torch.no_grad():
        _, ours = model(x[:, :-1], labels[:, 1:])
        assert abs(ours.item() - hf(x, labels=labels).loss.item()) < 1e-5


def _save_official_sharded(model, d):
    from safetensors.torch import save_file
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()  # official tied checkpoints store both
    keys = sorted(sd)
    half = len(keys) // 2
    save_file({k: sd[k] for k in keys[:half]}, d / "model-00001-of-00002.safetensors")
    save_file({k: sd[k] for k in keys[half:]}, d / "model-00002-of-00002.safetensors")
    json.dump({"weight_map": {k: f"model-0000{1 if i < half else 2}-of-00002.safetensors" for i, k in enumerate(keys)}},
              open(d / "model.safetensors.index.json", "w"))
    json.dump(hf_config(model.config, "float32"), open(d / "config.json", "w"))


def test_from_pretrained_reads_sharded_official_layout(tmp_path):
    model = Qwen3(small_config())
    _save_official_sharded(model, tmp_path)
    x = torch.randint(0, 320, (1, 9))
    with torch.no_grad():
        assert torch.equal(from_pretrained(tmp_path)(x)[0], model(x)[0])


def test_from_pretrained_refuses_other_architectures(tmp_path):
    _save_official_sharded(Qwen3(small_config()), tmp_path)
    cfg = json.load(open(tmp_path / "config.json"))
    cfg["model_type"], cfg["architectures"] = "llama", ["LlamaForCausalLM"]
    json.dump(cfg, open(tmp_path / "config.json", "w"))
    with pytest.raises(ValueError, match="only Qwen3"):
        from_pretrained(tmp_path)


def test_from_pretrained_names_a_damaged_weights_file(tmp_path):
    save_pretrained(Qwen3(small_config()), tmp_path, dtype=torch.float32)
    open(tmp_path / "model.safetensors", "wb").write(b"\0" * 100)
    with pytest.raises(ValueError, match="model.safetensors"):
        from_pretrained(tmp_path)


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_weights_file_gets_the_umask_mode_like_config_json(tmp_path, umask):
    """A shared model directory (checkpoints and exports both go through save_pretrained) must be readable by
    whoever may read its config.json: safetensors alone creates model.safetensors 0600."""
    import os
    old = os.umask(umask)
    try:
        save_pretrained(Qwen3(small_config()), tmp_path, dtype=torch.float32)
    finally:
        os.umask(old)
    mode = lambda name: os.stat(tmp_path / name).st_mode & 0o777
    assert mode("model.safetensors") == mode("config.json") == 0o666 & ~umask


def test_exported_config_names_the_first_transformers_with_qwen3(tmp_path):
    """transformers 5.0-5.17 take a local config.json without `transformers_version` for a Mistral one and warn that
    the tokenizer's regex is wrong (seen on the device with 5.17); the version Qwen3 first shipped in avoids that."""
    from packaging.version import Version
    save_pretrained(Qwen3(small_config()), tmp_path, dtype=torch.float32)
    written = json.load(open(tmp_path / "config.json"))["transformers_version"]
    assert Version("4.51.0") <= Version(written) < Version("5.0.0")


def test_the_first_line_warns_of_long_cpu_steps_only():
    """The CPU time-per-step guess was 3x off either way for small models (LOG 28): said only when a step will take
    minutes or hours (the reference recipe on a CPU), never for the demo, whose step lines time it."""
    from mfu import describe_run
    from model import Qwen3Config
    big = describe_run(Qwen3Config(), 384, 2048, 100, 1, "cpu")
    tiny = describe_run(small_config(), 4, 128, 200, 1, "cpu")
    assert big.endswith("h a step -- for the CPU demo run `python train.py config/tiny.py`"), big
    assert tiny.endswith("4 x 128 = 512 tokens a step, 200 steps") and "on a CPU" not in tiny, tiny
    assert "on a CPU" not in describe_run(Qwen3Config(), 384, 2048, 100, 1, "cuda:0")
