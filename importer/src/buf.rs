//! Pool buffers: heap memory aligned for O_DIRECT, owned by exactly one stage at a time.
//!
//! A [`Buf`] is a `Vec<u8>` with slack so that an aligned window of `capacity` bytes fits
//! inside it; the window never moves because the Vec is never resized. The copy pipeline
//! allocates `buf_count` of them once; they travel source → sink → back, so the copy
//! never holds more disk data than the pool.

/// Alignment of every pool buffer: enough for O_DIRECT on 4Kn devices and filesystems.
pub const BUF_ALIGN: usize = 4096;

/// An aligned, fixed-capacity buffer with a current length.
pub struct Buf {
    storage: Vec<u8>,
    start: usize,
    capacity: usize,
    len: usize,
    fixed: Option<Fixed>,
}

/// Where a buffer is registered with an I/O engine (io_uring fixed buffers): the
/// registration it belongs to and its index in it. Only the buffer whose window was
/// registered carries it, so an index is never used for other memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fixed {
    /// The engine's registration (a number never reused by that engine).
    pub registration: u64,
    /// The buffer's index in it.
    pub index: u16,
}

impl std::fmt::Debug for Buf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buf")
            .field("capacity", &self.capacity)
            .field("len", &self.len)
            .finish()
    }
}

impl Buf {
    /// A zero-filled buffer of `capacity` bytes aligned to [`BUF_ALIGN`], with len = capacity.
    pub fn new(capacity: usize) -> Buf {
        let storage = vec![0u8; capacity + BUF_ALIGN];
        let start = storage.as_ptr().align_offset(BUF_ALIGN);
        Buf {
            storage,
            start,
            capacity,
            len: capacity,
            fixed: None,
        }
    }

    /// The whole aligned window, `capacity` bytes from its start (what an engine
    /// registers): its address and length.
    pub fn window(&self) -> (*const u8, usize) {
        (self.storage[self.start..].as_ptr(), self.capacity)
    }

    /// Where the buffer is registered, if it is.
    pub fn fixed(&self) -> Option<Fixed> {
        self.fixed
    }

    /// Record where the engine registered this buffer's window (`None`: nowhere). Only
    /// the code that registered this very window may call it (the engine's fixed
    /// requests trust it).
    pub(crate) fn set_fixed(&mut self, f: Option<Fixed>) {
        self.fixed = f;
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Current length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the current length is zero.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Set the current length (clamped to the capacity).
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.capacity);
    }

    /// The first `len` bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    /// The first `len` bytes, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }

    /// Whether every byte of the current length is zero.
    pub fn is_zero(&self) -> bool {
        let s = self.as_slice();
        let (head, body, tail) = {
            let (a, rest) = s.split_at(s.len().min(s.as_ptr().align_offset(16)));
            let n = rest.len() / 16 * 16;
            (a, &rest[..n], &rest[n..])
        };
        head.iter().all(|b| *b == 0)
            && body
                .chunks_exact(16)
                .all(|c| u128::from_ne_bytes(c.try_into().unwrap_or([1; 16])) == 0)
            && tail.iter().all(|b| *b == 0)
    }
}

impl ferry_nbd::ReadBuf for Buf {
    fn as_mut_bytes(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl vddk_sys::AsyncBuf for Buf {
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_buffer_is_aligned_and_zeroed() {
        let b = Buf::new(65536);
        assert_eq!(b.as_slice().as_ptr() as usize % BUF_ALIGN, 0);
        assert!(b.is_zero());
    }

    #[test]
    fn set_len_is_clamped_to_capacity() {
        let mut b = Buf::new(4096);
        b.set_len(10_000);
        assert_eq!(b.len(), 4096);
    }

    #[test]
    fn is_zero_sees_a_single_nonzero_byte_anywhere() {
        for at in [0usize, 1, 15, 16, 4095] {
            let mut b = Buf::new(4096);
            b.as_mut_slice()[at] = 1;
            assert!(!b.is_zero(), "byte {at}");
        }
    }
}
