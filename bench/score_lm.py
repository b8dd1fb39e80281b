"""
One evaluator for every system of bench/time_to_loss.py (issue 34): torchtitan's DCP checkpoints exported to a
Hugging Face Qwen3 directory through torchtitan's own name map, and every model directory -- ours or the export --
loaded by the one loader (checkpoint.load_model) and scored by the same code under two protocols:

- packed: the validation documents concatenated in order, each followed by <|endoftext|> (as prepare.py and
  torchtitan's c4_test loader pack them), cut into windows of seq_len + 1 tokens (the tail that fills no window is
  dropped), the mean next-token loss over every target of every window: torchtitan's validation protocol;
- doc: each document alone, [EOT] + doc -> doc + [EOT] (every token of the document and its closing EOT predicted,
  the context starting at an EOT), the mean over all those targets: what --doc_mask trains for.

Losses of two protocols are different quantities: compare (and take time-to-loss ratios) only within one.
Nothing here imports torchtitan (CI has none): its checkpoint is read with torch.distributed.checkpoint on the CPU.
"""
import json, math, os, re, sys, warnings

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from model import Qwen3, Qwen3Config  # noqa: E402
from tokenizer import EOT, get_tokenizer, token_byte_lengths  # noqa: E402

PROTOCOLS = ("packed", "doc")

# torchtitan's name -> Hugging Face's (= ours, model.py). Source: torchtitan 0.2.2,
# torchtitan/models/qwen3/model/state_dict_adapter.py, Qwen3StateDictAdapter.from_hf_map (dense layers; its MoE
# names are not ours). "{}" is the layer number. No tensor is permuted: torchtitan's Qwen3 RoPE rotates halves, as HF.
TITAN_TO_HF = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "layers.{}.attention.wq.weight": "model.layers.{}.self_attn.q_proj.weight",
    "layers.{}.attention.wk.weight": "model.layers.{}.self_attn.k_proj.weight",
    "layers.{}.attention.wv.weight": "model.layers.{}.self_attn.v_proj.weight",
    "layers.{}.attention.wo.weight": "model.layers.{}.self_attn.o_proj.weight",
    "layers.{}.attention.q_norm.weight": "model.layers.{}.self_attn.q_norm.weight",
    "layers.{}.attention.k_norm.weight": "model.layers.{}.self_attn.k_norm.weight",
    "layers.{}.feed_forward.w1.weight": "model.layers.{}.mlp.gate_proj.weight",
    "layers.{}.feed_forward.w3.weight": "model.layers.{}.mlp.up_proj.weight",
    "layers.{}.feed_forward.w2.weight": "model.layers.{}.mlp.down_proj.weight",
    "layers.{}.attention_norm.weight": "model.layers.{}.input_layernorm.weight",
    "layers.{}.ffn_norm.weight": "model.layers.{}.post_attention_layernorm.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# A full torchtitan checkpoint also holds these states beside the model's (flattened to the top level by its
# CheckpointManager): not weights, skipped. Anything else unknown is an error, so a renamed weight never goes unused.
TITAN_OTHER_STATES = ("optimizer", "lr_scheduler", "dataloader", "train_state")


def titan_to_hf_name(key):
    """The HF name of a torchtitan weight name, or None. A 'model.' prefix (a ModelWrapper saved unflattened) is
    accepted too."""
    key = key.removeprefix("model.")
    layer = re.match(r"layers\.(\d+)\.(.*)", key)
    if layer:
        hf = TITAN_TO_HF.get("layers.{}." + layer.group(2))
        return hf and hf.format(layer.group(1))
    return TITAN_TO_HF.get(key)


def read_titan_weights(path):
    """{torchtitan name: tensor} of the model in one DCP checkpoint folder (torchtitan's dump_folder/checkpoint/
    step-N: .metadata + *.distcp), read on the CPU with no process group; the optimizer's and loader's states are
    never loaded."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    if not os.path.isfile(os.path.join(path, ".metadata")):
        raise SystemExit(f"error: {path} is not a DCP checkpoint (no .metadata); pass torchtitan's step-N folder")
    reader = dcp.FileSystemReader(path)
    wanted = {}
    for key, meta in reader.read_metadata().state_dict_metadata.items():
        if key.split(".")[0] in TITAN_OTHER_STATES:
            continue
        if titan_to_hf_name(key) is None or not isinstance(meta, TensorStorageMetadata):
            raise SystemExit(f"error: {path}: {key} is not a weight of torchtitan's dense Qwen3 (its name map has "
                             "no such name)")
        wanted[key] = torch.empty(meta.size, dtype=meta.properties.dtype)
    with warnings.catch_warnings():   # "torch.distributed is disabled ... single process": that is the intent
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(wanted, storage_reader=reader, no_dist=True)
    return wanted


def titan_model(path, rope_theta=Qwen3Config.rope_theta, rms_norm_eps=Qwen3Config.rms_norm_eps,
                max_position_embeddings=Qwen3Config.max_position_embeddings):
    """Our Qwen3 (fp32, CPU) holding a torchtitan DCP checkpoint's weights. The shapes are read off the tensors;
    rope_theta, eps and context are not in the checkpoint: the defaults are this project's, which
    bench/peers/titan/titan_flavor.py gives torchtitan (its stock flavors use rope_theta 1e6). Tied embeddings:
    torchtitan's output.weight *is* tok_embeddings.weight when tied, so an output.weight absent or equal to the
    embedding means tied, one that differs an untied lm_head."""
    titan = read_titan_weights(path)
    sd = {titan_to_hf_name(k): v for k, v in titan.items()}
    emb = sd.get("model.embed_tokens.weight")
    q_norm, wq, wk, w1 = (sd.get(f"model.layers.0.{n}.weight") for n in
                          ("self_attn.q_norm", "self_attn.q_proj", "self_attn.k_proj", "mlp.gate_proj"))
    for name, t in (("tok_embeddings.weight", emb), ("layers.0.attention.q_norm.weight", q_norm),
                    ("layers.0.attention.wq.weight", wq), ("layers.0.attention.wk.weight", wk),
                    ("layers.0.feed_forward.w1.weight", w1)):
        if t is None:
            raise SystemExit(f"error: {path}: no {name} (torchtitan's name of {titan_to_hf_name(name)})")
    head = sd.get("lm_head.weight")
    tied = head is None or (head.shape == emb.shape and torch.equal(head, emb))
    if tied:
        sd.pop("lm_head.weight", None)
    n_layers = 1 + max(int(re.match(r"model\.layers\.(\d+)\.", k).group(1)) for k in sd if k.startswith("model.layers."))
    head_dim = q_norm.shape[0]
    try:
        config = Qwen3Config(vocab_size=emb.shape[0], hidden_size=emb.shape[1], intermediate_size=w1.shape[0],
                             num_hidden_layers=n_layers, num_attention_heads=wq.shape[0] // head_dim,
                             num_key_value_heads=wk.shape[0] // head_dim, head_dim=head_dim, rms_norm_eps=rms_norm_eps,
                             rope_theta=rope_theta, max_position_embeddings=max_position_embeddings,
                             tie_word_embeddings=tied)
    except ValueError as e:   # shapes no Qwen3 has: a tensor stored under another's name
        raise SystemExit(f"error: {path}: the weights' shapes are not a Qwen3's ({e})") from None
    with torch.device("meta"):
        model = Qwen3(config)
    hf_to_titan = {titan_to_hf_name(k): k for k in titan}
    for name in model.state_dict():
        if name not in sd:   # a missing layer's weight, named the way the checkpoint should have named it
            generic = re.sub(r"\.\d+\.", ".{}.", name, count=1)
            titan_name = next(t for t, h in TITAN_TO_HF.items() if h == generic)
            layer = re.search(r"\.(\d+)\.", name)
            raise SystemExit(f"error: {path}: no {titan_name.format(layer and layer.group(1))} (torchtitan's name "
                             f"of {name})")
    try:
        model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True, assign=True)
    except RuntimeError as e:   # a misshapen tensor: name it (the message names the HF key; give the titan one too)
        msg = " ".join(str(e).split())
        bad = next((k for k in sd if k in msg), None)
        raise SystemExit(f"error: {path}: {hf_to_titan.get(bad, bad)} does not fit a Qwen3 of the checkpoint's "
                         f"shapes ({msg[:200]})") from None
    return model


def export_titan(dcp_dir, out_dir, dtype=torch.bfloat16, **config):
    """A torchtitan DCP checkpoint as a Hugging Face directory (checkpoint.export_hf: the same files our train.py
    writes, the tokenizer included when the vocabulary holds Qwen's ids). dcp_dir is one step-N folder, or a folder
    of them (torchtitan's checkpoint/): each is exported to out_dir/step-N. Returns the directories written."""
    from checkpoint import export_hf
    steps = sorted((d for d in os.listdir(dcp_dir) if re.fullmatch(r"step-\d+", d)), key=lambda d: int(d[5:])) \
        if os.path.isdir(dcp_dir) and not os.path.isfile(os.path.join(dcp_dir, ".metadata")) else []
    if not steps:
        export_hf(titan_model(dcp_dir, **config), out_dir, dtype=dtype)
        return [out_dir]
    for d in steps:
        export_hf(titan_model(os.path.join(dcp_dir, d), **config), os.path.join(out_dir, d), dtype=dtype)
    return [os.path.join(out_dir, d) for d in steps]


# ------------------------------------------------------------------------------------------- scoring
def read_docs(path, max_docs=None):
    """The token ids of each validation document: prep's titan_val/train.jsonl ({"text": ...} a line, prepare.py's
    val split in its order), tokenized as prepare.py does (encode_ordinary, NFC)."""
    texts = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if max_docs is not None and len(texts) >= max_docs:
                break
            try:
                texts.append(json.loads(line)["text"])
            except (ValueError, KeyError, TypeError):
                raise SystemExit(f"error: {path}:{n}: not a JSON line with a \"text\" field") from None
    if not texts:
        raise SystemExit(f"error: {path}: no documents")
    return get_tokenizer().encode_ordinary_batch(texts)


def packed_rows(docs, seq_len, eot=EOT, max_windows=None):
    """Protocol "packed": documents each followed by EOT, concatenated, cut into seq_len + 1 token windows."""
    stream = np.concatenate([np.append(np.asarray(d, dtype=np.int64), eot) for d in docs])
    n = len(stream) // (seq_len + 1)
    n = n if max_windows is None else min(n, max_windows)
    if n == 0:
        raise SystemExit(f"error: the documents hold {len(stream)} tokens, fewer than one window of {seq_len + 1}")
    return list(stream[:n * (seq_len + 1)].reshape(n, seq_len + 1))


def doc_rows(docs, seq_len, eot=EOT):
    """Protocol "doc": [EOT] + doc + [EOT] per document. One with more than seq_len targets (never seen whole in
    training) is cut into windows of seq_len + 1 tokens overlapping by one, so each target is scored once, with
    the context of its own window."""
    rows = []
    for d in docs:
        seq = np.concatenate([[eot], np.asarray(d, dtype=np.int64), [eot]])
        rows += [seq[i:i + seq_len + 1] for i in range(0, len(seq) - 1, seq_len)]
    return rows


@torch.no_grad()
def score_rows(model, rows, batch_tokens=65536, pad=EOT):
    """(nats, targets, bytes) summed over rows, each scored x = row[:-1] -> y = row[1:]. Longest first, batched to
    about batch_tokens, right-padded (pad tokens come after a row's own under causal attention, and their targets
    are -100): a row's loss is the one it has alone."""
    was_training = model.training
    model.eval()
    device = model.model.embed_tokens.weight.device
    nbytes = torch.from_numpy(token_byte_lengths(model.config.vocab_size)).to(device)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    nats, targets, total_bytes, i = 0.0, 0, 0, 0
    while i < len(order):
        T = len(rows[order[i]]) - 1
        batch = [rows[j] for j in order[i:i + max(1, batch_tokens // T)]]
        i += len(batch)
        x = torch.full((len(batch), T), pad, dtype=torch.long)
        y = torch.full((len(batch), T), -100, dtype=torch.long)
        for r, row in enumerate(batch):
            row = torch.as_tensor(row, dtype=torch.long)
            x[r, :len(row) - 1], y[r, :len(row) - 1] = row[:-1], row[1:]
        x, y = x.to(device), y.to(device)
        _, loss = model(x, y)
        k = int((y != -100).sum())
        nats += loss.item() * k
        targets += k
        total_bytes += int(nbytes[y[y != -100]].sum())
    model.train(was_training)
    return nats, targets, total_bytes


def score(model, docs, seq_len, protocol, eot=EOT, max_windows=None, batch_tokens=65536):
    """{protocol, val_loss, val_bpb, targets, rows} of `model` on the documents (token id lists) under one
    protocol; bpb from the scored targets' own UTF-8 bytes (EOT counts 0)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    rows = packed_rows(docs, seq_len, eot, max_windows) if protocol == "packed" else doc_rows(docs, seq_len, eot)
    nats, n, nbytes = score_rows(model, rows, batch_tokens, pad=eot)
    return {"protocol": protocol, "val_loss": round(nats / n, 6),
            "val_bpb": round(nats / math.log(2) / nbytes, 6) if nbytes else None, "targets": n, "rows": len(rows)}


def load_for_scoring(path):
    """Any model directory through the one loader: bf16 on CUDA, fp32 on the CPU."""
    from checkpoint import load_model
    cuda = torch.cuda.is_available()
    model, _ = load_model(path, dtype=torch.bfloat16 if cuda else torch.float32, device="cuda" if cuda else "cpu")
    return model


def model_dirs(path):
    """[(model directory, step)] that `path` names: a model directory (step from its name: ckpt-NNNNNNN, step-N;
    None, the run's end, for anything else such as hf/), or a folder of them -- our out_dir (its ckpt-*/ and hf/)
    or an export_titan folder (step-*/) -- every one of them, in step order, the final last."""
    def step_of(d):
        m = re.fullmatch(r"(?:ckpt-|step-)(\d+)", os.path.basename(os.path.normpath(d)))
        return int(m.group(1)) if m else None
    if os.path.isfile(os.path.join(path, "config.json")):
        return [(path, step_of(path))]
    if not os.path.isdir(path):
        raise SystemExit(f"error: --model {path}: no such directory")
    found = [(os.path.join(path, d), step_of(d)) for d in os.listdir(path)
             if (step_of(d) is not None or d == "hf") and os.path.isfile(os.path.join(path, d, "config.json"))]
    if not found:
        raise SystemExit(f"error: --model {path}: no config.json, and no ckpt-*/, step-*/ or hf/ model inside")
    return sorted(found, key=lambda f: (f[1] is None, f[1] or 0))
