"""Instruction tuning: formats (tools included), bad rows, the loss on answers only, document masking (no attention or
gradient across packed conversations, packed == unpacked), SFT training with exact resume and export, chat.py."""
import io, json, os, shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import configure_train, copy_tokenizer, cuda, losses, run, small_config, small_train_args

import data
import sft
from checkpoint import save_pretrained
from model import Qwen3, doc_mask, doc_positions, rope_cos_sin
from tokenizer import CHAT_TEMPLATES, EOT, IM_END, IM_START, get_tokenizer, render_chat

CONV = [("system", "你是一个助手。"), ("user", "Hello, 你好"), ("assistant", "Hi! 很高兴见到你。"),
        ("user", "2+2?"), ("assistant", "4")]
OPENAI = {"messages": [{"role": r, "content": c} for r, c in CONV]}
SHAREGPT = {"conversations": [{"from": {"user": "human", "assistant": "gpt"}.get(r, r), "value": c} for r, c in CONV]}
ALPACA = {"instruction": "Translate to English", "input": "你好", "output": "Hello"}


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return str(path)


def chat_model(seed=0, **kw):
    """A model that holds every Qwen id (151,936) but is tiny otherwise; perturbed so that outputs depend on
    everything (a test of isolation must be able to fail)."""
    torch.manual_seed(seed)
    m = Qwen3(small_config(vocab_size=151936, hidden_size=32, intermediate_size=48, head_dim=16, **kw))
    for p in m.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    return m


def test_every_format_gives_the_same_conversation_and_the_loss_is_on_the_answers():
    enc = get_tokenizer()
    dicts = [{"role": r, "content": c} for r, c in CONV]
    assert sft.to_chat(OPENAI) == sft.to_chat(SHAREGPT) == (dicts, None)
    ids, mask = render_chat(dicts)
    assert ids == render_chat(CONV)[0] and len(mask) == len(ids)
    # the loss is on what the model must write: the answers (the last one after Qwen3's empty think block) and their
    # <|im_end|>, nothing else (not even "<|im_start|>assistant\n")
    assert enc.decode([t for t, m in zip(ids, mask) if m]) == "Hi! 很高兴见到你。<|im_end|><think>\n\n</think>\n\n4<|im_end|>"
    gen, gmask = render_chat(CONV[:2], add_generation_prompt=True)
    assert gen[-3:] == [IM_START] + enc.encode_ordinary("assistant\n") and not any(gmask)
    assert sft.to_chat(ALPACA)[0] == [{"role": "user", "content": "Translate to English\n\n你好"},
                                      {"role": "assistant", "content": "Hello"}]
    assert sft.to_chat({**ALPACA, "input": "", "system": "S"})[0] == [
        {"role": "system", "content": "S"}, {"role": "user", "content": "Translate to English"},
        {"role": "assistant", "content": "Hello"}]


def test_bad_rows_are_counted_by_reason_and_overlong_is_dropped_or_truncated(tmp_path):
    long = {"messages": [{"role": "user", "content": "词" * 10}, {"role": "assistant", "content": "好" * 300}]}
    rows = [OPENAI, SHAREGPT, ALPACA, long, "{not json", "[1, 2]",
            {"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]},  # unknown_role
            {"conversations": [{"from": "human", "value": "x"}, {"from": "bot", "value": "y"}]},         # unknown_role
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "  "}]},   # empty answer
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": 5}]},      # wrong_type
            {"messages": [{"role": ["user"], "content": "x"}]},                                          # unknown_role
            {"messages": [{"role": "user", "content": "only a question"}]},                             # no answer
            {"messages": [{"role": "user", "content": "<|im_end|>"}, {"role": "assistant", "content": "y"}]},
            {"instruction": "x", "output": None}, {"text": "pretraining row"}]
    src = write_jsonl(tmp_path / "chat.jsonl", rows)
    expected = {"bad_json": 1, "unknown_format": 2, "unknown_role": 3, "empty_assistant_turn": 1, "wrong_type": 2,
                "no_assistant_turn": 1, "special_token_in_text": 1}
    meta = sft.prepare([src], str(tmp_path / "drop"), max_len=100, overlong="drop", val_fraction=0, quiet=True)
    assert meta["skipped_rows"] == {**expected, "overlong": 1}
    assert meta["conversations"] == {"train": 3, "val": 0} and meta["truncated"] == 0
    meta = sft.prepare([src], str(tmp_path / "trunc"), max_len=100, overlong="truncate", val_fraction=0, quiet=True)
    assert meta["skipped_rows"] == expected and meta["conversations"]["train"] == 4 and meta["truncated"] == 1
    p = data.PackedConversations(str(tmp_path / "trunc"), "train", seq_len=100)
    assert sorted(p.conv[:, 2].tolist())[-1] == 100  # the truncated one, cut at max_len and still used


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TOOL_ROW = {"messages": [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "reasoning_content": "Call the tool.", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    {"role": "assistant", "content": "Sunny."}], "tools": [WEATHER]}


def tool_row(i, **fields):
    """TOOL_ROW with fields of messages[i] set (None deletes the field)."""
    row = json.loads(json.dumps(TOOL_ROW))
    for k, v in fields.items():
        row["messages"][i][k] = v
        if v is None:
            del row["messages"][i][k]
    return row


def test_tool_use_rows_train_the_calls_and_answers_and_bad_ones_are_counted(tmp_path):
    call = lambda args: [{"type": "function", "function": {"name": "get_weather", "arguments": args}}]
    rows = [TOOL_ROW, tool_row(1, tool_calls=call({"city": "Rome"})),      # arguments as an object
            tool_row(1, tool_calls=None, content="Let me look."),           # tool_without_call: nothing was called
            {"messages": TOOL_ROW["messages"][:3] + TOOL_ROW["messages"][2:]},  # tool_without_call: 2 answers, 1 call
            tool_row(1, tool_calls=call("{city: Paris")),                   # bad_tool_arguments: not JSON
            tool_row(1, tool_calls=call("[1, 2]")),                         # bad_tool_arguments: not an object
            tool_row(1, tool_calls=[{"function": {"arguments": {}}}]),       # bad_tool_call: no name
            tool_row(1, tool_calls="get_weather"),                           # bad_tool_call
            {**TOOL_ROW, "tools": "not json"}, {**TOOL_ROW, "tools": {"name": "x"}},   # bad_tools
            tool_row(2, role="function"),                                    # unknown_role
            tool_row(1, reasoning_content=7)]                                # wrong_type
    src = write_jsonl(tmp_path / "tools.jsonl", rows)
    meta = sft.prepare([src], str(tmp_path / "q"), max_len=1024, val_fraction=0, quiet=True)
    assert meta["skipped_rows"] == {"tool_without_call": 2, "bad_tool_arguments": 2, "bad_tool_call": 2,
                                    "bad_tools": 2, "unknown_role": 1, "wrong_type": 1}
    assert meta["conversations"]["train"] == 2 and meta["chat_template"] == "qwen3"
    base = str(tmp_path / "q" / "train" / meta["shards"][0]["name"])
    tokens, mask = (data.open_shard(f"{base}.{kind}.bin").tolist() for kind in ("tokens", "mask"))
    msgs, tools = sft.to_chat(TOOL_ROW)
    ids, want = render_chat(msgs, tools)
    assert tokens[:len(ids)] == ids and mask[:len(ids)] == want
    enc = get_tokenizer()
    assert enc.decode([t for t, m in zip(ids, want) if m]) == (
        '<think>\nCall the tool.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
        "\n</tool_call><|im_end|><think>\n\n</think>\n\nSunny.<|im_end|>")   # never the tool's response
    meta = sft.prepare([src], str(tmp_path / "c"), max_len=1024, val_fraction=0, quiet=True, chat_template="chatml")
    assert meta["skipped_rows"]["needs_qwen3_template"] == 2 and meta["conversations"]["train"] == 0
    assert data.sft_chat_template(str(tmp_path / "c")) == "chatml"


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_doc_mask_flex_block_mask_equals_the_sdpa_boolean_mask():
    """The two definitions of 'same document and causal' (CUDA's BlockMask, run here by FlexAttention's eager
    reference, and the boolean SDPA mask) give the same attention output."""
    torch.manual_seed(0)
    attn = Qwen3(small_config(head_dim=16)).model.layers[0].self_attn
    doc = torch.tensor([[0] * 10 + [1] * 15 + [2] * 7, [0] * 20 + [1] * 12])
    cos, sin = rope_cos_sin(doc_positions(doc), 16, 1e4)
    x = torch.randn(2, 32, 64)
    with torch.no_grad():
        a = attn(x, cos[:, None], sin[:, None], "mask", doc_mask(doc, flex=False))
        b = attn(x, cos[:, None], sin[:, None], "flex", doc_mask(doc, flex=True))
    assert (a - b).abs().max() < 1e-5
    assert doc_positions(doc)[0].tolist() == list(range(10)) + list(range(15)) + list(range(7))


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_branches_see_their_prefix_and_themselves_and_continue_its_positions():
    """rl.py's layout: a prefix (a prompt) then branches (answers) of one document. Each branch is computed as the
    prefix followed by that branch alone (the others invisible), by the boolean mask and by the BlockMask."""
    torch.manual_seed(0)
    attn = Qwen3(small_config(head_dim=16)).model.layers[0].self_attn
    doc = torch.tensor([[0] * 5 + [0] * 4 + [0] * 6 + [1] * 3 + [1] * 2 + [2] * 12])
    branch = torch.tensor([[0] * 5 + [1] * 4 + [2] * 6 + [0] * 3 + [1] * 2 + [0] * 12])
    assert doc_positions(doc, branch)[0].tolist() == ([0, 1, 2, 3, 4] + [5, 6, 7, 8] + list(range(5, 11)) + [0, 1, 2]
                                                       + [3, 4] + list(range(12)))
    x = torch.randn(1, 32, 64)
    with torch.no_grad():
        cos, sin = rope_cos_sin(doc_positions(doc, branch), 16, 1e4)
        a = attn(x, cos[:, None], sin[:, None], "mask", doc_mask(doc, flex=False, branch_ids=branch))
        b = attn(x, cos[:, None], sin[:, None], "flex", doc_mask(doc, flex=True, branch_ids=branch))
        for prefix, part in ((range(0, 5), range(5, 9)), (range(0, 5), range(9, 15)), (range(15, 18), range(18, 20))):
            alone = torch.tensor([*prefix, *part])
            c, s = rope_cos_sin(torch.arange(len(alone)), 16, 1e4)
            ref = attn(x[:, alone], c, s, "causal", None)
            torch.testing.assert_close(a[:, alone], ref, rtol=1e-4, atol=1e-5)
    assert (a - b).abs().max() < 1e-5


def prepared(tmp_path, rows, seq_len=64):
    d = str(tmp_path / "sftdata")
    sft.prepare([write_jsonl(tmp_path / "c.jsonl", rows)], d, max_len=seq_len, val_fraction=0, quiet=True)
    return d


CONVS = [[("user", "你好"), ("assistant", "你好！有什么可以帮你？")],
         [("system", "Be brief."), ("user", "Capital of France?"), ("assistant", "Paris.")],
         [("user", "1+1"), ("assistant", "2"), ("user", "2+2"), ("assistant", "4, of course")],
         [("user", "写一首诗"), ("assistant", "床前明月光")]]


def test_packed_loss_is_the_mean_over_assistant_tokens_of_each_conversation_alone(tmp_path):
    rows = [{"messages": [{"role": r, "content": c} for r, c in conv]} for conv in CONVS]
    p = data.PackedConversations(prepared(tmp_path, rows), "train", seq_len=64)
    assert p.n_rows < len(CONVS)  # several conversations share a row
    x, y, doc = (torch.from_numpy(np.stack(a)) for a in zip(*[p.row(r) for r in range(p.n_rows)]))
    model = chat_model().eval()
    with torch.no_grad():
        _, packed = model(x, y, doc)
        # by hand: each conversation alone (unpacked, positions from 0), log-probs of its assistant tokens only
        nll = []
        for conv in CONVS:
            ids, mask = render_chat(conv)
            logp = F.log_softmax(model(torch.tensor([ids]))[0][0].double(), -1)
            nll += [-logp[t - 1, ids[t]].item() for t in range(1, len(ids)) if mask[t]]
    assert (y != -100).sum().item() == len(nll) == sum(sum(render_chat(c)[1]) for c in CONVS)
    assert packed.item() == pytest.approx(sum(nll) / len(nll), rel=1e-5)
    assert IM_START in x[y == -100].tolist() and (y == IM_END).any()


def test_no_gradient_flows_between_packed_conversations():
    """The loss of conversation A, with B packed before it and C after it in the same row: its gradient with
    respect to B's and C's token embeddings is exactly zero, and not with respect to A's own."""
    model = chat_model(seed=1)
    a, _ = render_chat(CONVS[1])
    b, _ = render_chat(CONVS[0])
    c, _ = render_chat(CONVS[2])
    x = torch.tensor([b + a + c])
    doc = torch.tensor([[0] * len(b) + [1] * len(a) + [2] * len(c)])
    y = torch.full_like(x, -100)
    y[0, len(b):len(b) + len(a) - 1] = x[0, len(b) + 1:len(b) + len(a)]  # every next-token target inside A
    emb = {}

    def keep(module, inputs, out):
        out.retain_grad()
        emb["out"] = out
    model.model.embed_tokens.register_forward_hook(keep)
    _, loss = model(x, y, doc)
    loss.backward()
    g = emb["out"].grad[0].abs().sum(-1)
    assert g[:len(b)].max() == 0 and g[len(b) + len(a):].max() == 0
    assert (g[len(b):len(b) + len(a) - 1] > 0).all()


def test_loader_is_world_size_independent_and_has_targets_in_every_row(tmp_path):
    rows = [{"messages": [{"role": r, "content": c * (1 + i % 3)} for r, c in conv]} for i in range(30) for conv in CONVS]
    p = data.PackedConversations(prepared(tmp_path, rows), "train", seq_len=64)
    one = data.SFTBatches(p, micro_batch=2, world_size=1, rank=0, grad_accum=4)
    for step in (0, 7):
        ref = [one.get(step, m) for m in range(4)]
        for world in (2, 4):
            got = [data.SFTBatches(p, 2, world, r, 4 // world).get(step, m) for m in range(4 // world) for r in range(world)]
            for i in range(3):
                assert torch.equal(torch.cat([g[i] for g in ref]), torch.cat([g[i] for g in got]))
    assert all((p.row(r)[1] != -100).any() for r in range(p.n_rows))
    assert sorted(np.concatenate([p.conv[p.bounds[r]:p.bounds[r + 1], 1] for r in range(p.n_rows)]).tolist()) == \
        sorted(p.conv[:, 1].tolist())  # every conversation in exactly one row


@pytest.mark.slow
def test_sft_from_a_hf_dir_resumes_exactly_and_exports_a_chat_model(tmp_path, train_module, capsys):
    """train.py --sft_data from a HF directory (whose shape is then the run's: the resume restates nothing);
    a checkpoint removed and resumed gives the same losses; the export carries the chat template and stops at
    <|im_end|>."""
    base = str(tmp_path / "base")
    save_pretrained(chat_model(), base, dtype=torch.float32, eos_token_id=EOT)
    rows = [{"messages": [{"role": r, "content": c * (1 + i % 4)} for r, c in conv]} for i in range(20) for conv in CONVS]
    d = str(tmp_path / "sft")
    r = run(["sft.py", "--input", write_jsonl(tmp_path / "c.jsonl", rows), "--out", d, "--seq_len=96",
             "--val_fraction=0.1"])
    assert r.returncode == 0 and "skipped rows: none" in r.stdout, r.stderr[-2000:]
    out = str(tmp_path / "o")
    shape = ("vocab_size", "hidden_size", "intermediate_size", "head_dim", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "max_position_embeddings", "data_dir")

    def args(**kw):  # small_train_args without any model shape: it comes from the weights
        over = dict(sft_data=d, init_from=base, max_steps=6, ckpt_interval=3, eval_interval=3, export_at_end=True,
                    seq_len=96)
        over.update(kw)
        return [a for a in small_train_args("", out, **over) if a.split("=")[0][2:] not in shape]
    r = run(["train.py"] + args())
    assert r.returncode == 0, r.stderr[-2000:]
    n_train = int(r.stdout.split("SFT: ")[1].split()[0])
    assert 50 < n_train < 80   # the val split is held out
    ref = losses(out)
    vals = [json.loads(l)["val_loss"] for l in open(os.path.join(out, "log.jsonl")) if "val_loss" in l]
    assert sorted(ref) == list(range(1, 7)) and len(vals) == 3 and vals[-1] < vals[0]
    shutil.rmtree(os.path.join(out, "ckpt-0000006"))
    capsys.readouterr()
    configure_train(train_module, args(init_from="resume"))   # the resume: main() in this process, same settings
    train_module.main()
    assert "resumed from" in capsys.readouterr().out
    assert losses(out) == ref
    hf = os.path.join(out, "hf")
    exported = lambda: (json.load(open(os.path.join(hf, "generation_config.json")))["eos_token_id"],
                        json.load(open(os.path.join(hf, "tokenizer_config.json")))["chat_template"])
    assert exported() == ([IM_END, EOT], CHAT_TEMPLATES["qwen3"])
    shutil.rmtree(hf)   # the checkpoint alone exported (checkpoint.py's advice after a full disk): the same chat model
    r = run(["train.py", f"--out_dir={out}", "--init_from=resume", "--export_only=True", "--device=cpu"])
    assert r.returncode == 0 and exported() == ([IM_END, EOT], CHAT_TEMPLATES["qwen3"]), r.stderr[-2000:]


@pytest.mark.slow
def test_sft_loss_is_the_mean_over_the_steps_answer_tokens_however_it_is_split(tmp_path, train_module):
    """Rows with different numbers of answer tokens: one micro-batch of 4 rows, or 4 of 1, train the same run (the
    step's loss is the mean over all its answer tokens; a mean of micro-batch means was not, HF's 2024 bug)."""
    base = str(tmp_path / "base")
    save_pretrained(chat_model(), base, dtype=torch.float32, eos_token_id=EOT)
    rows = [{"messages": [{"role": r, "content": c * (1 + 3 * (i % 4))} for r, c in conv]} for i in range(8) for conv in CONVS]
    d = prepared(tmp_path, rows, seq_len=96)
    shape = ("vocab_size", "hidden_size", "intermediate_size", "head_dim", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "max_position_embeddings", "data_dir")
    runs = []
    for micro in (4, 1):
        args = small_train_args("", str(tmp_path / f"o{micro}"), sft_data=d, init_from=base, max_steps=3, seq_len=96,
                                micro_batch=micro, global_batch=4, warmup_steps=1, decay_steps=0)
        configure_train(train_module, [a for a in args if a.split("=")[0][2:] not in shape])
        runs.append([rec["loss"] for rec in train_module.main()])
    assert runs[0] == pytest.approx(runs[1], rel=1e-5) and runs[0][0] != runs[0][1], runs


@pytest.mark.slow
def test_pretraining_doc_mask_cuts_windows_at_endoftext(tmp_path, train_module):
    """--doc_mask=True: the documents of a window do not see each other, so the loss differs from plain causal
    training on the same windows, and both runs are otherwise the same. The run is validated the way it trained
    (document masking on the val windows too), in train.py's log and in eval.py alike."""
    from checkpoint import from_pretrained
    from tokenizer import RANKS_SHA256
    d = tmp_path / "ds"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        os.makedirs(d / split)
        docs = [np.append(rng.integers(0, 500, rng.integers(3, 20)), EOT) for _ in range(300)]
        data.write_shard(str(d / split / "s.bin"), np.concatenate(docs).astype(np.uint32))
    n = {s: len(data.open_shard(str(d / s / "s.bin"))) for s in ("train", "val")}
    json.dump({"tokenizer_sha256": RANKS_SHA256, "shards": [{"name": "s", "tokens": n, "use_tokens": n}]},
              open(d / "meta.json", "w"))
    common = dict(vocab_size=151936, hidden_size=32, head_dim=16, max_steps=3, ckpt_interval=3, eval_interval=3,
                  val_tokens=256)
    res = {}
    for mask in (False, True):   # train.py's main() in this process, its settings applied as on the command line
        configure_train(train_module, small_train_args(str(d), str(tmp_path / f"o{mask}"), doc_mask=mask, **common))
        train_module.main()
        res[mask] = losses(tmp_path / f"o{mask}")
    assert res[True][1] != res[False][1] and all(np.isfinite(list(res[True].values())))
    out = tmp_path / "oTrue"
    logged = [json.loads(l)["val_loss"] for l in open(out / "log.jsonl") if "val_loss" in l][-1]
    model = from_pretrained(str(out / "ckpt-0000003"))
    masked, causal = (data.val_loss_bpb(model, str(d), 32, 256, 2, "cpu", doc_mask=m)[0] for m in (True, False))
    assert abs(logged - masked) < 1e-4 and abs(masked - causal) > 1e-3
    r = run(["eval.py", f"--init_from={out}", f"--data_dir={d}"])
    assert r.returncode == 0 and "doc_mask True" in r.stdout, r.stderr[-2000:]
    assert abs(float(r.stdout.split("val loss ")[1].split()[0]) - masked) < 1e-3


def tidy(text):
    """What chat.py prints of an answer (chat.Printer: blank-line runs squeezed, ends stripped)."""
    import chat
    out = io.StringIO()
    printer = chat.Printer(out)
    printer.write(text)
    printer.close()
    return out.getvalue()


@pytest.mark.slow
def test_chat_keeps_one_cache_across_turns_and_trims_the_history(tmp_path, tokenizer_files):
    """Piped turns to chat.py print a transcript (`user: ...` / `assistant: ...`) whose answers are, turn by turn, the
    greedy answer to the whole conversation so far in Qwen3's template (recomputed here from scratch with
    generate()); a small max_context makes it drop old exchanges and carry on."""
    from generate import generate
    model = chat_model(seed=3).eval()
    save_pretrained(model, tmp_path, dtype=torch.float32, eos_token_id=EOT)
    copy_tokenizer(tokenizer_files, tmp_path)
    enc, turns = get_tokenizer(), ["你好", "今天天气怎么样？", "谢谢"]
    r = run(["chat.py", f"--init_from={tmp_path}", "--temperature=0", "--max_new_tokens=6", "--system", "简短回答。"],
            input="\n".join(turns) + "\n", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    messages, expected = [{"role": "system", "content": "简短回答。"}], ""
    for t in turns:
        messages.append({"role": "user", "content": t})
        ids = render_chat(messages, add_generation_prompt=True)[0]
        out = generate(model, torch.tensor([ids]), 6, temperature=0, eos=[IM_END, EOT])[0, len(ids):].tolist()
        said = enc.decode([x for x in out if x not in (IM_END, EOT)])
        expected += f"user: {t}\nassistant: {tidy(said)}"
        messages.append({"role": "assistant", "content": said})
    assert len(expected) > 3 * 20 and r.stdout.replace("\ufffd", "") == expected.replace("\ufffd", "")
    r = run(["chat.py", f"--init_from={tmp_path}", "--temperature=0", "--max_new_tokens=6", "--max_context=40"],
            input="\n".join(turns * 2) + "\n", timeout=300)
    assert r.returncode == 0 and "history trimmed" in r.stderr, r.stderr[-2000:]
    # a message too long for the context even alone is not sent, and the conversation before it stays
    r = run(["chat.py", f"--init_from={tmp_path}", "--temperature=0", "--max_new_tokens=6", "--max_context=40"],
            input="你好\n" + "很长的消息" * 20 + "\n谢谢\n", timeout=300)
    assert r.returncode == 0 and "not sent" in r.stderr and "trimmed to 0" not in r.stderr, r.stderr[-2000:]


class ScriptedDecoder:
    """A stand-in for generate.Decoder whose cache is a list of ids and whose model says the scripted answers."""

    def __init__(self, model, batch_size, max_len, answers=()):
        self.ids, self.fed, self.answers = [], [], iter(answers)

    @property
    def pos(self):
        return len(self.ids)

    def reset(self, pos=0):
        del self.ids[pos:]

    def _logits(self):
        tok = next(self.next_answer)
        logits = torch.zeros(1, 151936)
        logits[0, tok] = 1.0
        return logits

    def prefill(self, idx):
        self.ids += idx[0].tolist()
        self.fed.append(idx[0].tolist())
        self.next_answer = iter(next(self.answers))
        return self._logits()

    def step(self, tok, *sampling):
        self.ids.append(tok.item())
        return self._logits().argmax(-1, keepdim=True)


def test_chat_drops_the_think_block_from_the_history_and_shows_it_dimmed_or_hidden(monkeypatch):
    """--think=True: the model's reasoning is printed (dimmed on a terminal, between its tags in a transcript, or
    not at all with --show_think=False); the next turn rewinds the cache to where the answer began and feeds it
    back without the reasoning, as Qwen3's template renders the history. --think=False closes the think block in
    the prompt."""
    import chat
    enc = get_tokenizer()
    answers = [enc.encode(t, allowed_special="all") + [IM_END] for t in
               ("<think>\nLet me think.\n</think>\n\nHello!", "<think>\nAgain.\n</think>\n\nBye.")]
    monkeypatch.setattr(chat, "temperature", 0)
    u, a = (lambda t: {"role": "user", "content": t}), (lambda t: {"role": "assistant", "content": t})

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    for show, out, shown in ((True, io.StringIO(), "<think>\nLet me think.\n</think>\n\nHello!\n"),
                             (True, Terminal(), "\x1b[2mLet me think.\x1b[0m\n\nHello!\n"),
                             (False, Terminal(), "Hello!\n")):
        monkeypatch.setattr(chat, "show_think", show)
        monkeypatch.setattr(chat, "Decoder", lambda *args, **kw: ScriptedDecoder(*args, answers=answers, **kw))
        conv = chat.Conversation(None, ctx=4096)
        conv.turn("Hi", out, prefix="assistant: ")
        assert out.getvalue() == "assistant: " + shown
        conv.turn("Bye?", io.StringIO())
        first = render_chat([u("Hi")], add_generation_prompt=True)[0]
        history = render_chat([u("Hi"), a("Hello!"), u("Bye?")], add_generation_prompt=True)[0]
        assert conv.decoder.fed == [first, history[len(first):]]   # rewound to where the first answer began
        assert conv.decoder.ids == history + answers[1][:-1]      # the cache holds what the template renders
    monkeypatch.setattr(chat, "think", False)
    monkeypatch.setattr(chat, "Decoder", lambda *args, **kw: ScriptedDecoder(*args, answers=answers[1:], **kw))
    conv = chat.Conversation(None, ctx=4096)
    conv.turn("Hi", io.StringIO())
    assert conv.decoder.fed == [render_chat([u("Hi")], add_generation_prompt=True, enable_thinking=False)[0]]
    assert enc.decode(conv.decoder.fed[0]).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_chat_printer_squeezes_blank_lines():
    """A base model's answer of newlines and spaces prints as one line; inner runs of blank lines as one blank line."""
    assert tidy("\n" * 60) == "\n"
    assert tidy("\n\n\n  Hello\n\n\n\n\nworld !\n  \n\n") == "Hello\n\nworld !\n"
    assert tidy("a\nb\n\nc") == "a\nb\n\nc\n"


@cuda
@pytest.mark.parametrize("branches", [False, True])
def test_cuda_flex_attention_path_equals_the_sdpa_mask_definition(branches):
    """On CUDA, hidden_states uses FlexAttention (compiled); the boolean SDPA mask is the definition: same loss
    and gradients in float32 on a packed batch (branches: rl.py's prompts shared by their answers)."""
    import model as M
    torch.manual_seed(0)
    m = Qwen3(small_config(head_dim=16)).cuda()
    doc = torch.tensor([[0] * 100 + [1] * 90 + [2] * 66, [0] * 256]).cuda()
    branch = torch.tensor([[0] * 40 + [1] * 30 + [2] * 30 + [0] * 50 + [1] * 40 + [0] * 66,
                           [0] * 60 + [1] * 50 + [2] * 70 + [3] * 76]).cuda() if branches else None
    x, y = torch.randint(0, 320, (2, 256)).cuda(), torch.randint(0, 320, (2, 256)).cuda()
    out, definition = {}, M.doc_mask
    for flex in (False, True):
        M.doc_mask = lambda d, flex, branch_ids=None, forced=flex: definition(d, forced, branch_ids)   # by keyword
        try:
            m.zero_grad(set_to_none=True)
            loss = m(x, y, doc, branch_ids=branch)[1]
            loss.backward()
            out[flex] = (loss.item(), [p.grad.clone() for p in m.parameters()])
        finally:
            M.doc_mask = definition
    assert abs(out[True][0] - out[False][0]) < 1e-4
    assert all((a - b).norm() <= 1e-3 * a.norm() + 1e-6 for a, b in zip(out[True][1], out[False][1]))


def test_input_files_without_a_val_conversation_are_fine(tmp_path):
    """Small files often get no conversation of the 1% val split: the split is then just smaller (here: empty)."""
    files = [write_jsonl(tmp_path / f"{i}.jsonl", [OPENAI, SHAREGPT, ALPACA]) for i in range(2)]
    d = str(tmp_path / "sft")
    sft.prepare(files, d, max_len=128, val_fraction=0, quiet=True)
    assert data.PackedConversations(d, "val", seq_len=128).n_rows == 0
    assert data.PackedConversations(d, "train", seq_len=128).n_rows > 0


def test_sft_split_is_prepare_pys_rule_on_each_conversations_text(tmp_path):
    """One val-split rule for pretraining and SFT data: prepare._is_val on the document's text (here, the
    conversation's JSON line), so a conversation lands in the same split wherever the file lives."""
    import prepare
    rows = [{"messages": [{"role": "user", "content": f"问题 {i}"}, {"role": "assistant", "content": f"答案 {i}"}]}
            for i in range(40)]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    meta = sft.prepare([path], str(tmp_path / "sft"), max_len=64, val_fraction=0.5, quiet=True)
    lines = open(path, encoding="utf-8").readlines()
    expected_val = sum(prepare._is_val(line, 0.5) for line in lines)
    assert 0 < expected_val < len(rows)   # the check below can tell the splits apart
    assert meta["conversations"] == {"train": len(rows) - expected_val, "val": expected_val}


@pytest.mark.slow
def test_sft_demo_data_builds_twice_and_writes_rl_prompts(demo_dir, tmp_path):
    """sft_demo.build_data a second time (a rerun, or `python sft_demo.py rl` after the demo) reads the prepared
    meta.json back (it named a module it had not imported); the RL stage's prompts carry each review's label."""
    import sft_demo
    out = str(tmp_path / "sft_demo")
    first = sft_demo.build_data(demo_dir, out)
    assert sft_demo.build_data(demo_dir, out) == first
    rows = [json.loads(l) for l in open(os.path.join(out, "rl_prompts.jsonl"), encoding="utf-8")]
    assert rows and all(r["prompt"].startswith(sft_demo.INSTRUCTION) and r["answer"] in sft_demo.LABELS for r in rows)
