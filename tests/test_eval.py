"""Evaluation: val loss and bits per byte by hand, C-Eval PPL/GEN scoring, letter extraction and the CLI."""
import csv, json, math, os

import numpy as np
import torch
import torch.nn.functional as F
from conftest import run, small_config

import data
from model import Qwen3, chunked_cross_entropy, save_pretrained
from tokenizer import get_tokenizer, save_tokenizer


def test_bpb_equals_loss_over_ln2_times_tokens_over_bytes_by_hand(tmp_path):
    from eval import val_loss_bpb
    os.makedirs(tmp_path / "in")
    docs = ["验证集的第一篇文档，中文。", "The second validation document, in English 🤖.", "混合 mixed 文本 123"] * 30
    with open(tmp_path / "in" / "v.jsonl", "w") as f:
        f.writelines(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs)
    d = str(tmp_path / "ds")
    data.prepare([str(tmp_path / "in")], d, val_fraction=0.5, quiet=True)
    torch.manual_seed(0)
    model = Qwen3(small_config(vocab_size=151936, hidden_size=16, intermediate_size=32, head_dim=8)).eval()
    loss, bpb = val_loss_bpb(model, d, 32, 12 * 32, 3, "cpu")
    enc = get_tokenizer()
    nats, tokens, nbytes = 0.0, 0, 0
    w = data.TokenWindows(d, "val", 32)
    for j in range(min(12, w.n_windows)):   # the first 4 x 3 windows, in order, by hand
        win = torch.tensor(w.window(j).astype(np.int64))
        with torch.no_grad():
            logits = model(win[None, :-1])[0][0]
        nats += F.cross_entropy(logits, win[1:], reduction="sum").item()
        tokens += 32
        nbytes += sum(len(enc.decode_single_token_bytes(t)) for t in win[1:].tolist() if t < 151643)
    assert abs(loss - nats / tokens) < 1e-4
    assert abs(bpb - (nats / tokens) / math.log(2) * tokens / nbytes) < 1e-4


CEVAL_QS = [("中国的首都是哪里", "上海", "北京", "广州", "深圳", "B"), ("一加一等于几", "一", "三", "二", "四", "C"),
            ("水的化学式", "H2O", "CO2", "O2", "NaCl", "A"), ("地球绕什么转", "月亮", "火星", "木星", "太阳", "D"),
            ("一年有几个月", "十", "十一", "十二", "十三", "C"), ("最大的海洋", "太平洋", "大西洋", "印度洋", "北冰洋", "A"),
            ("光速最快的介质", "水", "玻璃", "真空", "空气", "C"), ("熊猫主要吃什么", "鱼", "竹子", "肉", "草莓", "B"),
            ("三角形内角和", "90度", "360度", "270度", "180度", "D"), ("长城位于哪个国家", "日本", "中国", "印度", "蒙古", "B"),
            ("冰的温度一般", "低于零度", "高于百度", "五十度", "八十度", "A"), ("人有几只眼睛", "一", "三", "四", "二", "D")]


def _write_ceval(d):
    for split, rows in (("val", CEVAL_QS), ("dev", CEVAL_QS[:5])):
        os.makedirs(os.path.join(d, split), exist_ok=True)
        for subject in ("common_sense", "basic_math"):
            with open(os.path.join(d, split, f"{subject}_{split}.csv"), "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["id", "question", "A", "B", "C", "D", "answer"])
                for i, r in enumerate(rows):
                    w.writerow([i, *r])
    json.dump({"common_sense": ["Common Sense", "常识", "Other"], "basic_math": ["Basic Math", "基础数学", "STEM"]},
              open(os.path.join(d, "subject_mapping.json"), "w"), ensure_ascii=False)


def test_ceval_ppl_learns_answers_matches_brute_force_and_gen_extraction(tmp_path):
    import eval as ev
    d = str(tmp_path / "ceval")
    _write_ceval(d)
    enc = get_tokenizer()
    torch.manual_seed(0)
    model = Qwen3(small_config(vocab_size=151936, hidden_size=32, intermediate_size=64, head_dim=16))
    prompts = [enc.encode(ev.build_prompt("常识", {"question": q, "A": a, "B": b, "C": c, "D": dd}, []))
               for q, a, b, c, dd, _ in CEVAL_QS]
    answers = [enc.encode(r[-1])[0] for r in CEVAL_QS]
    before = ev.ceval(model.eval(), enc, d, "ppl", subjects=["common_sense"])["common_sense"]["ppl_acc"]
    assert before <= 0.5  # an untrained model is near chance (0.25) on these 12 questions
    # "train for a few steps on the questions with their correct answers": loss on the answer letter only
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for step in range(40):
        for ids, a in zip(prompts, answers):
            h = model.hidden_states(torch.tensor([ids]))[:, -1:]
            chunked_cross_entropy(h, model.lm_head_weight, torch.tensor([[a]])).backward()
        opt.step(), opt.zero_grad()
    model.eval()
    res = ev.ceval(model, enc, d, "both", split="val", shots=0)
    for subject in ("common_sense", "basic_math"):
        assert res[subject]["ppl_acc"] >= 0.75, (before, res[subject]["ppl_acc"])  # chance is 0.25
    # PPL scores == a brute-force, one-sequence-at-a-time computation
    q = CEVAL_QS[0]
    row = dict(zip(["question", "A", "B", "C", "D", "answer"], q))
    ids = enc.encode(ev.build_prompt("常识", row, [dict(zip(["question", "A", "B", "C", "D", "answer"], r)) for r in CEVAL_QS[:2]]))
    conts = [enc.encode(f"{L}. {row[L]}") for L in "ABCD"]
    batched = ev.continuation_logprobs(model, ids, conts, "cpu")
    for c, score in zip(conts, batched):
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([ids + c]))[0][0], -1)
        brute = sum(logp[len(ids) - 1 + k, t].item() for k, t in enumerate(c))
        assert abs(score - brute) < 1e-4
    # GEN-mode letter extraction
    for text, letter in [("答案：B", "B"), ("B.", "B"), ("(B)", "B"), ("选B", "B"), ("答案是 C。", "C"), ("（D）正确", "D"),
                         ("我认为选项A是对的", "A"), ("Because", None), ("", None)]:
        assert ev.extract_choice(text) == letter, text
    # CLI: per-subject table, average, JSON; clear errors for missing files / columns / answers
    save_pretrained(model, tmp_path / "m", dtype=torch.float32)
    save_tokenizer(tmp_path / "m")
    r = run(["eval.py", f"--init_from={tmp_path / 'm'}", f"--ceval_dir={d}", "--mode=ppl", "--shots=2",
             f"--out={tmp_path / 'r.json'}"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "common_sense" in r.stdout and "average" in r.stdout
    assert json.load(open(tmp_path / "r.json"))["average"]["ppl_acc"] >= 0.5
    os.makedirs(os.path.join(d, "test"))
    with open(os.path.join(d, "test", "common_sense_test.csv"), "w") as f:
        f.write("id,question,A,B,C,D\n0,q,a,b,c,d\n")
    r = run(["eval.py", f"--init_from={tmp_path / 'm'}", f"--ceval_dir={d}", "--split=test", "--mode=ppl",
             f"--out={tmp_path / 't.json'}"])
    assert r.returncode == 0 and "no answers" in r.stdout
    with open(os.path.join(d, "test", "common_sense_test.csv"), "w") as f:
        f.write("id,question,A,B\n0,q,a,b\n")
    r = run(["eval.py", f"--init_from={tmp_path / 'm'}", f"--ceval_dir={d}", "--split=test", "--mode=ppl"])
    assert r.returncode != 0 and "lacks column" in r.stderr
    r = run(["eval.py", f"--init_from={tmp_path / 'm'}", f"--ceval_dir={tmp_path / 'nope'}"])
    assert r.returncode != 0 and "not found" in r.stderr


