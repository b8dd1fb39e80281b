"""Evaluation: val loss and bits per byte by hand, C-Eval PPL/GEN scoring (against a copy of the original slow
implementation), prompt styles, letter extraction, few-shot hygiene, and the CLI."""
import csv, json, math, os, shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_script, small_config, synthetic_dataset

import data
import prepare
import eval as ev
from generate import generate
from checkpoint import save_pretrained
from model import Qwen3, chunked_cross_entropy
from tokenizer import EOT, get_tokenizer

KEYS = ["question", "A", "B", "C", "D", "answer"]
CEVAL_QS = [("中国的首都是哪里", "上海", "北京", "广州", "深圳", "B"), ("一加一等于几", "一", "三", "二", "四", "C"),
            ("水的化学式", "H2O", "CO2", "O2", "NaCl", "A"), ("地球绕什么转", "月亮", "火星", "木星", "太阳", "D"),
            ("一年有几个月", "十", "十一", "十二", "十三", "C"), ("最大的海洋", "太平洋", "大西洋", "印度洋", "北冰洋", "A"),
            ("光速最快的介质", "水", "玻璃", "真空", "空气", "C"), ("熊猫主要吃什么", "鱼", "竹子", "肉", "草莓", "B"),
            ("三角形内角和", "90度", "360度", "270度", "180度", "D"), ("长城位于哪个国家", "日本", "中国", "印度", "蒙古", "B"),
            ("冰的温度一般", "低于零度", "高于百度", "五十度", "八十度", "A"), ("人有几只眼睛", "一", "三", "四", "二", "D")]
ROWS = [dict(zip(KEYS, q)) for q in CEVAL_QS]


def _write_ceval(d, mapping=True, rows=CEVAL_QS):
    for split, rows in (("val", rows), ("dev", CEVAL_QS[:5])):
        os.makedirs(os.path.join(d, split), exist_ok=True)
        for subject in ("common_sense", "basic_math"):
            with open(os.path.join(d, split, f"{subject}_{split}.csv"), "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["id", *KEYS])
                for i, r in enumerate(rows):
                    w.writerow([i, *r])
    if mapping:
        json.dump({"common_sense": ["Common Sense", "常识", "Other"], "basic_math": ["Basic Math", "基础数学", "STEM"]},
                  open(os.path.join(d, "subject_mapping.json"), "w"), ensure_ascii=False)
    return d


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny full-vocab model trained for a few steps on the answer letters of the synthetic C-Eval questions,
    its accuracy before training, the C-Eval dir and the model saved as a HF directory."""
    tmp = tmp_path_factory.mktemp("ceval")
    d = _write_ceval(str(tmp / "ceval"))
    enc = get_tokenizer()
    torch.manual_seed(0)
    model = Qwen3(small_config(vocab_size=151936, hidden_size=32, intermediate_size=64, head_dim=16)).eval()
    before = ev.ceval(model, enc, d, "ppl", subjects=["common_sense"])["common_sense"]["ppl_acc"]
    prompts = [enc.encode(ev.build_prompt("常识", r, [])) for r in ROWS]
    answers = [enc.encode(r["answer"])[0] for r in ROWS]
    x = torch.zeros(len(prompts), max(map(len, prompts)), dtype=torch.long)   # right-padded: one batch
    for i, ids in enumerate(prompts):
        x[i, :len(ids)] = torch.tensor(ids)
    last = torch.tensor([len(ids) - 1 for ids in prompts])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for step in range(40):   # loss on the answer letter only
        h = model.hidden_states(x)[torch.arange(len(prompts)), last]
        chunked_cross_entropy(h, model.lm_head_weight, torch.tensor(answers)).backward()
        opt.step(), opt.zero_grad()
    model.eval()
    save_pretrained(model, tmp / "m", dtype=torch.float32)
    small = _write_ceval(str(tmp / "small"), rows=CEVAL_QS[5:9])   # 4 questions, for the slow reference checks
    return dict(model=model, before=before, dir=d, small=small, model_dir=str(tmp / "m"), tmp=tmp)


# ------------------------------------------------------- the original implementation, kept as the reference
@torch.no_grad()
def _reference_continuation_logprobs(model, prompt_ids, continuations):
    """eval.py's scoring before the fast path: [4, T, vocab] logits per question, one question at a time."""
    max_len = model.config.max_position_embeddings
    prompt_ids = prompt_ids[-(max_len - max(len(c) for c in continuations)):]
    seqs = [prompt_ids + c for c in continuations]
    x = torch.zeros(len(seqs), max(len(s) for s in seqs), dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, :len(s)] = torch.tensor(s)
    logp = F.log_softmax(model(x)[0].float(), dim=-1)
    return [logp[i, torch.arange(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(c)), torch.tensor(c)].sum().item()
            for i, c in enumerate(continuations)]


def _reference_ceval(model, enc, subject_name, rows, shots, ppl_continuation, max_new_tokens=8, gen=True):
    out = []
    for row in rows:
        ids = enc.encode(ev.build_prompt(subject_name, row, shots))
        conts = [enc.encode(L if ppl_continuation == "letter" else f"{L}. {row[L]}") for L in "ABCD"]
        scores = _reference_continuation_logprobs(model, ids, conts)
        out.append(dict(ppl="ABCD"[int(np.argmax(scores))], scores=scores))
        if gen:
            x = torch.tensor([ids[-(model.config.max_position_embeddings - max_new_tokens):]])
            new = generate(model, x, max_new_tokens, temperature=0, eos=EOT)[0, x.shape[1]:].tolist()
            out[-1]["gen_text"] = enc.decode([t for t in new if t < EOT])
    return out


# ------------------------------------------------------------------------------------------------ tests
def test_bpb_equals_loss_over_ln2_times_tokens_over_bytes_by_hand(tmp_path):
    os.makedirs(tmp_path / "in")
    docs = ["验证集的第一篇文档，中文。", "The second validation document, in English 🤖.", "混合 mixed 文本 123"] * 30
    with open(tmp_path / "in" / "v.jsonl", "w") as f:
        f.writelines(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs)
    d = str(tmp_path / "ds")
    prepare.prepare([str(tmp_path / "in")], d, val_fraction=0.5, quiet=True)
    torch.manual_seed(0)
    model = Qwen3(small_config(vocab_size=151936, hidden_size=16, intermediate_size=32, head_dim=8)).eval()
    loss, bpb = data.val_loss_bpb(model, d, 32, 12 * 32, 3, "cpu")
    enc = get_tokenizer()
    nats, tokens, nbytes = 0.0, 0, 0
    for x, y in data.val_batches(d, 32, 12 * 32, 3):   # the same windows, one at a time, by hand
        for win_x, win_y in zip(x, y):
            with torch.no_grad():
                logits = model(win_x[None])[0][0]
            nats += F.cross_entropy(logits, win_y, reduction="sum").item()
            tokens += len(win_y)
            nbytes += sum(len(enc.decode_single_token_bytes(t)) for t in win_y.tolist() if t < 151643)
    assert abs(loss - nats / tokens) < 1e-4
    assert abs(bpb - (nats / tokens) / math.log(2) * tokens / nbytes) < 1e-4


def test_ceval_ppl_goes_from_chance_to_the_trained_answers(trained):
    assert trained["before"] <= 0.5   # an untrained model is near chance (0.25) on these 12 questions
    res = ev.ceval(trained["model"], get_tokenizer(), trained["dir"], "ppl")
    for subject in ("common_sense", "basic_math"):
        assert res[subject]["ppl_acc"] >= 0.75, (trained["before"], res[subject]["ppl_acc"])


@pytest.mark.parametrize("ppl_continuation,shots,mode", [("letter", 2, "both"), ("text", 1, "ppl")])
def test_fast_ceval_matches_the_original_implementation(trained, ppl_continuation, shots, mode):
    model, enc = trained["model"], get_tokenizer()
    # the reference is slow on CPU ([4, T, vocab] logits per question): 4 questions, and a batch_tokens small
    # enough to pack them into batches of different sizes
    res = ev.ceval(model, enc, trained["small"], mode, shots=shots, ppl_continuation=ppl_continuation, subjects=["common_sense"],
                   batch_tokens=300)["common_sense"]["predictions"]
    ref = _reference_ceval(model, enc, "常识", ROWS[5:9], ROWS[:shots], ppl_continuation, gen=mode == "both")
    assert len(ref) == len(res) == 4
    for p, r in zip(res, ref):
        assert p["ppl"] == r["ppl"] and p.get("gen_text") == r.get("gen_text")
        assert np.allclose(p["ppl_scores"], r["scores"], atol=1e-4), (p["ppl_scores"], r["scores"])


def test_text_mean_divides_each_option_log_prob_by_its_token_count(trained):
    model, enc = trained["model"], get_tokenizer()
    ids = enc.encode(ev.build_prompt("常识", ROWS[3], ROWS[:2]))
    conts = [enc.encode(f"{L}. {ROWS[3][L]}") for L in "ABCD"]
    total = ev.continuation_logprobs(model, ids, conts, "cpu")
    mean = ev.continuation_logprobs(model, ids, conts, "cpu", reduce="mean")
    assert len({len(c) for c in conts}) > 1   # options of different token lengths: the two rankings can differ
    assert np.allclose(mean, [t / len(c) for t, c in zip(total, conts)], atol=1e-6)
    res = ev.ceval(model, enc, trained["dir"], "ppl", shots=2, ppl_continuation="text_mean", subjects=["common_sense"])
    assert np.allclose(res["common_sense"]["predictions"][3]["ppl_scores"], mean, atol=1e-4)


@pytest.mark.parametrize("text,letter", [("答案：B", "B"), ("B.", "B"), ("(B)", "B"), ("选B", "B"), ("答案是 C。", "C"),
                                         ("（D）正确", "D"), ("我认为选项A是对的", "A"), ("Because", None), ("", None),
                                         ("答案：Because the", None), ("答案是Apple", None), ("选Apple", None)])
def test_extract_choice_reads_common_answer_forms(text, letter):
    assert ev.extract_choice(text) == letter


def test_letter_scores_are_fp32_from_bf16_weights():
    """A bf16 model: the log-probs of the scored positions are computed in fp32 from its hidden states (bf16 logits
    step by 1/16 at a logit of ~10: close options tied, and a tie went to A)."""
    torch.manual_seed(3)
    model = Qwen3(small_config(vocab_size=400, hidden_size=32, intermediate_size=64, head_dim=16)).to(torch.bfloat16).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(40)   # logits of tens, where bf16's steps are coarse
        seq = torch.randint(0, 400, (12,)).tolist()
        h = model.hidden_states(torch.tensor([seq]))[0]
        want = torch.log_softmax(h.float() @ model.lm_head_weight.float().T, -1)
    got = ev.score_positions(model, [seq], [[(p, 7) for p in range(12)]], "cpu")[0]
    assert np.allclose(got, want[:, 7].tolist(), atol=1e-4), (got, want[:, 7].tolist())


@pytest.mark.parametrize("text", ["B\n\n…答案：C", "B\n\n正确答案是：C", "B。答案为: (C)", "A\n故答案应为【C】"])
def test_extract_choice_prefers_a_later_answer_over_a_leading_letter(text):
    assert ev.extract_choice(text) == "C"


def test_opencompass_prompts_are_byte_identical_to_opencompass_rendering():
    # rendered by OpenCompass's own PromptTemplate / BaseRetriever / LMTemplateParser (no meta template) for the
    # configs ceval_ppl_578f8d (label B) and ceval_gen_5f30c7, subject name 科目
    dev = [dict(question=f"dq{i}", A=f"a{i}", B=f"b{i}", C=f"c{i}", D=f"d{i}", answer="ABCD"[i]) for i in range(2)]
    q = dict(question="tq", A="ta", B="tb", C="tc", D="td", answer="C")
    h = "以下是中国关于科目考试的单项选择题，请选出其中的正确答案。\n"
    turn = lambda i: f"{h}dq{i}\nA. a{i}\nB. b{i}\nC. c{i}\nD. d{i}\n答案: "
    last = f"{h}tq\nA. ta\nB. tb\nC. tc\nD. td\n答案: "
    assert ev.build_prompt("科目", q, dev, "opencompass", "ppl") + "B" == \
        f"{turn(0)}\nA\n\n\n{turn(1)}\nB\n\n\n\n\n{last}\nB"
    assert ev.build_prompt("科目", q, [], "opencompass", "ppl") + "B" == f"\n\n{last}\nB"
    assert ev.build_prompt("科目", q, dev, "opencompass", "gen") == f"{turn(0)}\nA\n{turn(1)}\nB\n{last}"
    assert ev.build_prompt("科目", q, [], "opencompass", "gen") == f"\n{last}"


def test_opencompass_ppl_ranks_options_like_mean_loss_over_the_whole_text(trained):
    # OpenCompass's PPLInferencer: the label whose full text (prompt + letter, tokenized as one string) has the
    # lowest mean loss. Ours: the highest letter log-prob after the prompt. Same ranking.
    model, enc = trained["model"], get_tokenizer()
    res = ev.ceval(model, enc, trained["dir"], "ppl", shots=2, prompt_style="opencompass", subjects=["common_sense"])
    for row, pred in list(zip(ROWS, res["common_sense"]["predictions"]))[:4]:   # 4: the check is slow on CPU
        losses = []
        for L in "ABCD":
            ids = torch.tensor([enc.encode(ev.build_prompt("常识", row, ROWS[:2], "opencompass", "ppl") + L)])
            with torch.no_grad():
                losses.append(model(ids[:, :-1], ids[:, 1:])[1].item())
        assert pred["ppl"] == "ABCD"[int(np.argmin(losses))]


def test_opencompass_gen_reads_the_first_capital_letter_and_stopping_there_changes_nothing(trained):
    assert ev.first_capital("答案是 Because A") == "B" and ev.first_capital("不知道") is None
    model, enc = trained["model"], get_tokenizer()
    res = ev.ceval(model, enc, trained["small"], "gen", shots=2, prompt_style="opencompass", max_new_tokens=4,
                   subjects=["basic_math"])["basic_math"]["predictions"]
    limit = model.config.max_position_embeddings // 2   # OpenCompass's 1024, capped for this 256-position model
    for row, p in zip(ROWS[5:9], res):
        ids = enc.encode(ev.build_prompt("基础数学", row, ROWS[:2], "opencompass", "gen"))[-(256 - limit):]
        full = generate(model, torch.tensor([ids]), limit, temperature=0, eos=EOT)[0, len(ids):].tolist()
        assert p["gen"] == ev.first_capital(ev._decode(enc, full))   # decoding all `limit` tokens: same answer
        assert p["gen_text"] == ev._decode(enc, full)[:len(p["gen_text"])]


def test_dev_split_never_shows_a_question_its_own_answer(trained, monkeypatch):
    seen = []
    real = ev.build_prompt
    monkeypatch.setattr(ev, "build_prompt", lambda name, row, shots, *a: seen.append((row, shots)) or real(name, row, shots, *a))
    ev.ceval(trained["model"], get_tokenizer(), trained["dir"], "ppl", split="dev", shots=5, subjects=["common_sense"])
    assert len(seen) == 2 * 5   # 5 dev questions, a PPL and a GEN prompt each
    for row, shots in seen:
        assert row not in shots and len(shots) == 4


def test_missing_subject_mapping_warns_on_stderr(trained, tmp_path, capsys):
    d = shutil.copytree(trained["dir"], tmp_path / "c")
    os.remove(d / "subject_mapping.json")
    ev.ceval(trained["model"], get_tokenizer(), str(d), "ppl", subjects=["common_sense"])
    assert "subject_mapping.json not found" in capsys.readouterr().err
    ev.ceval(trained["model"], get_tokenizer(), trained["dir"], "ppl", subjects=["common_sense"])
    assert "warning" not in capsys.readouterr().err


def test_cli_prints_per_subject_table_average_and_json(trained, monkeypatch, capsys):
    out = trained["tmp"] / "r.json"
    code = run_script(monkeypatch, "eval.py", f"--init_from={trained['model_dir']}", f"--ceval_dir={trained['dir']}",
                      "--mode=ppl", "--shots=2", f"--results={out}")
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr[-2000:]
    assert "common_sense" in stdout and "average" in stdout
    assert json.load(open(out))["average"]["ppl_acc"] >= 0.5


def test_test_split_without_answers_gives_predictions_only(trained, tmp_path):
    d = shutil.copytree(trained["dir"], tmp_path / "c")
    os.makedirs(d / "test")
    (d / "test" / "common_sense_test.csv").write_text("id,question,A,B,C,D\n0,q,a,b,c,d\n")
    res = ev.ceval(trained["model"], get_tokenizer(), str(d), "ppl", split="test")["common_sense"]
    assert res["n"] == 1 and res["predictions"][0]["ppl"] in "ABCD" and "ppl_acc" not in res


def test_missing_columns_and_missing_dirs_stop_with_a_message_naming_them(trained, tmp_path):
    d = shutil.copytree(trained["dir"], tmp_path / "c")
    os.makedirs(d / "test")
    (d / "test" / "common_sense_test.csv").write_text("id,question,A,B\n0,q,a,b\n")
    with pytest.raises(SystemExit, match="lacks column"):
        ev.ceval(trained["model"], get_tokenizer(), str(d), "ppl", split="test")
    with pytest.raises(SystemExit, match="not found"):
        ev.ceval(trained["model"], get_tokenizer(), str(tmp_path / "nope"), "ppl")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A fake training checkpoint (trained with seq_len 32, val_tokens 640), the same weights as a plain HF dir,
    and a prepared dataset."""
    tmp = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = Qwen3(small_config()).eval()
    ckpt, hf = tmp / "out" / "ckpt-0000001", tmp / "hf"
    for d in (ckpt, hf):
        save_pretrained(model, d, dtype=torch.float32)
    torch.save({"step": 1, "train_config": {"seq_len": 32, "val_tokens": 640}}, ckpt / "state.pt")
    return dict(model=model, ckpt=str(ckpt), hf=str(hf), data=synthetic_dataset(str(tmp / "data"), val=6000))


def test_cli_val_loss_takes_seq_len_and_val_tokens_from_the_checkpoint(checkpoint, monkeypatch, capsys):
    code = run_script(monkeypatch, "eval.py", f"--init_from={checkpoint['ckpt']}", f"--data_dir={checkpoint['data']}")
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr[-2000:]
    loss = float(stdout.split("val loss ")[1].split()[0])
    assert "seq_len 32 | val_tokens 640" in stdout
    assert abs(loss - data.val_loss_bpb(checkpoint["model"], checkpoint["data"], 32, 640, 4, "cpu")[0]) < 1e-3


def test_explicit_seq_len_beats_the_checkpoint_and_hf_dirs_keep_the_defaults(checkpoint):
    assert ev.val_settings(checkpoint["ckpt"], 16, None, 256) == (16, 640, False, "the checkpoint's training config")
    assert ev.val_settings(checkpoint["ckpt"], None, 99, 256) == (32, 99, False, "the checkpoint's training config")
    assert ev.val_settings(checkpoint["hf"], None, None, 4096) == (2048, 2**19, False, "default")
    assert ev.val_settings(checkpoint["hf"], None, None, 256)[0] == 256   # capped at max_position_embeddings


def test_results_path_is_checked_before_the_work_and_a_bad_subject_mapping_is_one_line(trained, tmp_path, monkeypatch):
    """Issue 36 points 6 and 13: --results=/nonexistent/dir/r.json failed only after the whole evaluation (the
    results lost); a malformed subject_mapping.json was a JSONDecodeError, a wrong shape an IndexError."""
    evaluated = []
    monkeypatch.setattr(ev, "ceval", lambda *a, **k: evaluated.append(1) or {})
    code = run_script(monkeypatch, "eval.py", f"--init_from={trained['model_dir']}", f"--ceval_dir={trained['dir']}",
                      f"--results={tmp_path}/nonexistent/r.json")
    assert code == f"error: --results={tmp_path}/nonexistent/r.json: the folder {tmp_path}/nonexistent does not " \
                   "exist: create it or choose another path" and not evaluated
    d = shutil.copytree(trained["dir"], tmp_path / "c")
    for text, says in (("{not json", "is not valid JSON"), ('{"common_sense": ["x"]}', "is not C-Eval's subject mapping"),
                       ('["a"]', "is not C-Eval's subject mapping")):
        (d / "subject_mapping.json").write_text(text)
        with pytest.raises(SystemExit, match=says):
            ev.subject_names(str(d))


@pytest.mark.parametrize("flag", ["--batch_size=0", "--batch_tokens=-1", "--max_new_tokens=0", "--seq_len=0"])
def test_eval_numeric_settings_out_of_range_are_one_line(trained, monkeypatch, flag):
    """Issue 36 point 10: every entry point's numeric settings are checked before the work."""
    code = run_script(monkeypatch, "eval.py", f"--init_from={trained['model_dir']}", f"--ceval_dir={trained['dir']}",
                      flag)
    assert code.startswith(f"error: {flag.split('=')[0]} must be >= 1, got "), code
