//! Piece sizes from a seed, shared by the fuzz checks of the multipart format (`tests/fuzz_checks/`) and of
//! the JSON codec (`src/codec/fuzz.rs`), which include this file: one way to cut a body into pieces.

/// Chunk sizes from a seed: 0 to `1 + seed_hi % 32` bytes, never two empty chunks in a row.
pub(crate) struct ChunkSizes {
    state: u32,
    max: u32,
    last_empty: bool,
}

impl ChunkSizes {
    pub(crate) fn new(seed: u16) -> ChunkSizes {
        ChunkSizes {
            state: u32::from(seed) | 0x1_0000,
            max: 1 + u32::from(seed >> 8) % 32,
            last_empty: false,
        }
    }
}

impl Iterator for ChunkSizes {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        // xorshift32
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        let mut size = self.state % (self.max + 1);
        if size == 0 && self.last_empty {
            size = 1;
        }
        self.last_empty = size == 0;
        Some(size as usize)
    }
}
