"""bench/poetry_rules.py: the Pingshui rhyme and tone rules on known poems (a regular 律诗 from the corpus passes; the
same poem with a rhyme character or a tone swapped fails; simplified and traditional score alike), and the reward's
components."""
import json, os, sys

import pytest

sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))  # after the root: bench/serve.py, bench/sft.py must not shadow serve.py, sft.py
import poetry_rules as R  # noqa: E402

# 杜甫《登高》 (a 七言律诗 of the corpus, first line rhyming) and 王之涣《登鹳雀楼》 (a 五言绝句, first line not rhyming)
DENGGAO = "風急天高猿嘯哀，渚清沙白鳥飛回。\n無邊落木蕭蕭下，不盡長江滾滾來。\n萬里悲秋常作客，百年多病獨登臺。\n艱難苦恨繁霜鬢，潦倒新停濁酒杯。"
DENGGAO_SIMPLIFIED = "风急天高猿啸哀，渚清沙白鸟飞回。\n无边落木萧萧下，不尽长江滚滚来。\n万里悲秋常作客，百年多病独登台。\n艰难苦恨繁霜鬓，潦倒新停浊酒杯。"
GUANQUELOU = "白日依山盡，黃河入海流。\n欲窮千里目，更上一層樓。"


def test_regular_poems_keep_rhyme_and_tones_in_both_scripts():
    for poem, form, group in ((DENGGAO, "七言律诗", "十灰"), (DENGGAO_SIMPLIFIED, "七言律诗", "十灰"), (GUANQUELOU, "五言绝句", "十一尤")):
        assert R.check_rules(poem, form) == {"rhyme": True, "tone": True, "rhyme_score": 1.0, "tone_score": 1.0, "group": group,
                                             "rhyme_broken": []}


def test_a_swapped_rhyme_or_tone_fails_and_simplified_scores_as_traditional():
    off_rhyme = DENGGAO.replace("飛回", "飛去")     # 去: oblique, out of the 灰 group
    repeated = DENGGAO.replace("酒杯", "酒哀")      # the first line's rhyme character again
    off_tone = DENGGAO.replace("天高", "天遠")      # 4th character level -> oblique: breaks 二四异 and 對
    for poem, broken, kinds in ((off_rhyme, "rhyme", ["off_group"]), (repeated, "rhyme", ["repeated"]), (off_tone, "tone", [])):
        r = R.check_rules(poem, "七言律诗")
        assert not r[broken] and r[f"{broken}_score"] < 1 and r["tone" if broken == "rhyme" else "rhyme"]
        assert r["rhyme_broken"] == kinds   # why the rhyme failed, as an evaluation counts it
    level_third = DENGGAO.replace("蕭蕭下", "蕭蕭天")   # the third sentence (odd, not rhyming) must end oblique: 天 is level
    assert R.check_rules(level_third, "七言律诗")["rhyme_broken"] == ["odd_ending"]
    simplified = DENGGAO_SIMPLIFIED.replace("飞回", "飞去")
    assert R.check_rules(simplified, "七言律诗") == R.check_rules(off_rhyme, "七言律诗")
    assert R.check_rules(GUANQUELOU, "七言绝句") is None   # not of that form: no rules to check


def test_polyphonic_characters_count_as_either_reading():
    assert R.tone_classes("看") == {"平", "仄"} and R.tone_classes("天") == {"平"} and R.tone_classes("去") == {"仄"}
    assert R.tone_classes("来") == R.tone_classes("來") == {"平"}   # simplified through OpenCC's table


def test_the_corpus_spelling_of_regular_poems_is_read_through_variants_and_the_guangyun():
    """The corpus writes forms the Pingshui data lacks: 迴 (回), 爲 (為), and 啼, which it holds under no form (the
    Guangyun's reading, placed in its Pingshui group: 八齊); the data also leaves 先 out of 一先. Each made a regular
    poem fail (a third of the corpus's); a character neither book knows still keeps no rule."""
    poems = (("七言律诗", DENGGAO.replace("飛回", "飛迴")),   # 杜甫《登高》 as the corpus spells it
             ("五言律诗", "青山橫北郭，白水遶東城。此地一爲別，孤蓬萬里征。浮雲遊子意，落日故人情。揮手自茲去，蕭蕭班馬鳴。"),   # 李白《送友人》
             ("七言绝句", "月落烏啼霜滿天，江楓漁火對愁眠。姑蘇城外寒山寺，夜半鐘聲到客船。"),   # 張繼《楓橋夜泊》
             ("七言律诗", "丞相祠堂何處尋，錦官城外柏森森。映階碧草自春色，隔葉黃鸝空好音。三顧頻煩天下計，兩朝開濟老臣心。"
                          "出師未捷身先死，長使英雄淚滿襟。"))   # 杜甫《蜀相》: 先 level, 6th of line 7
    for form, poem in poems:
        r = R.check_rules(poem, form)
        assert r["rhyme"] and r["tone"], (poem, r)
    assert R.readings("啼") == {("平", "八齊")} and ("平", "一先") in R.readings("先")
    assert not R.check_rules(GUANQUELOU.replace("依山", "依鶑"), "五言绝句")["tone"]   # 鶑 (鶯's variant): in neither


def test_the_rhyme_group_is_the_one_the_first_line_rhymes_in_too():
    """花 涯 蛙 all rhyme in 六麻; 涯 and 蛙 also in 九佳, so the even endings alone tie, and the first line decides."""
    r = R.check_rules("門外無人問落花，綠陰冉冉遍天涯。林鶯啼到無聲處，春草池邊獨聽蛙。", "七言绝句")
    assert r["rhyme"] and r["group"] == "六麻", r


@pytest.fixture
def poetry_data(tmp_path, monkeypatch):
    os.makedirs(tmp_path / "pretrain")
    (tmp_path / "forms.json").write_text(json.dumps({"浣溪沙": [[7, 7, 7, 7, 7, 7]]}, ensure_ascii=False))
    (tmp_path / "pretrain" / "part-00.jsonl").write_text(json.dumps({"text": "登高\n杜甫\n" + DENGGAO}, ensure_ascii=False) + "\n")
    monkeypatch.setenv("POETRY_DATA", str(tmp_path))
    R.poetry_data.cache_clear()
    yield tmp_path
    R.poetry_data.cache_clear()


def test_reward_components(poetry_data):
    ask = lambda form: [{"role": "user", "content": f"写一首题为《秋》的{form}"}]
    good = R.reward(ask("五言绝句"), GUANQUELOU)
    assert good == {"form": 1.0, "shape": 1.0, "rhyme": 1.0, "tone": 1.0, "kept": 1.0, "variety": 0.0, "copied": 0.0, "repeated": 0.0, "extra": 0.0}
    twice = R.reward(ask("七言律诗"), DENGGAO.replace("酒杯", "酒哀"))    # a rhyme character repeated: one rule broken
    assert twice["form"] == 1.0 and 0.8 < twice["rhyme"] < 1.0 and twice["kept"] == 0.0
    assert R.reward(ask("七言绝句"), GUANQUELOU)["form"] == 0.0 and R.reward(ask("七言绝句"), GUANQUELOU)["rhyme"] == 0.0
    assert R.reward(ask("七言律诗"), DENGGAO)["copied"] == -1.0          # the corpus's own lines
    assert R.reward(ask("五言绝句"), "白日依山盡，白日依山盡。\n欲窮千里目，更上一層樓。")["repeated"] == -1.0
    assert R.reward(ask("五言绝句"), GUANQUELOU + "\n(注：登楼之作)")["extra"] == -1.0
    assert R.reward(ask("五言绝句"), GUANQUELOU + " Hello")["extra"] == -1.0
    ci = "一曲新詞酒一杯，去年天氣舊亭臺。夕陽西下幾時回。\n無可奈何花落去，似曾相識燕歸來。小園香徑獨徘徊。"
    assert R.reward("填一首词，词牌为《浣溪沙》", ci)["form"] == R.reward("填一首词，词牌为《浣溪沙》", ci)["kept"] == 1.0
    assert R.reward("填一首词，词牌为《浣溪沙》", GUANQUELOU)["kept"] == 0.0
    # a sentence short of the tune is nearer the form than half of it: a group that all missed still has a gradient
    short, half = (R.reward("填一首词，词牌为《浣溪沙》", ci.rsplit("。", k)[0] + "。") for k in (2, 4))
    assert short["form"] == half["form"] == 0.0 and 0.0 < half["shape"] < short["shape"] < 1.0
    assert R.reward(ask("七言律诗"), GUANQUELOU)["shape"] == 0.0 and 0 < R.reward(ask("七言律诗"), DENGGAO[:32])["shape"] < 1
    with pytest.raises(ValueError, match="not a poetry prompt"):
        R.reward("hello", GUANQUELOU)


def test_reward_without_built_data_names_the_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("POETRY_DATA", str(tmp_path / "nowhere"))
    R.poetry_data.cache_clear()
    with pytest.raises(FileNotFoundError, match="forms.json is missing: run bench/poetry.py build"):
        R.reward("写一首题为《秋》的五言绝句", GUANQUELOU)
    R.poetry_data.cache_clear()


def test_importing_the_rules_leaves_the_root_modules_first():
    """rl.py loads bench/poetry_rules.py as a reward: bench/ (serve.py, sft.py, decode.py) must come after the repo
    root on sys.path, or a later `import serve` / `import sft` gets the benchmark instead (it did, in the test suite)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    bench = os.path.join(root, "bench")
    assert sys.path.index(root) < sys.path.index(bench)
    import serve
    assert os.path.dirname(os.path.abspath(serve.__file__)) == root


def test_variety_counts_the_other_answers_in_the_same_rhyme_group(poetry_data):
    """RL bought its rhyme score with one wide group (68% 十一真, LOG 29): an answer loses the share of the prompt's
    other answers that rhyme where it does."""
    ask = [{"role": "user", "content": "写一首题为《秋》的五言绝句"}]
    jueju = "床前明月光，疑是地上霜。\n舉頭望明月，低頭思故鄉。"                  # 七陽 (rhyme kept, tones not)
    group = [GUANQUELOU, GUANQUELOU, jueju, "無題，有。"]                     # 十一尤 twice, 七陽 once, no form
    got = [R.reward(ask, c, group_completions=group)["variety"] for c in group]
    assert got == [pytest.approx(-1 / 3), pytest.approx(-1 / 3), 0.0, 0.0]
    assert R.reward(ask, GUANQUELOU)["variety"] == 0.0                       # without the group: nothing to compare
    assert R.reward("填一首词，词牌为《浣溪沙》", GUANQUELOU, group_completions=[GUANQUELOU] * 3)["variety"] == 0.0
