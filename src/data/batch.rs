//! A batch of packed sequences: all tokens flattened into one row, with
//! `cu_seqlens` marking where each sequence starts (no attention across).

use crate::backend::IGNORE;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    pub tokens: Vec<u32>,
    /// Position of each token within its own sequence.
    pub positions: Vec<u32>,
    /// `S + 1` offsets: sequence `s` is `tokens[cu_seqlens[s]..cu_seqlens[s+1]]`.
    pub cu_seqlens: Vec<u32>,
    /// The next token of the same sequence, [`IGNORE`] at each sequence's last token.
    pub next_tokens: Vec<u32>,
}

impl Batch {
    /// Packs sequences one after another.
    pub fn pack<S: AsRef<[u32]>>(seqs: &[S]) -> Self {
        let mut b = Batch { cu_seqlens: vec![0], ..Default::default() };
        for s in seqs {
            let s = s.as_ref();
            b.tokens.extend_from_slice(s);
            b.positions.extend(0..s.len() as u32);
            b.next_tokens.extend(s.iter().skip(1));
            if !s.is_empty() {
                b.next_tokens.push(IGNORE);
            }
            b.cu_seqlens.push(b.tokens.len() as u32);
        }
        b
    }

    /// Rebuilds the sequences of rows packed the Hugging Face way: a new
    /// sequence begins wherever `position_ids` restarts at 0.
    pub fn from_packed_rows(rows: &[Vec<u32>], position_ids: &[Vec<u32>]) -> Self {
        let mut seqs: Vec<Vec<u32>> = Vec::new();
        for (row, pos) in rows.iter().zip(position_ids) {
            for (&t, &p) in row.iter().zip(pos) {
                if p == 0 || seqs.is_empty() {
                    seqs.push(Vec::new());
                }
                seqs.last_mut().unwrap().push(t);
            }
            // A row's end always ends its last sequence.
            seqs.push(Vec::new());
        }
        seqs.retain(|s| !s.is_empty());
        Self::pack(&seqs)
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
    pub fn n_seqs(&self) -> usize {
        self.cu_seqlens.len() - 1
    }
    pub fn longest(&self) -> usize {
        self.cu_seqlens.windows(2).map(|w| (w[1] - w[0]) as usize).max().unwrap_or(0)
    }
    /// Token range of sequence `s`.
    pub fn seq(&self, s: usize) -> std::ops::Range<usize> {
        self.cu_seqlens[s] as usize..self.cu_seqlens[s + 1] as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_and_unpack() {
        let b = Batch::pack(&[vec![1, 2, 3], vec![4], vec![5, 6]]);
        assert_eq!(b.positions, vec![0, 1, 2, 0, 0, 1]);
        assert_eq!(b.cu_seqlens, vec![0, 3, 4, 6]);
        assert_eq!(b.next_tokens, vec![2, 3, IGNORE, IGNORE, 6, IGNORE]);
        let rows = vec![vec![1, 2, 3, 4], vec![5, 6]];
        let pos = vec![vec![0, 1, 2, 0], vec![0, 1]];
        assert_eq!(Batch::from_packed_rows(&rows, &pos), b);
    }
}
