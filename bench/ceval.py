"""
C-Eval speed on one GPU: eval.ceval() 5-shot, PPL and GEN, over a synthetic C-Eval directory the size of the real
val split (1,346 questions, 52 subjects, 5 dev examples each), with a random-weight Qwen3-0.6B loaded the way
eval.py's CLI loads it (fp32 master weights under bf16 autocast). The real files cannot be downloaded here, and
speed does not depend on the words -- only on how many tokens the prompts have -- so the questions are random
common Chinese characters of realistic lengths (question 100-300 characters, options 4-40).

    python bench/ceval.py            # one CUDA GPU; prints one JSON line per mode; < 5 minutes

Prints seconds, questions/s and the mean prompt length in tokens for each mode. Both modes run as one call over
all subjects, as eval.py's CLI runs them (with CEVAL_GEN_SUBSET=1, GEN runs 4 subjects a call and stops early
to extrapolate: "subjects_timed" < 52 says so).
"""
import csv
import json
import os
import random
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the repo root

N_QUESTIONS, N_SUBJECTS, SHOTS = 1346, 52, 5
GEN_BUDGET_S = 150   # GEN time allowed before falling back to a measured subset
# ~400 frequent characters: random text from these tokenizes like real Chinese (about 1-1.5 characters per token);
# uniformly random CJK code points would be mostly rare characters, 2-3 byte-level tokens each
COMMON = ("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面"
          "而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性"
          "好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第"
          "向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管"
          "特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处"
          "队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单"
          "风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集温传土"
          "许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半办青省")


def write_synthetic_ceval(d, seed=0):
    rng = random.Random(seed)
    text = lambda lo, hi: "".join(rng.choice(COMMON) for _ in range(rng.randint(lo, hi)))
    sizes = [N_QUESTIONS // N_SUBJECTS] * N_SUBJECTS     # 25 or 26 per subject (the real split: 11 to 49)
    for i in range(N_QUESTIONS - sum(sizes)):
        sizes[i] += 1
    mapping = {}
    for s, n in enumerate(sizes):
        subject = f"subject_{s:02d}"
        mapping[subject] = [subject, text(2, 8), "Other"]
        for split, rows in (("val", n), ("dev", SHOTS)):
            os.makedirs(os.path.join(d, split), exist_ok=True)
            with open(os.path.join(d, split, f"{subject}_{split}.csv"), "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["id", "question", "A", "B", "C", "D", "answer"])
                for i in range(rows):
                    w.writerow([i, text(100, 300), *(text(4, 40) for _ in range(4)), rng.choice("ABCD")])
    with open(os.path.join(d, "subject_mapping.json"), "w", encoding="utf-8") as f:
        json.dump(mapping, f, ensure_ascii=False)
    return sorted(mapping)


smoke = False   # a 2-layer model on the CPU over 1 subject: the script's own check, no numbers


def main(smoke=False):
    """smoke=True (--smoke=True): a 2-layer model on the CPU over 1 subject, to check this script without a GPU."""
    import torch
    import eval as ev
    from model import Qwen3, Qwen3Config
    from tokenizer import get_tokenizer
    if not smoke and not torch.cuda.is_available():
        sys.exit("bench/ceval.py needs a CUDA GPU (--smoke=True runs a tiny CPU check)")
    t_start = time.time()
    device = "cpu" if smoke else "cuda"
    sync = (lambda: None) if smoke else torch.cuda.synchronize
    torch.manual_seed(0)
    with torch.device(device):   # fp32 master weights, as from_pretrained loads them
        model = Qwen3(Qwen3Config(num_hidden_layers=2, hidden_size=64, intermediate_size=128) if smoke else Qwen3Config()).eval()
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if not smoke else torch.autocast("cpu", enabled=False)
    enc = get_tokenizer()
    with tempfile.TemporaryDirectory() as d:
        subjects = write_synthetic_ceval(d)[:1 if smoke else None]
        names = json.load(open(os.path.join(d, "subject_mapping.json"), encoding="utf-8"))
        lengths = []
        for s in subjects:
            dev = ev.read_ceval_csv(os.path.join(d, "dev", f"{s}_dev.csv"), True)[:SHOTS]
            lengths += [len(enc.encode(ev.build_prompt(names[s][1], r, dev)))
                        for r in ev.read_ceval_csv(os.path.join(d, "val", f"{s}_val.csv"), False)]
        n_total = len(lengths)
        run = lambda mode, subs: ev.ceval(model, enc, d, mode, "val", SHOTS, subs, device, amp)
        if not smoke:
            run("both", subjects[:1])   # warm-up: CUDA context, cuBLAS, allocator (not timed)
        for mode in ("ppl", "gen"):
            sync()
            if not smoke:
                torch.cuda.reset_peak_memory_stats()
            # one call over all subjects, as the CLI runs it (GEN falls back to 4 subjects a call, measured on a
            # subset and extrapolated, should it be slow)
            step = len(subjects) if mode == "ppl" or not os.environ.get("CEVAL_GEN_SUBSET") else 4
            timed, elapsed, n = [], 0.0, 0
            for k in range(0, len(subjects), step):
                t = time.time()
                res = run(mode, subjects[k:k + step])
                sync()
                elapsed += time.time() - t
                timed += subjects[k:k + step]
                n += sum(r["n"] for r in res.values())
                if elapsed / n * n_total > GEN_BUDGET_S and len(timed) >= 8:
                    break
            total = elapsed / n * n_total
            print(json.dumps({"bench": "ceval", "mode": mode, "shots": SHOTS, "questions": n_total,
                              "subjects": len(subjects), "subjects_timed": len(timed), "seconds": round(total, 2),
                              "questions_per_s": round(n_total / total, 2),
                              "mean_prompt_tokens": round(sum(lengths) / n_total), "max_prompt_tokens": max(lengths),
                              "peak_mem_gib": None if smoke else round(torch.cuda.max_memory_allocated() / 2**30, 2),
                              "device": "cpu (smoke)" if smoke else torch.cuda.get_device_name(),
                              "torch": torch.__version__}), flush=True)
    print(json.dumps({"bench": "ceval", "total_wall_s": round(time.time() - t_start, 1)}), flush=True)


if __name__ == "__main__":
    exec(open(os.path.join(ROOT, "configurator.py")).read())
    main(smoke)
