//! Token cache benchmark: builds the `run_clm` cache entry of a synthetic text of a given size
//! and reports build time, entry size and the process's peak RSS (`VmHWM`).
//!
//!   cargo run --release -p tram-data --example token_cache_bench -- <text MiB> <work dir> [old]
//!
//! The tokenizer is the repo's GPT-2-style models/quickstart/tokenizer.json. With `old`, the
//! split is instead loaded and tokenised in memory the way `tram lm` did before the cache
//! (records, texts, one token stream, block copies), for comparison.

use std::path::{Path, PathBuf};
use tram_data::lm::Protocol;
use tram_data::token_cache::{hash_tokenizer, CacheSpec, TokenCache};
use tram_data::{Format, SplitFiles, Tokenizer};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mb: usize = args.get(1).expect("text size in MiB").parse().unwrap();
    let work = PathBuf::from(args.get(2).expect("work dir"));
    let old = args.get(3).is_some_and(|a| a == "old");
    std::fs::create_dir_all(&work).unwrap();
    let text = work.join(format!("synthetic-{mb}MiB.txt"));
    if !text.exists() {
        tram_data::fixtures::synthetic_text(&text, mb).unwrap();
    }
    let tok = Tokenizer::from_file(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../models/quickstart/tokenizer.json")).unwrap();
    let start = std::time::Instant::now();
    if old {
        let records = tram_data::read_text_lines(&text, None).unwrap();
        let texts = tram_data::lm::texts(&records, "text").unwrap();
        let (blocks, _) = tram_data::lm::token_blocks(&texts, &tok, 1024).unwrap();
        println!(
            "old: text_mib={mb} blocks={} seconds={:.1} vm_hwm_mib={}",
            blocks.len(),
            start.elapsed().as_secs_f64(),
            tram_data::fixtures::peak_rss_kib().unwrap_or(0) / 1024
        );
        return;
    }
    let files = SplitFiles { split: "train".into(), config: None, format: Format::Text, paths: vec![text], members: Vec::new() };
    let spec = CacheSpec {
        dir: work.join("cache"),
        label: format!("synthetic-{mb}"),
        protocol: Protocol::RunClm,
        block_size: 1024,
        column: "text".into(),
        limit: None,
        tokenizer_hash: hash_tokenizer(&tok).unwrap(),
    };
    let (c, built) = TokenCache::open_or_build(&files, &tok, &spec).unwrap();
    let build_s = start.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let (c2, built2) = TokenCache::open_or_build(&files, &tok, &spec).unwrap();
    println!(
        "cache: text_mib={mb} built={built} tokens={} blocks={} entry_mib={:.1} build_seconds={build_s:.1} tokens_per_s={:.0} reopen_seconds={:.2} rebuilt_on_reopen={built2} vm_hwm_mib={}",
        c.tokens(),
        c.len(),
        std::fs::metadata(c.path()).unwrap().len() as f64 / (1 << 20) as f64,
        c.tokens() as f64 / build_s,
        t.elapsed().as_secs_f64(),
        tram_data::fixtures::peak_rss_kib().unwrap_or(0) / 1024
    );
    drop(c2);
}
