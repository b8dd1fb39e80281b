"""bench/poetry.py: the form / novelty checker on hand-made poems, and the held-out split of the SFT builder."""
import collections, json, os, sys

import torch

sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))  # after the root: bench/serve.py, bench/sft.py must not shadow serve.py, sft.py
import poetry  # noqa: E402

JUEJU = "床前明月光，疑是地上霜。\n舉頭望明月，低頭思故鄉。"
GUANQUELOU = "白日依山盡，黃河入海流。\n欲窮千里目，更上一層樓。"
CI = {"浣溪沙": [[7, 7, 7, 7, 7, 7]]}


def own_poem(i):
    """A 五言绝句 of its own for title i: one whose text no held-out poem shares (the builder holds those out too)."""
    first = [c for c in map(chr, range(0x4E00, 0x5400)) if poetry._one_form().get(c, c) == c]
    return first[i] + JUEJU[1:]


def test_form_checker_on_hand_made_poems():
    assert poetry.check_form(JUEJU, "五言绝句")
    assert poetry.check_form("床前明月光 疑是地上霜\n舉頭望明月 低頭思故鄉", "五言绝句")  # punctuation aside
    assert not poetry.check_form("床前明月光，疑是地上霜。", "五言绝句")                     # wrong line count
    assert not poetry.check_form("床前明月光光，疑是地上霜。\n舉頭望明月，低頭思故鄉。", "五言绝句")  # wrong length
    assert not poetry.check_form(JUEJU, "七言绝句") and not poetry.check_form(JUEJU, "五言律诗")
    assert poetry.check_form(JUEJU + "\n" + JUEJU, "五言律诗")
    ci = "一曲新詞酒一杯，去年天氣舊亭臺。夕陽西下幾時回。\n無可奈何花落去，似曾相識燕歸來。小園香徑獨徘徊。"
    assert poetry.check_form(ci, "ci:浣溪沙", CI)
    assert not poetry.check_form(ci[:-8], "ci:浣溪沙", CI) and not poetry.check_form(ci, "ci:菩萨蛮", CI)
    assert poetry.shi_form(JUEJU) == "五言绝句" and poetry.shi_form("無題，有。") is None


def test_novelty_flags_a_copied_line_only():
    seen = poetry.corpus_lines([{"text": "靜夜思\n李白\n" + JUEJU}])
    assert poetry.copied_lines("舉頭望明月，低頭思故鄉。\n春風吹綠岸，新月照寒江。", seen) == ["舉頭望明月低頭思故鄉"]
    assert poetry.copied_lines("春風吹綠岸，新月照寒江。\n野渡無人問，孤舟自橫斜。", seen) == []
    assert poetry.copied_lines("舉頭望明", seen) == []  # shorter than 7 characters: never counted
    # a couplet copied whatever the layout: two couplets a line in the poem, or in the corpus (yudingquantangshi)
    assert poetry.copied_lines("春風吹綠岸，新月照寒江。舉頭望明月，低頭思故鄉。", seen) == ["舉頭望明月低頭思故鄉"]
    seen = poetry.corpus_lines([{"text": "靜夜思\n李白\n" + JUEJU.replace("\n", "")}])
    assert poetry.copied_lines("舉頭望明月，低頭思故鄉。\n春風吹綠岸，新月照寒江。", seen) == ["舉頭望明月低頭思故鄉"]


def test_builder_holds_out_every_poem_of_a_heldout_title():
    titles = [f"題{i}" for i in range(400)]
    rows = [{"text": f"{t}\n某人\n{own_poem(i)}", "collection": "quantangshi"} for i, t in enumerate(titles) for _ in range(2)]
    rows += [{"text": f"浣溪沙\n某人{i}\n一曲新詞酒一杯，去年天氣舊亭臺。夕陽西下幾時回。\n無可奈何花落去，似曾相識燕歸來。小園香徑獨徘徊。",
              "collection": "songci"} for i in range(150)]
    pretrain, sft, heldout, ci = poetry.build(rows, heldout_fraction=0.1)
    held = {h["title"] for h in heldout if not h["form"].startswith("ci:")}
    assert 10 < len(held) < 100 and held == {t for t in titles if poetry.is_heldout(t, 0.1)}
    assert not any(t.split("\n")[0] in held for t in pretrain)
    assert not any(any(f"《{t}》" in r["messages"][0]["content"] for t in held) for r in sft)
    assert len(pretrain) == 2 * (400 - len(held)) + 150 - sum(h["form"].startswith("ci:") for h in heldout)
    assert ci == {"浣溪沙": [[7, 7, 7, 7, 7, 7]]} and all(h["form"] == "五言绝句" for h in heldout if h["title"] in held)
    json.dumps(sft, ensure_ascii=False)  # rows are plain JSON (sft.py reads them)
    # a held-out title's poems stay out of training under another spelling of it (遊 游, a separator), and its poem
    # under another title altogether; the held-out prompts stay the same
    n = next(t for t in titles if t in held)[1:]
    extra = [{"text": f"{t}\n某人\n{own_poem(500 + k)}", "collection": "quantangshi"} for k, t in enumerate((f"題：{n}", f"題 {n}"))]
    extra.append({"text": f"郊廟歌辭 其{n}\n某人\n{own_poem(titles.index('題' + n))}", "collection": "quantangshi"})
    pretrain2, _, heldout2, _ = poetry.build(rows + extra, heldout_fraction=0.1)
    assert not any(x["text"] in pretrain2 for x in extra) and len(pretrain2) == len(pretrain) and heldout2 == heldout
    assert poetry.text_key("遊：園 一") == poetry.text_key("游園一") != poetry.text_key("游園二")


def test_sft_per_form_caps_each_shi_form_and_keeps_every_ci_and_every_pretraining_poem():
    qijue = "朝辭白帝彩雲間，千里江陵一日還。\n兩岸猿聲啼不住，輕舟已過萬重山。"
    rows = [{"text": f"題{i}\n某人\n{JUEJU if i % 4 else qijue}", "collection": "quantangshi"} for i in range(80)]
    rows += [{"text": f"浣溪沙\n某人{i}\n一曲新詞酒一杯，去年天氣舊亭臺。夕陽西下幾時回。\n無可奈何花落去，似曾相識燕歸來。小園香徑獨徘徊。",
              "collection": "songci"} for i in range(120)]
    full = poetry.build(rows, heldout_fraction=0.0, ci_per_tune=0)
    capped = poetry.build(rows, heldout_fraction=0.0, ci_per_tune=0, sft_per_form=12)
    count = lambda sft: {f: sum(poetry.sft_form(r) == f for r in sft) for f in ("五言绝句", "七言绝句", "ci")}
    assert count(full[1]) == {"五言绝句": 60, "七言绝句": 20, "ci": 120}
    assert count(capped[1]) == {"五言绝句": 12, "七言绝句": 12, "ci": 120}
    assert capped[0] == full[0] and capped[2] == full[2]


def test_evaluate_reports_the_heldout_titles_apart_from_the_ci_tunes():
    heldout = [{"form": "五言绝句"}, {"form": "五言绝句"}, {"form": "ci:浣溪沙"}]
    res = poetry.evaluate([JUEJU, "無題，有。", JUEJU], heldout, CI, set())
    # 床前明月光 rhymes (霜/鄉, 七陽) but breaks the tone rules (a 古绝): rhyme 1 of 2, tone 0; the wrong form keeps neither
    assert res["shi"] == {"n": 2, "compliance": 0.5, "novelty": 1.0, "rhyme": 0.5, "tone": 0.0, "both": 0.0,
                          "rhyme_groups": 1, "top_rhyme_group_share": 1.0, "rhyme_broken": {}}
    assert res["distinct_lines"] == 0.6   # 6 distinct of 10: JUEJU's 4 sentences twice, 無題 and 有
    assert res["ci"]["n"] == 1 and res["ci"]["compliance"] == 0.0 and res["all"]["n"] == 3
    # the rhyme groups the rhyming poems use: 七陽 twice, 十一尤 once (登鸛雀樓); the unrhymed poem counts in neither
    # and why rhyme fails: the fifth ends its last sentence in 霜 again (a repeated rhyme character), 1 of 5
    twice = JUEJU.replace("故鄉", "白霜")
    res = poetry.evaluate([JUEJU, GUANQUELOU, JUEJU, "無題，有。", twice], [{"form": "五言绝句"}] * 5, CI, set())
    assert res["shi"]["rhyme"] == 0.6 and res["shi"]["rhyme_groups"] == 2 and res["shi"]["top_rhyme_group_share"] == 0.6667
    assert res["shi"]["rhyme_broken"] == {"repeated": 0.2}


def package_dist(tmp_path):
    """A small copy of the npm package's dist/: two poems, an authors file, a broken file, strains."""
    dist = tmp_path / "dist"
    for sub in ("quantangshi", "songci", "strains"):
        (dist / sub).mkdir(parents=True)
    tang = [{"title": "靜夜思", "author": "李白", "paragraphs": ["床前明月光，疑是地上霜。", "舉頭望明月，低頭思故鄉。"]},
            {"title": "空", "author": "某", "paragraphs": []}]
    (dist / "quantangshi" / "poet.tang.0.json").write_text(json.dumps(tang, ensure_ascii=False), encoding="utf-8")
    ci = [{"rhythmic": "浣溪沙", "author": "晏殊", "paragraphs": ["一曲新詞酒一杯，去年天氣舊亭臺。夕陽西下幾時回。"]}]
    (dist / "songci" / "ci.song.0.json").write_text(json.dumps(ci, ensure_ascii=False), encoding="utf-8")
    (dist / "songci" / "authors.song.json").write_text('[{"name": "晏殊", "desc": "..."}]', encoding="utf-8")
    (dist / "songci" / "broken.json").write_text("{not json", encoding="utf-8")
    (dist / "strains" / "x.json").write_text('[{"title": "t", "paragraphs": ["平平仄仄"]}]', encoding="utf-8")
    return dist


def test_the_npm_package_directory_is_read_as_it_ships(tmp_path):
    rows = poetry.read_corpus(str(package_dist(tmp_path)))
    assert rows == [{"text": "靜夜思\n李白\n" + JUEJU, "collection": "quantangshi"},
                    {"text": "浣溪沙\n晏殊\n一曲新詞酒一杯，去年天氣舊亭臺。夕陽西下幾時回。", "collection": "songci"}]


def test_build_says_what_it_reads_and_writes_rl_prompts(tmp_path, monkeypatch, capsys):
    """build spoke only at the end (~12 s of silence on the whole corpus); it also writes rl.py's prompts."""
    dist = package_dist(tmp_path)
    monkeypatch.setattr(sys, "argv", ["poetry.py", "build", "--corpus", str(dist), "--out", str(tmp_path / "raw")])
    poetry.main()
    err = capsys.readouterr().err
    assert err.startswith(f"reading the poems in {dist} ...\n2 poems read; splitting")
    rl = [json.loads(l) for l in open(tmp_path / "raw" / "rl_prompts.jsonl", encoding="utf-8")]
    assert all(r["messages"][-1]["role"] == "user" for r in rl)


def test_multi_turn_chats_keep_every_pair_once_and_still_hold_out_the_titles():
    titles = [f"題{i}" for i in range(300)]
    rows = [{"text": f"{t}\n某人\n{own_poem(i)}", "collection": "quantangshi"} for i, t in enumerate(titles)]
    single = poetry.build(rows, heldout_fraction=0.1)[1]
    _, sft, heldout, _ = poetry.build(rows, heldout_fraction=0.1, multi_turn=0.5)
    turns = [len(r["messages"]) // 2 for r in sft]
    assert set(turns) == {1, 2, 3} and 0.35 < sum(t > 1 for t in turns) / len(turns) < 0.65
    pairs = lambda rows: [(r["messages"][i]["content"], r["messages"][i + 1]["content"])
                          for r in rows for i in range(0, len(r["messages"]), 2)]
    assert pairs(sft) == pairs(single)  # the same (prompt, poem) pairs, in the same order
    assert all(m["role"] == ("user", "assistant")[i % 2] for r in sft for i, m in enumerate(r["messages"]))
    held = {h["title"] for h in heldout}
    assert held and not any(f"《{t}》" in m["content"] for r in sft for m in r["messages"] for t in held)


def test_second_turns_ask_each_prompt_after_the_models_own_previous_poem():
    chats = poetry.second_turns(["p0", "p1", "p2"], ["a0", "a1", "a2"])
    assert [[m["content"] for m in c] for c in chats] == [["p2", "a2", "p0"], ["p0", "a0", "p1"], ["p1", "a1", "p2"]]
    assert [m["role"] for m in chats[1]] == ["user", "assistant", "user"]


def test_generate_poems_takes_prompts_and_whole_chats():
    """A prompt and the same one-message chat render alike (same poems for the same seed); a second-turn chat, whose
    context holds an earlier poem, is answered too, one poem per chat."""
    from conftest import small_config
    from model import Qwen3
    torch.manual_seed(0)
    model = Qwen3(small_config(vocab_size=151936)).eval()
    prompts = ["写一首题为《春》的五言绝句", "填一首词，词牌为《浣溪沙》"]
    as_text = poetry.generate_poems(model, prompts, max_new_tokens=8, batch_size=2)
    as_chat = poetry.generate_poems(model, [[{"role": "user", "content": p}] for p in prompts], max_new_tokens=8,
                                    batch_size=2)
    second = poetry.generate_poems(model, poetry.second_turns(prompts, [JUEJU, JUEJU]), max_new_tokens=8, batch_size=2)
    assert as_text == as_chat and len(second) == 2 and all(isinstance(p, str) for p in second)


def test_rl_prompts_repeat_the_ci_chats_up_to_their_share():
    """ci were 4% of rl.py's prompts (the chats' own share) but 23% of the held-out prompts, and RL lost ci form."""
    chat = lambda ask, turns=1: {"messages": [{"role": "user", "content": ask}, {"role": "assistant", "content": "詩"}] * turns}
    sft = [chat(f"写一首题为《題{i}》的七言绝句", 1 + i % 2) for i in range(380)]
    sft += [chat(f"填一首词，词牌为《浣溪沙{i}》") for i in range(20)]
    rows = poetry.rl_prompts(sft, limit=200, ci_share=0.25)
    asks = [r["messages"][-1]["content"] for r in rows]
    assert len(rows) == 200 and all(r["messages"][-1]["role"] == "user" for r in rows)
    assert sum("词牌" in a for a in asks) == 50 and len({a for a in asks if "词牌" in a}) == 20   # every tune, repeated
    assert len({a for a in asks if "绝句" in a}) == 150 and any(len(r["messages"]) == 3 for r in rows)
    ci_only = poetry.rl_prompts(sft[380:], limit=200)
    assert len(ci_only) == 20 and poetry.rl_prompts(sft[:380], limit=200, ci_share=0.25) == poetry.rl_prompts(sft[:380], limit=200, ci_share=0)


def test_rl_prompts_ask_every_tune_alike():
    """The long rare tunes (洞仙歌) were the ones RL left broken (LOG 29): a tune is a form, so
    the ci prompts take the tunes in turn, however many chats each tune has."""
    chat = lambda ask: {"messages": [{"role": "user", "content": ask}, {"role": "assistant", "content": "詞"}]}
    sft = [chat(f"写一首题为《題{i}》的七言绝句") for i in range(300)]
    sft += [chat("填一首词，词牌为《浣溪沙》")] * 90 + [chat("填一首词，词牌为《洞仙歌》")] * 3 + [chat("填一首词，词牌为《摸鱼儿》")] * 7
    asks = [r["messages"][-1]["content"] for r in poetry.rl_prompts(sft, limit=200, ci_share=0.3)]
    counts = collections.Counter(a for a in asks if "词牌" in a)
    assert sum(counts.values()) == 60 and sorted(counts.values()) == [20, 20, 20]


def test_rl_prompts_ask_each_tune_in_proportion_to_its_sentences():
    """With build's ci forms a tune is asked in proportion to its longest pattern's sentences (LOG 29: the long
    tunes were the ones RL left broken), whatever its chat count; n_ci in all, by the largest remainders."""
    chat = lambda ask: {"messages": [{"role": "user", "content": ask}, {"role": "assistant", "content": "詞"}]}
    sft = [chat(f"写一首题为《題{i}》的七言绝句") for i in range(300)]
    sft += [chat(poetry.ci_prompt("浣溪沙"))] * 90 + [chat(poetry.ci_prompt("洞仙歌"))] * 3 + [chat(poetry.ci_prompt("摸鱼儿"))] * 7
    forms = {"浣溪沙": [[7] * 6], "洞仙歌": [[4, 5, 7] * 6, [4, 5] * 8], "摸鱼儿": [[3, 4] * 13]}
    rows = poetry.rl_prompts(sft, limit=200, ci_share=0.3, forms=forms)
    counts = collections.Counter(r["messages"][-1]["content"] for r in rows if "词牌" in r["messages"][-1]["content"])
    assert len(rows) == 200 and counts == {poetry.ci_prompt("浣溪沙"): 7, poetry.ci_prompt("洞仙歌"): 22,
                                           poetry.ci_prompt("摸鱼儿"): 31}   # 60 x 6/50, 18/50, 26/50: 7.2, 21.6, 31.2


def test_sft_regular_keeps_only_the_shi_that_keep_the_rules_as_answers():
    """--sft_regular: 《登鹳雀楼》 (regular) answers its chats, 《静夜思》 (一三五 free but 二四 both oblique in line 2:
    tones broken) does not; every poem is still pretrained on, and the ci are untouched."""
    rows = [{"text": f"題{i}\n某人\n{JUEJU if i % 2 else GUANQUELOU}", "collection": "quantangshi"} for i in range(40)]
    rows += [{"text": f"浣溪沙\n某人{i}\n一曲新詞酒一杯，去年天氣舊亭臺。夕陽西下幾時回。\n無可奈何花落去，似曾相識燕歸來。小園香徑獨徘徊。",
              "collection": "songci"} for i in range(120)]
    full = poetry.build(rows, heldout_fraction=0.0, ci_per_tune=0)
    regular = poetry.build(rows, heldout_fraction=0.0, ci_per_tune=0, sft_regular=True)
    answers = lambda sft: collections.Counter(r["messages"][-1]["content"] for r in sft)
    assert answers(full[1])[JUEJU] == 20 and answers(full[1])[GUANQUELOU] == 20
    assert answers(regular[1])[JUEJU] == 0 and answers(regular[1])[GUANQUELOU] == 20
    assert sum(poetry.sft_form(r) == "ci" for r in regular[1]) == 120 and regular[0] == full[0]


def test_the_recipe_resumes_a_stage_cut_off_or_begins_it_again(tmp_path):
    """bench/poem_recipe.sh says a rerun continues after a failure: a stage cut off before its first checkpoint left a
    log that refused the rerun ("holds log.jsonl of another run"), and pretraining / SFT never resumed at all."""
    import subprocess
    recipe = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "poem_recipe.sh")
    again = lambda d: subprocess.run(["bash", "-c", f'eval "$(grep "^again()" {recipe})"; again {d}'], cwd=tmp_path,
                                     capture_output=True, text=True).stdout.strip()
    assert again("out") == ""
    os.makedirs(tmp_path / "out")
    (tmp_path / "out" / "log.jsonl").write_text("{}\n")
    assert again("out") == "--overwrite=True"
    os.makedirs(tmp_path / "out" / "ckpt-0000050")
    assert again("out") == "--init_from=resume"
    text = open(recipe).read()
    assert text.count("$(again out_poem_base)") == text.count("$(again out_poem)") == text.count("$(again out_poem_rl)") == 1
