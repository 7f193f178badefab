#!/usr/bin/env python3
"""The timing half of the device check (scripts/gpu/check.sh; README "GPU (CUDA)").

Runs one `tram lm` fine-tuning of a randomly initialised GPT-2 (default: GPT-2 small, 124M
parameters, seq 512, batch 16) for each method (Adam and TRAM-x), times the same steps of the
same model shape in this machine's PyTorch (transformers' GPT2LMHeadModel, bf16 autocast, the
same TRAM-x logic as bench/torch_step.py), side by side, and writes one JSON:

  {"shape": {...}, "device": "...", "gpu": "...", "peak_tflops": 989.0,
   "methods": {"adam": {"tram": {...}, "torch": {...}, "step_time_ratio": tram/torch}, ...}}

where each side has the median step time `step_ms` (after `--warmup` steps), `tokens_per_s`,
`peak_gpu_mib` (tram: the process's peak from nvidia-smi polling; PyTorch: the same polling and
torch.cuda.max_memory_allocated) and `mfu`: 6·N + 12·L·d·T model FLOPs per token of one
forward + backward (the PaLM convention; TRAM's extra passes count as overhead, not as model
FLOPs) × tokens/s ÷ the bf16 dense peak (989 TFLOPS for the H200).

Each `tram lm` runs with `--profile` (the device synchronised at every phase boundary): the
run's phase table (`profile.json`: batch, forward / backward per pass, all-reduce, ascent,
update, ... → total ms, calls, share of the step) goes into the JSON beside the step times, so
a miss of the targets says where the time went. With `--ops` (the `ops` binary of tram-bench)
every tram-kernels op, TRAM's δ, the gradient norm and the Adam update are timed on the device,
forward and forward + backward, at the run's shapes, against the PyTorch equivalents on the same
device: `"ops": {name: {"tram": {...}, "torch": {...}, "ratio_fwd", "ratio_fwd_bwd"}}`. With
`--tram-nccl` (a `--features cuda,nccl` build) a short `tram lm` with
`distributed.allreduce = "nccl"` (W = 1: one GPU, no MPI launcher) and the same run without it
must end with the same weights (an all-reduce over one rank is the identity): `"nccl"`.

CPU smoke test (what CI-less machines can run): `--device cpu` with a tiny shape, e.g.
  python3 scripts/gpu/check.py --device cpu --layers 2 --embd 64 --heads 2 --seq 32 --batch 2 \
      --vocab 4096 --steps 2 --warmup 1 --tram target/release/tram --ops target/release/ops \
      --dtype f32 --out /tmp/check.json
Without `--tram` only the PyTorch side runs (the JSON says so); the NCCL part needs a GPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

METHODS = {"adam": "adam", "tram-x": "tram-noise"}
H200_BF16_DENSE_TFLOPS = 989.0


def gpt2_params(a) -> int:
    """Parameters of GPT2LMHeadModel with a tied head (what both sides build)."""
    d, L, V, P = a.embd, a.layers, a.vocab, a.positions
    per_layer = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    return V * d + P * d + L * per_layer + 2 * d


def flops_per_token(a) -> float:
    """Model FLOPs of one forward + backward per token: 6N (non-embedding matmuls and the head)
    plus the attention scores and values, 12·L·d·T (PaLM, appendix B)."""
    n = gpt2_params(a) - a.positions * a.embd  # position embeddings are a lookup
    return 6.0 * n + 12.0 * a.layers * a.embd * a.seq


class GpuMemoryPoll:
    """Peak `memory.used` of the GPU (MiB) while running, above the value at start, polled with
    nvidia-smi every 50 ms; None without nvidia-smi (the CPU smoke test)."""

    def __init__(self, index: int):
        self.index, self.peak, self.base, self._stop = index, None, None, threading.Event()
        self.smi = shutil.which("nvidia-smi")

    def _read(self):
        out = subprocess.run([self.smi, f"--id={self.index}", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
        return float(out.stdout.strip().splitlines()[0])

    def __enter__(self):
        if self.smi:
            self.base = self._read()
            self.peak = self.base
            self._t = threading.Thread(target=self._loop, daemon=True)
            self._t.start()
        return self

    def _loop(self):
        while not self._stop.wait(0.05):
            try:
                self.peak = max(self.peak, self._read())
            except Exception:  # noqa: BLE001 - polling is best effort
                pass

    def __exit__(self, *exc):
        self._stop.set()
        if self.smi:
            self._t.join()

    def used_mib(self):
        return None if self.peak is None else self.peak - self.base


def side(step_ms: list[float], a, peak_mib) -> dict:
    med = statistics.median(step_ms)
    tps = a.batch * a.seq / (med / 1e3)
    return {
        "step_ms": med, "step_ms_all": step_ms, "tokens_per_s": tps, "peak_gpu_mib": peak_mib,
        "mfu": flops_per_token(a) * tps / (a.peak_tflops * 1e12),
    }


# --------------------------------------------------------------------------------------------
# tram

STEP_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z?\s+DEBUG\s.*\bstep\b.*\bstep=(\d+)")


def parse_step_times(log: str) -> list[float]:
    """Milliseconds between consecutive per-step debug lines of `tram lm` (TRAM_LOG=debug)."""
    stamps = {}
    for line in log.splitlines():
        m = STEP_LINE.match(re.sub(r"\x1b\[[0-9;]*m", "", line))
        if m:
            t = m.group(1)
            if "." in t:
                head, frac = t.split(".")
                t = f"{head}.{frac[:6]:0<6}"
            stamps[int(m.group(2))] = dt.datetime.fromisoformat(t).timestamp()
    steps = sorted(stamps)
    return [(stamps[b] - stamps[a_]) * 1e3 for a_, b in zip(steps, steps[1:]) if b == a_ + 1]


def write_model(folder: str, a) -> None:
    os.makedirs(folder, exist_ok=True)
    cfg = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": a.vocab, "n_positions": a.positions,
        "n_embd": a.embd, "n_layer": a.layers, "n_head": a.heads, "n_inner": None, "activation_function": "gelu_new",
        "resid_pdrop": a.dropout, "embd_pdrop": a.dropout, "attn_pdrop": a.dropout, "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02, "bos_token_id": 0, "eos_token_id": 0, "tie_word_embeddings": True,
    }
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    shutil.copy(a.tokenizer, os.path.join(folder, "tokenizer.json"))


def run_tram(a, method: str, work: str, tram=None, steps=None, extra="", profile=True, log_name=None) -> dict:
    model = os.path.join(work, "model")
    write_model(model, a)
    steps = a.warmup + a.steps + 1 if steps is None else steps
    toml = f"""
model = "{model}"
init = "random"
data = "{a.data}"
out = "{os.path.join(work, 'runs')}"
seed = 0
device = "{a.tram_device}"
dtype = "{a.dtype}"

[optimizer]
name = "{METHODS[method]}"
lr = 1e-4

[train]
steps = {steps}
batch_size = {a.batch}
eval_every = 0
log_every = 1
progress = false

[lm]
train_domain = "{a.domain}"
test_domains = []
block_size = {a.seq}
max_eval_blocks = 1
protocol = "lines"

{extra}
[[runs]]
name = "{method}"
"""
    cfg = os.path.join(work, f"{method}.toml")
    with open(cfg, "w") as f:
        f.write(toml)
    # tram reads every TRAM_* variable as a config override (TRAM_TRAIN__STEPS=…): pass none of
    # the check's own (TRAM_CHECK_ARGS, TRAM_TEST_DEVICE, …), only the log filter.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAM_")}
    env.update(TRAM_LOG="tram_trainer=debug,warn", NO_COLOR="1")
    if a.device == "cpu":
        env.setdefault("CANDLE_NUM_THREADS", str(a.threads))
    if a.library_path_nccl and tram == a.tram_nccl:
        env["LD_LIBRARY_PATH"] = a.library_path_nccl
    cmd = [tram or a.tram, "lm", "--config", cfg, "--force"] + (["--profile"] if profile else [])
    t0 = time.perf_counter()
    try:
        with GpuMemoryPoll(a.gpu_index) as mem:
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.timeout)
    except subprocess.TimeoutExpired as e:
        return {"error": f"tram lm ran past {a.timeout} s", "log_tail": ((e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace"))[-3000:]}
    wall = time.perf_counter() - t0
    log = p.stdout + p.stderr
    with open(os.path.join(a.logs, f"tram-{log_name or method}.log"), "w") as f:
        f.write(log)
    if p.returncode != 0:
        return {"error": f"tram lm exited with {p.returncode}", "log_tail": log[-3000:]}
    run_dir = os.path.join(work, "runs", method, "seed-0")
    times = parse_step_times(log)[a.warmup:]
    if not times:
        return {"error": "no per-step debug lines in the log (TRAM_LOG=tram_trainer=debug)", "log_tail": log[-3000:], "run_dir": run_dir}
    out = side(times, a, mem.used_mib())
    out["process_wall_s"] = wall
    out["run_dir"] = run_dir
    # With the profile on, the step times above include its synchronisations at every phase
    # boundary (small against a step, but the CPU can no longer run ahead of the GPU).
    out["profiled"] = profile
    if profile:
        out["profile"] = read_profile(os.path.join(run_dir, "profile.json"), a.warmup)
    return out


def read_profile(path: str, warmup: int) -> dict:
    """The run's phase table (`tram lm --profile`), sorted by time, with each phase's ms per step;
    the steps' times say which were the warm-up (the first steps load kernels and allocate)."""
    try:
        with open(path) as f:
            p = json.load(f)
    except (OSError, ValueError) as e:
        return {"error": f"no profile: {e}"}
    steps = max(p.get("steps") or 0, 1)
    phases = sorted(p.get("phases", []), key=lambda x: (not x["in_step"], -x["total_ms"]))
    for ph in phases:
        ph["ms_per_step"] = ph["total_ms"] / steps
    return {
        "steps": p.get("steps"), "step_mean_ms": p.get("step_mean_ms"), "step_ms": p.get("step_ms"),
        "step_median_after_warmup_ms": statistics.median(p["step_ms"][warmup:]) if len(p.get("step_ms") or []) > warmup else None,
        "phases_in_step_ms": p.get("phases_in_step_ms"), "step_total_ms": p.get("step_total_ms"), "phases": phases,
    }


# --------------------------------------------------------------------------------------------
# PyTorch (bench/torch_step.py's Adam and TRAM-x, on a device, with bf16 autocast)

def run_torch(a, method: str) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import GPT2Config, GPT2LMHeadModel

    dev = torch.device(a.device)
    torch.manual_seed(0)
    if dev.type == "cpu":
        torch.set_num_threads(a.threads)
    cfg = GPT2Config(vocab_size=a.vocab, n_positions=a.positions, n_embd=a.embd, n_layer=a.layers, n_head=a.heads,
                     resid_pdrop=a.dropout, embd_pdrop=a.dropout, attn_pdrop=a.dropout, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg).to(dev).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8)
    gen = torch.Generator(device="cpu").manual_seed(1)
    tokens = torch.randint(0, a.vocab, (a.batch, a.seq + 1), generator=gen).to(dev)
    ids, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].reshape(-1).contiguous()
    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=a.dtype == "bf16")
    noise = method == "tram-x"

    def logits_of(embeds=None):
        with autocast:
            out = model(inputs_embeds=embeds) if embeds is not None else model(input_ids=ids)
        return out.logits.float().reshape(-1, a.vocab)

    def step():
        opt.zero_grad(set_to_none=True)
        if noise:
            e = model.transformer.wte(ids)
            logits = logits_of(e)
        else:
            logits = logits_of()
        loss = F.cross_entropy(logits, targets)
        radius = None
        if noise:
            with torch.no_grad():
                t = logits_of(e.detach() + torch.randn_like(e) * 1e-5)
                radius = F.kl_div(F.log_softmax(logits.detach().double(), -1), F.log_softmax(t.double(), -1),
                                  log_target=True, reduction="batchmean").item()
        loss.backward()
        if radius is not None and math.isfinite(radius) and radius > 0:
            with torch.no_grad():
                norm = torch.norm(torch.stack([(p.abs() * p.grad).norm(2) for p in params]), 2)
                scale = radius / (norm + 1e-12)
                old = [p.detach().clone() for p in params]
                for p in params:
                    p.add_(p.pow(2) * p.grad * scale)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(logits_of(), targets).backward()
            with torch.no_grad():
                for p, o in zip(params, old):
                    p.copy_(o)
        opt.step()
        loss.item()  # the step's loss read back, as tram does

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    with GpuMemoryPoll(a.gpu_index) as mem:
        for i in range(a.warmup + a.steps):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i >= a.warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    out = side(times, a, mem.used_mib())
    out["max_memory_allocated_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
    out["torch"] = torch.__version__
    del model, opt
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return out


# --------------------------------------------------------------------------------------------
# Ops side by side (tram-bench's `ops` binary against the PyTorch equivalents)

def torch_ops(a, only) -> dict:
    """The PyTorch side of tram-bench's `ops`: the same ops, shapes and dtype on the same device,
    the same deterministic inputs (`scale · sin(0.618034 i + phase)`) and upstream gradients, median
    ms of `--ops-reps` after 2 warm-ups, synchronised around each."""
    import torch
    import torch.nn.functional as F

    dev = torch.device(a.device)
    dt = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    if dev.type == "cpu":
        torch.set_num_threads(a.threads)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    b, t, h, d, v = a.batch, a.seq, a.heads, a.embd, a.vocab
    rows = b * t

    def wave(shape, scale, phase, dtype=dt):
        n = math.prod(shape)
        i = torch.arange(n, device=dev, dtype=torch.float32)
        return ((i * 0.618034 + phase).sin() * scale).reshape(shape).to(dtype)

    def timed(f):
        out = []
        for i in range(2 + a.ops_reps):
            sync()
            t0 = time.perf_counter()
            f()
            sync()
            if i >= 2:
                out.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(out)

    def fb(op, x, g=None):
        def run():
            xg = x.detach().requires_grad_(True)
            y = op(xg)
            (y if y.dim() == 0 else (y * g).sum() if g is not None else y.sum()).backward()
        return run

    res = {}
    want = lambda n: n in only
    if want("softmax"):
        x, g = wave((b, h, t, t), 3.0, 0.0), wave((b, h, t, t), 1.0, 1.0)
        keep = torch.ones(t, t, dtype=torch.bool, device=dev).tril()
        scale = 1.0 / math.sqrt(d // h)
        op = lambda s: torch.softmax((s * scale).masked_fill(~keep, torch.finfo(s.dtype).min), -1)
        res["softmax"] = {"fwd_ms": timed(lambda: op(x)), "fwd_bwd_ms": timed(fb(op, x, g))}
    if want("layer_norm"):
        x, g = wave((rows, d), 2.0, 0.0), wave((rows, d), 1.0, 1.0)
        w = (wave((d,), 0.1, 2.0) + 1).requires_grad_(True)
        bs = wave((d,), 0.1, 3.0).requires_grad_(True)
        op = lambda y: F.layer_norm(y, (d,), w, bs, 1e-5)
        res["layer_norm"] = {"fwd_ms": timed(lambda: op(x.detach())), "fwd_bwd_ms": timed(fb(op, x, g))}
    if want("gelu") or want("add_bias"):
        x, g = wave((rows, 4 * d), 3.0, 0.0), wave((rows, 4 * d), 1.0, 1.0)
        if want("gelu"):
            op = lambda y: F.gelu(y, approximate="tanh")
            res["gelu"] = {"fwd_ms": timed(lambda: op(x)), "fwd_bwd_ms": timed(fb(op, x, g))}
        if want("add_bias"):
            bias = wave((4 * d,), 0.1, 2.0).requires_grad_(True)
            op = lambda y: y + bias
            res["add_bias"] = {"fwd_ms": timed(lambda: op(x.detach())), "fwd_bwd_ms": timed(fb(op, x, g))}
    if want("embedding"):
        i = torch.arange(rows, device=dev, dtype=torch.int64)
        ids = torch.where(i % 2 == 1, i * 7919 % v, i % 64)
        table = wave((v, d), 0.02, 4.0)
        g = wave((rows, d), 1.0, 1.0)
        op = lambda w_: F.embedding(ids, w_)
        res["embedding"] = {"fwd_ms": timed(lambda: op(table)), "fwd_bwd_ms": timed(fb(op, table, g))}
    if any(want(n) for n in ("cross_entropy", "log_softmax", "kl_div_rows", "kl_div_sum_f64")):
        x = wave((rows, v), 4.0, 0.0)
        y = wave((rows, v), 4.0, 0.5)
        if want("cross_entropy"):
            tg = (torch.arange(rows, device=dev, dtype=torch.int64) * 7919) % v
            op = lambda z: F.cross_entropy(z, tg)
            res["cross_entropy"] = {"fwd_ms": timed(lambda: op(x)), "fwd_bwd_ms": timed(fb(op, x))}
        if want("log_softmax"):
            g = wave((rows, v), 1.0, 1.0)
            op = lambda z: F.log_softmax(z, -1)
            res["log_softmax"] = {"fwd_ms": timed(lambda: op(x)), "fwd_bwd_ms": timed(fb(op, x, g))}
            del g
        if want("kl_div_rows"):
            op = lambda z: F.kl_div(F.log_softmax(z, -1), F.log_softmax(y, -1), log_target=True, reduction="none").sum(-1)
            res["kl_div_rows"] = {"fwd_ms": timed(lambda: op(x)), "fwd_bwd_ms": timed(fb(op, x))}
        if want("kl_div_sum_f64"):
            op = lambda: F.kl_div(F.log_softmax(x.double(), -1), F.log_softmax(y.double(), -1), log_target=True, reduction="sum").item()
            res["kl_div_sum_f64"] = {"fwd_ms": timed(op), "fwd_bwd_ms": None}
    if want("global_norm") or want("adam"):
        shapes = [(v, d), (max(1024, t), d)]
        for _ in range(a.layers):
            shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
        shapes += [(d,), (d,)]
        params = [torch.nn.Parameter(wave(s, 0.02, float(i), torch.float32)) for i, s in enumerate(shapes)]
        for i, p in enumerate(params):
            p.grad = wave(p.shape, 1e-3, 0.5 + i, torch.float32)
        if want("global_norm"):
            res["global_norm"] = {"fwd_ms": timed(lambda: torch.norm(torch.stack([p.grad.norm(2) for p in params]), 2).item()), "fwd_bwd_ms": None}
        if want("adam"):
            opt = torch.optim.Adam(params, lr=1e-4)  # PyTorch's default on CUDA: the foreach implementation
            res["adam"] = {"fwd_ms": timed(opt.step), "fwd_bwd_ms": None, "implementation": "torch.optim.Adam (default: foreach on CUDA)"}
        del params
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return res


def run_ops(a) -> dict:
    """tram-bench's `ops` on the device, the PyTorch equivalents, and tram ÷ PyTorch per op."""
    out_json = os.path.join(a.logs, "tram-ops.json")
    cmd = [a.ops, "--device", a.device, "--dtype", a.dtype, "--batch", str(a.batch), "--seq", str(a.seq), "--heads", str(a.heads),
           "--embd", str(a.embd), "--vocab", str(a.vocab), "--layers", str(a.layers), "--reps", str(a.ops_reps), "--warmup", "2",
           "--out", out_json]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAM_")}
    if a.device == "cpu":
        env.setdefault("CANDLE_NUM_THREADS", str(a.threads))
        env.setdefault("RAYON_NUM_THREADS", str(a.threads))
    report = {"command": " ".join(cmd)}
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.timeout)
        with open(os.path.join(a.logs, "tram-ops.log"), "w") as f:
            f.write(p.stdout + p.stderr)
        if p.returncode != 0:
            return {**report, "error": f"ops exited with {p.returncode}", "log_tail": (p.stdout + p.stderr)[-3000:]}
        with open(out_json) as f:
            tram = json.load(f)["ops"]
    except (subprocess.TimeoutExpired, OSError, ValueError) as e:
        return {**report, "error": f"{type(e).__name__}: {e}"}
    try:
        torch_side = torch_ops(a, set(tram))
    except Exception as e:  # noqa: BLE001 - recorded in the JSON
        torch_side, report["torch_error"] = {}, f"{type(e).__name__}: {e}"
    ratio = lambda x, y: x / y if x and y else None
    report["ops"] = {
        name: {"shape": t["shape"], "tram": {k: t.get(k) for k in ("fwd_ms", "fwd_bwd_ms", "composed_fwd_ms", "composed_fwd_bwd_ms") if k in t},
               "torch": torch_side.get(name),
               # tram's composed candle path (CUDA kernels off) ÷ its kernel: what the kernel gains.
               "kernel_speedup_fwd_bwd": ratio(t.get("composed_fwd_bwd_ms") or t.get("composed_fwd_ms"), t["fwd_bwd_ms"] or t["fwd_ms"]),
               "ratio_fwd": ratio(t["fwd_ms"], (torch_side.get(name) or {}).get("fwd_ms")),
               "ratio_fwd_bwd": ratio(t["fwd_bwd_ms"], (torch_side.get(name) or {}).get("fwd_bwd_ms"))}
        for name, t in tram.items()
    }
    return report


# --------------------------------------------------------------------------------------------
# NCCL at W = 1

def load_weights(path: str) -> dict:
    from safetensors.numpy import load_file
    return load_file(path)


def run_nccl(a, work: str) -> dict:
    """A short `tram lm` (TRAM-x: two gradient all-reduces per step) with
    `distributed.allreduce = "nccl"` on the one GPU, and the same run without it, both from the
    `--features cuda,nccl` binary: an all-reduce over one rank is the identity, so the final
    weights must be equal."""
    import numpy as np

    s = argparse.Namespace(**vars(a))
    s.layers, s.embd, s.heads, s.seq, s.batch, s.vocab, s.dtype, s.warmup = 2, 128, 2, 64, 8, a.vocab, "f32", 0
    runs = {}
    for name, extra in (("plain", ""), ("nccl", '[distributed]\nallreduce = "nccl"\n')):
        r = run_tram(s, "tram-x", os.path.join(work, name), tram=a.tram_nccl, steps=3, extra=extra, profile=False, log_name=f"nccl-{name}")
        runs[name] = r
        if "error" in r and "run_dir" not in r:
            return {"ok": False, "error": f"the {name} run failed: {r['error']}", "log_tail": r.get("log_tail")}
    logs = open(os.path.join(a.logs, "tram-nccl-nccl.log")).read()
    engine_line = next((l for l in logs.splitlines() if "data-parallel job" in l), None)
    try:
        w = [load_weights(os.path.join(runs[n]["run_dir"], "model", "model.safetensors")) for n in ("plain", "nccl")]
    except Exception as e:  # noqa: BLE001 - recorded in the JSON
        return {"ok": False, "error": f"reading the final weights: {type(e).__name__}: {e}", "engine": engine_line}
    worst, scale = 0.0, 0.0
    for k, x in w[0].items():
        y = w[1].get(k)
        if y is None or y.shape != x.shape:
            return {"ok": False, "error": f"weight `{k}` missing or reshaped in the NCCL run", "engine": engine_line}
        worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))))
        scale = max(scale, float(np.max(np.abs(x))))
    # Bitwise equality is expected (same kernels, an identity all-reduce, a power-of-two batch);
    # a difference within 1e-6 of the largest weight (a GPU kernel that is not deterministic
    # run to run) passes and is recorded (`bitwise`).
    ok = engine_line is not None and "nccl" in engine_line and worst <= 1e-6 * scale
    return {"ok": ok, "bitwise": worst == 0.0, "world": 1, "engine": engine_line, "max_abs_weight_difference": worst, "max_abs_weight": scale,
            "tensors": len(w[0]),
            "shape": {"layers": s.layers, "embd": s.embd, "seq": s.seq, "batch": s.batch, "steps": 3, "dtype": "f32", "method": "tram-x"},
            "note": "W = 1 on the one GPU (no MPI launcher; NCCL's own unique id): every pass's gradient went through ncclAllReduce, "
                    "which must leave it unchanged; multi-GPU runs are documented but untested here"}


def tests_summary(path, rc):
    """The GPU tests' outcome: exit status, cargo's `test result:` line, failing and skipped
    tests, each panic's location and message, and the parity lines (measured errors) of the
    output."""
    if not path:
        return None
    try:
        text = open(path, errors="replace").read()
    except OSError as e:
        return {"rc": rc, "error": str(e)}
    lines = text.splitlines()
    # The names under the last `failures:` header (with --nocapture a test's own output can
    # split its `test … FAILED` line, so that line alone misses failures).
    failed = []
    headers = [i for i, l in enumerate(lines) if l.strip() == "failures:"]
    if headers:
        for l in lines[headers[-1] + 1:]:
            if not l.startswith("    "):
                if failed:
                    break
                continue
            failed.append(l.strip())
    failed += [l.split()[1] for l in lines if l.startswith("test ") and l.rstrip().endswith("FAILED") and l.split()[1] not in failed]
    # Each panic's location and message (the message runs until the backtrace note or a blank line).
    panics = []
    for i, l in enumerate(lines):
        if "panicked at" in l:
            msg = [l]
            for m in lines[i + 1:i + 30]:
                if not m.strip() or m.startswith("note: run with") or m.startswith("stack backtrace"):
                    break
                msg.append(m)
            panics.append("\n".join(msg))
    return {
        "rc": rc,
        "result": next((l for l in reversed(lines) if l.startswith("test result")), None),
        "failed": failed,
        "panics": panics[:20],
        "skipped": [l for l in lines if l.startswith("SKIPPED")],
        "measurements": [l for l in lines if re.search(r"\d\.\d+e-?\d+", l) and not l.startswith("test ")][:400],
    }


def main(argv) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tram", help="the tram binary (omit: PyTorch side only)")
    ap.add_argument("--out", required=True, help="the JSON to write")
    ap.add_argument("--logs", help="folder for the tram logs (default: beside --out)")
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:<n> or cpu (smoke test)")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f32"], help="tram's dtype and PyTorch's autocast")
    for k, d in (("layers", 12), ("embd", 768), ("heads", 12), ("vocab", 50257), ("positions", 1024), ("seq", 512), ("batch", 16),
                 ("steps", 8), ("warmup", 2), ("threads", 1), ("timeout", 240)):
        ap.add_argument(f"--{k}", type=int, default=d)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_TFLOPS, dest="peak_tflops")
    ap.add_argument("--methods", default="adam,tram-x")
    ap.add_argument("--tests-log", help="the GPU tests' output (check.sh), summarised into the JSON")
    ap.add_argument("--tests-rc", type=int, help="the GPU tests' exit status (check.sh)")
    ap.add_argument("--library-path", default="", help="LD_LIBRARY_PATH check.sh found (recorded)")
    ap.add_argument("--fallback", default="", help="stand-in libraries check.sh used (recorded)")
    ap.add_argument("--ops", help="tram-bench's `ops` binary: op-level timings against PyTorch's (omit: not run)")
    ap.add_argument("--ops-reps", type=int, default=5, dest="ops_reps")
    ap.add_argument("--tram-nccl", dest="tram_nccl", help="a `--features cuda,nccl` tram: the NCCL W = 1 check (omit: not run)")
    ap.add_argument("--library-path-nccl", default="", dest="library_path_nccl",
                    help="LD_LIBRARY_PATH for --tram-nccl (check.sh: the bundled Open MPI runtime and NCCL added)")
    ap.add_argument("--nccl-skip", default="", dest="nccl_skip", help="why check.sh skips the NCCL check (recorded)")
    ap.add_argument("--no-profile", action="store_true", dest="no_profile", help="run `tram lm` without --profile")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--data", default=os.path.join(root, "data", "quickstart"))
    ap.add_argument("--domain", default="novels")
    ap.add_argument("--tokenizer", default=os.path.join(root, "models", "quickstart", "tokenizer.json"))
    a = ap.parse_args(argv)
    a.positions = max(a.positions, a.seq)
    a.tram_nccl = a.tram_nccl or None
    a.tram_device = a.device
    a.gpu_index = int(a.device.split(":")[1]) if a.device.startswith("cuda:") else 0
    a.logs = a.logs or os.path.dirname(os.path.abspath(a.out))
    os.makedirs(a.logs, exist_ok=True)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            ap.error(f"--methods: `{m}` is not one of {', '.join(METHODS)}")

    gpu = None
    if shutil.which("nvidia-smi") and a.device != "cpu":
        gpu = subprocess.run(["nvidia-smi", f"--id={a.gpu_index}", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip()
    report = {
        "shape": {k: getattr(a, k) for k in ("layers", "embd", "heads", "vocab", "positions", "seq", "batch", "steps", "warmup", "dropout")},
        "parameters": gpt2_params(a), "flops_per_token": flops_per_token(a), "device": a.device, "dtype": a.dtype, "gpu": gpu,
        "peak_tflops": a.peak_tflops, "tram": a.tram, "library_path": a.library_path, "fallback_libraries": a.fallback or None,
        "tests": tests_summary(a.tests_log, a.tests_rc), "methods": {},
    }
    work = tempfile.mkdtemp(prefix="tram-gpu-check-")
    try:
        for m in methods:
            r = {}
            print(f"[check.py] {m}: tram ...", file=sys.stderr, flush=True)
            r["tram"] = run_tram(a, m, os.path.join(work, m), profile=not a.no_profile) if a.tram else {"error": "not run (no --tram)"}
            print(f"[check.py] {m}: PyTorch ...", file=sys.stderr, flush=True)
            try:
                r["torch"] = run_torch(a, m)
            except Exception as e:  # noqa: BLE001 - recorded in the JSON
                r["torch"] = {"error": f"{type(e).__name__}: {e}"}
            t, p = r["tram"].get("step_ms"), r["torch"].get("step_ms")
            r["step_time_ratio"] = t / p if t and p else None
            report["methods"][m] = r
            with open(a.out, "w") as f:  # after every method: a timeout keeps what was measured
                json.dump(report, f, indent=1)
        if a.ops:
            print("[check.py] ops: tram vs PyTorch ...", file=sys.stderr, flush=True)
            report["ops"] = run_ops(a)
            with open(a.out, "w") as f:
                json.dump(report, f, indent=1)
        if a.tram_nccl and not a.nccl_skip:
            print("[check.py] NCCL at W = 1 ...", file=sys.stderr, flush=True)
            try:
                report["nccl"] = run_nccl(a, os.path.join(work, "nccl"))
            except Exception as e:  # noqa: BLE001 - recorded in the JSON
                report["nccl"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        elif a.nccl_skip:
            report["nccl"] = {"ok": None, "skipped": a.nccl_skip}
        with open(a.out, "w") as f:
            json.dump(report, f, indent=1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tests = report.get("tests") or {}
    if tests:
        print(f"GPU tests: {tests.get('result') or 'exit ' + str(tests.get('rc'))}"
              f"{'; failed: ' + ', '.join(tests['failed']) if tests.get('failed') else ''}")
        for p_ in tests.get("panics") or []:
            print("  " + p_.replace("\n", "\n  "))
    for m, r in report["methods"].items():
        t, p = r["tram"], r["torch"]
        fmt = lambda s: "error: " + s["error"] if "error" in s else f"{s['step_ms']:.1f} ms/step, {s['tokens_per_s']:.0f} tok/s, MFU {100 * s['mfu']:.1f}%"
        ratio = f"{r['step_time_ratio']:.2f}" if r["step_time_ratio"] else "-"
        print(f"{m:<7} tram {fmt(t)} | PyTorch {fmt(p)} | tram/PyTorch {ratio}")
        prof = t.get("profile") or {}
        for ph in (prof.get("phases") or [])[:8]:
            print(f"          {ph['name']:<26} {ph['ms_per_step']:9.2f} ms/step {100 * ph['share_of_step']:5.1f}%{'' if ph['in_step'] else ' (outside)'}")
    for name, o in ((report.get("ops") or {}).get("ops") or {}).items():
        fmt_r = lambda x: f"{x:.2f}" if x else "-"
        gain = f"  kernel vs composed {fmt_r(o.get('kernel_speedup_fwd_bwd'))}x" if o.get("kernel_speedup_fwd_bwd") else ""
        print(f"op {name:<15} tram/PyTorch fwd {fmt_r(o['ratio_fwd'])}  fwd+bwd {fmt_r(o['ratio_fwd_bwd'])}  (tram {o['tram']['fwd_ms']:.2f} ms fwd){gain}")
    if "nccl" in report:
        n = report["nccl"]
        print(f"NCCL W=1: {'ok' if n.get('ok') else 'skipped' if n.get('ok') is None else 'FAILED'} {n.get('skipped') or n.get('error') or ''}"
              f"{'' if n.get('max_abs_weight_difference') is None else ' max |Δθ| = ' + str(n['max_abs_weight_difference'])}")
    print(f"wrote {a.out}")
    ok = all("error" not in r["tram"] and "error" not in r["torch"] for r in report["methods"].values())
    ok = ok and "error" not in (report.get("ops") or {}) and (report.get("nccl") or {}).get("ok") is not False
    return 0 if ok and (a.tests_rc in (None, 0)) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
