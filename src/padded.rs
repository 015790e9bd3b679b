//! A value alone on its cache lines.

use std::ops::Deref;

/// Keeps a value that every request writes (a shared counter) off the cache lines of the
/// fields every request only reads: otherwise each write on one core evicts those fields from
/// the other cores' caches (false sharing). 128 bytes: adjacent-line prefetching on x86 pairs
/// 64-byte lines.
#[repr(align(128))]
#[derive(Default)]
pub(crate) struct Padded<T>(pub T);

impl<T> Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}
