//! kernels/attention.cu (the simple causal attention) against the CPU's
//! attention: forward, backward, decode, determinism and input checks.

use super::common::decode_cases::{cache_for, grouped_plan, plan_in_slots};
use super::util::{down, gpu, random_bf16, rel_err, up, BF16_TOL};
use cudarc::driver::CudaSlice;
use engine::backend::cpu::attention::{attention_bwd, attention_decode, attention_fwd};
use engine::backend::cuda::DecodeKernel::{self, GroupedSplit};
use engine::backend::cuda::{Bf16, Gpu};
use engine::backend::{AttnShape, DecodeSeq};

/// One packed problem with random inputs already representable in bf16.
struct Case {
    s: AttnShape,
    cu: Vec<u32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    dout: Vec<f32>,
}

impl Case {
    fn new(lens: &[u32], n_heads: usize, n_kv_heads: usize, head_dim: usize, seed: u64) -> Case {
        let mut cu = vec![0u32];
        for &l in lens {
            cu.push(cu.last().unwrap() + l);
        }
        let n = *cu.last().unwrap() as usize;
        let s = AttnShape { n_heads, n_kv_heads, head_dim, scale: 1.0 / (head_dim as f32).sqrt() };
        let (q_len, kv_len) = (n * n_heads * head_dim, n * n_kv_heads * head_dim);
        // q doubled (exact in bf16) for a softmax sharper than uniform.
        let q = random_bf16(q_len, 10 * seed).iter().map(|x| 2.0 * x).collect();
        Case {
            s,
            cu,
            q,
            k: random_bf16(kv_len, 10 * seed + 1),
            v: random_bf16(kv_len, 10 * seed + 2),
            dout: random_bf16(q_len, 10 * seed + 3),
        }
    }

    fn tokens(&self) -> usize {
        *self.cu.last().unwrap() as usize
    }

    /// The CPU forward: (out, lse).
    fn cpu_fwd(&self) -> (Vec<f32>, Vec<f32>) {
        let mut out = vec![0.0; self.q.len()];
        let mut lse = vec![0.0; self.tokens() * self.s.n_heads];
        attention_fwd(&self.s, &self.cu, &self.q, &self.k, &self.v, &mut out, &mut lse);
        (out, lse)
    }
}

/// GQA 3:1 and 2:1, head_dim 64, 128, 256 and odd ones, odd sequence lengths,
/// an empty sequence, and sequences longer than a chunk of 128 keys.
fn cases() -> Vec<Case> {
    vec![
        Case::new(&[1, 17, 50], 6, 2, 64, 1),
        Case::new(&[1, 17, 50], 6, 3, 128, 2),
        Case::new(&[50, 0, 17, 1], 6, 2, 40, 3),
        Case::new(&[200, 3], 6, 3, 256, 4),
        Case::new(&[9, 30], 4, 4, 33, 5),
    ]
}

fn bf16_round(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| Bf16::from_f32(v).to_f32()).collect()
}

fn nan_bf16(g: &Gpu, n: usize) -> CudaSlice<Bf16> {
    up(g, &vec![f32::NAN; n])
}

/// The GPU forward: (out, lse) on the device.
fn gpu_fwd(g: &Gpu, c: &Case) -> (CudaSlice<Bf16>, CudaSlice<f32>) {
    let cu = g.stream.clone_htod(&c.cu).unwrap();
    let (q, k, v) = (up(g, &c.q), up(g, &c.k), up(g, &c.v));
    let mut out = nan_bf16(g, c.q.len());
    let mut lse = g.stream.clone_htod(&vec![f32::NAN; c.tokens() * c.s.n_heads]).unwrap();
    g.attention_fwd(&c.s, &cu, &q, &k, &v, &mut out, &mut lse).unwrap();
    (out, lse)
}

/// The GPU backward from the given out (bf16) and lse: (dq, dk, dv) on the host.
fn gpu_bwd(g: &Gpu, c: &Case, out: &[f32], lse: &[f32]) -> [Vec<f32>; 3] {
    let cu = g.stream.clone_htod(&c.cu).unwrap();
    let (q, k, v, o, dout) = (up(g, &c.q), up(g, &c.k), up(g, &c.v), up(g, out), up(g, &c.dout));
    let lse = g.stream.clone_htod(lse).unwrap();
    // NaN first: the backward must overwrite every element.
    let (mut dq, mut dk, mut dv) = (nan_bf16(g, c.q.len()), nan_bf16(g, c.k.len()), nan_bf16(g, c.v.len()));
    g.attention_bwd(&c.s, &cu, &q, &k, &v, &o, &lse, &dout, &mut dq, &mut dk, &mut dv).unwrap();
    g.sync().unwrap();
    [down(g, &dq), down(g, &dk), down(g, &dv)]
}

#[test]
fn attention_fwd_matches_the_cpu() {
    let Some(g) = gpu("attention_fwd_matches_the_cpu") else { return };
    for c in cases() {
        let (out, lse) = c.cpu_fwd();
        let (out_d, lse_d) = gpu_fwd(&g, &c);
        g.sync().unwrap();
        let e_out = rel_err(&down(&g, &out_d), &out);
        let e_lse = rel_err(&g.stream.clone_dtoh(&lse_d).unwrap(), &lse);
        println!("attention fwd {:?} cu_seqlens {:?}: out {e_out:.2e} lse {e_lse:.2e}", c.s, c.cu);
        assert!(e_out < BF16_TOL && e_lse < 1e-4, "out {e_out:e}, lse {e_lse:e}");
    }
}

#[test]
fn attention_bwd_matches_the_cpu() {
    let Some(g) = gpu("attention_bwd_matches_the_cpu") else { return };
    for c in cases() {
        // Both backwards get the same out (rounded to bf16, as the GPU stores it) and lse.
        let (out, lse) = c.cpu_fwd();
        let out = bf16_round(&out);
        let (mut dq, mut dk, mut dv) = (vec![0.0; c.q.len()], vec![0.0; c.k.len()], vec![0.0; c.v.len()]);
        attention_bwd(&c.s, &c.cu, &c.q, &c.k, &c.v, &out, &lse, &c.dout, &mut dq, &mut dk, &mut dv);
        let [dq_d, dk_d, dv_d] = gpu_bwd(&g, &c, &out, &lse);
        let (e_dq, e_dk, e_dv) = (rel_err(&dq_d, &dq), rel_err(&dk_d, &dk), rel_err(&dv_d, &dv));
        println!("attention bwd {:?} cu_seqlens {:?}: dq {e_dq:.2e} dk {e_dk:.2e} dv {e_dv:.2e}", c.s, c.cu);
        assert!(e_dq < BF16_TOL && e_dk < BF16_TOL && e_dv < BF16_TOL, "dq {e_dq:e}, dk {e_dk:e}, dv {e_dv:e}");
    }
}

/// The GPU backward after the GPU forward, against the CPU's chain.
#[test]
fn attention_fwd_then_bwd_matches_the_cpu() {
    let Some(g) = gpu("attention_fwd_then_bwd_matches_the_cpu") else { return };
    let c = Case::new(&[1, 17, 50], 6, 2, 64, 6);
    let (out, lse) = c.cpu_fwd();
    let (mut dq, mut dk, mut dv) = (vec![0.0; c.q.len()], vec![0.0; c.k.len()], vec![0.0; c.v.len()]);
    attention_bwd(&c.s, &c.cu, &c.q, &c.k, &c.v, &out, &lse, &c.dout, &mut dq, &mut dk, &mut dv);
    let (out_d, lse_d) = gpu_fwd(&g, &c);
    g.sync().unwrap();
    let [dq_d, dk_d, dv_d] = gpu_bwd(&g, &c, &down(&g, &out_d), &g.stream.clone_dtoh(&lse_d).unwrap());
    let (e_dq, e_dk, e_dv) = (rel_err(&dq_d, &dq), rel_err(&dk_d, &dk), rel_err(&dv_d, &dv));
    println!("attention fwd+bwd: dq {e_dq:.2e} dk {e_dk:.2e} dv {e_dv:.2e}");
    assert!(e_dq < BF16_TOL && e_dk < BF16_TOL && e_dv < BF16_TOL, "dq {e_dq:e}, dk {e_dk:e}, dv {e_dv:e}");
}

#[test]
fn attention_is_deterministic() {
    let Some(g) = gpu("attention_is_deterministic") else { return };
    let c = Case::new(&[200, 1, 37], 6, 2, 40, 7);
    let run = || {
        let (out_d, lse_d) = gpu_fwd(&g, &c);
        g.sync().unwrap();
        let (out, lse) = (down(&g, &out_d), g.stream.clone_dtoh(&lse_d).unwrap());
        let [dq, dk, dv] = gpu_bwd(&g, &c, &out, &lse);
        [out, lse, dq, dk, dv]
    };
    let (a, b) = (run(), run());
    for (name, (x, y)) in ["out", "lse", "dq", "dk", "dv"].iter().zip(a.iter().zip(&b)) {
        assert!(x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()), "{name} differs between two runs");
    }
}

#[test]
fn attention_decode_matches_the_cpu() {
    let Some(g) = gpu("attention_decode_matches_the_cpu") else { return };
    for (n_heads, n_kv_heads, head_dim) in [(6, 2, 64), (6, 3, 40)] {
        // Sequences in scattered slots of a larger cache; every position not
        // in use is NaN, so a read past len or of a wrong row shows.
        // Sequences 1 and 3 read their first 2 and 70 positions from slot 7
        // (a shared prompt's rows), the rest from their own slot.
        let lens = [1u32, 5, 17, 130, 23];
        let slots = [3u32, 0, 6, 1, 4];
        let prefix = [(0u32, 0u32), (0, 2), (0, 0), (2, 70), (0, 0)];
        let (capacity, n_slots) = (144usize, 8usize);
        let plan = plan_in_slots(&lens, &slots, &prefix, 7, capacity);
        let c = Case::new(&lens, n_heads, n_kv_heads, head_dim, 8);
        let (q_row, kv_row) = (n_heads * head_dim, n_kv_heads * head_dim);
        let mut k_cache = vec![f32::NAN; n_slots * capacity * kv_row];
        let mut v_cache = k_cache.clone();
        let mut q_last = vec![0.0; lens.len() * q_row];
        for (b, d) in plan.iter().enumerate() {
            let start = c.cu[b] as usize;
            for j in 0..d.len as usize {
                let (src, dst) = ((start + j) * kv_row, d.row(j as u32) as usize * kv_row);
                k_cache[dst..dst + kv_row].copy_from_slice(&c.k[src..src + kv_row]);
                v_cache[dst..dst + kv_row].copy_from_slice(&c.v[src..src + kv_row]);
            }
            let last = start + d.len as usize - 1;
            q_last[b * q_row..(b + 1) * q_row].copy_from_slice(&c.q[last * q_row..(last + 1) * q_row]);
        }
        let words = DecodeSeq::encode(&plan);
        let mut want = vec![0.0; q_last.len()];
        attention_decode(&c.s, &words, &q_last, &k_cache, &v_cache, &mut want);

        let plan_d = g.stream.clone_htod(&words).unwrap();
        let (q_d, k_d, v_d) = (up(&g, &q_last), up(&g, &k_cache), up(&g, &v_cache));
        let mut out_d = nan_bf16(&g, q_last.len());
        g.attention_decode(&c.s, &plan_d, &q_d, &k_d, &v_d, &mut out_d).unwrap();
        g.sync().unwrap();
        let got = down(&g, &out_d);
        let e = rel_err(&got, &want);

        // The GPU forward's output at each sequence's last token computes the same.
        let (fwd_d, _) = gpu_fwd(&g, &c);
        g.sync().unwrap();
        let fwd = down(&g, &fwd_d);
        let fwd_last: Vec<f32> = (0..lens.len())
            .flat_map(|b| {
                let last = c.cu[b + 1] as usize - 1;
                fwd[last * q_row..(last + 1) * q_row].to_vec()
            })
            .collect();
        let e_fwd = rel_err(&got, &fwd_last);
        println!("attention decode {:?}: vs cpu {e:.2e}, vs gpu forward {e_fwd:.2e}", c.s);
        assert!(e < BF16_TOL && e_fwd < BF16_TOL, "vs cpu {e:e}, vs forward {e_fwd:e}");
    }
}

/// `attention_decode` (the grouped kernel, kernels/decode_attention.cu, where
/// it takes the call) and the simple kernel (`DecodeKernel::Simple`)
/// against the CPU on the same inputs: 1, 2, 7 and 8 query heads per kv head
/// at head_dim 64 and 128; a group of 16 and caches one element off their
/// allocation (unaligned for the grouped kernel's loads), both of which fall
/// back to the simple kernel. The grouped kernel runs with its own key splits,
/// one run of keys, and runs of 32 (merged by its combine kernel).
/// Sequences of 1 to 257 keys in slots out of order
/// in a larger cache whose unused positions are NaN, three of them reading a
/// shared prefix from another slot. Two runs of `attention_decode` give the
/// same bits.
#[test]
fn attention_decode_grouped_matches_the_simple_kernel_and_the_cpu() {
    let Some(g) = gpu("attention_decode_grouped_matches_the_simple_kernel_and_the_cpu") else { return };
    let (plan, n_rows) = grouped_plan();
    let words = DecodeSeq::encode(&plan);
    // (n_heads, n_kv_heads, head_dim, elements before each cache on the device).
    let shapes = [
        (2, 2, 64, 0),
        (4, 2, 128, 0),
        (14, 2, 64, 0),
        (7, 1, 128, 0),
        (8, 1, 64, 0),
        (16, 2, 128, 0),
        (16, 1, 64, 0),
        (14, 2, 128, 1),
    ];
    for (i, &(n_heads, n_kv_heads, head_dim, pad)) in shapes.iter().enumerate() {
        let s = AttnShape { n_heads, n_kv_heads, head_dim, scale: 1.0 / (head_dim as f32).sqrt() };
        let (q_row, kv_row) = (n_heads * head_dim, n_kv_heads * head_dim);
        let seed = 20 + i as u64;
        // q doubled (exact in bf16) for a softmax sharper than uniform.
        let q: Vec<f32> = random_bf16(plan.len() * q_row, 10 * seed).iter().map(|x| 2.0 * x).collect();
        let cache_len = n_rows * kv_row;
        let k_cache = cache_for(&plan, n_rows, kv_row, &random_bf16(cache_len, 10 * seed + 1));
        let v_cache = cache_for(&plan, n_rows, kv_row, &random_bf16(cache_len, 10 * seed + 2));
        let mut want = vec![0.0; q.len()];
        attention_decode(&s, &words, &q, &k_cache, &v_cache, &mut want);

        let padded = |x: &[f32]| up(&g, &[vec![0.0; pad], x.to_vec()].concat());
        let (k_d, v_d) = (padded(&k_cache), padded(&v_cache));
        let (k_view, v_view) = (k_d.slice(pad..), v_d.slice(pad..));
        let plan_d = g.stream.clone_htod(&words).unwrap();
        let q_d = up(&g, &q);
        // The grouped kernel with its own splits (these 5–10 (sequence, kv
        // head) pairs get several), one run of keys, and runs of 32 keys; the
        // simple kernel.
        let run = |how: &str| {
            let mut out_d = nan_bf16(&g, q.len());
            let (o, p) = (&mut out_d, &plan_d);
            match how {
                "auto" => g.attention_decode(&s, p, &q_d, &k_view, &v_view, o),
                "whole" => g.attention_decode_with(GroupedSplit(usize::MAX), &s, p, &q_d, &k_view, &v_view, o),
                "split32" => g.attention_decode_with(GroupedSplit(32), &s, p, &q_d, &k_view, &v_view, o),
                _ => g.attention_decode_with(DecodeKernel::Simple, &s, p, &q_d, &k_view, &v_view, o),
            }
            .unwrap();
            g.sync().unwrap();
            down(&g, &out_d)
        };
        let (fast, again) = (run("auto"), run("auto"));
        let errs: Vec<String> = ["auto", "whole", "split32", "simple"]
            .iter()
            .map(|&h| (h, rel_err(&run(h), &want)))
            .filter_map(|(h, e)| {
                println!("attention decode {s:?} cache offset {pad}: {h} {e:.2e} vs cpu");
                (e.is_nan() || e >= BF16_TOL).then(|| format!("{h}: {e:e}"))
            })
            .collect();
        assert!(errs.is_empty(), "{s:?}: {errs:?}");
        assert!(
            fast.iter().zip(&again).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{s:?}: two runs of attention_decode differ"
        );
    }
}

#[test]
fn attention_rejects_bad_inputs() {
    let Some(g) = gpu("attention_rejects_bad_inputs") else { return };
    let s = AttnShape { n_heads: 2, n_kv_heads: 1, head_dim: 8, scale: 0.5 };
    let tokens = 5;
    let q = up(&g, &vec![0.0; tokens * 16]);
    let kv = up(&g, &vec![0.0; tokens * 8]);
    let mut out = up(&g, &vec![0.0; tokens * 16]);
    let mut lse = g.stream.alloc_zeros::<f32>(tokens * 2).unwrap();
    let mut fwd = |s: &AttnShape, cu: &[u32]| {
        let cu = g.stream.clone_htod(cu).unwrap();
        g.attention_fwd(s, &cu, &q, &kv, &kv, &mut out, &mut lse)
    };
    assert!(fwd(&s, &[0, 2, 5]).is_ok());
    for cu in [&[1u32, 2, 5][..], &[0, 3, 2, 5], &[0, 2, 4], &[0, 2, 6], &[5]] {
        assert!(fwd(&s, cu).is_err(), "cu_seqlens {cu:?} accepted");
    }
    // 3 query heads over 2 kv heads: refused by the shape check itself (3 over
    // the 1 kv head of `s` would be a valid grouping, failing only on lengths).
    let e = fwd(&AttnShape { n_heads: 3, n_kv_heads: 2, ..s }, &[0, 5]).expect_err("ungrouped heads accepted");
    assert!(format!("{e:#}").contains("multiple of n_kv_heads"), "ungrouped heads: {e:#}");
    let wide = AttnShape { n_heads: 1, n_kv_heads: 1, head_dim: 257, scale: 0.5 };
    let (q1, kv1) = (up(&g, &vec![0.0; 257]), up(&g, &vec![0.0; 257]));
    let (mut o1, mut l1) = (up(&g, &vec![0.0; 257]), g.stream.alloc_zeros::<f32>(1).unwrap());
    let cu1 = g.stream.clone_htod(&[0u32, 1]).unwrap();
    assert!(g.attention_fwd(&wide, &cu1, &q1, &kv1, &kv1, &mut o1, &mut l1).is_err(), "head_dim 257 accepted");

    // Decode: 2 sequences, a cache of 12 rows.
    let batch = 2usize;
    let cache = up(&g, &vec![0.0; 12 * 8]);
    let qd = up(&g, &vec![0.0; batch * 16]);
    let mut od = up(&g, &vec![0.0; batch * 16]);
    let mut dec = |plan: &[u32]| {
        let plan = g.stream.clone_htod(plan).unwrap();
        g.attention_decode(&s, &plan, &qd, &cache, &cache, &mut od)
    };
    assert!(dec(&[0, 4, 8, 8, 11, 0, 11, 1]).is_ok());
    assert!(dec(&[0, 4, 8, 9, 11, 0, 11, 1]).is_err(), "own rows past the cache accepted");
    assert!(dec(&[9, 4, 0, 4, 11, 0, 11, 1]).is_err(), "prefix rows past the cache accepted");
    assert!(dec(&[0, 4, 8, 3, 11, 0, 11, 1]).is_err(), "a prefix longer than the sequence accepted");
    assert!(dec(&[0, 0, 8, 0, 11, 0, 11, 1]).is_err(), "len 0 accepted");
    assert!(dec(&[0, 0, 8, 1, 11, 0, 11]).is_err(), "a plan of 7 words accepted");
    assert!(dec(&[0, 0, 8, 1]).is_err(), "one sequence for q of two accepted");
    g.sync().unwrap();
}
