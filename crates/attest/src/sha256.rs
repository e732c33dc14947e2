//! SHA-256 with a pluggable block function.
//!
//! The hash is FIPS 180-4 SHA-256; only the compression of 64-byte blocks
//! is pluggable. Everywhere but at EL2 it is [`portable_compress`] (the
//! `sha2` crate's). The hypervisor runs soft-float code that cannot use the
//! CPU's SHA-256 instructions through `sha2`, so it hands [`Sha256::with`]
//! a block function of its own (FEAT_SHA256 instructions, with the SIMD
//! registers they use saved and restored around them) after checking it
//! against [`portable_compress`] at boot. Padding, length encoding and
//! buffering are this file's, shared by both.

/// A SHA-256 block function: runs the compression function over `blocks`
/// in order, updating `state` (H0..H7).
pub type Compress = fn(state: &mut [u32; 8], blocks: &[[u8; 64]]);

/// The `sha2` crate's block function: portable Rust (or, on a host OS, the
/// CPU's instructions where `sha2` detects them).
pub fn portable_compress(state: &mut [u32; 8], blocks: &[[u8; 64]]) {
    sha2::block_api::compress256(state, blocks);
}

/// SHA-256's initial hash value (FIPS 180-4, 5.3.3).
pub const INITIAL_STATE: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// An incremental SHA-256 over a chosen block function.
#[derive(Clone)]
pub struct Sha256 {
    state: [u32; 8],
    buffer: [u8; 64],
    /// Bytes in `buffer`, below 64.
    buffered: usize,
    /// Bytes hashed so far, buffered ones included.
    length: u64,
    compress: Compress,
}

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sha256")
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

impl Sha256 {
    /// A hash over [`portable_compress`].
    #[must_use]
    pub fn new() -> Self {
        Self::with(portable_compress)
    }

    /// A hash over `compress`.
    #[must_use]
    pub fn with(compress: Compress) -> Self {
        Sha256 {
            state: INITIAL_STATE,
            buffer: [0; 64],
            buffered: 0,
            length: 0,
            compress,
        }
    }

    /// Hashes `data`. Whole blocks go to the block function in one call,
    /// straight from `data`.
    pub fn update(&mut self, mut data: &[u8]) {
        self.length = self.length.wrapping_add(data.len() as u64);
        if self.buffered > 0 {
            let take = (64 - self.buffered).min(data.len());
            let (head, rest) = data.split_at(take);
            self.buffer[self.buffered..self.buffered + take].copy_from_slice(head);
            self.buffered += take;
            data = rest;
            if self.buffered < 64 {
                return;
            }
            (self.compress)(&mut self.state, core::slice::from_ref(&self.buffer));
            self.buffered = 0;
        }
        let (blocks, rest) = data.as_chunks::<64>();
        if !blocks.is_empty() {
            (self.compress)(&mut self.state, blocks);
        }
        self.buffer[..rest.len()].copy_from_slice(rest);
        self.buffered = rest.len();
    }

    /// Pads and returns the digest.
    #[must_use]
    pub fn finish(mut self) -> [u8; 32] {
        let bits = self.length.wrapping_mul(8);
        let mut tail = [0u8; 128];
        tail[..self.buffered].copy_from_slice(&self.buffer[..self.buffered]);
        tail[self.buffered] = 0x80;
        // One block if the length still fits after the 0x80, else two.
        let len = if self.buffered < 56 { 64 } else { 128 };
        tail[len - 8..len].copy_from_slice(&bits.to_be_bytes());
        let (blocks, _) = tail[..len].as_chunks::<64>();
        (self.compress)(&mut self.state, blocks);
        let mut out = [0u8; 32];
        for (chunk, word) in out.chunks_exact_mut(4).zip(self.state) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        out
    }

    /// SHA-256 of `data` in one call.
    #[must_use]
    pub fn digest_with(compress: Compress, data: &[u8]) -> [u8; 32] {
        let mut h = Self::with(compress);
        h.update(data);
        h.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use proptest::prelude::*;
    use sha2::Digest;

    fn reference(parts: &[&[u8]]) -> [u8; 32] {
        let mut h = sha2::Sha256::new();
        for p in parts {
            h.update(p);
        }
        h.finalize().into()
    }

    #[test]
    fn fips_180_examples() {
        let hex = |d: [u8; 32]| crate::hex::Hex(&d).to_string();
        use alloc::string::ToString;
        assert_eq!(
            hex(Sha256::digest_with(portable_compress, b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(Sha256::digest_with(portable_compress, b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(Sha256::digest_with(
                portable_compress,
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }

    #[test]
    fn every_padding_boundary() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3).to_le_bytes()[0]).collect();
        for len in 0..data.len() {
            assert_eq!(
                Sha256::digest_with(portable_compress, &data[..len]),
                reference(&[&data[..len]]),
                "{len}"
            );
        }
    }

    /// A block function that does nothing: the digest is then the initial
    /// state, which shows `with` really hashes through the function given.
    fn no_op(_: &mut [u32; 8], _: &[[u8; 64]]) {}

    #[test]
    fn the_block_function_given_is_the_one_used() {
        let mut expected = [0u8; 32];
        for (chunk, word) in expected.chunks_exact_mut(4).zip(INITIAL_STATE) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        assert_eq!(Sha256::digest_with(no_op, &[0x5a; 4096 + 17]), expected);
        assert_ne!(
            Sha256::digest_with(portable_compress, &[0x5a; 4096 + 17]),
            expected
        );
    }

    proptest! {
        #[test]
        fn split_updates_match_sha2(data in proptest::collection::vec(any::<u8>(), 0..600), cuts in proptest::collection::vec(0usize..600, 0..6)) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut h = Sha256::new();
            let mut start = 0;
            for c in cuts.iter().copied().chain(core::iter::once(data.len())) {
                h.update(&data[start..c]);
                start = c;
            }
            prop_assert_eq!(h.finish(), reference(&[&data]));
        }
    }
}
