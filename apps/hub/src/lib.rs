//! Hub model sources.
