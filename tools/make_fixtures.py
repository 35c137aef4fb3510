"""Make the small GPT-2 test models and their reference outputs (tests/fixtures).

Run from the repository root on a machine with torch, transformers, safetensors, numpy and
tiktoken (CPU is enough; nothing is downloaded):

    python3 tools/make_fixtures.py --out tests/fixtures --tokenizer .cache/tokenizer
    python3 tools/make_fixtures.py --out tests/fixtures --only tiny-f16     # one model
    python3 tools/make_fixtures.py --out tests/fixtures --check             # verify only

For each model in MODELS it writes `<out>/models/<name>/`:
  config.json         the full GPT2Config (n_layer, n_head, n_embd, vocab_size, n_positions,
                      layer_norm_epsilon, eos_token_id, ...)
  model.safetensors   F32, F16 or BF16; keys with or without the `transformer.` prefix, Conv1D
                      weights stored (in, out); some models add a tied `lm_head.weight` and the
                      `attn.bias` causal-mask buffers (which a loader must ignore)
  reference.json      computed by transformers' GPT2LMHeadModel in float64 from the weights as
                      stored (rounded to the file's precision):
                        "logits": every position's logits for a fixed random token sequence of
                                  min(n_positions, 40) tokens (gpt2-vocab: 5, to stay within
                                  LOGITS_MAX_BYTES), in logits.bin (raw little-endian float32,
                                  row-major [T][V])
                        "greedy": greedy continuations (argmax, lowest index on ties, full
                                  recomputation each step) of prompts of 1, 3, 7 and 16 tokens,
                                  chosen so every step's top-1/top-2 gap is >= 1e-3 * logit std
                                  and no continuation contains EOS
                        "nll":    (gpt2-vocab) sliding-window mean NLL of score.txt
  logits.bin, score.txt, vocab.json + merges.txt (gpt2-vocab: the GPT-2 tokenizer)
and, when `<out>/tokenizer/corpus_texts.json` exists, `<out>/tokenizer/corpus_ids.json` with
tiktoken's gpt2 ids of every text (encode_ordinary and encode with all specials allowed).

Weights are seeded (torch.manual_seed / a torch.Generator per model) and perturbed so nothing
is trivial: biases ~ N(0, 0.1), LayerNorm weights ~ 1 + N(0, 0.2), LayerNorm biases ~ N(0, 0.1),
matrices with HF's GPT-2 init scaled by WEIGHT_SCALE, and wte scaled so the logits spread
(std ~2.5). After writing, every file is reloaded and checked (dtypes, key set, shapes, config
values) and the references are recomputed from the files as written (skip with --no-check).
"""

import argparse
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass

import numpy as np
import safetensors.torch
import torch
import transformers

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int
    n_positions: int
    eps: float
    eos: int
    seed: int
    dtype: str             # safetensors dtype name: F32, F16 or BF16
    prefix: bool           # keys start with "transformer."
    lm_head: bool          # also store lm_head.weight (a copy of wte, as HF ties them)
    attn_bias: bool        # also store h.{i}.attn.bias causal-mask buffers (bool)
    with_tokenizer: bool   # copy the GPT-2 tokenizer in as vocab.json + merges.txt, score NLL


MODELS = {
    s.name: s for s in (
        ModelSpec("tiny-f32-prefix", n_layer=2, n_head=4, n_embd=64, vocab_size=1000, n_positions=64,
                  eps=1e-5, eos=999, seed=1, dtype="F32", prefix=True, lm_head=True, attn_bias=True,
                  with_tokenizer=False),
        ModelSpec("tiny-f16", n_layer=3, n_head=2, n_embd=48, vocab_size=517, n_positions=128,
                  eps=1e-5, eos=516, seed=2, dtype="F16", prefix=False, lm_head=False, attn_bias=False,
                  with_tokenizer=False),
        ModelSpec("tiny-bf16", n_layer=1, n_head=3, n_embd=24, vocab_size=333, n_positions=32,
                  eps=1e-6, eos=0, seed=3, dtype="BF16", prefix=True, lm_head=False, attn_bias=False,
                  with_tokenizer=False),
        ModelSpec("gpt2-vocab", n_layer=2, n_head=2, n_embd=16, vocab_size=50257, n_positions=64,
                  eps=1e-5, eos=50256, seed=4, dtype="F16", prefix=False, lm_head=False, attn_bias=False,
                  with_tokenizer=True),
    )
}
TOKENIZER_TARGET = "tokenizer"  # --only value for corpus_ids.json

TORCH_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}

# Initialisation (see the module docstring).
HF_INIT_STD = 0.02          # GPT-2's initializer_range
WEIGHT_SCALE = 8.0          # matrices: HF's init times this
WTE_GAIN = 2.5              # wte std = WTE_GAIN / sqrt(n_embd): logit std ~ WTE_GAIN
BIAS_STD = 0.1
LN_WEIGHT_STD = 0.2
LN_BIAS_STD = 0.1
MIN_LOGIT_STD = 1.0

# References.
LOGITS_MAX_T = 40
LOGITS_MAX_BYTES = 1 << 20  # gpt2-vocab: 5 positions x 50257 x 4 bytes, to keep fixtures small
GREEDY_PROMPT_LENS = (1, 3, 7, 16)
GREEDY_NEW_TOKENS = 12
GREEDY_MARGIN_FRAC = 1e-3   # every step's top-1/top-2 gap >= this times the logit std
GREEDY_MAX_TRIES = 500
HF_VS_OWN_RTOL = 1e-6       # HF forward vs the independent float64 forward in this file, relative
                            # to max |logit|: catches any layout error (those are O(1)) ...
HF_VS_OWN_WARN = 1e-9       # ... and warns where transformers is not float64 throughout
FILE_VS_REF_RTOL = 1e-6     # logits.bin (float32) vs recomputed float64, relative to max |logit|
SIZE_WARN_BYTES = 6 << 20

SCORE_TEXT = """\
The lighthouse keeper's log for the winter of 1887 is a thin book with a cracked leather
spine. Most entries are short: the direction of the wind, the state of the sea, and the number
of ships that passed the point before dark. On the 14th of January he wrote only "Fog. No bell."
and on the next day nothing at all.

We don't know why the bell was silent. The inspector's report, filed three weeks later, blames a
frozen clapper; the keeper's daughter, who was eleven at the time, remembered it differently.
She said her father had climbed the tower twice that night, with a lamp in one hand and a
hammer in the other, and that he came down the second time without either of them.

What the log does record, in a careful hand, is the price of coal (4 shillings and 6 pence a
hundredweight), the arrival of a new barometer, and a list of 23 birds that struck the lantern
glass during the spring migration. It's the sort of detail that nobody thought worth keeping,
and it's exactly what a historian would ask for if she could ask for anything.

The station was automated in 1962. The book went to the county archive, where it sat in a box
labelled "misc. maritime" for forty years, until a volunteer opened it, read the entry for the
14th of January, and started asking questions that nobody has been able to answer since.
"""
SCORE_MIN_TOKENS, SCORE_MAX_TOKENS = 200, 500


class FixtureError(Exception):
    """A fixture could not be made or failed its check."""


def require(cond, msg):
    if not cond:
        raise FixtureError(msg)


def log(msg):
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------------
# Tensor layout

def canonical_shapes(spec):
    """Ordered {name: shape} of the model parameters, names without prefix, Conv1D as (in, out)."""
    C, V, P = spec.n_embd, spec.vocab_size, spec.n_positions
    shapes = {"wte.weight": (V, C), "wpe.weight": (P, C)}
    for i in range(spec.n_layer):
        h = f"h.{i}."
        shapes[h + "ln_1.weight"] = (C,)
        shapes[h + "ln_1.bias"] = (C,)
        shapes[h + "attn.c_attn.weight"] = (C, 3 * C)
        shapes[h + "attn.c_attn.bias"] = (3 * C,)
        shapes[h + "attn.c_proj.weight"] = (C, C)
        shapes[h + "attn.c_proj.bias"] = (C,)
        shapes[h + "ln_2.weight"] = (C,)
        shapes[h + "ln_2.bias"] = (C,)
        shapes[h + "mlp.c_fc.weight"] = (C, 4 * C)
        shapes[h + "mlp.c_fc.bias"] = (4 * C,)
        shapes[h + "mlp.c_proj.weight"] = (4 * C, C)
        shapes[h + "mlp.c_proj.bias"] = (C,)
    shapes["ln_f.weight"] = (C,)
    shapes["ln_f.bias"] = (C,)
    return shapes


def key_prefix(spec):
    return "transformer." if spec.prefix else ""


def attn_bias_key(spec, i):
    return f"{key_prefix(spec)}h.{i}.attn.bias"


def causal_mask_buffer(n_positions):
    return torch.tril(torch.ones((n_positions, n_positions), dtype=torch.bool)).view(
        1, 1, n_positions, n_positions).contiguous()


def expected_file_tensors(spec):
    """{key: (shape, torch dtype)} exactly as model.safetensors must hold them."""
    dt = TORCH_DTYPES[spec.dtype]
    pre = key_prefix(spec)
    out = {pre + k: (shape, dt) for k, shape in canonical_shapes(spec).items()}
    if spec.lm_head:
        out["lm_head.weight"] = ((spec.vocab_size, spec.n_embd), dt)
    if spec.attn_bias:
        for i in range(spec.n_layer):
            out[attn_bias_key(spec, i)] = ((1, 1, spec.n_positions, spec.n_positions), torch.bool)
    return out


def make_weights(spec):
    """Seeded float64 parameters, already rounded to the stored precision."""
    torch.manual_seed(spec.seed)
    gen = torch.Generator().manual_seed(spec.seed)
    w_std = HF_INIT_STD * WEIGHT_SCALE
    proj_std = w_std / math.sqrt(2 * spec.n_layer)  # GPT-2 scales residual projections
    weights = {}
    for name, shape in canonical_shapes(spec).items():
        noise = torch.randn(shape, generator=gen, dtype=torch.float64)
        if name == "wte.weight":
            t = noise * (WTE_GAIN / math.sqrt(spec.n_embd))
        elif name == "wpe.weight":
            t = noise * w_std
        elif ".ln_" in name or name.startswith("ln_f."):
            t = 1.0 + noise * LN_WEIGHT_STD if name.endswith(".weight") else noise * LN_BIAS_STD
        elif name.endswith(".bias"):
            t = noise * BIAS_STD
        elif name.endswith("c_proj.weight"):
            t = noise * proj_std
        else:
            t = noise * w_std
        weights[name] = t.to(TORCH_DTYPES[spec.dtype]).to(torch.float64).contiguous()
    return weights


def file_tensors(spec, weights):
    """The dict written to model.safetensors (distinct, contiguous tensors)."""
    dt = TORCH_DTYPES[spec.dtype]
    pre = key_prefix(spec)
    out = {pre + k: v.to(dt).contiguous() for k, v in weights.items()}
    if spec.lm_head:
        out["lm_head.weight"] = weights["wte.weight"].to(dt).clone().contiguous()
    if spec.attn_bias:
        for i in range(spec.n_layer):
            out[attn_bias_key(spec, i)] = causal_mask_buffer(spec.n_positions)
    return out


def weights_from_file(spec, tensors):
    """Canonical float64 parameters from a loaded model.safetensors dict."""
    pre = key_prefix(spec)
    return {k: tensors[pre + k].to(torch.float64).contiguous() for k in canonical_shapes(spec)}


# ----------------------------------------------------------------------------------------------
# The Hugging Face model

def make_config(spec):
    return transformers.GPT2Config(
        vocab_size=spec.vocab_size,
        n_positions=spec.n_positions,
        n_embd=spec.n_embd,
        n_layer=spec.n_layer,
        n_head=spec.n_head,
        layer_norm_epsilon=spec.eps,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=spec.eos,
        eos_token_id=spec.eos,
        tie_word_embeddings=True,
    )


def required_config_values(spec):
    return {
        "n_layer": spec.n_layer, "n_head": spec.n_head, "n_embd": spec.n_embd,
        "vocab_size": spec.vocab_size, "n_positions": spec.n_positions,
        "layer_norm_epsilon": spec.eps, "eos_token_id": spec.eos,
    }


def config_dict(spec):
    """config.json content: the full config (not the diff against defaults, which would drop
    default values such as layer_norm_epsilon 1e-5), without private attributes."""
    d = {k: v for k, v in make_config(spec).to_dict().items()
         if not k.startswith("_") and k != "attn_implementation"}
    d["architectures"] = ["GPT2LMHeadModel"]
    d["model_type"] = "gpt2"
    d["torch_dtype"] = DTYPE_NAMES[spec.dtype]
    if "dtype" in d:
        d["dtype"] = DTYPE_NAMES[spec.dtype]
    d = json.loads(json.dumps(d, default=str))  # plain JSON values only
    for k, want in required_config_values(spec).items():
        require(d.get(k) == want, f"{spec.name}: GPT2Config.to_dict() has {k}={d.get(k)!r}, expected {want!r}")
    return d


def build_hf_model(spec, weights):
    """GPT2LMHeadModel in float64, eval mode, eager attention, holding exactly `weights`."""
    config = make_config(spec)
    try:  # eager attention; any implementation is checked against own_logits anyway
        config._attn_implementation = "eager"
    except Exception:  # noqa: BLE001 - only a preference
        pass
    torch.manual_seed(spec.seed)
    model = transformers.GPT2LMHeadModel(config)
    if attn_implementation(model) != "eager" and hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation("eager")
        except Exception as e:  # noqa: BLE001
            log(f"  note: could not select eager attention ({e}); using {attn_implementation(model)}")
    model = model.double().eval()

    assigned = set()
    with torch.no_grad():
        for name, value in weights.items():
            module_path, attr = name.rsplit(".", 1)
            try:
                module = model.transformer.get_submodule(module_path)
                param = getattr(module, attr)
            except AttributeError as e:
                raise FixtureError(f"{spec.name}: transformers' GPT-2 has no parameter transformer.{name}") from e
            # Conv1D stores (in, out) like the file; a Linear would store (out, in).
            if isinstance(module, torch.nn.Linear) and value.dim() == 2:
                value = value.t()
            require(tuple(param.shape) == tuple(value.shape),
                    f"{spec.name}: HF parameter {name} has shape {tuple(param.shape)}, "
                    f"expected {tuple(value.shape)} ({type(module).__name__})")
            param.copy_(value)
            assigned.add(id(param))
        lm_head = model.lm_head.weight
        if id(lm_head) not in assigned:  # untied in this transformers version: tie by value
            log("  note: lm_head.weight is not tied to wte in this transformers version; copying wte")
            lm_head.copy_(weights["wte.weight"])
            assigned.add(id(lm_head))
    missed = [n for n, p in model.named_parameters(remove_duplicate=False) if id(p) not in assigned]
    require(not missed, f"{spec.name}: HF parameters not set from the fixture weights: {missed}")
    return model


def attn_implementation(model):
    return getattr(model.config, "_attn_implementation", None)


def hf_logits(model, spec, ids):
    """float64 logits (T, V) for one sequence."""
    x = torch.tensor([list(ids)], dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=x, use_cache=False)
    logits = out.logits if hasattr(out, "logits") else out[0]
    require(tuple(logits.shape) == (1, len(ids), spec.vocab_size),
            f"{spec.name}: HF logits shape {tuple(logits.shape)}")
    require(logits.dtype == torch.float64, f"{spec.name}: HF logits dtype {logits.dtype}")
    return logits[0]


def own_logits(spec, weights, ids):
    """An independent float64 GPT-2 forward over the canonical weights: checks that the file's
    layout (Conv1D (in, out), qkv order, tied head) is what transformers computes with."""
    w = weights
    T, C, H = len(ids), spec.n_embd, spec.n_head
    hs = C // H
    ids_t = torch.tensor(list(ids), dtype=torch.long)

    def layer_norm(x, p):
        return torch.nn.functional.layer_norm(x, (C,), w[p + ".weight"], w[p + ".bias"], spec.eps)

    def gelu_new(x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))

    mask = torch.tril(torch.ones((T, T), dtype=torch.bool))
    x = w["wte.weight"][ids_t] + w["wpe.weight"][:T]
    for i in range(spec.n_layer):
        h = f"h.{i}."
        a = layer_norm(x, h + "ln_1")
        qkv = a @ w[h + "attn.c_attn.weight"] + w[h + "attn.c_attn.bias"]          # (T, 3C)
        q, k, v = (t.reshape(T, H, hs).transpose(0, 1) for t in qkv.split(C, dim=1))  # (H, T, hs)
        att = (q @ k.transpose(1, 2)) / math.sqrt(hs)                              # (H, T, T)
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(0, 1).reshape(T, C)
        x = x + y @ w[h + "attn.c_proj.weight"] + w[h + "attn.c_proj.bias"]
        m = gelu_new(layer_norm(x, h + "ln_2") @ w[h + "mlp.c_fc.weight"] + w[h + "mlp.c_fc.bias"])
        x = x + m @ w[h + "mlp.c_proj.weight"] + w[h + "mlp.c_proj.bias"]
    return layer_norm(x, "ln_f") @ w["wte.weight"].t()


def compare_forwards(spec, model, weights, ids):
    ref = hf_logits(model, spec, ids)
    own = own_logits(spec, weights, ids)
    scale = max(1.0, ref.abs().max().item())
    err = (ref - own).abs().max().item()
    require(err <= HF_VS_OWN_RTOL * scale,
            f"{spec.name}: transformers and the independent forward differ by {err:.3e} "
            f"(scale {scale:.3f}, attn {attn_implementation(model)})")
    if err > HF_VS_OWN_WARN * scale:
        log(f"  warning: transformers' forward is not float64 throughout: differs from the independent "
            f"forward by {err:.3e} (scale {scale:.3f}, attn {attn_implementation(model)})")
    return ref


# ----------------------------------------------------------------------------------------------
# References

def logits_len(spec):
    return max(1, min(spec.n_positions, LOGITS_MAX_T, LOGITS_MAX_BYTES // (4 * spec.vocab_size)))


def rng_for(spec, purpose):
    return np.random.default_rng([spec.seed, purpose])


def greedy(model, spec, prompt, n_new):
    """Greedy continuation by full recomputation; returns (continuation, smallest top1-top2 gap)."""
    ids = list(prompt)
    cont = []
    min_margin = math.inf
    for _ in range(n_new):
        last = hf_logits(model, spec, ids)[-1]
        top = torch.topk(last, 2)
        nxt = int(torch.argmax(last).item())  # first index of the maximum
        require(nxt == int(top.indices[0].item()) or top.values[0] == top.values[1],
                f"{spec.name}: argmax and topk disagree")
        min_margin = min(min_margin, (top.values[0] - top.values[1]).item())
        ids.append(nxt)
        cont.append(nxt)
    return cont, min_margin


def greedy_cases(model, spec, threshold):
    """One case per prompt length: seeded random prompts, retried until every step's margin is
    at least `threshold` and the continuation does not contain EOS (so tests need not care
    whether generation stops at EOS)."""
    rng = rng_for(spec, 2)
    cases = []
    for plen in GREEDY_PROMPT_LENS:
        n_new = min(GREEDY_NEW_TOKENS, spec.n_positions - plen)
        if n_new < 1:
            continue
        for attempt in range(1, GREEDY_MAX_TRIES + 1):
            prompt = rng.integers(0, spec.vocab_size, size=plen).tolist()
            cont, margin = greedy(model, spec, prompt, n_new)
            if margin >= threshold and spec.eos not in cont:
                cases.append({"prompt": prompt, "continuation": cont, "min_margin": margin})
                log(f"  greedy: prompt {plen:2d} + {n_new} new, margin {margin:.4g} (try {attempt})")
                break
        else:
            raise FixtureError(f"{spec.name}: no prompt of length {plen} with greedy margin >= {threshold:.3g} "
                               f"in {GREEDY_MAX_TRIES} tries")
    require(len(cases) >= 4, f"{spec.name}: only {len(cases)} greedy cases")
    return cases


def sliding_window_nll(model, spec, seq, window, stride):
    """Mean NLL of seq[1:] given the preceding tokens, scored by overlapping windows: window
    starts s = 0, stride, ...; window covers seq[s:end], end = min(s + window, L); it scores
    targets p with max(s + 1, prev_end) <= p < end; stops after the window with end == L."""
    L = len(seq)
    require(L >= 2 and 1 <= stride <= window, f"{spec.name}: bad NLL setup (L={L}, window={window}, stride={stride})")
    total, n_scored, prev_end, s = 0.0, 0, 1, 0
    while True:
        end = min(s + window, L)
        logp = torch.log_softmax(hf_logits(model, spec, seq[s:end]), dim=-1)
        for p in range(max(s + 1, prev_end), end):
            total -= logp[p - 1 - s, seq[p]].item()
            n_scored += 1
        prev_end = end
        if end == L:
            break
        s += stride
    require(n_scored == L - 1, f"{spec.name}: NLL scored {n_scored} targets, expected {L - 1}")
    return total / (L - 1)


def nll_reference(model, spec, enc, model_dir):
    path = os.path.join(model_dir, "score.txt")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(SCORE_TEXT)
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    tokens = enc.encode_ordinary(text)
    require(SCORE_MIN_TOKENS <= len(tokens) <= SCORE_MAX_TOKENS,
            f"{spec.name}: score.txt has {len(tokens)} tokens, expected {SCORE_MIN_TOKENS}..{SCORE_MAX_TOKENS}")
    window = spec.n_positions
    stride = window // 2
    mean_nll = sliding_window_nll(model, spec, [spec.eos] + tokens, window, stride)
    log(f"  nll: {len(tokens)} tokens, mean {mean_nll:.6f}, ppl {math.exp(mean_nll):.6g}")
    return {"text_file": "score.txt", "n_tokens": len(tokens), "tokens": tokens, "mean_nll": mean_nll,
            "ppl": math.exp(mean_nll), "window": window, "stride": stride, "start_token": spec.eos}


def make_references(model, spec, weights, model_dir, enc):
    T = logits_len(spec)
    tokens = rng_for(spec, 1).integers(0, spec.vocab_size, size=T).tolist()
    logits = compare_forwards(spec, model, weights, tokens)
    std = logits.std(correction=0).item()
    max_abs = logits.abs().max().item()
    log(f"  logits: T={T} V={spec.vocab_size}, max|logit| {max_abs:.4f}, std {std:.4f} "
        f"(attn {attn_implementation(model)})")
    require(std >= MIN_LOGIT_STD, f"{spec.name}: logit std {std:.4f} < {MIN_LOGIT_STD}")
    np.ascontiguousarray(logits.numpy(), dtype="<f4").tofile(os.path.join(model_dir, "logits.bin"))

    threshold = GREEDY_MARGIN_FRAC * std
    ref = {
        "model": spec.name,
        "dtype": spec.dtype,
        "computed": "transformers GPT2LMHeadModel, float64, from the weights as stored in model.safetensors",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "logit_std": std,
        "logit_max_abs": max_abs,
        "logits": {"tokens": tokens, "file": "logits.bin", "T": T, "V": spec.vocab_size,
                   "format": "float32 little-endian, row-major [T][V]"},
        "greedy_margin_threshold": threshold,
        "greedy": greedy_cases(model, spec, threshold),
    }
    if spec.with_tokenizer:
        ref["nll"] = nll_reference(model, spec, enc, model_dir)
    return ref


# ----------------------------------------------------------------------------------------------
# Output

def format_json(obj, indent=0):
    """JSON with dicts and lists of containers spread over lines, lists of scalars on one line."""
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(k)}: {format_json(v, indent + 2)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        return "[\n" + ",\n".join(inner + format_json(v, indent + 2) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, allow_nan=False)


def write_json(path, obj):
    text = format_json(obj) + "\n"
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    with open(path, encoding="utf-8") as f:
        require(json.load(f) == obj, f"{path}: does not round-trip")


def tokenizer_files(tokenizer_dir):
    paths = {"vocab.json": os.path.join(tokenizer_dir, "encoder.json"),
             "merges.txt": os.path.join(tokenizer_dir, "vocab.bpe")}
    for p in paths.values():
        require(os.path.isfile(p), f"tokenizer file {p} not found (run tools/deps.sh, or pass --tokenizer)")
    return paths


class Tokenizer:
    """The tokenizer directory and, built on first use, its tiktoken gpt2 encoding."""

    def __init__(self, tokenizer_dir):
        self.dir = tokenizer_dir
        self._enc = None

    def files(self):
        return tokenizer_files(self.dir)

    def encoding(self):
        if self._enc is None:
            self.files()
            if TOOLS_DIR not in sys.path:
                sys.path.insert(0, TOOLS_DIR)
            import gpt2_tiktoken
            try:
                self._enc = gpt2_tiktoken.gpt2_encoding(self.dir)
            except ValueError as e:
                raise FixtureError(str(e)) from e
        return self._enc


def make_model(spec, out_dir, tok):
    log(f"[{spec.name}] {spec.dtype}, L={spec.n_layer} H={spec.n_head} C={spec.n_embd} "
        f"V={spec.vocab_size} P={spec.n_positions} eps={spec.eps:g} eos={spec.eos} seed={spec.seed}")
    model_dir = os.path.join(out_dir, "models", spec.name)
    os.makedirs(model_dir, exist_ok=True)
    enc = tok.encoding() if spec.with_tokenizer else None

    weights = make_weights(spec)
    safetensors.torch.save_file(file_tensors(spec, weights), os.path.join(model_dir, "model.safetensors"),
                                metadata={"format": "pt"})
    write_json(os.path.join(model_dir, "config.json"), config_dict(spec))
    if spec.with_tokenizer:
        for dst, src in tok.files().items():
            shutil.copyfile(src, os.path.join(model_dir, dst))

    model = build_hf_model(spec, weights)
    write_json(os.path.join(model_dir, "reference.json"), make_references(model, spec, weights, model_dir, enc))


def dumps_text_json(entries):
    """One entry per line; UTF-8 unless a string holds a lone surrogate (then \\u escapes)."""
    for ensure_ascii in (False, True):
        text = "[\n" + ",\n".join(json.dumps(e, ensure_ascii=ensure_ascii) for e in entries) + "\n]\n"
        try:
            text.encode("utf-8")
            return text
        except UnicodeEncodeError:
            log("  note: a text holds a lone surrogate; writing corpus_ids.json with \\u escapes")
    raise FixtureError("corpus_ids.json cannot be encoded")


def corpus_entries(out_dir, tok):
    """corpus_ids.json content, or None when there is no corpus_texts.json."""
    src = os.path.join(out_dir, "tokenizer", "corpus_texts.json")
    if not os.path.isfile(src):
        return None
    with open(src, encoding="utf-8") as f:
        texts = json.load(f)
    require(isinstance(texts, list) and all(isinstance(t, str) for t in texts),
            f"{src}: expected a JSON list of strings")
    enc = tok.encoding()
    return [{"text": t, "ordinary": enc.encode_ordinary(t), "special": enc.encode(t, allowed_special="all")}
            for t in texts]


def make_corpus_ids(out_dir, tok):
    log("[tokenizer] corpus_ids.json")
    entries = corpus_entries(out_dir, tok)
    if entries is None:
        log("  skipped: no tokenizer/corpus_texts.json")
        return
    path = os.path.join(out_dir, "tokenizer", "corpus_ids.json")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(dumps_text_json(entries))
    with open(path, encoding="utf-8") as f:
        require(json.load(f) == entries, f"{path}: does not round-trip")
    log(f"  {len(entries)} texts, {sum(len(e['ordinary']) for e in entries)} ordinary ids")


# ----------------------------------------------------------------------------------------------
# Check

def check_model(spec, out_dir, tok):
    log(f"[{spec.name}] check")
    model_dir = os.path.join(out_dir, "models", spec.name)
    st_path = os.path.join(model_dir, "model.safetensors")
    require(os.path.isfile(st_path), f"{st_path}: missing")
    tensors = safetensors.torch.load_file(st_path)
    want = expected_file_tensors(spec)
    extra, missing = sorted(set(tensors) - set(want)), sorted(set(want) - set(tensors))
    require(not extra and not missing, f"{st_path}: unexpected keys {extra}, missing keys {missing}")
    for key, (shape, dtype) in want.items():
        t = tensors[key]
        require(tuple(t.shape) == tuple(shape) and t.dtype == dtype,
                f"{st_path}: {key} is {t.dtype} {tuple(t.shape)}, expected {dtype} {tuple(shape)}")
    if spec.lm_head:
        require(torch.equal(tensors["lm_head.weight"], tensors[key_prefix(spec) + "wte.weight"]),
                f"{st_path}: lm_head.weight differs from wte.weight")
    if spec.attn_bias:
        for i in range(spec.n_layer):
            require(torch.equal(tensors[attn_bias_key(spec, i)], causal_mask_buffer(spec.n_positions)),
                    f"{st_path}: {attn_bias_key(spec, i)} is not the causal mask")

    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    for k, v in required_config_values(spec).items():
        require(cfg.get(k) == v, f"{model_dir}/config.json: {k}={cfg.get(k)!r}, expected {v!r}")

    with open(os.path.join(model_dir, "reference.json"), encoding="utf-8") as f:
        ref = json.load(f)
    lg = ref["logits"]
    T, V = lg["T"], lg["V"]
    require(V == spec.vocab_size and T == len(lg["tokens"]) == logits_len(spec), f"{spec.name}: reference logits shape")
    logits_path = os.path.join(model_dir, lg["file"])
    require(os.path.getsize(logits_path) == 4 * T * V, f"{logits_path}: size is not 4*T*V")
    stored = torch.from_numpy(np.fromfile(logits_path, dtype="<f4").astype(np.float64).reshape(T, V))

    # Recompute from the file as written.
    weights = weights_from_file(spec, tensors)
    model = build_hf_model(spec, weights)
    logits = compare_forwards(spec, model, weights, lg["tokens"])
    err = (logits - stored).abs().max().item()
    require(err <= FILE_VS_REF_RTOL * max(1.0, logits.abs().max().item()),
            f"{logits_path}: differs from the recomputed logits by {err:.3e}")
    require(len(ref["greedy"]) >= 4, f"{spec.name}: fewer than 4 greedy cases")
    for case in ref["greedy"]:
        cont, margin = greedy(model, spec, case["prompt"], len(case["continuation"]))
        require(cont == case["continuation"] and len(case["prompt"]) + len(cont) <= spec.n_positions,
                f"{spec.name}: greedy case {case['prompt'][:4]}... does not reproduce")
        require(margin >= ref["greedy_margin_threshold"], f"{spec.name}: greedy margin {margin} below threshold")

    if spec.with_tokenizer:
        nll = ref["nll"]
        for dst, src in tok.files().items():
            with open(src, "rb") as a, open(os.path.join(model_dir, dst), "rb") as b:
                require(a.read() == b.read(), f"{model_dir}/{dst}: differs from {src}")
        with open(os.path.join(model_dir, nll["text_file"]), encoding="utf-8", newline="") as f:
            tokens = tok.encoding().encode_ordinary(f.read())
        require(tokens == nll["tokens"] and len(tokens) == nll["n_tokens"], f"{spec.name}: score.txt tokens changed")
        mean_nll = sliding_window_nll(model, spec, [spec.eos] + tokens, nll["window"], nll["stride"])
        require(abs(mean_nll - nll["mean_nll"]) <= 1e-9 * max(1.0, abs(mean_nll)),
                f"{spec.name}: mean NLL {mean_nll} != reference {nll['mean_nll']}")
    log("  ok")


def check_corpus(out_dir, tok):
    log("[tokenizer] check")
    path = os.path.join(out_dir, "tokenizer", "corpus_ids.json")
    entries = corpus_entries(out_dir, tok)
    if entries is None:
        log("  skipped: no tokenizer/corpus_texts.json")
        return
    require(os.path.isfile(path), f"{path}: missing (corpus_texts.json exists)")
    with open(path, encoding="utf-8") as f:
        require(json.load(f) == entries, f"{path}: out of date with corpus_texts.json")
    log("  ok")


def print_sizes(out_dir):
    total = 0
    log(f"files under {out_dir}:")
    for root, dirs, files in os.walk(out_dir):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            size = os.path.getsize(path)
            total += size
            log(f"  {size / 1024:9.1f} KiB  {os.path.relpath(path, out_dir)}")
    log(f"  {total / 1024:9.1f} KiB  total")
    if total > SIZE_WARN_BYTES:
        log(f"warning: fixtures total {total / 2**20:.2f} MiB (more than {SIZE_WARN_BYTES / 2**20:.0f} MiB)")


def parse_args(argv):
    p = argparse.ArgumentParser(description="Make the GPT-2 test fixtures (models and reference outputs).")
    p.add_argument("--out", default="tests/fixtures", help="fixtures directory (default: tests/fixtures)")
    p.add_argument("--tokenizer", default=".cache/tokenizer",
                   help="directory with OpenAI's encoder.json and vocab.bpe (default: .cache/tokenizer)")
    p.add_argument("--only", choices=list(MODELS) + [TOKENIZER_TARGET], help="make/check only this one")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only check existing fixtures, write nothing")
    mode.add_argument("--no-check", action="store_true", help="skip the check after writing")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    targets = [args.only] if args.only else list(MODELS) + [TOKENIZER_TARGET]
    tok = Tokenizer(args.tokenizer)
    transformers.logging.set_verbosity_error()
    torch.set_grad_enabled(False)
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"safetensors {getattr(safetensors, '__version__', '?')}, numpy {np.__version__}")
    try:
        if not args.check:
            for t in targets:
                if t == TOKENIZER_TARGET:
                    make_corpus_ids(args.out, tok)
                else:
                    make_model(MODELS[t], args.out, tok)
        if not args.no_check:
            for t in targets:
                if t == TOKENIZER_TARGET:
                    check_corpus(args.out, tok)
                else:
                    check_model(MODELS[t], args.out, tok)
        print_sizes(args.out)
    except FixtureError as e:
        print(f"make_fixtures: error: {e}", file=sys.stderr)
        return 1
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
