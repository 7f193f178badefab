//! Thread split for row-wise kernels: candle's persistent CPU pool, used only when a kernel's
//! work is large enough to pay for waking it (candle's pool costs more than it gains on small
//! tensors: every call ends at a spinning barrier).

use std::ops::Range;

/// Elements of work below which a kernel runs on the calling thread alone.
pub const PAR_MIN_ELEMS: usize = 1 << 16;

/// A raw pointer that may be shared by the threads of one kernel call, each writing a disjoint
/// range.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr<T>(pub *mut T);
unsafe impl<T> Send for SyncPtr<T> {}
unsafe impl<T> Sync for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    /// The mutable sub-slice `[start, start + len)`.
    ///
    /// # Safety
    /// Within bounds, and no other thread touches that range during the call.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }
}

/// How many parts `rows` rows of `row_len` elements are split into (1: the calling thread).
pub(crate) fn parts(rows: usize, row_len: usize) -> usize {
    if rows < 2 || rows.saturating_mul(row_len) < PAR_MIN_ELEMS {
        return 1;
    }
    (candle_core::utils::barrier_pool().n_workers() + 1).min(rows)
}

/// Run `f(part, rows)` over `0..rows` split into [`parts`] contiguous ranges, in parallel when
/// there are several; returns the number of parts. On x86-64 CPUs with AVX2 and FMA, `f` is
/// called from a function compiled for them, so the kernels' loops (inlined into it) use 8-wide
/// vectors (the results do not depend on it: the kernels accumulate in a fixed 8-lane order and
/// never fuse a multiply-add).
pub(crate) fn for_rows<F: Fn(usize, Range<usize>) + Sync>(rows: usize, row_len: usize, f: F) -> usize {
    let n = parts(rows, row_len);
    if n == 1 {
        call(&f, 0, 0..rows);
        return 1;
    }
    let chunk = rows.div_ceil(n);
    candle_core::utils::barrier_pool().execute(|tid| {
        let start = tid * chunk;
        if start < rows {
            call(&f, tid, start..rows.min(start + chunk));
        }
    });
    n
}

/// Run `f(0, 0..rows)` on the calling thread, compiled for AVX2/FMA where the CPU has them
/// (as [`for_rows`] does for each part): for memory-bound passes too short to pay for waking
/// the pool (the optimizer updates).
pub(crate) fn on_this_thread<F: Fn(usize, Range<usize>)>(rows: usize, f: F) {
    call(&f, 0, 0..rows);
}

#[inline(always)]
fn call<F: Fn(usize, Range<usize>)>(f: &F, part: usize, range: Range<usize>) {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *AVX2.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            unsafe { call_avx2(f, part, range) };
            return;
        }
    }
    f(part, range)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn call_avx2<F: Fn(usize, Range<usize>)>(f: &F, part: usize, range: Range<usize>) {
    f(part, range)
}
