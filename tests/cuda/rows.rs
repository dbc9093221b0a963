//! kernels/rows.cu: copy_rows against the CPU's (bit for bit) and the bias
//! gradient against the CPU's column sums.

use super::util::{down, gpu, random_bf16, rel_err, up, BF16_TOL};
use engine::backend::cpu::elementwise::copy_rows;
use engine::backend::cpu::reduce::add_column_sums;
use engine::backend::cuda::params::{ENGINE_COLSUM_CHUNK, ENGINE_COLSUM_CHUNKS, ENGINE_COLSUM_RUN};
use engine::backend::cuda::Bf16;

/// `db[j] += Σ_r dy[r, j]` in the ENGINE_COLSUM order (kernels/include/rows.h),
/// in f32 on the host: what bias_grad must give bit for bit.
fn colsum_order(dy: &[f32], db: &mut [f32]) {
    let cols = db.len();
    let rows = dy.len() / cols;
    let (chunk, chunks, run) =
        (ENGINE_COLSUM_CHUNK as usize, ENGINE_COLSUM_CHUNKS as usize, ENGINE_COLSUM_RUN as usize);
    let span = chunk * chunks;
    for (j, acc) in db.iter_mut().enumerate() {
        for s in 0..rows.div_ceil(span) {
            let mut total = 0.0f32;
            for q in 0..chunks / run {
                let mut r = 0.0f32;
                for i in 0..run {
                    let k = s * chunks + q * run + i;
                    let mut c = 0.0f32;
                    for row in (k * chunk).min(rows)..(k * chunk + chunk).min(rows) {
                        c += dy[row * cols + j];
                    }
                    r += c;
                }
                total += r;
            }
            *acc += total;
        }
    }
}

#[test]
fn copy_rows_moves_the_bits_the_cpu_moves() {
    let Some(g) = gpu("copy_rows_moves_the_bits_the_cpu_moves") else { return };
    // 37 source rows into a 50-row buffer (a KV cache of 2 slots × 25), in a
    // scattered order, with repeated sources and repeated destinations (the
    // last copy into a row wins).
    for width in [1usize, 5 * 64, 200 + 3, 3 * 96, 128] {
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

/// Buffers in views at element offsets: the same phase mod 16 bytes (a
/// scalar head, then 16-byte vectors) and different phases (all scalar).
#[test]
fn copy_rows_on_views_at_offsets() {
    let Some(g) = gpu("copy_rows_on_views_at_offsets") else { return };
    let (width, src_n, dst_n) = (128usize, 9usize, 12usize);
    let src_rows: Vec<u32> = vec![0, 8, 3, 3, 5];
    let dst_rows: Vec<u32> = vec![11, 0, 4, 7, 4];
    let (srd, drd) = (g.stream.clone_htod(&src_rows).unwrap(), g.stream.clone_htod(&dst_rows).unwrap());
    let mut bad = g.stream.alloc_zeros::<u32>(1).unwrap();
    for (os, od) in [(1usize, 1usize), (8, 0), (1, 0), (0, 3)] {
        let src = random_bf16(src_n * width + os, 5);
        let dst0 = random_bf16(dst_n * width + od, 6);
        let mut want = dst0[od..].to_vec();
        copy_rows(&src[os..], &mut want, width, &src_rows, &dst_rows);
        let sd = up(&g, &src);
        let mut dd = up(&g, &dst0);
        g.copy_rows(
            &sd.slice(os..os + src_n * width),
            &mut dd.slice_mut(od..od + dst_n * width),
            width,
            &srd,
            &drd,
            &mut bad,
        )
        .unwrap();
        let got = down(&g, &dd);
        assert_eq!(got[..od], dst0[..od], "nothing before the view");
        assert_eq!(got[od..], want[..], "copy_rows at offsets {os}, {od}");
    }
    assert_eq!(g.take_bad_index(&mut bad).unwrap(), None);
}

/// Two pairs of buffers by one launch (`copy_rows2`, a KV cache's keys and
/// values): each pair gets the CPU's rows, with repeated destinations (the
/// last copy wins), one pair at other phases than the other, and a row
/// outside the buffers flagged once and skipped in both.
#[test]
fn copy_rows2_moves_both_pairs_as_two_launches() {
    let Some(g) = gpu("copy_rows2_moves_both_pairs_as_two_launches") else { return };
    let (width, src_n, dst_n) = (128usize, 9usize, 12usize);
    let src_rows: Vec<u32> = vec![0, 8, 3, 3, 5, 2];
    let dst_rows: Vec<u32> = vec![11, 0, 4, 7, 4, 12]; // 4 twice (the last wins); 12 is outside
    let valid = 5;
    let (srd, drd) = (g.stream.clone_htod(&src_rows).unwrap(), g.stream.clone_htod(&dst_rows).unwrap());
    let mut bad = g.stream.alloc_zeros::<u32>(1).unwrap();
    for (o1, o2) in [(0usize, 0usize), (0, 1), (3, 8)] {
        let (k, v) = (random_bf16(src_n * width + o1, 7), random_bf16(src_n * width + o2, 8));
        let (kc0, vc0) = (random_bf16(dst_n * width + o1, 9), random_bf16(dst_n * width + o2, 10));
        let (mut wk, mut wv) = (kc0[o1..].to_vec(), vc0[o2..].to_vec());
        copy_rows(&k[o1..], &mut wk, width, &src_rows[..valid], &dst_rows[..valid]);
        copy_rows(&v[o2..], &mut wv, width, &src_rows[..valid], &dst_rows[..valid]);
        let (kd, vd) = (up(&g, &k), up(&g, &v));
        let (mut kcd, mut vcd) = (up(&g, &kc0), up(&g, &vc0));
        g.copy_rows2(
            &kd.slice(o1..o1 + src_n * width),
            &mut kcd.slice_mut(o1..o1 + dst_n * width),
            &vd.slice(o2..o2 + src_n * width),
            &mut vcd.slice_mut(o2..o2 + dst_n * width),
            width,
            &srd,
            &drd,
            &mut bad,
        )
        .unwrap();
        let (gk, gv) = (down(&g, &kcd), down(&g, &vcd));
        assert_eq!(gk[..o1], kc0[..o1], "nothing before k's view");
        assert_eq!(gv[..o2], vc0[..o2], "nothing before v's view");
        assert_eq!(gk[o1..], wk[..], "k at offset {o1}");
        assert_eq!(gv[o2..], wv[..], "v at offset {o2}");
        assert_eq!(g.take_bad_index(&mut bad).unwrap(), Some(12), "the row outside the buffers");
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
    // Whole 16-byte rows (cols % 8 = 0) and not; one span of rows and
    // several (4096 rows a span); a view at an odd offset (scalar loads).
    for (rows, cols, off) in [
        (37usize, 200 + 3, 0usize),
        (1, 96, 0),
        (1000 + 7, 3 * 128 + 2 * 64, 0),
        (4096 + 5, 37, 0),
        (2 * 4096 + 17, 16, 0),
        (300, 896, 1),
        (4096 + 9, 128, 3),
    ] {
        let dy = random_bf16(rows * cols + off, 1);
        let db0 = random_bf16(cols + off, 2);
        let (dyh, dbh) = (&dy[off..], &db0[off..]);
        let mut want = dbh.to_vec();
        add_column_sums(dyh, &mut want);
        let mut ordered = dbh.to_vec();
        colsum_order(dyh, &mut ordered);
        let bf = |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| Bf16::from_f32(x).to_f32()).collect() };
        let dyd = up(&g, &dy);
        let dyv = dyd.slice(off..off + rows * cols);
        let mut dbd = up(&g, &db0);
        g.bias_grad(&dyv, &mut dbd.slice_mut(off..off + cols)).unwrap();
        let got = down(&g, &dbd);
        assert_eq!(got[..off], db0[..off], "bias_grad: nothing before the view");
        let got = got[off..].to_vec();
        let e = rel_err(&got, &want);
        println!("bias_grad {rows}×{cols} at {off}: {e:.2e}");
        assert!(e < BF16_TOL, "bias_grad {rows}×{cols}: {e:.2e}");
        // The fixed-order sum, rounded once, bit for bit.
        assert_eq!(got, bf(&ordered), "bias_grad {rows}×{cols}: the ENGINE_COLSUM order, rounded to bf16");
        // Determinism: again from the same start, the same bits.
        let mut dbd2 = up(&g, &db0);
        g.bias_grad(&dyv, &mut dbd2.slice_mut(off..off + cols)).unwrap();
        assert_eq!(down(&g, &dbd2)[off..], got[..]);
        // The simple kernel: the CPU's order, rounded once.
        let mut dbd3 = up(&g, &db0);
        g.bias_grad_reference(&dyv, &mut dbd3.slice_mut(off..off + cols)).unwrap();
        assert_eq!(down(&g, &dbd3)[off..], bf(&want)[..], "bias_grad_reference {rows}×{cols}: the CPU's order");
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
