"""Generation: the KV cache, sampling filters, eos, and sample.py end to end."""
import torch
from conftest import run, small_config

from generate import generate, sample_next
from model import Qwen3, save_pretrained
from tokenizer import EOT, get_tokenizer, save_tokenizer


def test_kv_cache_greedy_equals_full_recompute():
    """Greedy decoding with the cache == re-running the whole sequence through the model at every step."""
    torch.manual_seed(2)
    model = Qwen3(small_config()).eval()
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.1)  # make the logits peaky enough that greedy paths are nontrivial
    prompt = torch.randint(0, 320, (3, 11))
    cached = generate(model, prompt, 40, temperature=0)
    seq = prompt
    with torch.no_grad():
        for _ in range(40):
            seq = torch.cat([seq, model(seq)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, seq) and cached.shape == (3, 51)
    assert len(set(cached[0, 11:].tolist())) > 1


def test_top_k_and_top_p_filter_the_candidates():
    torch.manual_seed(0)
    logits = torch.tensor([[5.0, 4.0, 0.0, -1.0]] * 200)
    assert set(sample_next(logits, 1.0, top_k=2).flatten().tolist()) == {0, 1}
    assert set(sample_next(logits, 1.0, top_p=0.5).flatten().tolist()) == {0}


def test_generation_stops_when_every_row_has_produced_eos():
    model = Qwen3(small_config()).eval()
    out = generate(model, torch.zeros(2, 3, dtype=torch.long), 20, temperature=1.0, eos=list(range(320)))
    assert out.shape[1] == 4  # every token is an eos: one step and stop


def test_sample_py_streams_the_models_greedy_text(tmp_path):
    torch.manual_seed(0)
    model = Qwen3(small_config(vocab_size=151936, hidden_size=16, intermediate_size=32, head_dim=8))
    save_pretrained(model, tmp_path, dtype=torch.float32, eos_token_id=EOT)
    save_tokenizer(tmp_path)
    r = run(["sample.py", f"--init_from={tmp_path}", "--prompt", "你好", "--max_new_tokens=8", "--temperature=0"])
    assert r.returncode == 0, r.stderr
    ids = get_tokenizer().encode("你好")
    new = generate(model, torch.tensor([ids]), 8, temperature=0, eos=EOT)[0, len(ids):].tolist()
    text = get_tokenizer().decode(new[:new.index(EOT)] if EOT in new else new).replace("\ufffd", "")
    assert text, "the model's greedy continuation decodes to nothing: the check below would be vacuous"
    assert r.stdout.startswith("你好" + text)
