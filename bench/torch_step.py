"""PyTorch side of the side-by-side training-step benchmark (driven by `tram-bench`).

Times one optimizer step of transformers' `GPT2LMHeadModel` (train mode, the same config as the
Rust side: dropout, eps, `gelu_new`, tied head) on random token ids, for one method, and prints
one JSON line: `{"method", "times_ms": [...], "median_ms", "cpu_ms": [...] (process CPU time
of each step), "median_cpu_ms", "peak_rss_kib", "torch", "transformers", "threads"}`. Peak RSS is this process's `ru_maxrss` (the model, the optimizer state and the
step's transient peak, plus the interpreter and torch itself).

Methods follow /work/shared/SPEC.md as tests/golden/generate.py implements them, with the
Adam base (torch.optim.Adam, foreach=False, as the golden generator builds it):
  adam            fwd + bwd, Adam
  sam             + ascent to θ + ρ g/‖g‖ (ρ = 0.05), second fwd + bwd, restore, Adam
  asam            the same with T = |θ|: ε = ρ T² g / ‖T g‖
  tram-prev       TRAM-θ_{t-1}: δ = KL(f(θ_{t-1}) ‖ f(θ)) (no-grad forward of a frozen copy)
                  sizes the adaptive ball (η = 0); the copy takes θ just before the Adam update
  tram-pretrained TRAM-θ₀: the same with the copy frozen at θ₀
  tram-noise      TRAM-x: target = no-grad forward of the embeddings + z, z ~ N(0, σ²), σ = 1e-5

With `--ranks W` (W > 1) the step is PyTorch's own data parallelism: W processes
(torch.multiprocessing, `torch.distributed` over gloo on 127.0.0.1), each of `--threads`
threads with the model in `DistributedDataParallel` and rows [r·B/W, (r+1)·B/W) of the batch;
every backward's gradients are all-reduced by DDP and the radius δ by `all_reduce` (the
"global" ascent of tram's data-parallel step). Reported: rank 0's step times, the CPU time and
peak RSS summed over the ranks.

Usage: python bench/torch_step.py --method adam --layers 4 --embd 128 --heads 4 --vocab 4096
       --seq 128 --batch 8 --steps 6 --warmup 2 --threads 2 [--ranks 1]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import resource
import socket
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import transformers
from transformers import GPT2Config, GPT2LMHeadModel

METHODS = ("adam", "sam", "asam", "tram-prev", "tram-pretrained", "tram-noise")


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", choices=METHODS, required=True)
    for k, d in (("layers", 4), ("embd", 128), ("heads", 4), ("vocab", 4096), ("seq", 128), ("batch", 8), ("steps", 6), ("warmup", 2), ("threads", 2), ("ranks", 1)):
        ap.add_argument(f"--{k}", type=int, default=d)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.ranks > 1:
        with socket.socket() as sock:  # a free port for the process group
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        torch.multiprocessing.spawn(run, args=(a, port), nprocs=a.ranks, join=True)
    else:
        run(0, a, None)


def run(rank, a, port):
    dist = None
    if port is not None:
        import torch.distributed as dist
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=a.ranks)

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    cfg = GPT2Config(
        vocab_size=a.vocab, n_positions=max(a.seq, 128), n_embd=a.embd, n_layer=a.layers, n_head=a.heads,
        resid_pdrop=a.dropout, embd_pdrop=a.dropout, attn_pdrop=a.dropout, bos_token_id=0, eos_token_id=0,
    )
    cfg._attn_implementation = "eager"
    model = GPT2LMHeadModel(cfg)
    model.train()
    gen = torch.Generator().manual_seed(a.seed + 1)
    tokens = torch.randint(0, a.vocab, (a.batch, a.seq + 1), generator=gen)
    if dist is not None:
        lo, hi = rank * a.batch // a.ranks, (rank + 1) * a.batch // a.ranks
        tokens = tokens[lo:hi]
    ids, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].reshape(-1).contiguous()
    params = [p for p in model.parameters() if p.requires_grad]
    inner = model
    if dist is not None:
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.Adam(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, foreach=False)

    m = a.method
    adaptive = m != "sam"
    ball = m != "adam"
    region = m if m.startswith("tram-") else None
    frozen = None
    if region in ("tram-prev", "tram-pretrained"):
        frozen = copy.deepcopy(inner)
        frozen.requires_grad_(False)
    noise_gen = torch.Generator().manual_seed(a.seed + 2)

    def logits_of(mdl, embeds=None):
        out = mdl(inputs_embeds=embeds) if embeds is not None else mdl(input_ids=ids)
        return out.logits.reshape(-1, a.vocab)

    def kl(t, c):  # KL(softmax(t) || softmax(c)), mean over rows
        return F.kl_div(F.log_softmax(c, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")

    def step():
        opt.zero_grad(set_to_none=True)
        if region == "tram-noise":
            e = inner.transformer.wte(ids)
            logits = logits_of(model, e)
        else:
            logits = logits_of(model)
        loss = F.cross_entropy(logits, targets)
        radius = 0.05
        if region is not None:
            with torch.no_grad():
                if region == "tram-noise":
                    z = torch.randn(e.shape, generator=noise_gen) * 1e-5
                    t = logits_of(model, e.detach() + z)
                else:
                    t = logits_of(frozen)
                radius = kl(t, logits.detach())
                if dist is not None:  # the global δ: the mean over the ranks' equal shares
                    dist.all_reduce(radius)
                    radius /= a.ranks
                radius = radius.item()
        loss.backward()
        if ball and math.isfinite(radius) and radius > 0:
            with torch.no_grad():
                ts = [p.abs() if adaptive else None for p in params]
                norm = torch.norm(torch.stack([(g.grad if t is None else t * g.grad).norm(2) for g, t in zip(params, ts)]), 2)
                scale = radius / (norm + 1e-12)
                old = []
                for p, t in zip(params, ts):
                    old.append(p.data.clone())
                    p.add_(p.grad * scale if t is None else t.pow(2) * p.grad * scale)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(logits_of(model), targets).backward()
            with torch.no_grad():
                for p, o in zip(params, old):
                    p.data = o
        if region == "tram-prev":
            with torch.no_grad():
                for pf, p in zip(frozen.parameters(), inner.parameters()):
                    pf.copy_(p)
        opt.step()

    times, cpu = [], []
    for i in range(a.warmup + a.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        dt, dc = (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3
        if i >= a.warmup:
            times.append(dt)
            cpu.append(dc)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if dist is not None:  # CPU time and peak RSS of the whole job
        totals = torch.tensor(cpu + [float(rss)], dtype=torch.float64)
        dist.all_reduce(totals)
        cpu, rss = totals[:-1].tolist(), int(totals[-1])
        dist.destroy_process_group()
        if rank != 0:
            return
    print(json.dumps({
        "method": m, "times_ms": times, "median_ms": statistics.median(times),
        "cpu_ms": cpu, "median_cpu_ms": statistics.median(cpu),
        "peak_rss_kib": rss,
        "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(), "ranks": a.ranks,
    }))


if __name__ == "__main__":
    main(sys.argv[1:])
