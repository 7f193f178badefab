//! Fused in-place optimizer updates (placeholder, filled below).
