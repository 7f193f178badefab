//! The CUDA kernels' arithmetic without a GPU: `cuda/keyed_rng.h` (what `cuda/keyed_rng.cu`
//! runs per thread) compiled for the host with the system C compiler (`cc`, or `CC`), driven
//! over the kernel's grid (one call per row and ChaCha8 block), and compared with rand_chacha's
//! stream and with the Rust CPU path of `tram_kernels::keyed`: ChaCha8 words, dropout masks
//! (bitwise) and Box–Muller / uniform noise (bitwise: the host's C library computes the same
//! `log` / `sin` / `cos` as Rust's).

use candle_core::Shape;
use rand::RngCore;
use std::path::{Path, PathBuf};
use std::process::Command;
use tram_kernels::keyed::{dropout_mask_cpu, keyed_rng, noise_cpu, Dist, Key};

/// The driver: `stream seed domain draw example blocks` prints the words of blocks 0..blocks;
/// `dropout|normal|uniform rows per_row seed domain draw offset param` runs the kernel body of
/// every (row, block) thread and prints each element (dropout: the f32 mask value `param`
/// where kept; noise: the f32 value scaled by `param`) as hex bits.
const DRIVER: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "keyed_rng.h"
static tram_u64 arg(char **v, int i) { return strtoull(v[i], 0, 10); }
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    if (!strcmp(argv[1], "stream")) {
        tram_u64 b, blocks = arg(argv, 6);
        for (b = 0; b < blocks; b++) {
            tram_u32 w[16]; int i;
            tram_keyed_block(arg(argv, 2), arg(argv, 3), arg(argv, 4), arg(argv, 5), b, w);
            for (i = 0; i < 16; i++) printf("%08x\n", w[i]);
        }
        return 0;
    }
    tram_u64 rows = arg(argv, 2), per_row = arg(argv, 3), blocks = (per_row + 7) / 8, r, b;
    double param = strtod(argv[8], 0);
    for (r = 0; r < rows; r++) for (b = 0; b < blocks; b++) {
        tram_u32 w[16]; int j, n = per_row - 8 * b < 8 ? (int)(per_row - 8 * b) : 8;
        float v[8]; int kept[8];
        tram_keyed_block(arg(argv, 4), arg(argv, 5), arg(argv, 6), arg(argv, 7) + r, b, w);
        if (!strcmp(argv[1], "dropout")) {
            float scale = (float)(1.0 / param);
            tram_dropout_block(w, param, kept);
            for (j = 0; j < 8; j++) v[j] = kept[j] ? scale : 0.0f;
        } else {
            tram_noise_block(w, !strcmp(argv[1], "normal"), (float)param, v);
        }
        for (j = 0; j < n; j++) { tram_u32 bits; memcpy(&bits, &v[j], 4); printf("%08x\n", bits); }
    }
    return 0;
}
"#;

/// Compile the driver once per test binary into a temporary folder.
fn driver() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tram-keyed-host-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("driver.c");
        std::fs::write(&src, DRIVER).unwrap();
        let bin = dir.join("driver");
        let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        // No FMA contraction, as nvcc --fmad=false in build.rs.
        let out = Command::new(&cc)
            .args(["-std=c99", "-O2", "-ffp-contract=off", "-Wall", "-Werror", "-I"])
            .arg(&include)
            .arg(&src)
            .arg("-o")
            .arg(&bin)
            .arg("-lm")
            .output()
            .unwrap_or_else(|e| panic!("running the C compiler `{cc}` (set CC to another): {e}"));
        assert!(out.status.success(), "compiling cuda/keyed_rng.h for the host failed:\n{}", String::from_utf8_lossy(&out.stderr));
        bin
    })
    .clone()
}

fn run(args: &[String]) -> Vec<u32> {
    let out = Command::new(driver()).args(args).output().unwrap();
    assert!(out.status.success(), "driver {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| u32::from_str_radix(l, 16).unwrap()).collect()
}

fn grid(mode: &str, rows: usize, per_row: usize, k: Key, param: f64) -> Vec<u32> {
    let a = [
        mode.to_string(),
        rows.to_string(),
        per_row.to_string(),
        k.seed.to_string(),
        k.domain.to_string(),
        k.draw.to_string(),
        k.offset.to_string(),
        format!("{param:e}"),
    ];
    run(&a)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Keys with every u64 part using both halves (high words catch a swapped or dropped word).
const KEYS: [Key; 3] = [
    Key { seed: 0, domain: 0, draw: 0, offset: 0 },
    Key { seed: 0x0123_4567_89ab_cdef, domain: 0x64726f706f7574, draw: 0xfeed_0000_0001, offset: 0x1_0000_0003 },
    Key { seed: u64::MAX, domain: 0x6e6f697365, draw: 7, offset: 41 },
];

#[test]
fn the_kernels_chacha8_blocks_are_rand_chachas_stream() {
    for k in KEYS {
        let host =
            run(&["stream", &k.seed.to_string(), &k.domain.to_string(), &k.draw.to_string(), &k.offset.to_string(), "9"].map(String::from));
        let mut rng = keyed_rng(k.seed, k.domain, k.draw, k.offset);
        let want: Vec<u32> = (0..9 * 16).map(|_| rng.next_u32()).collect();
        assert_eq!(host, want, "{k:?}");
    }
}

#[test]
fn the_kernels_dropout_masks_are_the_cpu_paths_bit_for_bit() {
    // Rows whose length is not a multiple of 8 (a partial last block), several keep rates.
    for (k, (rows, per_row), keep) in [(KEYS[0], (3, 37), 0.9), (KEYS[1], (2, 64), 0.5), (KEYS[2], (5, 13), 0.1), (KEYS[1], (1, 1), 0.7)] {
        let host = grid("dropout", rows, per_row, k, keep);
        let cpu = dropout_mask_cpu(&Shape::from((rows, per_row)), k, keep);
        assert_eq!(host, bits(&cpu), "{k:?} {rows}x{per_row} keep {keep}");
        let kept = cpu.iter().filter(|v| **v != 0.0).count() as f64 / cpu.len() as f64;
        assert!(cpu.len() < 100 || (kept - keep).abs() < 0.15, "kept {kept} of keep {keep}");
    }
}

#[test]
fn the_kernels_noise_is_the_cpu_paths_bit_for_bit() {
    for (k, (rows, per_row), sigma) in [(KEYS[0], (3, 37), 0.5), (KEYS[1], (2, 64), 1.0), (KEYS[2], (4, 7), 3e-3), (KEYS[2], (1, 1), 2.0)] {
        for (mode, dist) in [("normal", Dist::Normal), ("uniform", Dist::Uniform)] {
            let host = grid(mode, rows, per_row, k, sigma);
            let cpu = noise_cpu(&Shape::from((rows, per_row)), k, dist, sigma as f32);
            assert_eq!(host, bits(&cpu), "{mode} {k:?} {rows}x{per_row} sigma {sigma}");
        }
    }
}
