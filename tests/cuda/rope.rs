//! kernels/rope.cu against the CPU's rotation.

use super::util::{down, gpu, random_bf16, rel_err, up, BF16_TOL};
use cudarc::driver::CudaSlice;
use engine::backend::cpu::rope::rope;
use engine::backend::cuda::Bf16;

/// Tables as transformers computes them: `inv_freq = θ^(−2i/d)`, the angle
/// `p · inv_freq` in f32; `[max_pos, head_dim/2]` each.
fn tables(max_pos: usize, head_dim: usize) -> (Vec<f32>, Vec<f32>) {
    let inv: Vec<f32> =
        (0..head_dim / 2).map(|i| 1.0 / 10000f64.powf(2.0 * i as f64 / head_dim as f64) as f32).collect();
    engine::model::rope::tables_from(&inv, max_pos)
}

const MAX_POS: usize = 4099;

/// 37 tokens: packed sequences of 13, 1 and 16 tokens from position 0,
/// then 7 scattered, non-monotonic positions up to the table's last row.
fn positions() -> Vec<u32> {
    let mut pos: Vec<u32> = (0..13).chain(0..1).chain(0..16).collect();
    pos.extend([4098, 17, 3000, 5, 2047, 2046, 999]);
    assert_eq!(pos.len(), 37);
    pos
}

const SHAPES: [(usize, usize); 5] = [(3, 64), (5, 128), (3, 96), (5, 96), (1, 6)];

#[test]
fn rope_matches_the_cpu() {
    let Some(g) = gpu("rope_matches_the_cpu") else { return };
    let pos = positions();
    let tokens = pos.len();
    let posd = g.stream.clone_htod(&pos).unwrap();
    let mut bad = g.stream.alloc_zeros::<u32>(1).unwrap();
    for (heads, head_dim) in SHAPES {
        let (cos, sin) = tables(MAX_POS, head_dim);
        let (cd, sd) = (g.stream.clone_htod(&cos).unwrap(), g.stream.clone_htod(&sin).unwrap());
        let x = random_bf16(tokens * heads * head_dim, 7 + head_dim as u64);
        for inverse in [false, true] {
            let mut want = x.clone();
            rope(&mut want, &pos, heads, head_dim, &cos, &sin, inverse);
            let mut xd = up(&g, &x);
            g.rope(&mut xd, &posd, heads, head_dim, &cd, &sd, inverse, &mut bad).unwrap();
            let got = down(&g, &xd);
            let e = rel_err(&got, &want);
            println!("rope {tokens}×{heads}×{head_dim} inverse={inverse}: {e:.2e}");
            assert!(e < BF16_TOL, "rope {heads}×{head_dim} inverse={inverse}: {e:.2e}");
            // Determinism: the same input gives the same bits.
            let mut xd2 = up(&g, &x);
            g.rope(&mut xd2, &posd, heads, head_dim, &cd, &sd, inverse, &mut bad).unwrap();
            assert_eq!(down(&g, &xd2), got, "rope is deterministic");
        }
        assert_eq!(g.take_bad_index(&mut bad).unwrap(), None, "every position is inside the table");
    }
}

/// The fast kernel against the simple one, and on a view at an odd element
/// offset (scalar accesses in the fast kernel).
#[test]
fn rope_fast_matches_the_reference_and_views() {
    let Some(g) = gpu("rope_fast_matches_the_reference_and_views") else { return };
    let pos = positions();
    let tokens = pos.len();
    let posd = g.stream.clone_htod(&pos).unwrap();
    let mut bad = g.stream.alloc_zeros::<u32>(1).unwrap();
    for (heads, head_dim) in SHAPES {
        let (cos, sin) = tables(MAX_POS, head_dim);
        let (cd, sd) = (g.stream.clone_htod(&cos).unwrap(), g.stream.clone_htod(&sin).unwrap());
        let n = tokens * heads * head_dim;
        let x = random_bf16(n + 1, 3 + head_dim as u64);
        for inverse in [false, true] {
            let mut fast = up(&g, &x[1..]);
            g.rope(&mut fast, &posd, heads, head_dim, &cd, &sd, inverse, &mut bad).unwrap();
            let mut reference = up(&g, &x[1..]);
            g.rope_reference(&mut reference, &posd, heads, head_dim, &cd, &sd, inverse, &mut bad).unwrap();
            let (f, r) = (down(&g, &fast), down(&g, &reference));
            assert!(rel_err(&f, &r) < BF16_TOL, "rope fast vs reference {heads}×{head_dim}");
            let mut want = x[1..].to_vec();
            rope(&mut want, &pos, heads, head_dim, &cos, &sin, inverse);
            let mut xd = up(&g, &x);
            g.rope(&mut xd.slice_mut(1..n + 1), &posd, heads, head_dim, &cd, &sd, inverse, &mut bad).unwrap();
            let got = down(&g, &xd);
            assert_eq!(got[0], x[0], "the element before the view is untouched");
            let e = rel_err(&got[1..], &want);
            println!("rope {tokens}×{heads}×{head_dim} inverse={inverse} at offset 1: {e:.2e}");
            assert!(e < BF16_TOL, "rope at offset 1 {heads}×{head_dim}: {e:.2e}");
        }
        assert_eq!(g.take_bad_index(&mut bad).unwrap(), None);
    }
}

/// q and k rotated by one launch (`rope_qk`) give the bits of two `rope`
/// calls, also with k at an odd element offset (scalar accesses for both).
#[test]
fn rope_qk_matches_two_launches() {
    let Some(g) = gpu("rope_qk_matches_two_launches") else { return };
    let pos = positions();
    let tokens = pos.len();
    let posd = g.stream.clone_htod(&pos).unwrap();
    let mut bad = g.stream.alloc_zeros::<u32>(1).unwrap();
    for (q_heads, k_heads, head_dim) in [(14, 2, 64), (5, 1, 128), (3, 3, 96), (1, 2, 6)] {
        let (cos, sin) = tables(MAX_POS, head_dim);
        let (cd, sd) = (g.stream.clone_htod(&cos).unwrap(), g.stream.clone_htod(&sin).unwrap());
        let (nq, nk) = (tokens * q_heads * head_dim, tokens * k_heads * head_dim);
        let q = random_bf16(nq, 11 + head_dim as u64);
        let k = random_bf16(nk + 1, 13 + head_dim as u64);
        for (offset, inverse) in [(0, false), (0, true), (1, false)] {
            let k_view = &k[offset..offset + nk];
            let (mut q1, mut k1) = (up(&g, &q), up(&g, k_view));
            g.rope(&mut q1, &posd, q_heads, head_dim, &cd, &sd, inverse, &mut bad).unwrap();
            g.rope(&mut k1, &posd, k_heads, head_dim, &cd, &sd, inverse, &mut bad).unwrap();
            let (mut q2, mut k2) = (up(&g, &q), up(&g, &k));
            let mut k2v = k2.slice_mut(offset..offset + nk);
            g.rope_qk(&mut q2, q_heads, &mut k2v, k_heads, &posd, head_dim, &cd, &sd, inverse, &mut bad).unwrap();
            let k2 = down(&g, &k2);
            assert_eq!(down(&g, &q2), down(&g, &q1), "q, {q_heads}/{k_heads}×{head_dim} inverse={inverse}");
            assert_eq!(
                &k2[offset..offset + nk],
                &down(&g, &k1)[..],
                "k at offset {offset}, {q_heads}/{k_heads}×{head_dim}"
            );
            if offset == 1 {
                assert_eq!(k2[0], k[0], "the element before k's view is untouched");
            }
        }
        assert_eq!(g.take_bad_index(&mut bad).unwrap(), None);
    }
}

#[test]
fn rope_inverse_undoes_the_forward() {
    let Some(g) = gpu("rope_inverse_undoes_the_forward") else { return };
    let pos = positions();
    let tokens = pos.len();
    let posd = g.stream.clone_htod(&pos).unwrap();
    let mut bad = g.stream.alloc_zeros::<u32>(1).unwrap();
    for (heads, head_dim) in SHAPES {
        let (cos, sin) = tables(MAX_POS, head_dim);
        let (cd, sd) = (g.stream.clone_htod(&cos).unwrap(), g.stream.clone_htod(&sin).unwrap());
        let x = random_bf16(tokens * heads * head_dim, 11 + head_dim as u64);
        let mut xd = up(&g, &x);
        g.rope(&mut xd, &posd, heads, head_dim, &cd, &sd, false, &mut bad).unwrap();
        g.rope(&mut xd, &posd, heads, head_dim, &cd, &sd, true, &mut bad).unwrap();
        // Two bf16 roundings (after each rotation) are all that separates them.
        let e = rel_err(&down(&g, &xd), &x);
        println!("rope {tokens}×{heads}×{head_dim}: forward then inverse {e:.2e}");
        assert!(e < BF16_TOL, "rope round trip {heads}×{head_dim}: {e:.2e}");
        assert_eq!(g.take_bad_index(&mut bad).unwrap(), None);
    }
}

#[test]
fn rope_flags_positions_outside_the_table() {
    let Some(g) = gpu("rope_flags_positions_outside_the_table") else { return };
    let (heads, head_dim, max_pos) = (3usize, 64usize, 100usize);
    let (cos, sin) = tables(max_pos, head_dim);
    let (cd, sd) = (g.stream.clone_htod(&cos).unwrap(), g.stream.clone_htod(&sin).unwrap());
    let mut pos: Vec<u32> = (0..37).map(|t| (t * 13 % max_pos) as u32).collect();
    pos[3] = max_pos as u32; // the first row past the table
    pos[20] = 1_000_000;
    let x = random_bf16(pos.len() * heads * head_dim, 5);
    let mut bad = g.stream.alloc_zeros::<u32>(1).unwrap();
    let mut xd = up(&g, &x);
    g.rope(&mut xd, &g.stream.clone_htod(&pos).unwrap(), heads, head_dim, &cd, &sd, false, &mut bad).unwrap();
    let got = down(&g, &xd);
    assert_eq!(g.take_bad_index(&mut bad).unwrap(), Some(1_000_000), "the largest position outside the table");
    assert_eq!(g.take_bad_index(&mut bad).unwrap(), None, "taking the flag clears it");
    // The two bad tokens are left as they were; the others are rotated.
    let row = heads * head_dim;
    let mut want = x.clone();
    let mut ok_pos = pos.clone();
    (ok_pos[3], ok_pos[20]) = (0, 0);
    rope(&mut want, &ok_pos, heads, head_dim, &cos, &sin, false);
    for t in [3, 20] {
        want[t * row..(t + 1) * row].copy_from_slice(&x[t * row..(t + 1) * row]);
        assert_eq!(got[t * row..(t + 1) * row], x[t * row..(t + 1) * row], "token {t} is untouched");
    }
    let e = rel_err(&got, &want);
    assert!(e < BF16_TOL, "rope with bad positions: {e:.2e}");
}

#[test]
fn rope_rejects_bad_shapes() {
    let Some(g) = gpu("rope_rejects_bad_shapes") else { return };
    let (cos, sin) = tables(8, 64);
    let (cd, sd) = (g.stream.clone_htod(&cos).unwrap(), g.stream.clone_htod(&sin).unwrap());
    let posd = g.stream.clone_htod(&[0u32, 1, 2]).unwrap();
    let mut bad = g.stream.alloc_zeros::<u32>(1).unwrap();
    let mut xd = up(&g, &random_bf16(3 * 2 * 64, 1));
    assert!(g.rope(&mut xd, &posd, 3, 64, &cd, &sd, false, &mut bad).is_err(), "x is 2 heads, not 3");
    assert!(g.rope(&mut xd, &posd, 6, 63, &cd, &sd, false, &mut bad).is_err(), "odd head_dim");
    let sd_short = g.stream.clone_htod(&sin[..sin.len() - 1]).unwrap();
    assert!(g.rope(&mut xd, &posd, 2, 64, &cd, &sd_short, false, &mut bad).is_err(), "sin shorter than cos");
    let (c100, s100) = (g.stream.clone_htod(&cos[..100]).unwrap(), g.stream.clone_htod(&sin[..100]).unwrap());
    assert!(g.rope(&mut xd, &posd, 2, 64, &c100, &s100, false, &mut bad).is_err(), "tables not rows of 32");
    g.rope(&mut xd, &posd, 2, 64, &cd, &sd, false, &mut bad).unwrap();
    assert_eq!(g.take_bad_index(&mut bad).unwrap(), None);
}

/// The fused q/k/v product's rows split into q, k, v and joined back (both
/// kernels, rotated and not, the rows at an odd element offset too: scalar
/// accesses) against the CPU's `qkv_split` / `qkv_join`; v and unrotated
/// heads move bit for bit.
#[test]
fn qkv_split_and_join_match_the_cpu() {
    use engine::backend::cpu::rope::{qkv_join, qkv_split, Split};
    use engine::backend::cuda::{QkNormOn, RopeTables, SplitOn};
    use engine::backend::QkvShape;
    let Some(g) = gpu("qkv_split_and_join_match_the_cpu") else { return };
    let pos = positions();
    let tokens = pos.len();
    let posd = g.stream.clone_htod(&pos).unwrap();
    let mut bad = g.stream.alloc_zeros::<u32>(1).unwrap();
    for (q_heads, kv_heads, head_dim) in [(14, 2, 64), (5, 1, 128), (3, 3, 96), (1, 2, 6)] {
        let s = QkvShape { q: q_heads, kv: kv_heads, head_dim };
        let (nq, nk, nf) = (tokens * q_heads * head_dim, tokens * kv_heads * head_dim, tokens * s.row());
        let (cos, sin) = tables(MAX_POS, head_dim);
        let (cd, sd) = (g.stream.clone_htod(&cos).unwrap(), g.stream.clone_htod(&sin).unwrap());
        let (pv, cv, sv) = (posd.as_view(), cd.as_view(), sd.as_view());
        let fused = random_bf16(nf + 1, 21 + head_dim as u64);
        let parts = [random_bf16(nq, 22), random_bf16(nk, 23), random_bf16(nk, 24)];
        // Qwen3's norm weights, around 1, and eps.
        let (qn, kn) = (random_bf16(head_dim, 25), random_bf16(head_dim, 26));
        let around1 = |w: &[f32]| w.iter().map(|x| half::bf16::from_f32(1.0 + x / 2.0).to_f32()).collect::<Vec<_>>();
        let (qn, kn) = (around1(&qn), around1(&kn));
        let (qnd, knd) = (up(&g, &qn), up(&g, &kn));
        let (qnv, knv) = (qnd.as_view(), knd.as_view());
        let eps = 1e-6;
        let cases = [(0, true, false, true), (0, true, false, false), (1, true, false, true), (0, false, false, true)];
        let normed = [(0, true, true, true), (0, true, true, false), (1, true, true, true)];
        for (offset, rotate, norm, fast) in cases.into_iter().chain(normed) {
            let what =
                format!("{q_heads}/{kv_heads}×{head_dim} offset {offset} rotate={rotate} norm={norm} fast={fast}");
            let rope = rotate.then_some(RopeTables { pos: &pv, cos: &cv, sin: &sv });
            let host = rotate.then_some((&pos[..], &cos[..], &sin[..]));
            let on = SplitOn { rope, kv_rows: None, norm: norm.then_some(QkNormOn { q_w: &qnv, k_w: &knv, eps }) };
            let how = Split { rope: host, kv_rows: None, norm: norm.then_some((&qn[..], &kn[..], eps)) };
            // Split.
            let rows = &fused[offset..offset + nf];
            let mut want = (vec![0.0; nq], vec![0.0; nk], vec![0.0; nk]);
            qkv_split(rows, s, &mut want.0, &mut want.1, &mut want.2, how);
            let fd = up(&g, &fused);
            // NaN where the kernel must write: a missed element shows.
            let nan = |n: usize| up(&g, &vec![f32::NAN; n]);
            let (mut qd, mut kd, mut vd) = (nan(nq), nan(nk), nan(nk));
            let fv = fd.slice(offset..offset + nf);
            g.qkv_split(fast, &fv, s, &mut qd, &mut kd, &mut vd, on, &mut bad).unwrap();
            let (gq, gk, gv) = (down(&g, &qd), down(&g, &kd), down(&g, &vd));
            assert_eq!(gv, want.2, "split v moves unchanged, {what}");
            if rotate || norm {
                let (eq, ek) = (rel_err(&gq, &want.0), rel_err(&gk, &want.1));
                println!("qkv_split {what}: q {eq:.2e}, k {ek:.2e}");
                assert!(eq < BF16_TOL && ek < BF16_TOL, "qkv_split {what}: q {eq:.2e}, k {ek:.2e}");
            } else {
                assert_eq!((gq, gk), (want.0, want.1), "unrotated split, {what}");
            }
            if rotate {
                // k and v into tables of rows, as a decode step writes its KV
                // cache: token t to row R − 1 − t of R = tokens + 3. The
                // tables start as filler, so a missed row shows, and the rows
                // no token owns must keep it.
                let big = tokens + 3;
                let kv_rows: Vec<u32> = (0..tokens).map(|t| (big - 1 - t) as u32).collect();
                let table = big * kv_heads * head_dim;
                let filler = (random_bf16(table, 31), random_bf16(table, 32));
                let split_into = |kv_rows: &[u32], bad: &mut CudaSlice<u32>| {
                    let mut want = (vec![0.0; nq], filler.0.clone(), filler.1.clone());
                    qkv_split(rows, s, &mut want.0, &mut want.1, &mut want.2, Split { kv_rows: Some(kv_rows), ..how });
                    let rd = g.stream.clone_htod(kv_rows).unwrap();
                    let (mut qd, mut kt, mut vt) = (nan(nq), up(&g, &filler.0), up(&g, &filler.1));
                    let rv = rd.as_view();
                    let r =
                        g.qkv_split(fast, &fv, s, &mut qd, &mut kt, &mut vt, SplitOn { kv_rows: Some(&rv), ..on }, bad);
                    r.unwrap();
                    (want, (down(&g, &qd), down(&g, &kt), down(&g, &vt)))
                };
                let (want, (gq, gk, gv)) = split_into(&kv_rows, &mut bad);
                assert_eq!(gv, want.2, "v in the tables' rows, {what}");
                let (eq, ek) = (rel_err(&gq, &want.0), rel_err(&gk, &want.1));
                println!("qkv_split into tables {what}: q {eq:.2e}, k {ek:.2e}");
                assert!(eq < BF16_TOL && ek < BF16_TOL, "qkv_split into tables {what}: q {eq:.2e}, k {ek:.2e}");
                assert_eq!(g.take_bad_index(&mut bad).unwrap(), None);
                // A row outside the tables: skipped and flagged; token 5's own
                // row keeps its filler.
                let mut outside = kv_rows.clone();
                outside[5] = big as u32;
                let (_, (_, gk, gv)) = split_into(&outside, &mut bad);
                assert_eq!(g.take_bad_index(&mut bad).unwrap(), Some(big as u32), "the row outside, {what}");
                let (kw, r5) = (kv_heads * head_dim, big - 1 - 5);
                let (mut want_k, mut want_v) = (want.1.clone(), want.2.clone());
                want_k[r5 * kw..(r5 + 1) * kw].copy_from_slice(&filler.0[r5 * kw..(r5 + 1) * kw]);
                want_v[r5 * kw..(r5 + 1) * kw].copy_from_slice(&filler.1[r5 * kw..(r5 + 1) * kw]);
                assert_eq!(gv, want_v, "v with one row outside, {what}");
                assert!(rel_err(&gk, &want_k) < BF16_TOL, "k with one row outside, {what}");
                assert_eq!(gk[r5 * kw..(r5 + 1) * kw], filler.0[r5 * kw..(r5 + 1) * kw], "k's skipped row, {what}");
            }
            // Join, into rows at the same offset; the element before stays.
            let mut want = vec![0.0; nf];
            qkv_join(&parts[0], &parts[1], &parts[2], s, &mut want, host);
            let (dq, dk, dv) = (up(&g, &parts[0]), up(&g, &parts[1]), up(&g, &parts[2]));
            let mut jd = up(&g, &fused);
            let mut view = jd.slice_mut(offset..offset + nf);
            g.qkv_join(fast, &dq, &dk, &dv, s, &mut view, rope, &mut bad).unwrap();
            let got = down(&g, &jd);
            if offset == 1 {
                assert_eq!(got[0], fused[0], "the element before the rows is untouched, {what}");
            }
            let e = rel_err(&got[offset..offset + nf], &want);
            println!("qkv_join {what}: {e:.2e}");
            assert!(if rotate { e < BF16_TOL } else { e == 0.0 }, "qkv_join {what}: {e:.2e}");
        }
        assert_eq!(g.take_bad_index(&mut bad).unwrap(), None);
        // Wrong lengths are errors, not launches.
        let (fd, mut qd, mut kd, mut vd) =
            (up(&g, &fused[..nf]), up(&g, &parts[0]), up(&g, &parts[1]), up(&g, &parts[1]));
        let short = up(&g, &parts[1][1..]);
        let mut short_mut = up(&g, &parts[1][1..]);
        assert!(
            g.qkv_split(true, &fd, s, &mut qd, &mut kd, &mut short_mut, SplitOn::default(), &mut bad).is_err(),
            "v too short"
        );
        assert!(
            g.qkv_split(true, &fd.slice(1..), s, &mut qd, &mut kd, &mut vd, SplitOn::default(), &mut bad).is_err(),
            "rows"
        );
        let mut jd = up(&g, &fused[..nf]);
        assert!(g.qkv_join(true, &qd, &short, &vd, s, &mut jd, None, &mut bad).is_err(), "dk too short");
        // Tables of rows: a row per token, whole rows, v as long as k.
        let kw = kv_heads * head_dim;
        let rows_ok = g.stream.clone_htod(&(0..tokens as u32).collect::<Vec<_>>()).unwrap();
        let rows_short = g.stream.clone_htod(&(1..tokens as u32).collect::<Vec<_>>()).unwrap();
        let (mut kt, mut vt) = (up(&g, &vec![0.0; (tokens + 1) * kw]), up(&g, &vec![0.0; (tokens + 1) * kw]));
        let (mut odd, mut long) = (up(&g, &vec![0.0; (tokens + 1) * kw - 1]), up(&g, &vec![0.0; (tokens + 2) * kw]));
        let mut split = |k: &mut CudaSlice<Bf16>, v: &mut CudaSlice<Bf16>, r: &CudaSlice<u32>| {
            let rv = r.as_view();
            g.qkv_split(true, &fd, s, &mut qd, k, v, SplitOn { kv_rows: Some(&rv), ..SplitOn::default() }, &mut bad)
        };
        split(&mut kt, &mut vt, &rows_ok).unwrap();
        assert!(split(&mut kt, &mut vt, &rows_short).is_err(), "a row for each token");
        assert!(split(&mut odd, &mut vt, &rows_ok).is_err(), "k not whole rows");
        assert!(split(&mut kt, &mut long, &rows_ok).is_err(), "v longer than k");
    }
}
