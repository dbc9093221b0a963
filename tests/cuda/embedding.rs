//! kernels/embedding.cu against the CPU: the gather bit for bit, both
//! backward kernels bit for bit against bf16 of the CPU's f32 sums (same fp32
//! additions in the same order, one rounding), repeated ids, odd sizes,
//! ids outside the table caught.

use super::util::{down, gpu, random_bf16, rel_err, up};
use engine::backend::cpu::elementwise::{embedding_bwd, embedding_fwd};
use engine::backend::cuda::{Bf16, Gpu};

/// Ids with many repeats (a few hot ids) and some spread over the table.
fn ids(tokens: usize, vocab: usize, hot: usize) -> Vec<u32> {
    (0..tokens)
        .map(|t| (if t % 3 == 0 { (t * 7919 + 1) % vocab } else { (t * 13) % hot }) as u32)
        .chain([vocab as u32 - 1])
        .collect()
}

fn bf_round(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| Bf16::from_f32(v).to_f32()).collect()
}

fn check(g: &Gpu, vocab: usize, dim: usize, tokens: usize, hot: usize) {
    let ids = ids(tokens, vocab, hot);
    let tokens = ids.len();
    let table = random_bf16(vocab * dim, 1);
    let dout = random_bf16(tokens * dim, 2);
    let dtable0 = random_bf16(vocab * dim, 3);
    let mut out = vec![0.0; tokens * dim];
    embedding_fwd(&table, &ids, dim, &mut out);
    let mut dtable = dtable0.clone();
    embedding_bwd(&dout, &ids, dim, &mut dtable);
    let want = bf_round(&dtable);

    let mut err = g.stream.alloc_zeros::<u32>(1).unwrap();
    let idsd = g.stream.clone_htod(&ids).unwrap();
    let (td, dd) = (up(g, &table), up(g, &dout));
    let mut od = g.stream.alloc_zeros::<Bf16>(tokens * dim).unwrap();
    g.embedding_fwd(&td, &idsd, dim, &mut od, &mut err).unwrap();
    assert_eq!(down(g, &od), out, "embedding_fwd {vocab}×{dim}, {tokens} tokens");
    let mut o2 = g.stream.alloc_zeros::<Bf16>(tokens * dim).unwrap();
    g.embedding_fwd_reference(&td, &idsd, dim, &mut o2, &mut err).unwrap();
    assert_eq!(down(g, &o2), out, "embedding_fwd_reference {vocab}×{dim}");
    // Into a view at an odd offset (scalar copies in the fast kernel).
    let mut o3 = g.stream.alloc_zeros::<Bf16>(tokens * dim + 1).unwrap();
    g.embedding_fwd(&td, &idsd, dim, &mut o3.slice_mut(1..tokens * dim + 1), &mut err).unwrap();
    let got = down(g, &o3);
    assert_eq!((got[0], &got[1..]), (0.0, &out[..]), "embedding_fwd into a view at offset 1");

    let mut plan = g.stream.alloc_zeros::<u32>(Gpu::embedding_bwd_plan_len(tokens)).unwrap();
    let mut sorted = up(g, &dtable0);
    g.embedding_bwd(&dd, &ids, dim, &mut sorted, &mut plan, &mut err).unwrap();
    let got_sorted = down(g, &sorted);
    let mut reference = up(g, &dtable0);
    g.embedding_bwd_reference(&dd, &idsd, dim, &mut reference, &mut err).unwrap();
    let got_ref = down(g, &reference);
    let mut again = up(g, &dtable0);
    g.embedding_bwd(&dd, &ids, dim, &mut again, &mut plan, &mut err).unwrap();
    g.embedding_check(&mut err).unwrap();
    println!(
        "embedding {vocab}×{dim}, {tokens} tokens: bwd sorted {:.2e} reference {:.2e} (vs CPU)",
        rel_err(&got_sorted, &dtable),
        rel_err(&got_ref, &dtable)
    );
    assert_eq!(got_ref, want, "embedding_bwd_reference = bf16(CPU f32 sums)");
    assert_eq!(got_sorted, want, "embedding_bwd (sorted) = bf16(CPU f32 sums)");
    assert_eq!(down(g, &again), got_sorted, "two runs of embedding_bwd differ");
    // dout and dtable in views at odd offsets (scalar loads, the same sums).
    let mut dtv = up(g, &[vec![0.5], dtable0.clone()].concat());
    let ddv = up(g, &[vec![0.25], dout.clone()].concat());
    g.embedding_bwd(
        &ddv.slice(1..tokens * dim + 1),
        &ids,
        dim,
        &mut dtv.slice_mut(1..vocab * dim + 1),
        &mut plan,
        &mut err,
    )
    .unwrap();
    g.embedding_check(&mut err).unwrap();
    let got_view = down(g, &dtv);
    assert_eq!((got_view[0], &got_view[1..]), (0.5, &want[..]), "embedding_bwd on views at offset 1");
}

#[test]
fn embedding_matches_the_cpu() {
    let Some(g) = gpu("embedding_matches_the_cpu") else { return };
    check(&g, 1000 + 7, 200, 300, 17);
    check(&g, 1000 + 7, 1031, 300, 5);
    check(&g, 64, 64, 1, 1);
    // A hot id seen ~1700 times: fp32 accumulation, not bf16, is what matches.
    check(&g, 1000 + 7, 257, 5000, 3);
}

#[test]
fn embedding_catches_ids_outside_the_table() {
    let Some(g) = gpu("embedding_catches_ids_outside_the_table") else { return };
    let (vocab, dim) = (37usize, 70usize);
    let ids = vec![0u32, vocab as u32, 3, vocab as u32 + 100, 3];
    let tokens = ids.len();
    let table = random_bf16(vocab * dim, 1);
    let mut err = g.stream.alloc_zeros::<u32>(1).unwrap();
    let idsd = g.stream.clone_htod(&ids).unwrap();
    let td = up(&g, &table);
    let mut od = g.stream.alloc_zeros::<Bf16>(tokens * dim).unwrap();
    g.fill(&mut od, 1.0).unwrap();
    g.embedding_fwd(&td, &idsd, dim, &mut od, &mut err).unwrap();
    let out = down(&g, &od);
    for (t, &id) in ids.iter().enumerate() {
        let row = &out[t * dim..(t + 1) * dim];
        if (id as usize) < vocab {
            assert_eq!(row, &table[id as usize * dim..(id as usize + 1) * dim], "row {t}");
        } else {
            assert!(row.iter().all(|&v| v == 0.0), "row {t} of a bad id is zeros");
        }
    }
    assert!(g.embedding_check(&mut err).is_err(), "the flag is raised");
    g.embedding_check(&mut err).unwrap(); // and cleared by the check

    // The reference backward skips the bad ids, adds the good ones, raises the flag.
    let dout = random_bf16(tokens * dim, 2);
    let dd = up(&g, &dout);
    let mut dt = g.stream.alloc_zeros::<Bf16>(vocab * dim).unwrap();
    g.embedding_bwd_reference(&dd, &idsd, dim, &mut dt, &mut err).unwrap();
    assert!(g.embedding_check(&mut err).is_err());
    let good: Vec<u32> = ids.iter().map(|&i| if (i as usize) < vocab { i } else { 1 }).collect();
    let mut dout_good = dout.clone();
    for (t, &id) in ids.iter().enumerate() {
        if id as usize >= vocab {
            dout_good[t * dim..(t + 1) * dim].fill(0.0);
        }
    }
    let mut want = vec![0.0; vocab * dim];
    embedding_bwd(&dout_good, &good, dim, &mut want);
    assert_eq!(down(&g, &dt), bf_round(&want));

    // The sorted backward refuses them before launching anything.
    let mut plan = g.stream.alloc_zeros::<u32>(Gpu::embedding_bwd_plan_len(tokens)).unwrap();
    let before = down(&g, &dt);
    assert!(g.embedding_bwd(&dd, &ids, dim, &mut dt, &mut plan, &mut err).is_err());
    assert_eq!(down(&g, &dt), before);
    g.embedding_check(&mut err).unwrap();
    // Wrong shapes are refused.
    assert!(g.embedding_fwd(&td, &idsd, dim + 1, &mut od, &mut err).is_err());
    let mut small = g.stream.alloc_zeros::<u32>(tokens).unwrap();
    assert!(g.embedding_bwd(&dd, &good, dim, &mut dt, &mut small, &mut err).is_err());
}
