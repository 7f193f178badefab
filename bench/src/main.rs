//! Side-by-side training-step benchmark: one optimizer step of transformers' `GPT2LMHeadModel`
//! in PyTorch (`bench/torch_step.py`) against `tram_models::Gpt2` with the tram optimizer, for
//! Adam, SAM, ASAM, TRAM-θ_{t-1} (`tram-prev`), TRAM-θ₀ (`tram-pretrained`) and TRAM-x
//! (`tram-noise`), on the same config, thread count and data shape, one after the other.
//!
//! ```sh
//! cargo run --release -p tram-bench -- [--python /work/pyenv/bin/python] [--shapes small,wide]
//!     [--methods adam,sam,...] [--steps 6] [--warmup 2] [--threads 2] [--out target/bench]
//!     [--dropout 0.1] [--tune-malloc] [--skip-torch] [--ranks 1] [--tram-ranks 1]
//!     [--layers N --embd N --heads N --vocab N --seq N --batch N]  # a custom shape instead
//! ```
//!
//! Shapes: `small` = 4 layers, d = 128, 4 heads, vocab 4096, seq 128, batch 8; `wide` =
//! 6 layers, d = 256, 4 heads, vocab 4096, seq 256, batch 4. Every (shape, method, side) runs
//! in a process of its own (the Rust side re-executes this binary with `--worker`), so each
//! peak RSS (`VmHWM` / `ru_maxrss`) is that run's alone. Prints a table of the median wall
//! ms/step after the warm-up steps and the tram ÷ PyTorch ratio, the same for the process CPU
//! time of a step (the steadier figure on a shared machine at `--threads 1`; with more threads
//! it includes both libraries' spin-waiting), both peak RSS and the load average, and writes
//! `side-by-side.json` and `side-by-side.csv` into `--out`. The tram side keeps freed blocks in
//! the heap as the `tram` CLI does (`tram_trainer::allocator::tune`), PyTorch runs with glibc's
//! defaults, as each does for its users; `--tune-malloc` runs both sides with the same glibc
//! malloc settings ([`TUNED_MALLOC`], the CLI's).
//!
//! `--tram-ranks W` (W > 1) times tram's step as the CLI's `distributed.engine = "threads"`
//! takes it: W ranks as threads of the worker, each of one candle thread with its own model
//! replica and 1/W of the batch, summing through [`tram::distributed::Threads`]; PyTorch keeps
//! its `--threads` intra-op threads. `--ranks W` makes both sides data-parallel over W ranks of
//! one thread each: tram as above, PyTorch as W `DistributedDataParallel` processes over gloo
//! (`bench/torch_step.py --ranks`). The step time is rank 0's (the ranks meet in every pass's
//! all-reduce), the CPU time and peak RSS the whole job's.

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;
use tram::{Batch, Optimizer, OptimizerConfig};
use tram_models::{Gpt2, Gpt2Config, LoadOptions};

/// `--help`: the options (the crate doc's command block).
const HELP: &str = "side-by-side: one training step of GPT-2 in PyTorch and in tram, one after the other\n
usage: cargo run --release -p tram-bench -- [--python PYTHON] [--shapes small,wide]
           [--methods adam,sam,asam,tram-prev,tram-pretrained,tram-noise] [--steps 6] [--warmup 2]
           [--threads 2] [--out target/bench] [--dropout 0.1] [--tune-malloc] [--skip-torch]
           [--tram-ranks 1]   (tram's step as W data-parallel thread ranks of one thread each)
           [--ranks 1]        (both sides data-parallel: tram's thread ranks, PyTorch's DDP processes)
           [--layers N --embd N --heads N --vocab N --seq N --batch N]   (a custom shape instead)\n
shapes: small = 4 layers, d 128, 4 heads, vocab 4096, seq 128, batch 8
        wide  = 6 layers, d 256, 4 heads, vocab 4096, seq 256, batch 4
PYTHON needs bench/requirements.txt (torch 2.15.0, transformers 5.24.0); README.md, \"Speed\".";

const METHODS: [&str; 6] = ["adam", "sam", "asam", "tram-prev", "tram-pretrained", "tram-noise"];
const LR: f64 = 1e-4;

#[derive(Clone, Copy, Debug)]
struct Shape {
    layers: usize,
    embd: usize,
    heads: usize,
    vocab: usize,
    seq: usize,
    batch: usize,
}

impl Shape {
    const SMALL: Shape = Shape { layers: 4, embd: 128, heads: 4, vocab: 4096, seq: 128, batch: 8 };
    const WIDE: Shape = Shape { layers: 6, embd: 256, heads: 4, vocab: 4096, seq: 256, batch: 4 };
    fn label(&self) -> String {
        format!("L{} d{} h{} V{} s{} b{}", self.layers, self.embd, self.heads, self.vocab, self.seq, self.batch)
    }
    fn args(&self) -> Vec<String> {
        [
            ("--layers", self.layers),
            ("--embd", self.embd),
            ("--heads", self.heads),
            ("--vocab", self.vocab),
            ("--seq", self.seq),
            ("--batch", self.batch),
        ]
        .iter()
        .flat_map(|(k, v)| [k.to_string(), v.to_string()])
        .collect()
    }
}

struct Opts {
    shapes: Vec<Shape>,
    methods: Vec<String>,
    steps: usize,
    warmup: usize,
    threads: usize,
    dropout: f64,
    python: String,
    out: PathBuf,
    worker: Option<String>,
    skip_torch: bool,
    tune_malloc: bool,
    /// tram's step as this many data-parallel thread ranks (1: one rank of `threads` threads).
    tram_ranks: usize,
    /// PyTorch's step as this many DDP processes of one thread (1: one of `threads` threads).
    torch_ranks: usize,
}

/// glibc malloc settings that keep freed blocks up to 32 MiB in the heap instead of returning
/// them to the kernel (both libraries otherwise page-fault and zero fresh pages for their
/// large activation buffers on every step).
const TUNED_MALLOC: &str = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824:glibc.malloc.top_pad=67108864";

fn parse() -> Result<Opts> {
    let mut o = Opts {
        shapes: vec![Shape::SMALL, Shape::WIDE],
        methods: METHODS.iter().map(|s| s.to_string()).collect(),
        steps: 6,
        warmup: 2,
        threads: 2,
        dropout: 0.1,
        python: std::env::var("TRAM_BENCH_PYTHON").unwrap_or_else(|_| "python3".into()),
        out: PathBuf::from("target/bench"),
        worker: None,
        skip_torch: false,
        tune_malloc: false,
        tram_ranks: 1,
        torch_ranks: 1,
    };
    let mut custom = Shape::SMALL;
    let mut has_custom = false;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    let usage = "see the doc comment of bench/src/main.rs or README.md (Benchmarks)";
    while i < args.len() {
        let key = args[i].as_str();
        if key == "--help" || key == "-h" {
            println!("{HELP}");
            std::process::exit(0);
        }
        if key == "--skip-torch" || key == "--tune-malloc" {
            if key == "--skip-torch" {
                o.skip_torch = true;
            } else {
                o.tune_malloc = true;
            }
            i += 1;
            continue;
        }
        let val = args.get(i + 1).ok_or_else(|| anyhow!("option `{key}` needs a value ({usage})"))?.clone();
        let num = || -> Result<usize> { val.parse().map_err(|_| anyhow!("option `{key}`: `{val}` is not a non-negative integer")) };
        match key {
            "--shapes" => {
                o.shapes = val
                    .split(',')
                    .map(|s| match s {
                        "small" => Ok(Shape::SMALL),
                        "wide" => Ok(Shape::WIDE),
                        other => Err(anyhow!("--shapes: unknown shape `{other}` (small, wide; or give --layers/--embd/...)")),
                    })
                    .collect::<Result<_>>()?
            }
            "--methods" => {
                o.methods = val.split(',').map(str::to_string).collect();
                if let Some(m) = o.methods.iter().find(|m| !METHODS.contains(&m.as_str())) {
                    bail!("--methods: unknown method `{m}` (one of {})", METHODS.join(", "));
                }
            }
            "--steps" => o.steps = num()?.max(1),
            "--warmup" => o.warmup = num()?,
            "--threads" => o.threads = num()?.max(1),
            "--tram-ranks" => o.tram_ranks = num()?.max(1),
            "--ranks" => {
                o.tram_ranks = num()?.max(1);
                o.torch_ranks = o.tram_ranks;
            }
            "--dropout" => o.dropout = val.parse().map_err(|_| anyhow!("--dropout: `{val}` is not a number"))?,
            "--python" => o.python = val,
            "--out" => o.out = PathBuf::from(val),
            "--worker" => o.worker = Some(val),
            "--layers" | "--embd" | "--heads" | "--vocab" | "--seq" | "--batch" => {
                has_custom = true;
                let n = num()?;
                match key {
                    "--layers" => custom.layers = n,
                    "--embd" => custom.embd = n,
                    "--heads" => custom.heads = n,
                    "--vocab" => custom.vocab = n,
                    "--seq" => custom.seq = n,
                    _ => custom.batch = n,
                }
            }
            other => bail!("unknown option `{other}` ({usage})"),
        }
        i += 2;
    }
    if has_custom {
        if custom.embd.checked_rem(custom.heads) != Some(0) {
            bail!("--embd {} is not a multiple of --heads {}", custom.embd, custom.heads);
        }
        o.shapes = vec![custom];
    }
    Ok(o)
}

/// This process's peak resident set (`VmHWM`), KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// This process's CPU time (all threads), ms.
fn cpu_ms() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer for clock_gettime.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

/// One tram run (in the worker process): returns the wall and CPU times of each step, ms.
fn tram_run(shape: Shape, method: &str, o: &Opts) -> Result<(Vec<f64>, Vec<f64>)> {
    if o.tram_ranks > 1 {
        return tram_ranks_run(shape, method, o);
    }
    tram_steps(shape, method, o, None)
}

/// [`tram_run`] as `--tram-ranks` thread ranks: rank 0's step times.
fn tram_ranks_run(shape: Shape, method: &str, o: &Opts) -> Result<(Vec<f64>, Vec<f64>)> {
    let ranks = tram::distributed::Threads::group(o.tram_ranks, std::time::Duration::from_secs(600));
    let mut out: Vec<Result<(Vec<f64>, Vec<f64>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = ranks
            .into_iter()
            .map(|rank| {
                s.spawn(move || {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
                    pool.install(|| tram_steps(shape, method, o, Some(rank)))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    out.swap_remove(0)
}

/// The timed steps of one rank (`None`: the only one).
fn tram_steps(shape: Shape, method: &str, o: &Opts, rank: Option<tram::distributed::Threads>) -> Result<(Vec<f64>, Vec<f64>)> {
    use tram::distributed::Collective;
    let cfg = json!({
        "model_type": "gpt2", "vocab_size": shape.vocab, "n_positions": shape.seq.max(128), "n_embd": shape.embd,
        "n_layer": shape.layers, "n_head": shape.heads,
        "resid_pdrop": o.dropout, "embd_pdrop": o.dropout, "attn_pdrop": o.dropout,
    });
    let model =
        Gpt2::random(Gpt2Config::from_json(&cfg)?, &LoadOptions { dtype: DType::F32, device: Device::Cpu, seed: 0, num_labels: None })?;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let tokens: Vec<u32> = (0..shape.batch * (shape.seq + 1)).map(|_| rng.random_range(0..shape.vocab as u32)).collect();
    let all = Tensor::from_vec(tokens, (shape.batch, shape.seq + 1), &Device::Cpu)?;
    let batch = Batch::new(all.narrow(1, 0, shape.seq)?.contiguous()?, all.narrow(1, 1, shape.seq)?.contiguous()?);
    let registry = tram_plugins::registry()?;
    let mut opt = Optimizer::new(&registry, OptimizerConfig::new(method, LR))?;
    let batch = match rank {
        Some(rank) => {
            let (share, offset) = tram_trainer::distributed::shard(&batch, rank.rank(), rank.world())?;
            opt.set_example_offsets(vec![offset]);
            opt.set_collective(std::sync::Arc::new(rank));
            share
        }
        None => batch,
    };
    let (mut times, mut cpu) = (Vec::new(), Vec::new());
    for i in 0..o.warmup + o.steps {
        let (t0, c0) = (Instant::now(), cpu_ms());
        let r = opt.step(&model, std::slice::from_ref(&batch))?;
        let (dt, dc) = (t0.elapsed().as_secs_f64() * 1e3, cpu_ms() - c0);
        if r.skipped {
            bail!("{method}: step {} was skipped (loss {})", r.step, r.loss);
        }
        if i >= o.warmup {
            times.push(dt);
            cpu.push(dc);
        }
    }
    Ok((times, cpu))
}

fn child_json(mut cmd: Command, what: &str) -> Result<Value> {
    let out = cmd.output().with_context(|| format!("{what}: could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{what} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).ok_or_else(|| anyhow!("{what}: no JSON line in its output:\n{stdout}"))?;
    Ok(serde_json::from_str(line)?)
}

fn main() -> Result<()> {
    let o = parse()?;
    if let Some(method) = &o.worker {
        // As the CLI: freed step buffers stay in the heap (unless GLIBC_TUNABLES sets malloc).
        tram_trainer::allocator::tune();
        let (times, cpu) = tram_run(o.shapes[0], method, &o)?;
        println!(
            "{}",
            json!({"method": method, "times_ms": times, "median_ms": median(times.clone()), "cpu_ms": cpu,
                   "median_cpu_ms": median(cpu.clone()), "peak_rss_kib": peak_rss_kib()})
        );
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("torch_step.py");
    let mut rows = Vec::new();
    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().next().unwrap_or("?").to_string();
    println!(
        "glibc malloc: {} | threads {} | tram ranks {} | PyTorch ranks {} | steps {} after {} warm-up | median wall ms/step, median process CPU ms/step (all threads, spinning included) | peak RSS GB | 1-min load average after the pair",
        if o.tune_malloc { "tuned (--tune-malloc, both sides)" } else { "PyTorch default, tram tuned as its CLI" },
        o.threads,
        o.tram_ranks,
        o.torch_ranks,
        o.steps,
        o.warmup
    );
    println!(
        "{:<26} {:<16} {:>9} {:>9} {:>6} {:>9} {:>9} {:>6} {:>8} {:>8} {:>5}",
        "shape", "method", "torch ms", "tram ms", "ratio", "torch cpu", "tram cpu", "ratio", "torch GB", "tram GB", "load"
    );
    for shape in &o.shapes {
        for method in &o.methods {
            let common = |c: &mut Command| {
                c.args(shape.args()).args(["--steps", &o.steps.to_string(), "--warmup", &o.warmup.to_string()]);
                c.args(["--dropout", &o.dropout.to_string()]);
            };
            let torch = if o.skip_torch {
                None
            } else {
                let mut c = Command::new(&o.python);
                if o.tune_malloc {
                    c.env("GLIBC_TUNABLES", TUNED_MALLOC);
                }
                let torch_threads = if o.torch_ranks > 1 { 1 } else { o.threads };
                c.arg(&script).args(["--method", method, "--threads", &torch_threads.to_string()]);
                c.args(["--ranks", &o.torch_ranks.to_string()]);
                common(&mut c);
                Some(child_json(c, &format!("PyTorch {method}"))?)
            };
            let mut c = Command::new(&exe);
            if o.tune_malloc {
                c.env("GLIBC_TUNABLES", TUNED_MALLOC);
            }
            // Thread ranks run one candle thread each (as the CLI's `engine = "threads"`).
            let tram_threads = if o.tram_ranks > 1 { 1 } else { o.threads };
            c.args(["--worker", method, "--tram-ranks", &o.tram_ranks.to_string()])
                .env("RAYON_NUM_THREADS", tram_threads.to_string())
                .env("CANDLE_NUM_THREADS", tram_threads.to_string());
            common(&mut c);
            let tram = child_json(c, &format!("tram {method}"))?;
            let tm = tram["median_ms"].as_f64().unwrap_or(f64::NAN);
            let pm = torch.as_ref().and_then(|t| t["median_ms"].as_f64()).unwrap_or(f64::NAN);
            let tc = tram["median_cpu_ms"].as_f64().unwrap_or(f64::NAN);
            let pc = torch.as_ref().and_then(|t| t["median_cpu_ms"].as_f64()).unwrap_or(f64::NAN);
            let gb = |v: &Value| v["peak_rss_kib"].as_f64().unwrap_or(f64::NAN) / 1024.0 / 1024.0;
            let tg = gb(&tram);
            let pg = torch.as_ref().map(gb).unwrap_or(f64::NAN);
            let l = load();
            println!(
                "{:<26} {:<16} {:>9.1} {:>9.1} {:>6.2} {:>9.1} {:>9.1} {:>6.2} {:>8.2} {:>8.2} {:>5}",
                shape.label(),
                method,
                pm,
                tm,
                tm / pm,
                pc,
                tc,
                tc / pc,
                pg,
                tg,
                l
            );
            rows.push(json!({
                "shape": shape.label(), "layers": shape.layers, "embd": shape.embd, "heads": shape.heads, "vocab": shape.vocab,
                "seq": shape.seq, "batch": shape.batch, "method": method, "threads": o.threads, "tram_ranks": o.tram_ranks, "torch_ranks": o.torch_ranks,
                "torch_ms": pm, "tram_ms": tm, "ratio": tm / pm, "torch_cpu_ms": pc, "tram_cpu_ms": tc, "cpu_ratio": tc / pc, "torch_peak_rss_gb": pg, "tram_peak_rss_gb": tg, "loadavg_after": l,
                "torch": torch, "tram": tram,
            }));
        }
    }
    std::fs::create_dir_all(&o.out)?;
    std::fs::write(o.out.join("side-by-side.json"), serde_json::to_string_pretty(&rows)?)?;
    let mut csv = String::from(
        "shape,method,threads,tram_ranks,torch_ranks,torch_ms,tram_ms,ratio,torch_cpu_ms,tram_cpu_ms,cpu_ratio,torch_peak_rss_gb,tram_peak_rss_gb,loadavg_after\n",
    );
    for r in &rows {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        csv += &format!(
            "{},{},{},{},{},{:.2},{:.2},{:.3},{:.2},{:.2},{:.3},{:.3},{:.3},{}\n",
            r["shape"].as_str().unwrap_or(""),
            r["method"].as_str().unwrap_or(""),
            o.threads,
            o.tram_ranks,
            o.torch_ranks,
            f("torch_ms"),
            f("tram_ms"),
            f("ratio"),
            f("torch_cpu_ms"),
            f("tram_cpu_ms"),
            f("cpu_ratio"),
            r["torch_peak_rss_gb"].as_f64().unwrap_or(f64::NAN),
            r["tram_peak_rss_gb"].as_f64().unwrap_or(f64::NAN),
            r["loadavg_after"].as_str().unwrap_or("")
        );
    }
    std::fs::write(o.out.join("side-by-side.csv"), csv)?;
    println!("wrote {}/side-by-side.{{json,csv}}", o.out.display());
    Ok(())
}
