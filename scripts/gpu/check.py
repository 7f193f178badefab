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

CPU smoke test (what CI-less machines can run): `--device cpu` with a tiny shape, e.g.
  python3 scripts/gpu/check.py --device cpu --layers 2 --embd 64 --heads 2 --seq 32 --batch 2 \
      --steps 2 --warmup 1 --tram target/release/tram --dtype f32 --out /tmp/check.json
Without `--tram` only the PyTorch side runs (the JSON says so).
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


def run_tram(a, method: str, work: str) -> dict:
    model = os.path.join(work, "model")
    write_model(model, a)
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
steps = {a.warmup + a.steps + 1}
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
    t0 = time.perf_counter()
    with GpuMemoryPoll(a.gpu_index) as mem:
        p = subprocess.run([a.tram, "lm", "--config", cfg, "--force"], env=env, capture_output=True, text=True, timeout=a.timeout)
    wall = time.perf_counter() - t0
    log = p.stdout + p.stderr
    with open(os.path.join(a.logs, f"tram-{method}.log"), "w") as f:
        f.write(log)
    if p.returncode != 0:
        return {"error": f"tram lm exited with {p.returncode}", "log_tail": log[-3000:]}
    times = parse_step_times(log)[a.warmup:]
    if not times:
        return {"error": "no per-step debug lines in the log (TRAM_LOG=tram_trainer=debug)", "log_tail": log[-3000:]}
    out = side(times, a, mem.used_mib())
    out["process_wall_s"] = wall
    return out


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


def tests_summary(path, rc):
    """The GPU tests' outcome: exit status, cargo's `test result:` line, failing and skipped
    tests, and the parity lines (measured errors) of the output."""
    if not path:
        return None
    try:
        text = open(path, errors="replace").read()
    except OSError as e:
        return {"rc": rc, "error": str(e)}
    lines = text.splitlines()
    return {
        "rc": rc,
        "result": next((l for l in reversed(lines) if l.startswith("test result")), None),
        "failed": [l.split()[1] for l in lines if l.startswith("test ") and l.rstrip().endswith("FAILED")],
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
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--data", default=os.path.join(root, "data", "quickstart"))
    ap.add_argument("--domain", default="novels")
    ap.add_argument("--tokenizer", default=os.path.join(root, "models", "quickstart", "tokenizer.json"))
    a = ap.parse_args(argv)
    a.positions = max(a.positions, a.seq)
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
            r["tram"] = run_tram(a, m, os.path.join(work, m)) if a.tram else {"error": "not run (no --tram)"}
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
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for m, r in report["methods"].items():
        t, p = r["tram"], r["torch"]
        fmt = lambda s: "error: " + s["error"] if "error" in s else f"{s['step_ms']:.1f} ms/step, {s['tokens_per_s']:.0f} tok/s, MFU {100 * s['mfu']:.1f}%"
        ratio = f"{r['step_time_ratio']:.2f}" if r["step_time_ratio"] else "-"
        print(f"{m:<7} tram {fmt(t)} | PyTorch {fmt(p)} | tram/PyTorch {ratio}")
    print(f"wrote {a.out}")
    ok = all("error" not in r["tram"] and "error" not in r["torch"] for r in report["methods"].values())
    return 0 if ok and (a.tests_rc in (None, 0)) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
