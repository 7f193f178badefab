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
/// there are several; returns the number of parts.
pub(crate) fn for_rows(rows: usize, row_len: usize, f: impl Fn(usize, Range<usize>) + Sync) -> usize {
    let n = parts(rows, row_len);
    if n == 1 {
        f(0, 0..rows);
        return 1;
    }
    let chunk = rows.div_ceil(n);
    candle_core::utils::barrier_pool().execute(|tid| {
        let start = tid * chunk;
        if start < rows {
            f(tid, start..rows.min(start + chunk));
        }
    });
    n
}
