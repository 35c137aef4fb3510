#!/usr/bin/env python3
"""The seed project's engines in PyTorch, measured with nanoinfer's benchmark protocol.

nanoGPT-inference (the Python project nanoinfer reimplements; its README is in the shared
seed folder, seed/nanoGPT-inference-README.md) compares GPT-2 inference engines by decode throughput, time to first token
and peak memory. This script re-writes its PyTorch engines from that README, on a nanoGPT-style
GPT-2 with random weights, runs them on the GPU that `nanoinfer bench` runs on, with the same
protocol (DESIGN.md section 7), and writes the same JSON, so plots can put the seed and
nanoinfer side by side. Its engine names carry a "torch-" prefix to tell them apart.

Model: token + position embedding, pre-LayerNorm blocks (c_attn Linear(C, 3C), causal
attention through F.scaled_dot_product_attention, c_proj; MLP with tanh-approximated GELU),
ln_f, lm_head tied to wte. Weights normal(0, 0.02) generated on the GPU from --seed, residual
projections scaled by 1/sqrt(2 n_layer), zero biases, unit norms. As in the seed, weights are
fp32 and run under torch.autocast(bfloat16) (--dtype bf16-autocast); --dtype bf16 stores them
in bf16 instead (nanoinfer's weight memory), --dtype fp32 runs without autocast.

Engines (all sample outside any graph with the sort-based sampler, "sampler": "sort"):
  baseline     no KV cache: every step recomputes the whole sequence (prompt + tokens so far)
               with causal SDPA and samples from the last position.
  kv_cache     KV cache preallocated to prompt + new tokens when the engine is set up, as the
               seed's kv_cache.py does (it writes slices, it does not concatenate); prefill,
               then one token per step attending over the filled prefix.
  cuda_graphs  the seed's CUDA-graph engine: a static KV cache of prompt + new tokens, attention
               over the whole cache with a boolean mask of valid positions, the decode forward
               captured with torch.cuda.CUDAGraph (after warm-up iterations on a side stream)
               for the batch size, replayed each step after copying token, position and mask
               into its static tensors. Prefill runs eagerly through the same masked forward.
               The seed samples with FlashInfer's rejection kernel; FlashInfer is not
               available here, so this engine uses the sort-based sampler.
Sampler (DESIGN.md section 6): logits / temperature -> top-k (torch.topk, ties at the k-th
value kept) -> softmax -> sort descending -> top-p (keep a token iff the mass of strictly larger
probabilities is < top_p) -> renormalise -> torch.multinomial. Temperature 0 or top_k 1 is
argmax (lowest index on ties). Defaults: temperature 1.0, top_k 20, top_p 0.9.

Where this differs from the seed's code, on purpose: the sampler is DESIGN.md's for every engine
(the seed's baseline samples top-k only, and its top-p drops the token that crosses top_p);
caches are allocated and graphs captured before the timed runs (the seed's kv_cache allocates
its cache inside the first forward of every request); prefill is not captured; GELU is the
tanh approximation (nanoGPT's is exact); and the bf16 weight copies live for a whole
configuration (the seed opens an autocast context per request, so its TTFT includes casting
the weights).

Protocol: random prompt tokens (numpy, from --seed and the batch size; EOS ignored); for each
batch size the engines run in an order shuffled from --seed; for each (engine, batch) the
engine is set up (caches allocated, graph captured), then --warmup runs, then --runs timed runs;
the medians are reported. One autocast context spans a configuration, so its bf16 weight copies
are made in the first warm-up run and reused, and the captured graph reads live copies.
  ttft_ms            prompt (on the host) submitted -> first tokens sampled and back on the host
  itl_ms             decode time of the remaining new_tokens - 1 steps / (new_tokens - 1), one
                     step = forward + sample, tokens kept on the GPU (CUDA events)
  decode_tok_s       batch / ITL;  per_request_tok_s = 1 / ITL
  prefill_tok_s      batch * prompt_len / TTFT
  peak_mem_bytes     torch.cuda.max_memory_allocated() since the configuration began (the peak
                     statistics are reset before each one; the model's weights are included)
  driver_mem_bytes   total - free from torch.cuda.mem_get_info() at the end of the configuration
  bandwidth_frac     (weight bytes + KV bytes one decode step must read) / ITL / copy bandwidth:
                     weights in the compute dtype (bf16 for bf16-autocast: the cached copies),
                     wpe left out; KV = 2 * n_layer * batch * n_embd * elem * (prompt_len +
                     new_tokens / 2), the mean context of a decode step, for every engine (the
                     baseline reads none and cuda_graphs reads the whole static cache: the
                     fraction is the useful traffic). Copy bandwidth: a 2 GiB device-to-device
                     copy at start, (read + written bytes) / time, median of 10.
Out of memory gives a row with "error": "out of memory" and the sweep goes on; past
--time-limit-s (counted from the start) the remaining configurations get "error": "skipped:
time limit" (one that already started runs to its end). The JSON is rewritten after every
configuration; a progress line per configuration goes to stderr, a table to stdout at the end.

Usage (Python 3, torch with CUDA, numpy; nothing is downloaded):
  python3 tools/reference_pytorch.py --model gpt2-xl --batch-sizes 1,8,64,256 --quick \\
      --out out/bench/reference_pytorch_gpt2-xl_quick.json
  python3 tools/reference_pytorch.py --model gpt2-xl --engines baseline,kv_cache,cuda_graphs \\
      --batch-sizes 1,2,4,8,16,32,64,128,256,512 --prompt-len 32 --max-new-tokens 100 \\
      --runs 5 --warmup 2 --out out/bench/reference_pytorch_gpt2-xl.json
  python3 tools/reference_pytorch.py --check
--quick sets --runs 2 --warmup 1 unless they are given. --check runs a small random model:
fp32 (no autocast, no TF32, SDPA math kernel) greedy tokens of the three engines must be
identical; bf16-autocast logits of every engine, fed the same tokens, must agree with the
baseline's; the sampler must match its exact distribution; exit status 1 if anything fails.
"""

import argparse
import contextlib
import ctypes
import dataclasses
import datetime
import gc
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DEVICE = torch.device("cuda")

# name -> (n_layer, n_head, n_embd); vocab 50257 and context 1024 for all (DESIGN.md section 2)
CONFIGS = {
    "gpt2": (12, 12, 768),
    "gpt2-medium": (24, 16, 1024),
    "gpt2-large": (36, 20, 1280),
    "gpt2-xl": (48, 25, 1600),
    "empty-1B": (24, 16, 1792),
    "empty-2B": (32, 32, 2304),
    "empty-4B": (32, 32, 3328),
    "empty-10B": (48, 48, 4128),
    "empty-16B": (64, 64, 4608),
}
ENGINE_NAMES = ("baseline", "kv_cache", "cuda_graphs")
# --dtype -> (parameter dtype, compute dtype: activations and KV cache, autocast on)
DTYPES = {
    "bf16-autocast": (torch.float32, torch.bfloat16, True),
    "bf16": (torch.bfloat16, torch.bfloat16, False),
    "fp32": (torch.float32, torch.float32, False),
}


# ----------------------------------------------------------------------------------------------
# The model (nanoGPT's GPT-2)

@dataclasses.dataclass
class GPTConfig:
    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int = 50257
    block_size: int = 1024


class Block(nn.Module):
    def __init__(self, cfg, **factory):
        super().__init__()
        C = cfg.n_embd
        self.n_head = cfg.n_head
        self.ln_1 = nn.LayerNorm(C, eps=1e-5, **factory)
        self.c_attn = nn.Linear(C, 3 * C, **factory)
        self.attn_proj = nn.Linear(C, C, **factory)
        self.ln_2 = nn.LayerNorm(C, eps=1e-5, **factory)
        self.c_fc = nn.Linear(C, 4 * C, **factory)
        self.mlp_proj = nn.Linear(4 * C, C, **factory)

    def forward(self, x, layer, attend):
        B, T, C = x.shape
        NH = self.n_head
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, NH, C // NH).transpose(1, 2) for t in (q, k, v))  # (B, NH, T, HS)
        y = attend(layer, q, k, v).transpose(1, 2).reshape(B, T, C)
        x = x + self.attn_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    """GPT-2 whose attention is supplied by the engine: attend(layer, q, k, v) -> (B, NH, T, HS)."""

    def __init__(self, cfg, **factory):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd, **factory)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd, **factory)
        self.h = nn.ModuleList(Block(cfg, **factory) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=1e-5, **factory)
        self.register_buffer("positions", torch.arange(cfg.block_size, device=factory.get("device")),
                             persistent=False)

    @torch.no_grad()
    def init_weights(self, seed):
        # Parameters keep requires_grad=True (we run under no_grad): autocast caches its bf16
        # copy of a weight only for leaves that require grad, as the seed's weights do.
        g = torch.Generator(device=self.wte.weight.device).manual_seed(seed)
        proj_std = 0.02 / math.sqrt(2 * self.cfg.n_layer)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.normal_(0.0, 0.02, generator=g)
            if isinstance(m, nn.Linear):
                m.bias.zero_()
            if isinstance(m, nn.LayerNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                p.normal_(0.0, proj_std, generator=g)

    def forward(self, idx, pos, attend):
        """idx (B, T) token ids at positions pos (T,) -> logits of the last position (B, V)."""
        x = self.wte(idx) + self.wpe(pos)
        for layer, block in enumerate(self.h):
            x = block(x, layer, attend)
        return F.linear(self.ln_f(x[:, -1, :]), self.wte.weight)  # lm_head tied to wte


def build_model(cfg, param_dtype, seed):
    model = GPT(cfg, device=DEVICE, dtype=param_dtype)
    model.init_weights(seed)
    return model.eval()


# ----------------------------------------------------------------------------------------------
# Sampling

def sample_sort(logits, temperature, top_k, top_p):
    """Sort-based top-k/top-p sampling of (B, V) logits -> (B,) token ids (DESIGN.md section 6)."""
    if temperature == 0 or top_k == 1:
        return torch.argmax(logits, dim=-1)
    logits = logits.float() / temperature
    if 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))  # ties at the k-th value stay
    probs = torch.softmax(logits, dim=-1)
    if top_p >= 1.0:
        return torch.multinomial(probs, 1).squeeze(-1)
    sorted_p, order = torch.sort(probs, dim=-1, descending=True)
    before = torch.cumsum(sorted_p, dim=-1) - sorted_p  # mass ahead of each token in the order
    # Tokens with less than top_p ahead of them form a prefix; all tokens as probable as its last
    # one are kept too, so a tie is kept or dropped whole (mass of *strictly* larger probs < p).
    n_keep = (before < top_p).sum(dim=-1, keepdim=True)  # >= 1: nothing is ahead of the first
    kept = sorted_p * (sorted_p >= sorted_p.gather(-1, n_keep - 1))
    choice = torch.multinomial(kept / kept.sum(dim=-1, keepdim=True), 1)
    return order.gather(-1, choice).squeeze(-1)


# ----------------------------------------------------------------------------------------------
# Engines: setup() once per (engine, batch size), then per request batch prefill(prompt) ->
# logits of the last prompt position, and decode(token) -> logits of the next position.

class Engine:
    name = ""

    def __init__(self, model, batch, prompt_len, max_new_tokens, kv_dtype):
        self.model = model
        self.cfg = model.cfg
        self.B = batch
        self.P = prompt_len
        self.T_max = prompt_len + max_new_tokens
        self.kv_dtype = kv_dtype
        self.len = 0  # tokens of the sequence processed so far

    def alloc_kv(self):
        cfg = self.cfg
        shape = (cfg.n_layer, self.B, cfg.n_head, self.T_max, cfg.n_embd // cfg.n_head)
        self.k = torch.zeros(shape, dtype=self.kv_dtype, device=DEVICE)
        self.v = torch.zeros(shape, dtype=self.kv_dtype, device=DEVICE)

    def setup(self):
        pass


def attend_causal(layer, q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class BaselineEngine(Engine):
    name = "baseline"

    def setup(self):
        self.seq = torch.zeros(self.B, self.T_max, dtype=torch.long, device=DEVICE)

    def _forward(self):
        return self.model(self.seq[:, :self.len], self.model.positions[:self.len], attend_causal)

    def prefill(self, prompt):
        self.len = prompt.size(1)
        self.seq[:, :self.len].copy_(prompt)
        return self._forward()

    def decode(self, tok):
        self.seq[:, self.len].copy_(tok)
        self.len += 1
        return self._forward()


class KVCacheEngine(Engine):
    name = "kv_cache"

    def setup(self):
        self.alloc_kv()

    def _attend(self, layer, q, k, v):
        T = q.size(2)
        end = self.len + T
        self.k[layer, :, :, self.len:end] = k
        self.v[layer, :, :, self.len:end] = v
        # causal only in prefill: one new query attends to the whole prefix
        return F.scaled_dot_product_attention(q, self.k[layer, :, :, :end], self.v[layer, :, :, :end],
                                              is_causal=T > 1)

    def prefill(self, prompt):
        self.len = 0
        T = prompt.size(1)
        logits = self.model(prompt, self.model.positions[:T], self._attend)
        self.len = T
        return logits

    def decode(self, tok):
        logits = self.model(tok.reshape(-1, 1), self.model.positions[self.len:self.len + 1], self._attend)
        self.len += 1
        return logits


class CudaGraphEngine(Engine):
    name = "cuda_graphs"

    def setup(self):
        self.alloc_kv()
        T_max, P = self.T_max, self.P
        self.slots = torch.arange(T_max, device=DEVICE).view(1, 1, 1, T_max)
        # prefill masking tensor: causal over the prompt, nothing beyond it
        self.prefill_mask = torch.zeros(1, 1, P, T_max, dtype=torch.bool, device=DEVICE)
        self.prefill_mask[0, 0, :, :P] = torch.ones(P, P, dtype=torch.bool, device=DEVICE).tril()
        # the decode graph's static inputs
        self.static_tok = torch.zeros(self.B, 1, dtype=torch.long, device=DEVICE)
        self.static_pos = torch.zeros(1, dtype=torch.long, device=DEVICE)
        self.static_mask = torch.le(self.slots, 0)  # a valid first slot while warming up
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._forward(self.static_tok, self.static_pos, self.static_mask)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_logits = self._forward(self.static_tok, self.static_pos, self.static_mask)

    def _attend(self, layer, q, k, v):
        k_all, v_all = self.k[layer], self.v[layer]  # (B, NH, T_max, HS)
        k_all.index_copy_(2, self.cur_pos, k)
        v_all.index_copy_(2, self.cur_pos, v)
        return F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=self.cur_mask)

    def _forward(self, idx, pos, mask):
        self.cur_pos, self.cur_mask = pos, mask
        return self.model(idx, pos, self._attend)

    def prefill(self, prompt):
        self.len = prompt.size(1)
        return self._forward(prompt, self.model.positions[:self.len], self.prefill_mask)

    def decode(self, tok):
        # copy this step's inputs into the static tensors, then replay
        self.static_tok.copy_(tok.reshape(-1, 1))
        self.static_pos.fill_(self.len)
        torch.le(self.slots, self.len, out=self.static_mask)  # slots 0..len are valid
        self.graph.replay()
        self.len += 1
        return self.static_logits


ENGINES = {e.name: e for e in (BaselineEngine, KVCacheEngine, CudaGraphEngine)}


# ----------------------------------------------------------------------------------------------
# Measurement

@dataclasses.dataclass
class Settings:
    prompt_len: int
    new_tokens: int
    runs: int
    warmup: int
    dtype: str
    temperature: float
    top_k: int
    top_p: float

    def sample(self, logits):
        return sample_sort(logits, self.temperature, self.top_k, self.top_p)

    @contextlib.contextmanager
    def context(self):
        """The compute context of one configuration: no_grad, and autocast where asked."""
        autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if DTYPES[self.dtype][2]
                    else contextlib.nullcontext())
        with torch.no_grad(), autocast:
            yield


def generate(engine, prompt_cpu, st):
    """One request batch through the engine: (ttft_ms, itl_ms, tokens as a list of (B,) tensors)."""
    start, first, end = (torch.cuda.Event(enable_timing=True) for _ in range(3))
    torch.cuda.synchronize()
    start.record()
    logits = engine.prefill(prompt_cpu.to(DEVICE))
    tok = st.sample(logits)
    tok.cpu()  # the first tokens are on the host: end of TTFT
    first.record()
    tokens = [tok]
    for _ in range(st.new_tokens - 1):
        tok = st.sample(engine.decode(tok))
        tokens.append(tok)
    end.record()
    end.synchronize()
    return start.elapsed_time(first), first.elapsed_time(end) / (st.new_tokens - 1), tokens


def measure_copy_bandwidth(nbytes=2 << 30, reps=10):
    """Device-to-device copy bandwidth, (read + written bytes) / time, median of reps."""
    src = torch.ones(nbytes, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / statistics.median(times)


def step_bytes(model, batch, st):
    """Bytes one decode step must read: weights and the mean context's KV, in the compute dtype."""
    cfg = model.cfg
    elem = torch.finfo(DTYPES[st.dtype][1]).bits // 8
    weights = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()
    kv = 2 * cfg.n_layer * batch * cfg.n_embd * (st.prompt_len + st.new_tokens / 2)
    return elem * (weights + kv)


def error_row(name, batch, st, message):
    return {"engine": "torch-" + name, "batch_size": batch, "prompt_len": st.prompt_len,
            "new_tokens": st.new_tokens, "error": message}


def bench_config(model, name, batch, prompt_cpu, st, copy_bw):
    """Set up one engine for one batch size, warm up, time; returns the JSON row."""
    torch.cuda.reset_peak_memory_stats()
    with st.context():
        engine = ENGINES[name](model, batch, st.prompt_len, st.new_tokens, DTYPES[st.dtype][1])
        engine.setup()
        for _ in range(st.warmup):
            generate(engine, prompt_cpu, st)
        timed = [generate(engine, prompt_cpu, st)[:2] for _ in range(st.runs)]
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        free, total = torch.cuda.mem_get_info()
    ttft_ms = statistics.median(t for t, _ in timed)
    itl_ms = statistics.median(i for _, i in timed)
    itl_s, ttft_s = itl_ms / 1e3, ttft_ms / 1e3
    return {
        "engine": "torch-" + name, "batch_size": batch, "prompt_len": st.prompt_len,
        "new_tokens": st.new_tokens, "ttft_ms": ttft_ms, "itl_ms": itl_ms,
        "decode_tok_s": batch / itl_s, "per_request_tok_s": 1 / itl_s,
        "prefill_tok_s": batch * st.prompt_len / ttft_s,
        "peak_mem_bytes": peak, "driver_mem_bytes": total - free,
        "bandwidth_frac": step_bytes(model, batch, st) / itl_s / copy_bw,
        "sampler": "sort",
        "ttft_ms_runs": [t for t, _ in timed], "itl_ms_runs": [i for _, i in timed],
    }


def release_memory():
    gc.collect()
    torch.cuda.empty_cache()


def run_config(model, name, batch, prompt_cpu, st, copy_bw):
    """bench_config, with failures turned into error rows (the sweep goes on)."""
    try:
        row = bench_config(model, name, batch, prompt_cpu, st, copy_bw)
    except torch.cuda.OutOfMemoryError:
        row = error_row(name, batch, st, "out of memory")
    except Exception as e:  # noqa: BLE001 -- one configuration failing must not end the sweep
        # (an allocation failing inside graph capture surfaces as a capture error that says so)
        first_line = (str(e).strip().splitlines() or [""])[0]
        oom = "out of memory" in str(e).lower()
        row = error_row(name, batch, st, "out of memory" if oom else f"{type(e).__name__}: {first_line}")
    release_memory()
    return row


def make_prompt(seed, batch, prompt_len, vocab_size):
    rng = np.random.default_rng([seed, batch])
    return torch.from_numpy(rng.integers(0, vocab_size, size=(batch, prompt_len), dtype=np.int64))


# ----------------------------------------------------------------------------------------------
# Reporting

GIB = float(1 << 30)


def progress(i, n, row, t0):
    head = f"[{i:>3}/{n}] {row['engine']:<18} B={row['batch_size']:<4}"
    if "error" in row:
        body = f"error: {row['error']}"
    else:
        body = (f"ttft {row['ttft_ms']:9.2f} ms  itl {row['itl_ms']:8.3f} ms  "
                f"{row['decode_tok_s']:10.1f} tok/s  peak {row['peak_mem_bytes'] / GIB:6.2f} GiB  "
                f"bw {row['bandwidth_frac']:.3f}")
    print(f"{head} {body}  (+{time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)


def print_table(rows):
    print(f"{'engine':<18} {'batch':>5} {'TTFT ms':>9} {'ITL ms':>8} {'decode tok/s':>12} "
          f"{'req tok/s':>9} {'prefill tok/s':>13} {'peak GiB':>8} {'drv GiB':>8} {'bw':>5}")
    for r in sorted(rows, key=lambda r: (r["engine"], r["batch_size"])):
        if "error" in r:
            print(f"{r['engine']:<18} {r['batch_size']:>5} {r['error']}")
            continue
        print(f"{r['engine']:<18} {r['batch_size']:>5} {r['ttft_ms']:>9.2f} {r['itl_ms']:>8.3f} "
              f"{r['decode_tok_s']:>12.1f} {r['per_request_tok_s']:>9.1f} {r['prefill_tok_s']:>13.0f} "
              f"{r['peak_mem_bytes'] / GIB:>8.2f} {r['driver_mem_bytes'] / GIB:>8.2f} "
              f"{r['bandwidth_frac']:>5.3f}")


def write_json(path, run, rows):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"run": run, "results": rows}, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def driver_version():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:  # no nvidia-smi: at least the CUDA version the driver supports
        version = ctypes.c_int()
        if ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(version)) == 0:
            return f"CUDA {version.value // 1000}.{version.value % 1000 // 10} driver"
    except (OSError, AttributeError):
        pass
    return None


# ----------------------------------------------------------------------------------------------
# The sweep

def run_bench(args):
    t0 = time.monotonic()
    n_layer, n_head, n_embd = CONFIGS[args.model]
    cfg = GPTConfig(n_layer, n_head, n_embd)
    if args.prompt_len + args.max_new_tokens > cfg.block_size:
        sys.exit(f"error: prompt_len + max_new_tokens exceeds the context ({cfg.block_size})")
    st = Settings(args.prompt_len, args.max_new_tokens, args.runs, args.warmup, args.dtype,
                  args.temperature, args.top_k, args.top_p)
    out = args.out or f"reference_pytorch_{args.model}.json"
    if os.path.isdir(out):
        out = os.path.join(out, f"reference_pytorch_{args.model}.json")
    if os.path.dirname(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)

    torch.manual_seed(args.seed)  # the sampler's random numbers
    torch.set_float32_matmul_precision("high")  # the seed allows TF32 (matters for --dtype fp32 only)
    copy_bw = measure_copy_bandwidth()
    run = {
        "tool": "reference_pytorch", "card": torch.cuda.get_device_name(), "driver": driver_version(),
        "cuda": torch.version.cuda, "torch": torch.__version__, "model": args.model,
        "dtype": args.dtype, "prompt_len": st.prompt_len, "max_new_tokens": st.new_tokens,
        "runs": st.runs, "warmup": st.warmup, "copy_bw_bytes_s": copy_bw,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "sampler": "sort", "temperature": st.temperature, "top_k": st.top_k, "top_p": st.top_p,
        "seed": args.seed, "weights": "random normal(0, 0.02)",
    }
    print(f"{run['card']}, driver {run['driver']}, torch {run['torch']} (CUDA {run['cuda']}); "
          f"copy bandwidth {copy_bw / 1e12:.2f} TB/s", file=sys.stderr, flush=True)

    plan = [(b, name) for b, names in args.plan for name in names]
    rows = []
    try:
        model = build_model(cfg, DTYPES[args.dtype][0], args.seed)
    except torch.cuda.OutOfMemoryError:
        model = None
        release_memory()
    if model is not None:
        run["params"] = sum(p.numel() for p in model.parameters())
        print(f"{args.model}: {run['params'] / 1e6:.0f}M parameters ({args.dtype}), "
              f"{len(plan)} configurations", file=sys.stderr, flush=True)

    for i, (batch, name) in enumerate(plan, 1):
        if model is None:
            row = error_row(name, batch, st, "out of memory")  # the weights alone do not fit
        elif args.time_limit_s and time.monotonic() - t0 > args.time_limit_s:
            row = error_row(name, batch, st, "skipped: time limit")
        else:
            row = run_config(model, name, batch, make_prompt(args.seed, batch, st.prompt_len,
                                                             cfg.vocab_size), st, copy_bw)
        rows.append(row)
        progress(i, len(plan), row, t0)
        write_json(out, run, rows)
    print_table(rows)
    print(f"wrote {out}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------
# --check

def trace(engine, prompt, n, forced=None):
    """Greedy (or forced) tokens (B, n) and the logits (B, n, V) that chose them."""
    logits = engine.prefill(prompt)
    tokens, all_logits = [], []
    for i in range(n):
        if i > 0:
            logits = engine.decode(tokens[-1])
        all_logits.append(logits.float().clone())
        tokens.append(forced[:, i] if forced is not None else sample_sort(logits, 0.0, 0, 1.0))
    return torch.stack(tokens, 1), torch.stack(all_logits, 1)


def reference_probs(logits, temperature, top_k, top_p):
    """The exact distribution of DESIGN.md section 6 in float64 (numpy), for one row of logits."""
    l = logits.astype(np.float64) / temperature
    keep = np.ones(l.shape, dtype=bool)
    if 0 < top_k < l.size:
        keep = l >= np.sort(l)[::-1][top_k - 1]
    w = np.where(keep, np.exp(l - l.max()), 0.0)
    w /= w.sum()
    if top_p < 1.0:
        keep &= np.array([w[w > wi].sum() for wi in w]) < top_p
    q = np.where(keep, w, 0.0)
    return q / q.sum()


def check_sampler():
    ok = True
    V, n = 64, 400_000
    tied = -0.1 * np.arange(V, dtype=np.float32)
    tied[20] = tied[19]  # a tie at the 20th value: top_k 20 keeps 21 tokens
    cases = [("top-k 20 with a tie at the k-th value", tied, 1.0, 20, 1.0),
             ("temperature 2, top-k 20, top-p 0.9", -np.arange(V, dtype=np.float32), 2.0, 20, 0.9)]
    for label, row, temperature, top_k, top_p in cases:
        expected = reference_probs(row, temperature, top_k, top_p)
        logits = torch.from_numpy(row).to(DEVICE).repeat(n, 1)
        got = torch.bincount(sample_sort(logits, temperature, top_k, top_p), minlength=V).cpu().numpy() / n
        outside = got[expected == 0].sum()
        tv = 0.5 * np.abs(got - expected).sum()
        good = outside == 0 and tv < 0.01
        ok &= good
        print(f"  sampler, {label}: {int((expected > 0).sum())} tokens kept, total variation "
              f"{tv:.4f} (< 0.01), mass outside the kept set {outside:.4f}: {'ok' if good else 'FAIL'}")
    logits = torch.randn(256, 50257, device=DEVICE)
    good = torch.equal(sample_sort(logits, 1.0, 0, 1e-6), logits.argmax(-1))
    ok &= good
    print(f"  sampler, top-p 1e-6 picks the argmax: {'ok' if good else 'FAIL'}")
    return ok


def run_check(args):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(args.seed)
    cfg = GPTConfig(n_layer=3, n_head=4, n_embd=128)
    P, N = 7, 12
    model = build_model(cfg, torch.float32, args.seed)
    with torch.no_grad():
        # A random GPT-2 mostly echoes its input token (the tied embedding dominates the residual
        # stream), so its greedy tokens would not notice a broken cache or mask. Larger
        # attention and residual weights make the context decide them.
        for block in model.h:
            block.c_attn.weight.mul_(5)
            block.attn_proj.weight.mul_(20)
            block.mlp_proj.weight.mul_(20)
    ok = True

    print("engines, fp32 (no TF32, SDPA math): greedy tokens identical to the baseline's")
    torch.set_float32_matmul_precision("highest")
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        for B in (1, 3):
            prompt = make_prompt(args.seed, B, P, cfg.vocab_size).to(DEVICE)
            ref_tokens, ref_logits = None, None
            for name in ENGINE_NAMES:
                engine = ENGINES[name](model, B, P, N, torch.float32)
                engine.setup()
                tokens, logits = trace(engine, prompt, N)
                if ref_tokens is None:
                    ref_tokens, ref_logits = tokens, logits
                    continue
                same = torch.equal(tokens, ref_tokens)
                diff = (logits - ref_logits).abs().max().item() if same else float("nan")
                good = same and diff < 1e-3
                ok &= good
                print(f"  B={B} {name:<12} tokens {'identical' if same else 'DIFFER'}, "
                      f"max |logit diff| {diff:.2e} (< 1e-3): {'ok' if good else 'FAIL'}")

    print("engines, bf16-autocast, fed the baseline's greedy tokens: logits agree")
    torch.set_float32_matmul_precision("high")
    with torch.no_grad(), torch.autocast(device_type="cuda", dtype=torch.bfloat16):
        for B in (1, 3):
            prompt = make_prompt(args.seed + 1, B, P, cfg.vocab_size).to(DEVICE)
            ref_tokens, ref_logits = None, None
            for name in ENGINE_NAMES:
                engine = ENGINES[name](model, B, P, N, torch.bfloat16)
                engine.setup()
                tokens, logits = trace(engine, prompt, N, forced=ref_tokens)
                if ref_tokens is None:
                    ref_tokens, ref_logits = tokens, logits
                    continue
                rel = ((logits - ref_logits).abs().max() / ref_logits.abs().max()).item()
                good = rel < 0.1  # bf16 rounding gives ~0.01; a missing token in the mask ~0.4
                ok &= good
                print(f"  B={B} {name:<12} max |logit diff| / max |logit| {rel:.2e} (< 0.1): "
                      f"{'ok' if good else 'FAIL'}")

    print("sampler: sort-based sampling against the exact distribution")
    ok &= check_sampler()

    print("benchmark path (bf16-autocast, B=2, 1 warm-up + 1 timed run)")
    st = Settings(P, N, 1, 1, "bf16-autocast", 1.0, 20, 0.9)
    for name in ENGINE_NAMES:
        row = run_config(model, name, 2, make_prompt(args.seed, 2, P, cfg.vocab_size), st, 3e12)
        good = "error" not in row
        ok &= good
        print(f"  {name:<12} " + (f"ttft {row['ttft_ms']:.2f} ms, itl {row['itl_ms']:.3f} ms: ok"
                                  if good else f"FAIL: {row['error']}"))

    print("check: " + ("all passed" if ok else "FAILED"))
    return 0 if ok else 1


# ----------------------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2-xl", choices=list(CONFIGS))
    p.add_argument("--engines", default=",".join(ENGINE_NAMES),
                   help="comma-separated, from " + ", ".join(ENGINE_NAMES))
    p.add_argument("--batch-sizes", default="1,2,4,8,16,32,64,128,256,512")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--runs", type=int, default=None, help="timed runs (default 5, --quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up runs (default 2, --quick 1)")
    p.add_argument("--quick", action="store_true", help="--runs 2 --warmup 1 unless given")
    p.add_argument("--out", default=None, help="JSON file, or a directory to write it in "
                   "(default reference_pytorch_MODEL.json)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--time-limit-s", type=float, default=0.0,
                   help="skip the configurations not started after this many seconds (0: no limit)")
    p.add_argument("--dtype", default="bf16-autocast", choices=list(DTYPES))
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=20, help="0: off")
    p.add_argument("--top-p", type=float, default=0.9, help="1: off")
    p.add_argument("--check", action="store_true", help="verify the engines and the sampler, then exit")
    args = p.parse_args(argv)

    if args.runs is None:
        args.runs = 2 if args.quick else 5
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        p.error(f"unknown engine(s) {unknown}; choose from {', '.join(ENGINE_NAMES)}")
    try:
        batches = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        p.error(f"--batch-sizes: not a list of integers: {args.batch_sizes}")
    if not batches or min(batches) < 1:
        p.error("--batch-sizes: positive integers")
    if args.prompt_len < 1 or args.max_new_tokens < 2:
        p.error("--prompt-len must be >= 1 and --max-new-tokens >= 2 (ITL needs a decode step)")
    if args.runs < 1 or args.warmup < 0:
        p.error("--runs must be >= 1 and --warmup >= 0")
    if args.temperature < 0 or args.top_k < 0 or not 0 < args.top_p <= 1:
        p.error("need temperature >= 0, top_k >= 0 and 0 < top_p <= 1")
    rng = random.Random(args.seed)  # engine order, shuffled per batch size
    args.plan = []
    for b in batches:
        order = list(engines)
        rng.shuffle(order)
        args.plan.append((b, order))
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not torch.cuda.is_available():
        sys.exit("error: no CUDA device (this script measures the GPU)")
    return run_check(args) if args.check else run_bench(args)


if __name__ == "__main__":
    sys.exit(main())
