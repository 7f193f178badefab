#!/usr/bin/env python3
"""Data-parallel throughput of `tram lm` (README "Data-parallel training"): one process of one
thread against 2 ranks of one thread each, on the bundled quickstart model and data,
interleaved so that the machine's load hits every configuration alike.

    cargo build --release -p tram-cli --features mpi
    python3 bench/dp_throughput.py --methods adam,sam,tram-noise --reps 3 --csv bench/results/dp.csv
    python3 bench/dp_throughput.py --configs t1,t2,threads2,mpi2    # every way of using 2 cores

Configurations (`--configs`, default `t1,mpi2`): `t1` one process of one candle thread; `t2`
one process of 2 threads (each op split over them: what a plain run does on 2 cores);
`mpi2` 2 ranks under `mpirun -np 2`, one thread each; `threads2` 2 ranks as threads of one
process (`distributed.engine = "threads"`), one thread each. Each run is `tram lm -c
configs/quickstart/finetune.toml --run <method>` with seed 0, `train.steps` steps of a global
micro-batch of `train.batch_size` blocks of 128 tokens (2 ranks: half of them each), no periodic
validation; its throughput is the tokens trained over the run's `train_seconds` (results.json:
the training loop only, every step included). Each rank logs its time in collectives
(all-reduces, waiting for the other rank included), which the CSV keeps per rank. The 1-minute
load average before and after each run is recorded: on a shared machine, compare runs of similar
load. The scaling efficiency is a configuration's tokens/s over twice `t1`'s. Standard library
only.
"""

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = 128  # tokens per block (lm.block_size of the quickstart config)


def load1():
    return float(Path("/proc/loadavg").read_text().split()[0])


#: configuration → (ranks, launched by mpirun, candle threads per rank, thread ranks)
CONFIGS = {"t1": (1, False, 1, False), "t2": (1, False, 2, False), "mpi2": (2, True, 1, False), "threads2": (2, False, 1, True)}


def run(tram, method, config, steps, batch, out):
    world, mpi, threads, thread_ranks = CONFIGS[config]
    cmd = ["mpirun", "--allow-run-as-root", "-np", str(world)] if mpi else []
    cmd += [tram, "lm", "-c", str(ROOT / "configs/quickstart/finetune.toml"), "--run", method]
    if thread_ranks:
        cmd += ["--set", 'distributed.engine="threads"', "--set", f"distributed.ranks={world}"]
    for s in [f"out={out}", "seeds=[0]", f"train.steps={steps}", f"train.batch_size={batch}", "train.eval_every=0",
              "train.progress=false", "lm.max_eval_blocks=2", "lm.test_domains=[]"]:
        cmd += ["--set", s]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAM_")}
    env.update(CANDLE_NUM_THREADS=str(threads), RAYON_NUM_THREADS=str(threads), TRAM_LOG="warn,tram_trainer::trainer=info")
    before = load1()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    after = load1()
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    res = json.loads((Path(out) / method / "seed-0" / "results.json").read_text())
    secs = res["train_seconds"]
    shares = {}
    for line in p.stderr.splitlines():
        if "time in collectives" in line:
            r = re.search(r"rank=(\d+)", line)
            s = re.search(r"share=([0-9.eE+-]+)", line)
            if r and s:
                shares[int(r.group(1))] = float(s.group(1))
    return {
        "method": method, "config": config, "world": world, "steps": steps, "batch": batch, "train_seconds": round(secs, 3),
        "tokens_per_s": round(steps * batch * BLOCK / secs, 1), "load_before": before, "load_after": after,
        "collective_share_rank0": shares.get(0, ""), "collective_share_rank1": shares.get(1, ""),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    ap.add_argument("--tram", action="append", help="the release binary built with --features mpi, or LABEL=PATH; repeat to "
                    "compare builds (interleaved like the world sizes); default $CARGO_TARGET_DIR/release/tram")
    ap.add_argument("--methods", default="adam,sam,tram-noise")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8, help="global micro-batch (blocks); W = 2 gives each rank half")
    ap.add_argument("--configs", default="t1,mpi2", help="which of " + ", ".join(CONFIGS) + " to run (t1 first: the baseline)")
    ap.add_argument("--csv", help="append the runs to this CSV")
    a = ap.parse_args()
    configs = a.configs.split(",")
    if any(c not in CONFIGS for c in configs) or "t1" not in configs:
        sys.exit(f"--configs {a.configs}: give t1 and any of {', '.join(CONFIGS)}")
    builds = [t.split("=", 1) if "=" in t else [Path(t).name, t] for t in (a.tram or [str(Path(target) / "release" / "tram")])]
    rows = []
    with tempfile.TemporaryDirectory(prefix="tram-dp-bench-") as tmp:
        for rep in range(a.reps):
            for method in a.methods.split(","):
                # Alternate the order so neither world size (nor build) always runs first.
                for label, tram in (builds if rep % 2 == 0 else builds[::-1]):
                    for config in (configs if rep % 2 == 0 else configs[::-1]):
                        r = run(tram, method, config, a.steps, a.batch, Path(tmp) / f"{rep}-{label}-{method}-{config}")
                        r["build"] = label
                        r["rep"] = rep
                        r["time"] = time.strftime("%H:%M:%S", time.gmtime())
                        rows.append(r)
                        print(json.dumps(r), flush=True)
    if a.csv:
        new = not Path(a.csv).exists()
        with open(a.csv, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
            if new:
                w.writeheader()
            w.writerows(rows)
    others = [c for c in configs if c != "t1"]
    print("\n| build | method | t1 tokens/s | " + " | ".join(f"{c} tokens/s (scaling efficiency; collectives rank 0 / 1)" for c in others) + " | load |")
    print("|---|---|---|" + "---|" * len(others) + "---|")
    for label, method in [(b[0], m) for m in a.methods.split(",") for b in builds]:
        of = lambda c: [r for r in rows if r["method"] == method and r["config"] == c and r["build"] == label]
        m1 = statistics.median(r["tokens_per_s"] for r in of("t1"))
        cells = []
        for c in others:
            runs = of(c)
            m = statistics.median(r["tokens_per_s"] for r in runs)
            shares = [statistics.median(v) for k in ("collective_share_rank0", "collective_share_rank1") if (v := [r[k] for r in runs if r[k] != ""])]
            cell = f"{m:,.0f} ({m / (2 * m1):.0%}"
            cell += "; " + " / ".join(f"{x:.1%}" for x in shares) + ")" if shares else ")"
            cells.append(cell)
        loads = [r["load_before"] for c in configs for r in of(c)]
        print(f"| {label} | {method} | {m1:,.0f} | " + " | ".join(cells) + f" | {min(loads):.1f}–{max(loads):.1f} |")


if __name__ == "__main__":
    main()
