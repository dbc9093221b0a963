//! kernels/rows.cu: copy_rows against the CPU's (bit for bit) and the bias
//! gradient against the CPU's column sums.

use super::util::{down, gpu, random_bf16, rel_err, up, BF16_TOL};
use engine::backend::cpu::elementwise::copy_rows;
use engine::backend::cpu::reduce::add_column_sums;

#[test]
fn copy_rows_moves_the_bits_the_cpu_moves() {
    let Some(g) = gpu("copy_rows_moves_the_bits_the_cpu_moves") else { return };
    // 37 source rows into a 50-row buffer (a KV cache of 2 slots × 25), in a
    // scattered order, with repeated sources and repeated destinations (the
    // last copy into a row wins).
    for width in [1usize, 5 * 64, 200 + 3, 3 * 96] {
        let (src_n, dst_n) = (37usize, 50usize);
        let src = random_bf16(src_n * width, 1);
        let dst0 = random_bf16(dst_n * width, 2);
        let mut src_rows: Vec<u32> = (0..37).map(|i| (i * 17 % 37) as u32).collect();
        let mut dst_rows: Vec<u32> = (0..37).map(|i| (25 + i * 7 % 25) as u32).collect();
        src_rows.extend([0, 36, 5, 5]);
        dst_rows.extend([49, 0, 25, 26]); // 25 and 26 were written above: these win
        let mut want = dst0.clone();
        copy_rows(&src, &mut want, width, &src_rows, &dst_rows);

        let sd = up(&g, &src);
        let (srd, drd) = (g.stream.clone_htod(&src_rows).unwrap(), g.stream.clone_htod(&dst_rows).unwrap());
        let mut bad = g.stream.alloc_zeros::<u32>(1).unwrap();
        let mut dd = up(&g, &dst0);
        g.copy_rows(&sd, &mut dd, width, &srd, &drd, &mut bad).unwrap();
        assert_eq!(g.take_bad_index(&mut bad).unwrap(), None, "width {width}: every row is inside its buffer");
        let got = down(&g, &dd);
        assert_eq!(got, want, "copy_rows width {width}");
        // Determinism: again from the same start, the same bits.
        let mut dd2 = up(&g, &dst0);
        g.copy_rows(&sd, &mut dd2, width, &srd, &drd, &mut bad).unwrap();
        assert_eq!(down(&g, &dd2), got);

        // fp32 rows move the same way.
        let src32: Vec<f32> = src.iter().map(|v| v * 1.2345).collect();
        let dst32: Vec<f32> = dst0.iter().map(|v| v * 0.987).collect();
        let mut want32 = dst32.clone();
        copy_rows(&src32, &mut want32, width, &src_rows, &dst_rows);
        let s32 = g.stream.clone_htod(&src32).unwrap();
        let mut d32 = g.stream.clone_htod(&dst32).unwrap();
        g.copy_rows_f32(&s32, &mut d32, width, &srd, &drd, &mut bad).unwrap();
        assert_eq!(g.stream.clone_dtoh(&d32).unwrap(), want32, "copy_rows_f32 width {width}");
        assert_eq!(g.take_bad_index(&mut bad).unwrap(), None);
    }
}

#[test]
fn copy_rows_flags_rows_outside_the_buffers() {
    let Some(g) = gpu("copy_rows_flags_rows_outside_the_buffers") else { return };
    let (width, src_n, dst_n) = (77usize, 37usize, 40usize);
    let src = random_bf16(src_n * width, 3);
    let dst0 = random_bf16(dst_n * width, 4);
    // Copy 2 reads row 37 (one past the source), copy 4 writes row 1000: both
    // are skipped; the others happen.
    let src_rows: Vec<u32> = vec![0, 1, 37, 3, 4, 36];
    let dst_rows: Vec<u32> = vec![10, 11, 12, 13, 1000, 39];
    let ok: Vec<usize> = vec![0, 1, 3, 5];
    let mut want = dst0.clone();
    let pick = |v: &[u32]| ok.iter().map(|&i| v[i]).collect::<Vec<u32>>();
    copy_rows(&src, &mut want, width, &pick(&src_rows), &pick(&dst_rows));
    let mut bad = g.stream.alloc_zeros::<u32>(1).unwrap();
    let mut dd = up(&g, &dst0);
    let (srd, drd) = (g.stream.clone_htod(&src_rows).unwrap(), g.stream.clone_htod(&dst_rows).unwrap());
    g.copy_rows(&up(&g, &src), &mut dd, width, &srd, &drd, &mut bad).unwrap();
    assert_eq!(down(&g, &dd), want, "the copies inside the buffers happen, the others not");
    assert_eq!(g.take_bad_index(&mut bad).unwrap(), Some(1000), "the largest index outside its buffer");
    assert_eq!(g.take_bad_index(&mut bad).unwrap(), None, "taking the flag clears it");
}

#[test]
fn copy_rows_rejects_bad_shapes() {
    let Some(g) = gpu("copy_rows_rejects_bad_shapes") else { return };
    let sd = up(&g, &random_bf16(10 * 8, 1));
    let mut dd = up(&g, &random_bf16(6 * 8, 2));
    let rows = g.stream.clone_htod(&[0u32, 1]).unwrap();
    let one = g.stream.clone_htod(&[0u32]).unwrap();
    let mut bad = g.stream.alloc_zeros::<u32>(1).unwrap();
    assert!(g.copy_rows(&sd, &mut dd, 0, &rows, &rows, &mut bad).is_err(), "width 0");
    assert!(g.copy_rows(&sd, &mut dd, 7, &rows, &rows, &mut bad).is_err(), "80 is not rows of 7");
    assert!(g.copy_rows(&sd, &mut dd, 8, &rows, &one, &mut bad).is_err(), "2 sources, 1 destination");
    // Nothing to copy (an empty view: the driver allocates no 0-byte buffers).
    let empty = rows.slice(0..0);
    g.copy_rows(&sd, &mut dd, 8, &empty, &empty, &mut bad).unwrap();
    assert_eq!(g.take_bad_index(&mut bad).unwrap(), None);
}

#[test]
fn bias_grad_matches_the_cpu() {
    let Some(g) = gpu("bias_grad_matches_the_cpu") else { return };
    for (rows, cols) in [(37usize, 200 + 3), (1, 96), (1000 + 7, 3 * 128 + 2 * 64), (4096 + 5, 37)] {
        let dy = random_bf16(rows * cols, 1);
        let db0 = random_bf16(cols, 2);
        let mut want = db0.clone();
        add_column_sums(&dy, &mut want);
        let dyd = up(&g, &dy);
        let mut dbd = up(&g, &db0);
        g.bias_grad(&dyd, &mut dbd).unwrap();
        let got = down(&g, &dbd);
        let e = rel_err(&got, &want);
        println!("bias_grad {rows}×{cols}: {e:.2e}");
        assert!(e < BF16_TOL, "bias_grad {rows}×{cols}: {e:.2e}");
        // The same fp32 sum in the same order as the CPU's, rounded once.
        let want_bf: Vec<f32> = want.iter().map(|&v| engine::backend::cuda::Bf16::from_f32(v).to_f32()).collect();
        assert_eq!(got, want_bf, "bias_grad {rows}×{cols}: the CPU's order, rounded to bf16");
        // Determinism: again from the same start, the same bits.
        let mut dbd2 = up(&g, &db0);
        g.bias_grad(&dyd, &mut dbd2).unwrap();
        assert_eq!(down(&g, &dbd2), got);
    }
}

#[test]
fn bias_grad_rejects_bad_shapes() {
    let Some(g) = gpu("bias_grad_rejects_bad_shapes") else { return };
    let dyd = up(&g, &random_bf16(10 * 7, 1));
    let mut db = up(&g, &random_bf16(8, 2));
    assert!(g.bias_grad(&dyd, &mut db).is_err(), "70 is not rows of 8");
    assert!(g.bias_grad(&dyd, &mut db.slice_mut(0..0)).is_err(), "empty db");
    g.sync().unwrap();
}
