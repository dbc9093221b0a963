//! Where a decoding sequence's keys and values lie in the KV cache: the plan
//! decode attention reads (one [`DecodeSeq`] per sequence, 4 words each in an
//! index buffer, the layout of `AttnDecodeParams::plan` in
//! kernels/include/attention.h).
//!
//! A cache is a pool of rows `[n_rows, n_kv_heads, head_dim]`. A sequence's
//! positions come in two runs of consecutive rows: the prompt's (a prefix
//! shared by the prompt's samples, written once at prefill) and its own (the
//! tokens it generated). A sequence with no shared prefix has
//! `prefix_len = 0`.

/// One sequence of a decode step: positions `0..prefix_len` are cache rows
/// `prefix_row..prefix_row + prefix_len`, positions `prefix_len..len` rows
/// `own_row..own_row + len − prefix_len`. The newest position (`len − 1`)
/// holds the key and value of the token being decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeSeq {
    pub prefix_row: u32,
    pub prefix_len: u32,
    pub own_row: u32,
    pub len: u32,
}

impl DecodeSeq {
    /// u32 words per sequence in a plan buffer.
    pub const WORDS: usize = 4;

    /// A sequence whose `len` positions all lie at rows `row..row + len`.
    pub fn contiguous(row: u32, len: u32) -> Self {
        DecodeSeq { prefix_row: row, prefix_len: 0, own_row: row, len }
    }

    /// The cache row of position `j` (`j < len`).
    pub fn row(&self, j: u32) -> u32 {
        if j < self.prefix_len {
            self.prefix_row + j
        } else {
            self.own_row + (j - self.prefix_len)
        }
    }

    /// The plan buffer's words: `[prefix_row, prefix_len, own_row, len]` per sequence.
    pub fn encode(seqs: &[DecodeSeq]) -> Vec<u32> {
        seqs.iter().flat_map(|s| [s.prefix_row, s.prefix_len, s.own_row, s.len]).collect()
    }

    /// The sequences of a plan buffer, or why its words are not a plan for a
    /// cache of `n_rows` rows.
    pub fn decode(words: &[u32], n_rows: usize) -> Result<Vec<DecodeSeq>, String> {
        if !words.len().is_multiple_of(Self::WORDS) {
            return Err(format!("a decode plan has {} words, not a multiple of {}", words.len(), Self::WORDS));
        }
        let seqs: Vec<DecodeSeq> = words
            .chunks_exact(Self::WORDS)
            .map(|w| DecodeSeq { prefix_row: w[0], prefix_len: w[1], own_row: w[2], len: w[3] })
            .collect();
        for (b, s) in seqs.iter().enumerate() {
            s.check(n_rows).map_err(|e| format!("sequence {b} of the decode plan: {e}"))?;
        }
        Ok(seqs)
    }

    /// Every position lies inside a cache of `n_rows` rows, and there is at
    /// least one (the new token's).
    pub fn check(&self, n_rows: usize) -> Result<(), String> {
        let end = |row: u32, n: u32| row as u64 + n as u64;
        if self.len == 0 || self.prefix_len > self.len {
            Err(format!("{self:?}: need 1 <= len and prefix_len <= len"))
        } else if end(self.prefix_row, self.prefix_len) > n_rows as u64
            || end(self.own_row, self.len - self.prefix_len) > n_rows as u64
        {
            Err(format!("{self:?}: rows past the cache's {n_rows}"))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_follow_the_prefix_then_the_own_run() {
        let s = DecodeSeq { prefix_row: 100, prefix_len: 3, own_row: 7, len: 6 };
        let rows: Vec<u32> = (0..6).map(|j| s.row(j)).collect();
        assert_eq!(rows, [100, 101, 102, 7, 8, 9]);
        let c = DecodeSeq::contiguous(40, 3);
        assert_eq!((0..3).map(|j| c.row(j)).collect::<Vec<_>>(), [40, 41, 42]);
    }

    #[test]
    fn plans_round_trip_and_bad_ones_are_named() {
        let seqs = [DecodeSeq { prefix_row: 0, prefix_len: 4, own_row: 10, len: 5 }, DecodeSeq::contiguous(4, 2)];
        let words = DecodeSeq::encode(&seqs);
        assert_eq!(words, [0, 4, 10, 5, 4, 0, 4, 2]);
        assert_eq!(DecodeSeq::decode(&words, 11).unwrap(), seqs);
        // own run 10..11 needs 11 rows; prefix 0..4 fits.
        assert!(DecodeSeq::decode(&words, 10).unwrap_err().contains("sequence 0"));
        assert!(DecodeSeq::decode(&words[..3], 11).unwrap_err().contains("multiple of 4"));
        for bad in [
            DecodeSeq { prefix_row: 0, prefix_len: 0, own_row: 0, len: 0 },
            DecodeSeq { prefix_row: 0, prefix_len: 3, own_row: 0, len: 2 },
            DecodeSeq { prefix_row: u32::MAX, prefix_len: 2, own_row: 0, len: 3 },
        ] {
            assert!(bad.check(1 << 20).is_err(), "{bad:?} accepted");
        }
    }
}
