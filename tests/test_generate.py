"""Generation: the KV caches (plain and static), the Decoder's fast path against the plain path and Hugging Face,
sampling filters and the exponential race, eos, sample.py end to end, and the decode benchmark's smoke run."""
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import copy_tokenizer, cuda, run, run_script, small_config

import generate as G
from generate import Decoder, KVCache, decode_step, generate, new_caches, sample_next, stream
from checkpoint import save_pretrained
from model import Qwen3
from tokenizer import EOT, get_tokenizer


def peaky_model(seed=2, **kw):
    """A small model whose logits are peaky enough that greedy paths are nontrivial and not decided by rounding."""
    torch.manual_seed(seed)
    model = Qwen3(small_config(**kw)).eval()
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.1)
    return model


def full_recompute_greedy(model, prompt, n):
    seq = prompt
    with torch.no_grad():
        for _ in range(n):
            seq = torch.cat([seq, model(seq)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq


def test_kv_cache_greedy_equals_full_recompute():
    """Greedy decoding with the cache == re-running the whole sequence through the model at every step."""
    model = peaky_model()
    prompt = torch.randint(0, 320, (3, 11))
    cached = generate(model, prompt, 40, temperature=0)
    assert torch.equal(cached, full_recompute_greedy(model, prompt, 40)) and cached.shape == (3, 51)
    assert len(set(cached[0, 11:].tolist())) > 1


def test_fast_path_greedy_equals_plain_path_and_transformers(tmp_path):
    """The Decoder's code (static cache + decode_step, run eagerly on the CPU) emits the plain path's greedy tokens,
    and both emit Hugging Face's, for 80 tokens in float32."""
    from transformers import AutoModelForCausalLM
    model = peaky_model(seed=3)
    prompt = torch.randint(0, 320, (2, 7), generator=torch.Generator().manual_seed(0))
    plain = generate(model, prompt, 80, temperature=0)
    dec = Decoder(model, batch_size=2, max_len=96)
    assert dec.step_kind == "eager" and not dec.cuda_graph  # the CPU runs the same code eagerly
    fast = dec.generate(prompt, 80, temperature=0)
    save_pretrained(model, tmp_path, dtype=torch.float32)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=80,
                      min_new_tokens=80, pad_token_id=0)
    assert torch.equal(plain, ref), (plain[:, 7:] != ref[:, 7:]).nonzero()[:1]
    assert torch.equal(fast, plain)
    assert len(set(plain[0, 7:].tolist())) > 3


def test_static_cache_logits_match_full_recompute_at_every_position():
    """Teacher-forced through the static path up to max_position_embeddings (64): at every position the logits of
    the one-token step (tensor positions, whole-buffer attention under the mask) equal a full forward's; a chunk of
    4 positions at once exercises the folded-GQA mask with several query rows."""
    model = peaky_model(seed=4, max_position_embeddings=64)
    seq = torch.randint(0, 320, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(seq)[0]
        caches = new_caches(model, 2, 64, "cpu", torch.float32)
        h = model.hidden_states(seq[:, :3], caches, 0)  # prefill: the int-start path
        assert torch.allclose(F.linear(h, model.lm_head_weight), full[:, :3], atol=1e-4)
        p = 3
        while p < 64:
            n = 4 if p == 10 else 1
            h = model.hidden_states(seq[:, p:p + n], caches, torch.arange(p, p + n).expand(2, n))
            err = (F.linear(h, model.lm_head_weight) - full[:, p:p + n]).abs().max()
            assert err < 1e-4, (p, err)
            p += n


def test_decoder_generates_until_the_cache_is_full():
    model = peaky_model(seed=5, max_position_embeddings=64)
    prompt = torch.randint(0, 320, (2, 5))
    dec = Decoder(model, batch_size=2)  # max_len defaults to max_position_embeddings
    out = dec.generate(prompt, 59, temperature=0)
    assert out.shape == (2, 64) and torch.equal(out, full_recompute_greedy(model, prompt, 59))
    assert dec.pos == 63  # the last token is not in the cache yet
    dec.reset()
    with pytest.raises(ValueError, match="64 positions"):
        dec.generate(prompt, 60, temperature=0)


def test_decoder_decodes_right_padded_prompts_of_different_lengths_like_each_alone():
    """Prompts of lengths 3, 9 and 6 in one batch, right-padded, with `lengths`: every row decodes from its own
    position and emits the greedy tokens of its prompt run alone (plain path), also when it stops at eos; a second
    prefill on uneven rows is refused until reset()."""
    model = peaky_model(seed=9)
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, 320, (1, n), generator=g) for n in (3, 9, 6)]
    alone = [generate(model, p, 20, temperature=0)[0, p.shape[1]:] for p in prompts]
    padded = torch.zeros(3, 9, dtype=torch.long)
    for b, p in enumerate(prompts):
        padded[b, :p.shape[1]] = p
    dec = Decoder(model, batch_size=3, max_len=32)
    out = dec.generate(padded, 20, temperature=0, lengths=[3, 9, 6])
    assert torch.equal(out[:, 9:], torch.stack(alone))
    with pytest.raises(ValueError, match="reset"):
        dec.prefill(padded)
    eos = int(alone[0][4])   # row 0 stops at its 5th token; the others run on (and may meet it too)
    dec.reset()
    out = dec.generate(padded, 20, temperature=0, lengths=torch.tensor([3, 9, 6]), eos=eos)
    plain = [generate(model, p, 20, temperature=0, eos=eos)[0, p.shape[1]:] for p in prompts]
    for b in range(3):
        assert torch.equal(out[b, 9:9 + len(plain[b])], plain[b])


def test_decoder_prefills_a_prompt_once_for_its_repeated_rows_as_if_each_row_had_it():
    """repeat (rl.py's group answering one prompt): two right-padded prompts, each for 3 rows, prefilled once and
    copied. Sampled with one seed, the 6 rows emit the very tokens, and the cache holds the very keys and values,
    of the same prompts written out 6 times; a row count that does not fill the batch is refused."""
    model = peaky_model(seed=5)
    g = torch.Generator().manual_seed(3)
    padded = torch.randint(0, 320, (2, 8), generator=g)
    outs, caches = [], []
    for idx, lengths, repeat in ((padded, [5, 8], 3), (padded.repeat_interleave(3, 0), [5, 5, 5, 8, 8, 8], 1)):
        dec = Decoder(model, batch_size=6, max_len=32)
        outs.append(dec.generate(idx, 12, temperature=1.0, top_k=50, lengths=lengths, repeat=repeat,
                                 generator=torch.Generator().manual_seed(7)))
        caches.append(torch.stack([c.k[:, :, :8] for c in dec.caches]))
    assert outs[0].shape == (6, 20) and torch.equal(outs[0], outs[1])
    assert len({tuple(r) for r in outs[0][:3, 8:].tolist()}) > 1   # the group's answers differ (sampled)
    torch.testing.assert_close(caches[0], caches[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="batch size 6, got 4 rows"):
        Decoder(model, batch_size=6, max_len=32).prefill(padded, repeat=2)
    dec = Decoder(model, batch_size=6, max_len=32)   # rows 0..1 would bring rows 0..1's history to every group
    dec.prefill(padded.repeat_interleave(3, 0))
    with pytest.raises(ValueError, match="a repeated prompt needs an empty cache"):
        dec.prefill(padded, repeat=3)


def test_decoder_continues_from_its_cache_like_a_chat():
    """Turn 2 appends [last generated token, new tokens] at the cache's position: the same tokens as generating
    from the whole history with the plain path."""
    model = peaky_model(seed=6)
    turn1, turn2 = torch.randint(0, 320, (1, 9)), torch.randint(0, 320, (1, 4))
    dec = Decoder(model, max_len=128)
    out1 = dec.generate(turn1, 12, temperature=0)
    out2 = dec.generate(torch.cat([dec.last, turn2], 1), 15, temperature=0)
    history = torch.cat([out1, turn2], 1)
    assert torch.equal(out2[:, 5:], generate(model, history, 15, temperature=0)[:, history.shape[1]:])
    assert dec.pos == history.shape[1] + 14


def run_slots(dec, prompts, n_new, settings=None, generators=None, join_every=2):
    """A continuous-batching schedule as serve.py runs it: the requests join the lowest free slot one every
    `join_every` steps (prefill_slot), the live rows step together with per-row sampling settings, and a request
    leaves (release) after n_new tokens, its slot then reused. Returns each request's tokens."""
    B = dec.batch_size
    settings = settings or [(0, None, None)] * len(prompts)
    generators = generators or [None] * len(prompts)
    dec.release()
    got, owner, pending = [[] for _ in prompts], [None] * B, list(range(len(prompts)))
    for t in range(10 * n_new * len(prompts)):
        for s, r in enumerate(owner):
            if r is not None and len(got[r]) == n_new:
                dec.release(s)
                owner[s] = None
        if pending and t % join_every == 0 and None in owner:
            r, s = pending.pop(0), owner.index(None)
            owner[s] = r
            got[r].append(dec.prefill_slot(s, prompts[r], *settings[r], generator=generators[r]).item())
        if not any(dec.live):
            if not pending:
                return got
            continue
        each = lambda i: [settings[r][i] if r is not None else (0, None, None)[i] for r in owner]
        nxt = dec.step(None, each(0), each(1), each(2), [generators[r] if r is not None else None for r in owner])
        for s, r in enumerate(owner):
            if r is not None and s < len(nxt):
                got[r].append(nxt[s].item())
    raise AssertionError("the schedule did not finish")


def test_decoder_slot_prefill_padded_to_a_power_of_two_or_direct_is_each_prompt_alone():
    """prefill_slot right-pads a prompt to 16 / 32 (a scratch row, then copied into the slot: what one CUDA graph a
    padded length replays on the GPU) and prefills a prompt longer than the largest padding that fits the cache
    (33 and 40 of 48) in its row directly: on both sides of each boundary, with slots reused, every request's greedy
    tokens are its prompt's alone (the padding's keys never reach a real token, the copy lands in its own row)."""
    model = peaky_model(seed=21)
    g = torch.Generator().manual_seed(8)
    prompts = [torch.randint(0, 320, (n,), generator=g).tolist() for n in (16, 3, 33, 17, 40, 32)]
    alone = [generate(model, torch.tensor([p]), 6, temperature=0)[0, len(p):].tolist() for p in prompts]
    dec = Decoder(model, batch_size=3, max_len=48)
    assert run_slots(dec, prompts, 6, join_every=1) == alone
    assert dec.slot_prefill[0][0].k.shape[2] == 32   # the scratch row: the largest power of two within the cache

def test_decoder_slots_join_and_leave_between_steps_like_each_prompt_alone():
    """Continuous batching on the Decoder: five prompts of different lengths through four slots, joining every other
    step, leaving after 12 tokens (a slot reused with an old sequence's keys beyond its prompt): each request's
    greedy tokens are its prompt's alone (plain path); steps ran over 1, 2 and 4 rows (the graphs' row counts)."""
    model = peaky_model(seed=13)
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 320, (n,), generator=g).tolist() for n in (5, 11, 3, 8, 6)]
    alone = [generate(model, torch.tensor([p]), 12, temperature=0)[0, len(p):].tolist() for p in prompts]
    dec = Decoder(model, batch_size=4, max_len=32)
    assert run_slots(dec, prompts, 12) == alone
    assert {1, 2, 4} <= set(dec.views)
    dec.reset()   # back to the batch API: every row live again
    assert torch.equal(dec.generate(torch.tensor([prompts[0]] * 4), 12, temperature=0)[:, 5:], torch.tensor([alone[0]] * 4))


def test_decoder_slots_sample_each_row_with_its_own_settings_and_generator():
    """Rows of one step with different temperature / top-k / top-p (greedy among them) and their own generators
    emit what each request run alone with its generator emits (the same noise, the same filters), also when a
    row's generator is torch's default; a seeded request is reproducible whatever it shares the batch with."""
    model = peaky_model(seed=14)
    g = torch.Generator().manual_seed(6)
    prompts = [torch.randint(0, 320, (n,), generator=g).tolist() for n in (4, 9, 6, 7)]
    settings = [(0, None, None), (1.3, 20, None), (0.8, None, 0.9), (1.0, 5, 0.7)]
    gen = lambda r: torch.Generator().manual_seed(100 + r)
    alone = [generate(model, torch.tensor([p]), 10, *s, generator=gen(r))[0, len(p):].tolist()
             for r, (p, s) in enumerate(zip(prompts, settings))]
    dec = Decoder(model, batch_size=4, max_len=32)
    assert run_slots(dec, prompts, 10, settings, [gen(r) for r in range(4)], join_every=1) == alone
    assert run_slots(dec, prompts[::-1], 10, settings[::-1], [gen(r) for r in range(4)][::-1], join_every=3) == alone[::-1]
    torch.manual_seed(0)
    default = run_slots(dec, prompts, 10, settings)   # torch's default generator for every row
    assert default[0] == alone[0] and default != alone


def test_decoder_sampling_settings_that_fail_to_copy_leave_none_behind():
    """A top_k no tensor holds fails its step, after the temperatures were copied; the next step with the settings
    before it must not run at those temperatures (serve.py's bystanders did: the settings looked unchanged)."""
    dec = Decoder(peaky_model(seed=15), batch_size=2, max_len=32)
    dec.prefill(torch.randint(0, 320, (2, 4)))
    dec.step(None, [0.5, 0.5], [0, 0], [1.0, 1.0])
    with pytest.raises(ValueError, match="Overflow"):
        dec.step(None, [1.5, 1.5], [2 ** 63, 2 ** 63], [1.0, 1.0])
    dec.step(None, [0.5, 0.5], [0, 0], [1.0, 1.0])
    assert dec.row_settings[0][:, 0].tolist() == [0.5, 0.5]


@pytest.mark.slow
def test_triton_step_computes_the_plain_step_in_the_cpu_interpreter():
    """tests/triton_step.py: decode_kernel.py's kernels run by Triton's CPU interpreter in float32, fused_linear alone
    (the tuned and small block configurations) against the PyTorch ops it fuses, and the whole Triton step and
    prefill inside Decoders against the PyTorch step: the same greedy tokens and the same cache contents, for
    right-padded rows at different positions, the cache in one program or in chunks, one row, and a continued cache
    (a prefill that starts mid-cache). The Decoder runs use wide blocks: the interpreter runs a launch's programs one
    after another. (The interpreter must be switched on before triton is imported: a subprocess. Its bf16 arithmetic
    is wrong, so bf16 is a CUDA test; before Triton 3.9 -- 3.6 tried -- it cannot take a loop bound loaded from
    memory, which the GPU compiler can.)"""
    triton = pytest.importorskip("triton")
    if tuple(int(x) for x in triton.__version__.split(".")[:2]) < (3, 9):
        pytest.skip(f"Triton {triton.__version__}'s CPU interpreter cannot run the kernel's loop (3.9 can)")
    r = run(["tests/triton_step.py"], env={"TRITON_INTERPRET": "1"})
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-2000:] + r.stderr[-3000:]


def test_decoder_refuses_an_unknown_step_and_a_cpu_cuda_graph():
    with pytest.raises(ValueError, match="step must be one of triton|compiled|eager"):
        Decoder(peaky_model(), 1, max_len=16, step="compile")
    with pytest.raises(ValueError, match="cuda_graph needs"):
        Decoder(peaky_model(), 1, max_len=16, cuda_graph=True)


def test_triton_step_is_the_default_only_for_16_bit_weights():
    """A float32 model keeps the PyTorch step: the Triton kernels' tl.dot would round float32 to TF32 on the GPU."""
    import decode_kernel
    pytest.importorskip("triton")
    cfg = small_config(head_dim=32)
    assert decode_kernel.available(cfg, torch.bfloat16) and decode_kernel.available(cfg, torch.float16)
    assert not decode_kernel.available(cfg, torch.float32)
    assert not decode_kernel.available(small_config(head_dim=24), torch.bfloat16)   # not a power of two


def test_sampling_fast_path_equals_plain_path_for_one_seed():
    """Temperature, top-k and top-p sampling draw the same noise from the same generator on both paths, so the
    same seed gives the same tokens (and different seeds different ones)."""
    model = peaky_model(seed=7)
    prompt = torch.randint(0, 320, (3, 6))
    kw = dict(temperature=1.5, top_k=40, top_p=0.95)
    plain = generate(model, prompt, 30, generator=torch.Generator().manual_seed(11), **kw)
    fast = Decoder(model, 3, max_len=64).generate(prompt, 30, generator=torch.Generator().manual_seed(11), **kw)
    other = generate(model, prompt, 30, generator=torch.Generator().manual_seed(12), **kw)
    assert torch.equal(fast, plain) and not torch.equal(other, plain)


def test_compiled_step_is_one_graph_and_computes_the_same(monkeypatch):
    """decode_hidden traces into a single graph (fullgraph: no graph breaks, cache writes as input mutations) and
    the traced function emits the eager tokens; aot_eager keeps this fast on the CPU (the GPU uses inductor, with the
    weights frozen in as constants)."""
    step = lambda *args: G.decode_hidden(*args)  # its own code object: dynamo's state for decode_hidden stays untouched
    monkeypatch.setattr(G, "_compiled", {"frozen": torch.compile(step, backend="aot_eager", fullgraph=True)})
    model = peaky_model(seed=8)
    prompt = torch.randint(0, 320, (2, 5))
    fast = Decoder(model, 2, max_len=32, step="compiled").generate(prompt, 12, temperature=0)
    assert torch.equal(fast, generate(model, prompt, 12, temperature=0))
    g = lambda: torch.Generator().manual_seed(3)
    kw = dict(temperature=0.7, top_k=30, top_p=0.9)
    fast = Decoder(model, 2, max_len=32, step="compiled").generate(prompt, 12, generator=g(), **kw)
    assert torch.equal(fast, generate(model, prompt, 12, generator=g(), **kw))


def test_top_k_and_top_p_filter_the_candidates():
    torch.manual_seed(0)
    logits = torch.tensor([[5.0, 4.0, 0.0, -1.0]] * 200)
    assert set(sample_next(logits, 1.0, top_k=2).flatten().tolist()) == {0, 1}
    assert set(sample_next(logits, 1.0, top_p=0.5).flatten().tolist()) == {0}
    t = lambda x: torch.tensor([x])  # the Decoder passes its settings as tensors
    assert set(sample_next(logits, t(1.0), top_k=2, top_p=t(0.5)).flatten().tolist()) == {0}


def test_exponential_race_samples_the_softmax_distribution():
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    logits = probs.log().expand(40000, 4)
    counts = torch.bincount(sample_next(logits, 1.0, generator=torch.Generator().manual_seed(0))[:, 0], minlength=4)
    assert counts[3] == 0 and (counts[:3] / 40000 - probs[:3]).abs().max() < 0.01, counts
    # E = 0 exactly must not let a filtered token (probability 0) win through 0 / 0 = nan
    assert sample_next(torch.tensor([[0.0, float("-inf")]]), 1.0, noise=torch.tensor([[1.0, 0.0]])).item() == 0


def test_generation_stops_when_every_row_has_produced_eos():
    model = Qwen3(small_config()).eval()
    out = generate(model, torch.zeros(2, 3, dtype=torch.long), 20, temperature=1.0, eos=list(range(320)))
    assert out.shape[1] == 4  # every token is an eos: one step and stop
    out = Decoder(model, 2, max_len=32).generate(torch.zeros(2, 3, dtype=torch.long), 20, temperature=1.0,
                                                 eos=list(range(320)))
    assert out.shape[1] == 4


def test_decoder_stops_at_eos_like_the_plain_path():
    """Rows finishing at different steps: finished rows repeat eos, the output ends where the last row finished,
    on both paths (the Decoder checks only every 16 tokens, then trims)."""
    model = peaky_model(seed=9)
    prompt = torch.randint(0, 320, (2, 4), generator=torch.Generator().manual_seed(2))
    free = generate(model, prompt, 30, temperature=0)[:, 4:]
    eos = [free[0, 3].item(), free[1, 7].item()]  # row 0 stops by step 4, row 1 by step 8
    plain = generate(model, prompt, 30, temperature=0, eos=eos)
    fast = Decoder(model, 2, max_len=64).generate(prompt, 30, temperature=0, eos=eos)
    assert torch.equal(fast, plain) and plain.shape[1] < 4 + 30
    dec = Decoder(model, 2, max_len=64)
    streamed = torch.cat(list(dec.stream(prompt, 30, temperature=0, eos=eos)), 1)
    assert torch.equal(streamed, plain[:, 4:])
    assert torch.equal(torch.cat(list(stream(model, prompt, 30, temperature=0, eos=eos)), 1), plain[:, 4:])


CPU = ["--device=cpu", "--dtype=float32"]  # the expected text is computed here on the CPU, also on a GPU machine


def _tiny_checkpoint(tmp_path, tokenizer_files, seed=0):
    torch.manual_seed(seed)
    model = Qwen3(small_config(vocab_size=151936, hidden_size=16, intermediate_size=32, head_dim=8))
    save_pretrained(model, tmp_path, dtype=torch.float32, eos_token_id=EOT)
    copy_tokenizer(tokenizer_files, tmp_path)
    return model


def _greedy_text(model, ids, n):
    new = generate(model, torch.tensor([ids]), n, temperature=0, eos=EOT)[0, len(ids):].tolist()
    return get_tokenizer().decode(new[:new.index(EOT)] if EOT in new else new).replace("\ufffd", "")


def _sample_py(monkeypatch, *args):
    """sample.py's command line run in this process (conftest.run_script); returns its exit status."""
    return run_script(monkeypatch, "sample.py", *args)


def test_sample_py_streams_the_models_greedy_text(tmp_path, tokenizer_files, monkeypatch, capsys):
    model = _tiny_checkpoint(tmp_path, tokenizer_files)
    assert _sample_py(monkeypatch, f"--init_from={tmp_path}", "--prompt", "你好", "--max_new_tokens=8", "--temperature=0",
                      *CPU) == 0
    text = _greedy_text(model, get_tokenizer().encode("你好"), 8)
    assert text, "the model's greedy continuation decodes to nothing: the check below would be vacuous"
    assert capsys.readouterr().out.startswith("你好" + text)


def test_sample_py_decoder_batches_samples_and_empty_prompt_starts_from_endoftext(tmp_path, tokenizer_files, monkeypatch,
                                                                                   capsys):
    """--prompt '' (once a dtype crash) continues <|endoftext|>; --fast=True runs the Decoder (eagerly, on the CPU)
    and --num_samples=3 decodes the three as one batch."""
    model = _tiny_checkpoint(tmp_path, tokenizer_files, seed=2)  # a seed whose greedy continuation of <|endoftext|> is not eos
    assert _sample_py(monkeypatch, f"--init_from={tmp_path}", "--prompt=", "--max_new_tokens=6", "--temperature=0",
                      "--fast=True", "--num_samples=3", *CPU) == 0
    out, err = capsys.readouterr()
    text = _greedy_text(model, [EOT], 6)
    assert text.strip(), "vacuous: the greedy continuation is empty"
    assert out.count("--- sample") == 3 and out.count(f"\n{text}\n") == 3, out
    assert "6 steps x 3 samples" in err and "(Decoder, eager step" in err  # one batch of 3 rows, the Decoder


def test_sample_py_damaged_checkpoint_is_a_one_line_error(tmp_path, tokenizer_files, monkeypatch):
    _tiny_checkpoint(tmp_path, tokenizer_files)
    open(tmp_path / "model.safetensors", "wb").write(b"\0" * 100)
    msg = _sample_py(monkeypatch, f"--init_from={tmp_path}", "--prompt=hi", "--max_new_tokens=2", *CPU)
    assert isinstance(msg, str) and "\n" not in msg.strip(), msg   # a one-line stop (exit status 1), no traceback
    assert msg.startswith("error: ") and "model.safetensors is damaged" in msg, msg


def test_decode_bench_smoke_run_on_cpu(capsys):
    """bench/decode.py's own code path with a small model on the CPU (the real run needs a GPU): valid JSON lines."""
    from bench.decode import main
    main(["--device=cpu", "--small=True", "--hf=False", "--quick=True"])
    lines = {d["what"]: d for d in map(json.loads, capsys.readouterr().out.splitlines())}
    assert lines["ours"]["tok_per_s"] > 0 and lines["agreement"]["ours_vs_plain"]["prefix"] == 16
    assert lines["ttft"]["ms"] > 0 and lines["roofline"]["roofline_tok_per_s"] > 0 and "done" in lines


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message is for machines without CUDA")
def test_gpu_benchmarks_on_a_cpu_say_so_in_one_line():
    from bench.decode import main
    from bench.fusions import bench_fusions
    with pytest.raises(SystemExit, match="bench/decode.py needs a CUDA GPU .*--device=cpu"):
        main(["--device=cuda"])
    with pytest.raises(SystemExit, match="bench/fusions.py needs a CUDA GPU"):
        bench_fusions()
    r = run(["bench/sft.py"], timeout=120)
    assert r.returncode == 1 and r.stderr.strip() == "bench/sft.py needs a CUDA GPU (--smoke=True runs a tiny CPU check)"


# ------------------------------------------------------------------------------------------------- CUDA
def _same_greedy_up_to_bf16_ties(model, got, want, start):
    """got == want after `start`, or equal up to a step where the two choices are a near-tie of the model's logits
    (a few bf16 roundings apart): two correct bf16 implementations may order a near-tie differently, a wrong cache
    or mask diverges where the choice is clear. Returns how many leading new tokens agree."""
    diff = (got[:, start:] != want[:, start:]).any(0).nonzero()
    if len(diff) == 0:
        return got.shape[1] - start
    d = start + diff[0].item()
    with torch.no_grad():
        logits = model(want[:, :d])[0][:, -1].float()
    gap = (logits.gather(1, want[:, d:d + 1]) - logits.gather(1, got[:, d:d + 1])).abs()
    assert (gap <= 0.02 * logits.abs().amax(-1, keepdim=True)).all(), (d - start, gap.flatten().tolist())
    return d - start


@cuda
def test_cuda_graph_paths_agree_with_plain_path_bf16():
    """On the GPU in bf16 with a fixed seed: the Triton step (the default), the compiled PyTorch step (weights frozen)
    and the eager PyTorch step, each replayed as a CUDA graph, emit the plain path's first 32 greedy tokens
    (batch 2) -- up to bf16 near-ties, which a random model has -- also when the graph is replayed again and when the
    Decoder continues its cache; sampling (top-k and top-p inside the graph) stays among the top candidates."""
    torch._dynamo.reset()  # compile from a clean slate (no shapes remembered from the CPU tests' traces)
    model = peaky_model(seed=10, vocab_size=4096, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                        head_dim=64, max_position_embeddings=512).cuda().to(torch.bfloat16)
    prompt = torch.randint(0, 4096, (2, 16), generator=torch.Generator().manual_seed(0)).cuda()
    plain = generate(model, prompt, 32, temperature=0)
    for kw in ({}, dict(step="compiled"), dict(step="eager")):
        dec = Decoder(model, 2, max_len=128, **kw)
        assert dec.cuda_graph and dec.step_kind == kw.get("step", "triton")
        fast = dec.generate(prompt, 32, temperature=0)
        agreed = _same_greedy_up_to_bf16_ties(model, fast, plain, 16)
        print(f"{kw or 'triton'}: {agreed} of 32 greedy tokens agree with the plain path")
        dec.reset()
        assert torch.equal(dec.generate(prompt, 32, temperature=0), fast)  # replayed, not recaptured: identical
        more = torch.randint(0, 4096, (2, 3), device="cuda")
        out2 = dec.generate(torch.cat([dec.last, more], 1), 20, temperature=0)
        history = torch.cat([fast, more], 1)
        _same_greedy_up_to_bf16_ties(model, torch.cat([history, out2[:, 4:]], 1),
                                     generate(model, history, 20, temperature=0), history.shape[1])
    dec = Decoder(model, 2, max_len=128)
    out = dec.generate(prompt, 24, temperature=1.0, top_k=5, top_p=0.9,
                       generator=torch.Generator("cuda").manual_seed(0))
    with torch.no_grad():
        full = model(out[:, :-1])[0][:, 15:].float()
    top = full.topk(8, -1).indices  # 8, not 5: the recompute's bf16 rounding may reorder near-ties at the edge
    assert (top == out[:, 16:, None]).any(-1).all()  # every sampled token is among its step's top candidates


@cuda
def test_cuda_decoder_prefills_a_prompt_once_for_its_repeated_rows_bf16():
    """repeat on the GPU (rl.py's rollout: the Triton prefill into the first rows' cache views, then copied): the
    cached keys of the prompts written out for every row, and their greedy tokens up to bf16 near-ties."""
    model = peaky_model(seed=12, vocab_size=4096, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                        head_dim=64, max_position_embeddings=512).cuda().to(torch.bfloat16)
    padded = torch.randint(0, 4096, (2, 24), generator=torch.Generator().manual_seed(1)).cuda()
    runs = []
    for idx, lengths, repeat in ((padded, [17, 24], 4), (padded.repeat_interleave(4, 0), [17] * 4 + [24] * 4, 1)):
        dec = Decoder(model, 8, max_len=64)
        out = dec.generate(idx, 16, temperature=0, lengths=lengths, repeat=repeat)
        runs.append((out, torch.stack([c.k[:, :, :24] for c in dec.caches]).float()))
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=2e-2, atol=2e-2)
    assert runs[0][0].shape == (8, 40) and (runs[0][0] == runs[1][0]).float().mean() > 0.9


@cuda
def test_cuda_decoder_slots_join_and_leave_like_each_prompt_alone_bf16():
    """Continuous batching on the GPU in bf16: the Triton step replayed as CUDA graphs (one per row count and sampling
    mode), prompts prefilled into single rows (prefill_slot on a row's cache view), rows joining and leaving: each
    request's greedy tokens are its prompt's alone (plain path) up to bf16 near-ties; sampled rows with their own
    generators repeat themselves when the schedule is repeated (a different schedule runs other row counts, whose
    bf16 roundings may tip a near-tie)."""
    model = peaky_model(seed=15, vocab_size=4096, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                        head_dim=64, max_position_embeddings=512).cuda().to(torch.bfloat16)
    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(0, 4096, (n,), generator=g).tolist() for n in (5, 17, 9, 30, 12)]
    dec = Decoder(model, 4, max_len=64)
    assert dec.cuda_graph and dec.step_kind == "triton"
    for p, toks in zip(prompts, run_slots(dec, prompts, 16)):
        prompt = torch.tensor([p], device="cuda")
        _same_greedy_up_to_bf16_ties(model, torch.cat([prompt, torch.tensor([toks], device="cuda")], 1),
                                     generate(model, prompt, 16, temperature=0), len(p))
    assert {1, 2, 4} <= {key[0] for key in dec.graphs}
    settings = [(0.9, 20, 0.9)] * 5
    gens = lambda: [torch.Generator("cuda").manual_seed(r) for r in range(5)]
    first = run_slots(dec, prompts, 12, settings, gens())
    assert run_slots(dec, prompts, 12, settings, gens()) == first and max(max(t) for t in first) < 4096


@cuda
def test_cuda_graph_capture_at_the_last_free_position_stays_inside_the_cache():
    """The first step (when the graph is captured) may come with one free position left: its warm-up runs must not
    write past the cache's end (a device-side assert), and the step computes the plain path's token."""
    model = peaky_model(seed=12, max_position_embeddings=64, head_dim=32).cuda().to(torch.bfloat16)  # Triton kernel
    prompt = torch.randint(0, 320, (1, 63), generator=torch.Generator().manual_seed(5)).cuda()
    dec = Decoder(model, 1, step="triton")   # the graph without compilation: the same capture, quick
    first = sample_next(dec.prefill(prompt), 0)
    second = dec.step(first)
    torch.cuda.synchronize()
    assert dec.pos == 64
    expected = full_recompute_greedy(model, prompt, 2)  # (generate() would ask for a 65-position cache)
    _same_greedy_up_to_bf16_ties(model, torch.cat([prompt, first, second], 1), expected, 63)


@cuda
def test_cuda_triton_decode_kernel_matches_the_pytorch_step_bf16():
    """decode_kernel.decode_attention in bf16 on the GPU, one program per head and split over 2-64 programs, rows at
    random positions of a 4,096-key cache (the Qwen3-0.6B attention shape): the output and the keys/values written
    are the PyTorch step's (QK-norm, RoPE, KVCache.update, _static_cache_attention) up to bf16 rounding."""
    from decode_kernel import decode_attention
    from model import Attention, Qwen3Config, rope_cos_sin, rope_inv_freq
    torch.manual_seed(0)
    cfg = Qwen3Config()
    att = Attention(cfg).cuda().to(torch.bfloat16)
    for norm in (att.q_norm, att.k_norm):
        norm.weight.data.uniform_(0.5, 1.5)
    B = 4
    x = torch.randn(B, 1, cfg.hidden_size, device="cuda", dtype=torch.bfloat16)
    positions = torch.tensor([[0], [255], [1000], [4095]], device="cuda")
    cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta)
    cos, sin = cos[:, None], sin[:, None]

    def cache():
        c = KVCache(B, cfg.num_key_value_heads, 4096, cfg.head_dim, "cuda", torch.bfloat16)
        torch.manual_seed(1)
        c.k.normal_(), c.v.normal_()
        c.inv_freq = rope_inv_freq(cfg.head_dim, cfg.rope_theta, "cuda")
        return c
    ref_cache = cache()
    with torch.no_grad():
        ref = att(x, cos, sin, "static", None, ref_cache, positions)
        for chunk in (None, 4096, 512, 64):
            c = cache()
            out = att.o_proj(decode_attention(att.q_proj(x), att.k_proj(x), att.v_proj(x), att.q_norm, att.k_norm,
                                              c, positions, chunk=chunk))
            assert torch.equal(c.v, ref_cache.v)
            assert (c.k.float() - ref_cache.k.float()).abs().max() <= 0.02 * ref_cache.k.float().abs().max(), chunk
            err = (out.float() - ref.float()).abs().max() / ref.float().abs().max()
            assert err < 0.02, (chunk, err.item())


@cuda
def test_cuda_fused_linear_kernels_match_pytorch_at_the_model_shapes_bf16():
    """decode_kernel.fused_linear in bf16 at every projection shape of Qwen3-0.6B (with the block configs tuned for
    each) and batch 1 / 8 / 32: the PyTorch ops it replaces (RMSNorm, F.linear, SiLU * up, the residual add), up to bf16
    rounding."""
    from decode_kernel import fused_linear
    from model import Qwen3Config, RMSNorm
    cfg = Qwen3Config()
    torch.manual_seed(0)
    norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps).cuda().to(torch.bfloat16)
    norm.weight.data.uniform_(0.5, 1.5)
    bf = dict(device="cuda", dtype=torch.bfloat16)
    H, I, Q = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads * cfg.head_dim
    for B in (1, 8, 32):
        for N, K, glu, with_norm, with_res in ((Q + 2 * H, H, False, True, False), (H, Q, False, False, True),
                                               (I, H, True, True, False), (H, I, False, False, True),
                                               (cfg.vocab_size, H, False, True, False)):
            x, w = torch.randn(B, K, **bf), torch.randn(2 * N if glu else N, K, **bf) * K ** -0.5
            res = torch.randn(B, N, **bf) if with_res else None
            xin = norm(x) if with_norm else x
            ref = F.silu(xin @ w[:N].T) * (xin @ w[N:].T) if glu else xin @ w.T
            ref = ref + res if with_res else ref
            out = fused_linear(x, w, norm=norm if with_norm else None, residual=res, glu=glu)
            err = ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
            assert out.shape == ref.shape and err < 0.02, (B, N, K, err)
