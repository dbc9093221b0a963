//! Column reductions (`acc[j] += Σ_rows …`) without scratch memory and in a
//! fixed order: the columns are split into blocks, one task per block, and
//! each task walks the rows in order. Every output element is therefore a
//! plain sequential sum over rows, whatever the thread count.

use rayon::prelude::*;

const COLS_PER_TASK: usize = 64;

/// Calls `f(j0, block)` for disjoint blocks `acc[j0 .. j0 + block.len()]`, in parallel.
pub fn par_column_blocks<F>(acc: &mut [f32], f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    acc.par_chunks_mut(COLS_PER_TASK).enumerate().for_each(|(b, block)| f(b * COLS_PER_TASK, block));
}

/// `acc[j] += Σ_r x[r, j]` for `x` made of rows `acc.len()` wide.
pub fn add_column_sums(x: &[f32], acc: &mut [f32]) {
    let width = acc.len();
    assert_eq!(x.len() % width, 0, "column sums: ragged input");
    par_column_blocks(acc, |j0, block| {
        for row in x.chunks_exact(width) {
            for (a, v) in block.iter_mut().zip(&row[j0..]) {
                *a += v;
            }
        }
    });
}
