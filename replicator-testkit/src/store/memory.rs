//! How the store keeps its data compact (see "Memory" in the [store docs](super)):
//! [`Segmented`], an append-only vector that grows in fixed segments, and
//! [`Arena`], which packs small payloads into shared chunks.

use bytes::{Bytes, BytesMut};

/// Elements per segment of a [`Segmented`].
pub(super) const SEGMENT: usize = 1024;

/// An append-only vector in fixed segments: growing never copies, and the spare
/// capacity is at most one segment.
#[derive(Debug)]
pub(super) struct Segmented<T> {
    segments: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Segmented<T> {
    fn default() -> Self {
        Segmented {
            segments: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Segmented<T> {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn push(&mut self, value: T) {
        if self.len.is_multiple_of(SEGMENT) {
            self.segments.push(Vec::with_capacity(SEGMENT));
        }
        if let Some(segment) = self.segments.last_mut() {
            segment.push(value);
            self.len += 1;
        }
    }

    pub(super) fn get(&self, index: usize) -> Option<&T> {
        self.segments.get(index / SEGMENT)?.get(index % SEGMENT)
    }

    pub(super) fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.segments
            .get_mut(index / SEGMENT)?
            .get_mut(index % SEGMENT)
    }

    /// Elements from `from` on, in order.
    pub(super) fn iter_from(&self, from: usize) -> impl Iterator<Item = &T> {
        let first = self
            .segments
            .get(from / SEGMENT)
            .map_or(&[][..], |s| s.get(from % SEGMENT..).unwrap_or_default());
        let rest = self.segments.iter().skip(from / SEGMENT + 1);
        first.iter().chain(rest.flatten())
    }

    /// Like [`slice::partition_point`]: the number of leading elements for which
    /// `pred` holds, when it holds for a prefix.
    pub(super) fn partition_point(&self, pred: impl Fn(&T) -> bool) -> usize {
        let full = self
            .segments
            .partition_point(|s| s.last().is_some_and(&pred));
        match self.segments.get(full) {
            Some(segment) => full * SEGMENT + segment.partition_point(pred),
            None => self.len,
        }
    }
}

impl<T> std::ops::Index<usize> for Segmented<T> {
    type Output = T;

    fn index(&self, index: usize) -> &T {
        &self.segments[index / SEGMENT][index % SEGMENT]
    }
}

/// Size of an [`Arena`] chunk.
pub(super) const ARENA_CHUNK: usize = 1024 * 1024;
/// Payloads larger than this get a buffer of their own, so a chunk never ends in a
/// large unused tail.
pub(super) const ARENA_LARGEST: usize = ARENA_CHUNK / 16;

/// Payload storage: small payloads are packed into shared chunks.
#[derive(Debug, Default)]
pub(super) struct Arena {
    /// The free tail of the current chunk; the `Bytes` handed out share its buffer.
    free: BytesMut,
}

impl Arena {
    /// `parts` copied, one after the other, into exactly their length.
    pub(super) fn store(&mut self, parts: [&[u8]; 2]) -> Bytes {
        let len = parts[0].len() + parts[1].len();
        if len == 0 {
            return Bytes::new();
        }
        if len > ARENA_LARGEST {
            let mut own = BytesMut::with_capacity(len);
            parts.iter().for_each(|p| own.extend_from_slice(p));
            return own.freeze();
        }
        if self.free.capacity() < len {
            self.free = BytesMut::with_capacity(ARENA_CHUNK);
        }
        parts.iter().for_each(|p| self.free.extend_from_slice(p));
        self.free.split().freeze()
    }
}
