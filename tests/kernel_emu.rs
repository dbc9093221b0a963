//! CUDA kernels' own code built for the host by tools/kernel_emu (one OS
//! thread per CUDA thread, barriers and warp shuffles emulated), with the
//! `__host__ __device__` arithmetic they share with the CPU, and compared
//! with the CPU implementations that specify them (DESIGN.md §6). The GPU is
//! scarce; this checks the kernels' logic on every change.
//!
//! - kernels/sample.cu against the CPU sampler on `common::sampling`'s cases:
//!   the same tokens and log-probabilities, and kernels/include/rng.h's
//!   stream keys and uniform numbers equal to the CPU's bit for bit;
//! - kernels/policy.cu (with kernels/include/policy.h) against
//!   `policy_loss` on `common::policy_cases`;
//! - kernels/decode_attention.cu (the grouped decode kernel) and
//!   kernels/attention.cu's simple decode kernel against the CPU's
//!   `attention_decode`, and the grouped kernel against itself bit for bit.
//!
//! Needs g++ (C++20); without it each test says so on one line and passes.

mod common;

use common::decode_cases::{cache_for, grouped_plan};
use common::policy_cases::{policy_cases, policy_mismatches, Regions};
use common::sampling::{cases, mismatches};
use engine::rollout::{Sampled, Stream};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Builds tools/kernel_emu/{name}.cpp (which includes kernels/{name}.cu).
fn build(name: &str) -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
    let out = std::env::temp_dir().join(format!("engine-{name}-emu-{}", std::process::id()));
    let emu = root.join("tools/kernel_emu");
    let status = Command::new(&cxx)
        .args(["-std=c++20", "-O2", "-ffp-contract=off", "-fno-strict-aliasing", "-pthread", "-include"])
        .arg(emu.join("shim.h"))
        .arg("-I")
        .arg(root.join("tools/flash_attention_emu")) // its host stand-in for cuda_bf16.h
        .arg("-I")
        .arg(root.join("kernels/include"))
        .arg("-o")
        .arg(&out)
        .arg(emu.join(format!("{name}.cpp")))
        .status();
    match status {
        Ok(s) if s.success() => Some(out),
        Ok(s) => panic!("{cxx} failed to build tools/kernel_emu/{name}.cpp ({s})"),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "skip the emulation of kernels/{name}.cu: cannot run {cxx}: {e}");
            None
        }
    }
}

/// An emulator's output, line by line: `TAG hex hex …`.
struct Printed<'a>(std::str::Lines<'a>);

impl Printed<'_> {
    /// The next line's numbers; it must carry `tag`.
    fn next(&mut self, tag: &str) -> Vec<u64> {
        let line = self.0.next().unwrap_or_else(|| panic!("a {tag} line"));
        let mut f = line.split(' ');
        assert_eq!(f.next(), Some(tag), "{line}");
        f.map(|x| u64::from_str_radix(x, 16).unwrap()).collect()
    }
}

/// Runs an emulator on `input`, returns what it printed.
fn run(exe: &Path, input: &[u8]) -> String {
    let mut child = Command::new(exe).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    // Written from another thread: the emulator prints as it reads, and a
    // full stdout pipe would otherwise stop it while we still write.
    let mut stdin = child.stdin.take().unwrap();
    let out = std::thread::scope(|s| {
        s.spawn(move || stdin.write_all(input).unwrap());
        child.wait_with_output().unwrap()
    });
    let _ = std::fs::remove_file(exe);
    assert!(out.status.success(), "{} failed ({})", exe.display(), out.status);
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn gpu_sampler_code_draws_the_cpu_samplers_tokens_and_numbers() {
    let Some(exe) = build("sample") else { return };
    let mut input = Vec::new();
    let put32 = |b: &mut Vec<u8>, v: u32| b.extend_from_slice(&v.to_le_bytes());
    let put64 = |b: &mut Vec<u8>, v: u64| b.extend_from_slice(&v.to_le_bytes());

    // Streams: (seed, prompt, sample, step), extremes included.
    let mut tuples: Vec<[u64; 4]> = vec![[0, 0, 0, 0], [u64::MAX, u64::MAX, u64::MAX, u64::MAX], [42, 3, 1, 9]];
    let s = Stream::new(1, 2, 3);
    for i in 0..300u64 {
        let r = |k: u64| (s.uniform(4 * i + k) * 2f64.powi(53)) as u64 * 2047;
        tuples.push([r(0), r(1) >> (i % 64), r(2) % 64, r(3)]);
    }
    put32(&mut input, tuples.len() as u32);
    for t in &tuples {
        t.iter().for_each(|&v| put64(&mut input, v));
    }

    let cases = cases();
    put32(&mut input, cases.len() as u32);
    for c in &cases {
        let k = c.params.kernel_settings();
        put32(&mut input, c.threads);
        for v in [k.inv_temp, k.top_p_budget, k.min_p] {
            input.extend_from_slice(&v.to_le_bytes());
        }
        for v in [c.rows() as u32, c.vocab as u32, k.top_k, k.greedy as u32, k.filtered as u32, k.use_top_p as u32] {
            put32(&mut input, v);
        }
        for &z in &c.logits {
            input.extend_from_slice(&half::bf16::from_f32(z).to_bits().to_le_bytes());
        }
        for d in &c.draws {
            put64(&mut input, d.stream.key());
            put64(&mut input, d.step);
        }
    }

    let text = run(&exe, &input);
    let mut out = Printed(text.lines());

    for t in &tuples {
        let f = out.next("K");
        let stream = Stream::new(t[0], t[1], t[2]);
        assert_eq!(f[0], stream.key(), "rng.h's key of {t:?}");
        assert_eq!(f[1], stream.uniform(t[3]).to_bits(), "rng.h's draw of {t:?}");
    }
    let mut bad = Vec::new();
    for c in &cases {
        let got: Vec<Sampled> = (0..c.rows())
            .map(|_| {
                let f = out.next("T");
                Sampled { token: f[0] as u32, logprob: f32::from_bits(f[1] as u32) }
            })
            .collect();
        bad.extend(mismatches(c, &got));
    }
    assert!(bad.is_empty(), "{} rows differ:\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn gpu_policy_coefficient_code_matches_the_cpu_loss_library() {
    let Some(exe) = build("policy") else { return };
    let cases = policy_cases();
    let mut input = Vec::new();
    let put32 = |b: &mut Vec<u8>, v: u32| b.extend_from_slice(&v.to_le_bytes());
    input.extend_from_slice(&(cases.len() as u32).to_le_bytes());
    for c in &cases {
        let k = c.cfg.kernel_settings(&c.counts, c.correct_tokens);
        put32(&mut input, c.threads);
        let nums = [
            k.eps_low,
            k.eps_high,
            k.dual_clip,
            k.beta1,
            k.beta2,
            k.cispo_floor,
            k.cispo_cap,
            k.kl_coef,
            k.entropy_coef,
            k.tis_cap,
            k.nll_k,
            k.correct_score,
            k.step_tokens,
            k.step_seqs,
            k.l_max,
        ];
        nums.iter().for_each(|v| input.extend_from_slice(&v.to_le_bytes()));
        let n = c.logp.len();
        let want_ent = c.cfg.entropy_coef != 0.0;
        for v in [k.kind, k.kl_kind, k.agg, k.has_dual as u32, k.has_floor as u32, k.has_tis as u32] {
            put32(&mut input, v);
        }
        put32(&mut input, n as u32);
        put32(&mut input, c.advantages.len() as u32);
        for v in [c.ref_logp.is_some(), c.sampler_logp.is_some(), c.entropy.is_some(), want_ent] {
            put32(&mut input, v as u32);
        }
        let arrays =
            [Some(&c.logp), Some(&c.old_logp), c.ref_logp.as_ref(), c.sampler_logp.as_ref(), c.entropy.as_ref()];
        for a in arrays.into_iter().flatten() {
            a.iter().for_each(|v| input.extend_from_slice(&v.to_le_bytes()));
        }
        input.extend(c.mask.iter().map(|&m| m as u8));
        c.cu_seqlens.iter().for_each(|&v| put32(&mut input, v));
        for a in [&c.advantages, &c.rewards] {
            a.iter().for_each(|v| input.extend_from_slice(&v.to_le_bytes()));
        }
    }
    let text = run(&exe, &input);
    let mut out = Printed(text.lines());
    let mut field = |tag: &str| out.next(tag);
    let mut bad = Vec::new();
    let mut regions = Regions::default();
    for c in &cases {
        let n = c.logp.len();
        let coef: Vec<f32> = (0..n).map(|_| f32::from_bits(field("C")[0] as u32)).collect();
        let ent: Option<Vec<f32>> =
            (c.cfg.entropy_coef != 0.0).then(|| (0..n).map(|_| f32::from_bits(field("E")[0] as u32)).collect());
        let rows: Vec<f64> = (0..c.advantages.len()).flat_map(|_| field("S")).map(f64::from_bits).collect();
        bad.extend(policy_mismatches(c, &coef, ent.as_deref(), &rows));
        regions.add(c, &rows);
        let st = c.expected().stats;
        println!(
            "{}: {} tokens, clipped low/high/dual {}/{}/{}",
            c.name, st.tokens, st.clipped_low, st.clipped_high, st.clipped_dual
        );
    }
    assert!(bad.is_empty(), "{} differences:\n{}", bad.len(), bad.join("\n"));
    regions.assert_all_reached();
}

/// kernels/decode_attention.cu's `attention_decode_gqa` (the fast decode
/// kernel, one block per (sequence, kv head); run twice, which must give the
/// same bits) and kernels/attention.cu's `attention_decode` (the simple one)
/// against the CPU's `attention_decode` on the same bf16 inputs: head_dim 64
/// and 128, 1, 2, 7 and 8 query heads per kv head, sequences of 1 to 257 keys
/// (one warp's chunk, several, every warp, partial chunks) in slots out of
/// order in a larger cache whose unused positions are NaN, so a read past
/// len or of a wrong row shows. Three sequences read a shared prefix from
/// another slot (as a prompt's samples do), of lengths that split a warp's
/// chunk of keys, and one of them has no position of its own but the new one.
/// The fast kernel also runs with the keys split in runs (of 48 and 32 keys:
/// every sequence but the shortest in several splits, some splits past a
/// sequence's end) and merged by `attention_decode_combine`.
#[test]
fn gpu_decode_attention_code_matches_the_cpu_decode() {
    use engine::backend::cpu::attention::attention_decode;
    use engine::backend::{AttnShape, DecodeSeq};
    let Some(exe) = build("decode") else { return };
    let (plan, n_rows) = grouped_plan();
    let words = DecodeSeq::encode(&plan);
    // (head_dim, query heads per kv head, kv heads).
    let shapes = [(64, 1, 3), (128, 1, 2), (64, 2, 2), (128, 2, 1), (64, 7, 2), (128, 7, 1), (64, 8, 1), (128, 8, 2)];
    // Values in [-1, 1) that bf16 holds exactly, from a fixed LCG.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let x = ((state >> 40) as f32 - (1u32 << 23) as f32) / (1u32 << 23) as f32;
        half::bf16::from_f32(x).to_f32()
    };
    let bits =
        |x: &[f32]| -> Vec<u8> { x.iter().flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes()).collect() };
    let put32 = |b: &mut Vec<u8>, v: u32| b.extend_from_slice(&v.to_le_bytes());

    let mut input = Vec::new();
    let mut wants = Vec::new();
    put32(&mut input, shapes.len() as u32);
    for (i, &(head_dim, group, n_kv_heads)) in shapes.iter().enumerate() {
        // Every other case 4× sharper, so the running max moves more.
        let sharp = if i % 2 == 1 { 4.0 } else { 1.0 };
        let s =
            AttnShape { n_heads: group * n_kv_heads, n_kv_heads, head_dim, scale: sharp / (head_dim as f32).sqrt() };
        let kv_row = n_kv_heads * head_dim;
        let q: Vec<f32> = (0..plan.len() * s.n_heads * head_dim).map(|_| 2.0 * rand()).collect();
        let mut random = |n: usize| -> Vec<f32> { (0..n).map(|_| rand()).collect() };
        let k_cache = cache_for(&plan, n_rows, kv_row, &random(n_rows * kv_row));
        let v_cache = cache_for(&plan, n_rows, kv_row, &random(n_rows * kv_row));
        let mut want = vec![0.0; q.len()];
        attention_decode(&s, &words, &q, &k_cache, &v_cache, &mut want);
        wants.push((s, want));

        let split_keys = if i % 2 == 0 { 48 } else { 32 };
        let header = [plan.len(), n_rows, group * n_kv_heads, n_kv_heads, head_dim, split_keys];
        header.iter().for_each(|&v| put32(&mut input, v as u32));
        input.extend_from_slice(&s.scale.to_le_bytes());
        words.iter().for_each(|&v| put32(&mut input, v));
        for x in [&q, &k_cache, &v_cache] {
            input.extend(bits(x));
        }
    }

    let text = run(&exe, &input);
    let mut printed = Printed(text.lines());
    let mut out = |tag: &str| -> Vec<u16> { printed.next(tag).into_iter().map(|x| x as u16).collect() };
    // ‖a − b‖ / ‖b‖; NaN (or an element never written) never passes.
    let rel_err = |a: &[u16], b: &[f32]| -> f64 {
        assert_eq!(a.len(), b.len());
        let a = a.iter().map(|&x| half::bf16::from_bits(x).to_f32() as f64);
        let num: f64 = a.zip(b).map(|(x, &y)| (x - y as f64).powi(2)).sum();
        let den: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
        (num / den.max(1e-30)).sqrt()
    };
    let mut bad = Vec::new();
    for (s, want) in &wants {
        let (fast, again, split, simple) = (out("F"), out("G"), out("P"), out("S"));
        let (e_fast, e_split, e_simple) = (rel_err(&fast, want), rel_err(&split, want), rel_err(&simple, want));
        println!(
            "decode head_dim {} group {} kv heads {} scale {:.3}: fast {e_fast:.2e}, split {e_split:.2e}, simple {e_simple:.2e}",
            s.head_dim,
            s.n_heads / s.n_kv_heads,
            s.n_kv_heads,
            s.scale
        );
        // `!(e <= tol)` so that a NaN error fails too.
        if !(e_fast <= 1e-2 && e_split <= 1e-2 && e_simple <= 1e-2) {
            bad.push(format!("{s:?}: fast {e_fast:e}, split {e_split:e}, simple {e_simple:e}"));
        }
        if fast != again {
            bad.push(format!("{s:?}: two runs of the fast kernel differ"));
        }
    }
    assert!(bad.is_empty(), "{} differences:\n{}", bad.len(), bad.join("\n"));
}

/// kernels/distill.cu (forward KL, reverse KL, JSD at β 0.3) against the
/// CPU's `distill_row` on random bf16 rows of odd vocabularies (so each row
/// starts at another 16-byte phase): the divergence to 1e-5 relative, dz to
/// the bf16 rounding of the output (1e-2 relative per row), zeroed rows where
/// the weight is 0. Both the row kernels (their later passes walk the row
/// pair last to first) and the split kernels, whose blocks share a row: 3
/// blocks per row at vocabulary 4133 (the last with a part of a run and the
/// tail), 1 at 1031 (head and tail in one block), and 5 logits per row (no
/// vectors at all). All of a split case's blocks run at once, so they take
/// their tickets in whatever order the OS gives; each split case runs twice
/// and must give the same bits. Then the 3-block case with only 3 blocks
/// resident at a time, started first chunks first (blocks 0, 3, 6, …): a
/// kernel that took its row from its block index would have 3 first chunks
/// waiting for chunks that cannot start; the tickets must give the first 3
/// blocks to start one whole row (else it stalls until the bounded wait
/// gives up, and the rows come out NaN).
#[test]
fn gpu_distill_code_matches_the_cpu() {
    use engine::backend::cpu::distill::distill_row;
    use engine::loss::DistillMode;
    let Some(exe) = build("distill") else { return };
    let rows = 5usize;
    let s = Stream::new(3, 1, 4);
    let bf = |x: f64| half::bf16::from_f64(x);
    let mk = |n: usize, off: u64, scale: f64| -> Vec<half::bf16> {
        (0..n as u64).map(|i| bf(scale * (2.0 * s.uniform(off + i) - 1.0))).collect()
    };
    let weight: Vec<f32> = vec![0.7, 0.0, 1.3, 0.25, 2.0];
    let modes = [
        (0u32, DistillMode::Forward, 0.0f32),
        (1, DistillMode::Reverse, 1.0),
        (2, DistillMode::Jsd { beta: 0.3 }, 0.3),
    ];
    // (kernel code, mode, beta, threads, vocab, blocks per row expected of a split kernel)
    let mut cases = Vec::new();
    for (i, &(code, mode, beta)) in modes.iter().enumerate() {
        cases.push((code, mode, beta, [64u32, 128, 256][i], 1031usize, None));
        for (vocab, chunks) in [(4133usize, 3u32), (1031, 1), (5, 1)] {
            for _ in 0..2 {
                cases.push((code + 3, mode, beta, 64, vocab, Some(chunks)));
            }
        }
        for _ in 0..2 {
            cases.push((code + 6, mode, beta, 64, 4133, Some(3)));
        }
    }
    let inv_temp = 1.0f32 / 0.8;
    let data = |vocab: usize| (mk(rows * vocab, vocab as u64, 4.0), mk(rows * vocab, (1 << 20) + vocab as u64, 5.0));
    let mut input = Vec::new();
    input.extend_from_slice(&(cases.len() as u32).to_le_bytes());
    for &(code, _, beta, threads, vocab, _) in &cases {
        for v in [threads, code, rows as u32, vocab as u32] {
            input.extend_from_slice(&v.to_le_bytes());
        }
        for v in [inv_temp, beta, beta.ln(), (1.0 - beta).ln()] {
            input.extend_from_slice(&v.to_le_bytes());
        }
        let (zs, zt) = data(vocab);
        for x in zs.iter().chain(&zt) {
            input.extend_from_slice(&x.to_bits().to_le_bytes());
        }
        weight.iter().for_each(|w| input.extend_from_slice(&w.to_le_bytes()));
    }
    let text = run(&exe, &input);
    let mut printed = Printed(text.lines());
    let mut next = |tag: &str| -> u32 { printed.next(tag)[0] as u32 };
    let mut bad = Vec::new();
    let mut last: Option<(Vec<u32>, Vec<u32>)> = None;
    for &(code, mode, _, _, vocab, chunks) in &cases {
        let what = format!("{} {mode:?} vocab {vocab}", if code < 3 { "row kernel" } else { "split kernel" });
        if let Some(want) = chunks {
            let got = next("C");
            if got != want {
                bad.push(format!("{what}: {got} blocks per row, expected {want}"));
            }
        }
        let (zs, zt) = data(vocab);
        let loss: Vec<f32> = (0..rows).map(|_| f32::from_bits(next("L"))).collect();
        let dz: Vec<f32> = (0..rows * vocab).map(|_| half::bf16::from_bits(next("Z") as u16).to_f32()).collect();
        for r in 0..rows {
            let mut want: Vec<f32> = zs[r * vocab..(r + 1) * vocab].iter().map(|x| x.to_f32()).collect();
            let t: Vec<f32> = zt[r * vocab..(r + 1) * vocab].iter().map(|x| x.to_f32()).collect();
            let d = distill_row(&mut want, &t, mode, inv_temp, weight[r]);
            let got = &dz[r * vocab..(r + 1) * vocab];
            let el = (loss[r] as f64 - d).abs() / d.abs().max(1e-12);
            let norm = want.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            let diff = got.iter().zip(&want).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
            let ez = if norm == 0.0 { diff } else { diff / norm };
            println!("{what} row {r}: divergence rel {el:.1e}, dz rel {ez:.1e}");
            if !(el <= 1e-5 && ez <= 1e-2) {
                bad.push(format!("{what} row {r}: divergence {} vs {d} (rel {el:.1e}), dz rel {ez:.1e}", loss[r]));
            }
        }
        // The second run of a split case: the same bits as the first.
        if chunks.is_some() {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            let out = (bits(&loss), bits(&dz));
            match last.take() {
                Some(first) if first.0 == out.0 && first.1 == out.1 => {}
                Some(_) => bad.push(format!("{what}: two runs differ")),
                None => last = Some(out),
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// kernels/dpo.cu (with kernels/include/dpo.h) against `dpo_loss`: sigmoid,
/// sigmoid with label smoothing, IPO; coefficients to 1e-6 relative, the
/// loss and rewards to 1e-9, the accuracy count exactly.
#[test]
fn gpu_dpo_coefficient_code_matches_the_cpu_loss_library() {
    use common::policy_cases::dpo_cases;
    let Some(exe) = build("dpo") else { return };
    let cases = dpo_cases();
    let mut input = Vec::new();
    input.extend_from_slice(&(cases.len() as u32).to_le_bytes());
    for c in &cases {
        let k = c.cfg.kernel_settings(c.pairs_in_step);
        input.extend_from_slice(&c.threads.to_le_bytes());
        for v in [k.beta, k.label_smoothing, k.per_pair] {
            input.extend_from_slice(&v.to_le_bytes());
        }
        for v in [k.loss_type, c.logp.len() as u32, (c.cu_seqlens.len() as u32 - 1) / 2] {
            input.extend_from_slice(&v.to_le_bytes());
        }
        for a in [&c.logp, &c.ref_logp] {
            a.iter().for_each(|v| input.extend_from_slice(&v.to_le_bytes()));
        }
        input.extend(c.mask.iter().map(|&m| m as u8));
        c.cu_seqlens.iter().for_each(|v| input.extend_from_slice(&v.to_le_bytes()));
    }
    let text = run(&exe, &input);
    let mut out = Printed(text.lines());
    let mut field = |tag: &str| out.next(tag);
    for c in &cases {
        let (loss, coefs, st) = c.expected();
        let got: Vec<f32> = (0..c.logp.len()).map(|_| f32::from_bits(field("C")[0] as u32)).collect();
        for (t, (&g, &w)) in got.iter().zip(&coefs.logp).enumerate() {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1e-20), "{}: coef[{t}] {g:e}, CPU {w:e}", c.name);
        }
        let pairs = (c.cu_seqlens.len() - 1) / 2;
        let rows: Vec<f64> = (0..pairs).flat_map(|_| field("P")).map(f64::from_bits).collect();
        let (gl, gs) = engine::loss::dpo::dpo_stats_from_rows(&rows);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1e-12);
        println!("{}: loss {gl:.6} (CPU {loss:.6}), accuracy {}/{}", c.name, gs.correct, gs.pairs);
        assert!(close(gl, loss), "{}: loss {gl} vs {loss}", c.name);
        assert!(close(gs.reward_chosen_sum, st.reward_chosen_sum), "{}: chosen rewards", c.name);
        assert!(close(gs.reward_rejected_sum, st.reward_rejected_sum), "{}: rejected rewards", c.name);
        assert_eq!((gs.pairs, gs.correct), (st.pairs, st.correct), "{}: pairs, correct", c.name);
    }
}

/// One rope case's inputs and the CPU's results.
struct RopeWant {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// q and k rotated in place (the case's direction).
    wq: Vec<f32>,
    wk: Vec<f32>,
    /// The fused rows' split (forward rotation), the join of q, k, v
    /// (rotated back), and the fused rows themselves.
    split: (Vec<f32>, Vec<f32>, Vec<f32>),
    /// The split with Qwen3's norms, then the rotation.
    normed: (Vec<f32>, Vec<f32>, Vec<f32>),
    joined: Vec<f32>,
    fused: Vec<f32>,
}

/// kernels/rope.cu (the fast and the simple kernel): q and k rotated by one
/// launch give the bits of two launches, and the CPU's rotation to bf16
/// rounding; with k unaligned (scalar accesses) and head dims whose halves
/// are not multiples of 8. The fused q/k/v rows split into q, k, v (rotated,
/// and not; k and v into tables of rows too) and joined back (rotated back)
/// give the CPU's `qkv_split` / `qkv_join`, the in-place rotation's bits,
/// and v's bits unchanged.
#[test]
fn gpu_rope_code_rotates_q_and_k_in_one_launch_as_in_two() {
    let Some(exe) = build("rope") else { return };
    // (tokens, q heads, k heads, head_dim, inverse, k's offset in elements)
    let cases = [(37, 14, 2, 64, 0, 0), (21, 5, 1, 128, 1, 1), (9, 3, 3, 96, 0, 1), (5, 1, 2, 6, 1, 0)];
    let max_pos = 300;
    let put32 = |b: &mut Vec<u8>, v: u32| b.extend_from_slice(&v.to_le_bytes());
    let putf = |b: &mut Vec<u8>, v: &[f32]| v.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
    let mut input = Vec::new();
    let mut want = Vec::new();
    put32(&mut input, cases.len() as u32);
    let mut s = Stream::new(5, 0, 0);
    let mut seed = 0u64;
    let mut rnd = |n: usize| -> Vec<f32> {
        seed += 1;
        s = Stream::new(5, seed, 0);
        (0..n).map(|i| half::bf16::from_f32((s.uniform(i as u64) * 2.0 - 1.0) as f32).to_f32()).collect()
    };
    for &(tokens, qh, kh, hd, inverse, k_off) in &cases {
        let inv: Vec<f32> = (0..hd / 2).map(|i| 1.0 / 10000f64.powf(2.0 * i as f64 / hd as f64) as f32).collect();
        let (cos, sin) = engine::model::rope::tables_from(&inv, max_pos);
        let pos: Vec<u32> = (0..tokens as u32).map(|t| (t * 37 + 5) % max_pos as u32).collect();
        let (q, k, v) = (rnd(tokens * qh * hd), rnd(tokens * kh * hd), rnd(tokens * kh * hd));
        for v in [tokens, qh, kh, hd, max_pos, inverse, k_off] {
            put32(&mut input, v as u32);
        }
        pos.iter().for_each(|&p| put32(&mut input, p));
        putf(&mut input, &cos);
        putf(&mut input, &sin);
        putf(&mut input, &q);
        putf(&mut input, &k);
        putf(&mut input, &v);
        // Qwen3's norm weights, around 1 (bf16 values), and eps.
        let bf = |x: f32| half::bf16::from_f32(x).to_f32();
        let qn: Vec<f32> = rnd(hd).iter().map(|x| bf(1.0 + x / 2.0)).collect();
        let kn: Vec<f32> = rnd(hd).iter().map(|x| bf(1.0 + x / 2.0)).collect();
        let eps = 1e-6f32;
        putf(&mut input, &qn);
        putf(&mut input, &kn);
        putf(&mut input, &[eps]);
        let (mut wq, mut wk) = (q.clone(), k.clone());
        engine::backend::cpu::rope::rope(&mut wq, &pos, qh, hd, &cos, &sin, inverse == 1);
        engine::backend::cpu::rope::rope(&mut wk, &pos, kh, hd, &cos, &sin, inverse == 1);
        // The fused rows, their split and the join of q, k, v on the CPU.
        let s = engine::backend::QkvShape { q: qh, kv: kh, head_dim: hd };
        let fused: Vec<f32> = (0..tokens)
            .flat_map(|t| {
                let (qr, kr) = (&q[t * qh * hd..(t + 1) * qh * hd], &k[t * kh * hd..(t + 1) * kh * hd]);
                qr.iter().chain(kr).chain(&v[t * kh * hd..(t + 1) * kh * hd]).copied().collect::<Vec<_>>()
            })
            .collect();
        use engine::backend::cpu::rope::{qkv_split, Split};
        let tables = Some((&pos[..], &cos[..], &sin[..]));
        let mut split = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
        qkv_split(&fused, s, &mut split.0, &mut split.1, &mut split.2, Split { rope: tables, ..Split::default() });
        let mut normed = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
        let how = Split { rope: tables, norm: Some((&qn, &kn, eps)), kv_rows: None };
        qkv_split(&fused, s, &mut normed.0, &mut normed.1, &mut normed.2, how);
        let mut joined = vec![0.0; fused.len()];
        engine::backend::cpu::rope::qkv_join(&q, &k, &v, s, &mut joined, tables);
        want.push(RopeWant { q, k, v, wq, wk, split, normed, joined, fused });
    }
    let out = run(&exe, &input);
    let mut lines = Printed(out.lines());
    fn floats(lines: &mut Printed<'_>, tag: &str, n: usize) -> Vec<f32> {
        (0..n).map(|_| f32::from_bits(lines.next(tag)[0] as u32)).collect()
    }
    let rel = |a: &[f32], b: &[f32]| -> f64 {
        let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        (num / den).sqrt()
    };
    let same = |a: &[f32], b: &[f32]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
    for (c, w) in cases.iter().zip(&want) {
        let (wq, wk) = (&w.wq, &w.wk);
        let (tokens, qh, kh, hd, inverse) = (c.0, c.1, c.2, c.3, c.4);
        let (qw, kw) = (qh * hd, kh * hd);
        let row = qw + 2 * kw;
        // Columns [a, b) of each fused row.
        let cols = |x: &[f32], a: usize, b: usize| -> Vec<f32> {
            (0..tokens).flat_map(|t| x[t * row + a..t * row + b].to_vec()).collect()
        };
        for kernel in ["rope8", "rope"] {
            let (fq, fk) = (floats(&mut lines, "Q", wq.len()), floats(&mut lines, "K", wk.len()));
            let (sq, sk) = (floats(&mut lines, "Q", wq.len()), floats(&mut lines, "K", wk.len()));
            assert!(
                fq.iter().zip(&sq).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{kernel} {c:?}: q, one launch vs two"
            );
            assert!(
                fk.iter().zip(&sk).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{kernel} {c:?}: k, one launch vs two"
            );
            let (eq, ek) = (rel(&fq, wq), rel(&fk, wk));
            println!("{kernel} {c:?}: q {eq:.2e}, k {ek:.2e} against the CPU");
            assert!(eq < 4e-3 && ek < 4e-3, "{kernel} {c:?}: q {eq:.2e}, k {ek:.2e} against the CPU");
            // The split, rotated: the CPU's split; the in-place rotation's bits
            // where that was the forward; v moved bit for bit.
            let (sq, sk, sv) = (
                floats(&mut lines, "S", w.q.len()),
                floats(&mut lines, "S", w.k.len()),
                floats(&mut lines, "S", w.v.len()),
            );
            let (eq, ek) = (rel(&sq, &w.split.0), rel(&sk, &w.split.1));
            println!("{kernel} {c:?}: split q {eq:.2e}, k {ek:.2e} against the CPU");
            assert!(eq < 4e-3 && ek < 4e-3, "{kernel} {c:?}: split q {eq:.2e}, k {ek:.2e}");
            assert!(same(&sv, &w.v), "{kernel} {c:?}: split v moved unchanged");
            if inverse == 0 {
                assert!(same(&sq, &fq) && same(&sk, &fk), "{kernel} {c:?}: split q, k as the in-place rotation");
            }
            // Unrotated: every head moved bit for bit.
            let (nq, nk, nv) = (
                floats(&mut lines, "N", w.q.len()),
                floats(&mut lines, "N", w.k.len()),
                floats(&mut lines, "N", w.v.len()),
            );
            assert!(same(&nq, &w.q) && same(&nk, &w.k) && same(&nv, &w.v), "{kernel} {c:?}: unrotated split");
            // Normalised, then rotated: the CPU's values (one more bf16
            // rounding on the GPU, of the norm's output); v unchanged.
            let (mq, mk, mv) = (
                floats(&mut lines, "M", w.q.len()),
                floats(&mut lines, "M", w.k.len()),
                floats(&mut lines, "M", w.v.len()),
            );
            let (eq, ek) = (rel(&mq, &w.normed.0), rel(&mk, &w.normed.1));
            println!("{kernel} {c:?}: normalised split q {eq:.2e}, k {ek:.2e} against the CPU");
            assert!(eq < 4e-3 && ek < 4e-3, "{kernel} {c:?}: normalised split q {eq:.2e}, k {ek:.2e}");
            assert!(same(&mv, &w.v), "{kernel} {c:?}: normalised split's v moved unchanged");
            // Into tables of rows, normalised and rotated (a Qwen3 decode
            // step): token t's k and v in row R − 1 − t (the normalised
            // split's bits), the last token's row outside (flagged, nothing
            // written), every other row untouched.
            let big = tokens + 3;
            let tq = floats(&mut lines, "T", w.q.len());
            let (tk, tv) = (floats(&mut lines, "T", big * kw), floats(&mut lines, "T", big * kw));
            assert!(same(&tq, &mq), "{kernel} {c:?}: q beside the tables");
            for (table, split) in [(&tk, &mk), (&tv, &mv)] {
                let mut want = vec![0.0f32; big * kw];
                for t in 0..tokens - 1 {
                    let r = big - 1 - t;
                    want[r * kw..(r + 1) * kw].copy_from_slice(&split[t * kw..(t + 1) * kw]);
                }
                assert!(same(table, &want), "{kernel} {c:?}: k or v in the tables' rows");
            }
            assert_eq!(lines.next("b"), vec![big as u64 + 8], "{kernel} {c:?}: the row outside the tables");
            // The join, rotated back: the CPU's join; the in-place inverse
            // rotation's bits where that was the case's direction.
            let j = floats(&mut lines, "J", w.fused.len());
            let (jq, jk, jv) = (cols(&j, 0, qw), cols(&j, qw, qw + kw), cols(&j, qw + kw, row));
            let e = rel(&j, &w.joined);
            println!("{kernel} {c:?}: join {e:.2e} against the CPU");
            assert!(e < 4e-3, "{kernel} {c:?}: join {e:.2e}");
            assert!(same(&jv, &w.v), "{kernel} {c:?}: join v moved unchanged");
            if inverse == 1 {
                assert!(same(&jq, &fq) && same(&jk, &fk), "{kernel} {c:?}: joined q, k as the in-place inverse");
            }
        }
        assert_eq!(lines.next("B"), vec![0], "{c:?}: every position is inside the table");
    }
}

/// kernels/rows.cu's copy_rows over two pairs of buffers in one launch (a KV
/// cache's keys and values) against two launches and the CPU's copy_rows,
/// bit for bit: repeated destinations (the last copy wins), distinct ones
/// (`unique`), rows of whole 16-byte vectors and odd widths, the second pair
/// at another phase, a row outside the buffers flagged and skipped.
#[test]
fn gpu_copy_rows_code_moves_two_pairs_in_one_launch_as_in_two() {
    let Some(exe) = build("rows") else { return };
    // (width, src rows, dst rows, unique, the second pair's offset)
    let cases = [(128usize, 9usize, 12usize, 0u32, 0usize), (128, 9, 12, 1, 1), (203, 5, 7, 0, 8), (1, 4, 6, 1, 3)];
    let put32 = |b: &mut Vec<u8>, v: u32| b.extend_from_slice(&v.to_le_bytes());
    let mut input = Vec::new();
    let mut want = Vec::new();
    put32(&mut input, cases.len() as u32);
    let mut seed = 0u64;
    let mut rnd = |n: usize| -> Vec<u16> {
        seed += 1;
        let s = Stream::new(9, seed, 0);
        (0..n).map(|i| half::bf16::from_f32((s.uniform(i as u64) * 2.0 - 1.0) as f32).to_bits()).collect()
    };
    for &(width, src_n, dst_n, unique, off) in &cases {
        let (mut src_rows, mut dst_rows): (Vec<u32>, Vec<u32>) = if unique == 1 {
            ((0..src_n as u32).collect(), (0..src_n as u32).map(|i| (i * 5 + 1) % dst_n as u32).collect())
        } else {
            (vec![0, src_n as u32 - 1, 3, 3, 2], vec![dst_n as u32 - 1, 0, 4, 5, 4])
        };
        if unique == 0 {
            src_rows.push(1);
            dst_rows.push(dst_n as u32); // outside: flagged, skipped
        }
        let (src, src2, dst, dst2) = (rnd(src_n * width), rnd(src_n * width), rnd(dst_n * width), rnd(dst_n * width));
        for v in [width, src_n, dst_n, src_rows.len(), unique as usize, off] {
            put32(&mut input, v as u32);
        }
        for buf in [&src, &src2, &dst, &dst2] {
            buf.iter().for_each(|x| input.extend_from_slice(&x.to_le_bytes()));
        }
        src_rows.iter().chain(&dst_rows).for_each(|&r| put32(&mut input, r));
        let f = |v: &[u16]| -> Vec<f32> { v.iter().map(|&b| f32::from(half::bf16::from_bits(b))).collect() };
        let valid: Vec<usize> = (0..src_rows.len()).filter(|&i| (dst_rows[i] as usize) < dst_n).collect();
        let (sr, dr): (Vec<u32>, Vec<u32>) = valid.iter().map(|&i| (src_rows[i], dst_rows[i])).unzip();
        let (mut w1, mut w2) = (f(&dst), f(&dst2));
        engine::backend::cpu::elementwise::copy_rows(&f(&src), &mut w1, width, &sr, &dr);
        engine::backend::cpu::elementwise::copy_rows(&f(&src2), &mut w2, width, &sr, &dr);
        let bits = |v: &[f32]| -> Vec<u64> { v.iter().map(|&x| half::bf16::from_f32(x).to_bits() as u64).collect() };
        want.push((bits(&w1), bits(&w2), if unique == 0 { dst_n as u64 + 1 } else { 0 }));
    }
    let out = run(&exe, &input);
    let mut lines = Printed(out.lines());
    for (c, (w1, w2, bad)) in cases.iter().zip(&want) {
        let mut read = |n: usize| -> Vec<u64> { (0..n).map(|_| lines.next("D")[0]).collect() };
        let (one1, one2, two1, two2) = (read(w1.len()), read(w2.len()), read(w1.len()), read(w2.len()));
        assert_eq!(&one1, w1, "{c:?}: the first pair, one launch, against the CPU");
        assert_eq!(&one2, w2, "{c:?}: the second pair, one launch, against the CPU");
        assert_eq!((&two1, &two2), (w1, w2), "{c:?}: two launches against the CPU");
        assert_eq!(lines.next("B"), vec![*bad], "{c:?}: the flag");
    }
}

/// kernels/swiglu.cu on the pair layout (gate and up as the two halves of
/// each row of one product's output, as the model's MLP lays them out)
/// against the same kernel on flat buffers, bit for bit, and both against
/// the CPU's SwiGLU: rows whose 16-byte vectors stay inside a row (widths a
/// multiple of 8, aligned), odd widths and unaligned buffers (all scalar),
/// one row (as flat).
#[test]
fn gpu_swiglu_code_on_gate_up_rows_matches_flat_buffers() {
    let Some(exe) = build("swiglu") else { return };
    // (rows, cols, off)
    let cases = [(5usize, 64usize, 0usize), (3, 24, 1), (4, 13, 0), (1, 40, 0), (7, 8, 3), (2, 4864, 0)];
    let put32 = |b: &mut Vec<u8>, v: u32| b.extend_from_slice(&v.to_le_bytes());
    let putf = |b: &mut Vec<u8>, v: &[f32]| v.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
    let mut input = Vec::new();
    let mut want = Vec::new();
    put32(&mut input, cases.len() as u32);
    let mut seed = 0u64;
    let mut rnd = |n: usize, scale: f64| -> Vec<f32> {
        seed += 1;
        let s = Stream::new(7, seed, 0);
        (0..n).map(|i| half::bf16::from_f32(((s.uniform(i as u64) * 2.0 - 1.0) * scale) as f32).to_f32()).collect()
    };
    for &(rows, cols, off) in &cases {
        let (gu, dout) = (rnd(2 * rows * cols, 8.0), rnd(rows * cols, 1.0));
        for v in [rows, cols, off] {
            put32(&mut input, v as u32);
        }
        putf(&mut input, &gu);
        putf(&mut input, &dout);
        let mut out = vec![0.0; rows * cols];
        engine::backend::cpu::elementwise::swiglu_fwd_pair(&gu, cols, &mut out);
        let mut dgu = vec![0.0; 2 * rows * cols];
        engine::backend::cpu::elementwise::swiglu_bwd_pair(&dout, &gu, cols, &mut dgu);
        want.push((out, dgu));
    }
    let out = run(&exe, &input);
    let mut lines = Printed(out.lines());
    let rel = |a: &[f32], b: &[f32]| -> f64 {
        let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        (num / den.max(1e-30)).sqrt()
    };
    for (c, (w_out, w_dgu)) in cases.iter().zip(&want) {
        let mut read =
            |tag: &str, n: usize| -> Vec<f32> { (0..n).map(|_| f32::from_bits(lines.next(tag)[0] as u32)).collect() };
        let (p_out, p_dgu) = (read("O", w_out.len()), read("G", w_dgu.len()));
        let (f_out, f_dgu) = (read("O", w_out.len()), read("G", w_dgu.len()));
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same(&p_out, &f_out), "{c:?}: out, pair layout vs flat buffers");
        assert!(same(&p_dgu, &f_dgu), "{c:?}: dgu, pair layout vs flat buffers");
        let (eo, eg) = (rel(&p_out, w_out), rel(&p_dgu, w_dgu));
        println!("swiglu {c:?}: out {eo:.2e}, dgu {eg:.2e} against the CPU");
        assert!(eo < 8e-3 && eg < 8e-3, "{c:?}: out {eo:.2e}, dgu {eg:.2e} against the CPU");
    }
}

/// kernels/logprob.cu, the fast kernels and the scalar reference kernels, on
/// bf16 and on fp32 logits at element offsets (every 16-byte phase: head,
/// vectors in groups of 4, tail), against the CPU's `logprob_fwd` /
/// `logprob_bwd` on the same values: logp, lse and the entropy within 1e-5
/// (issue 7's fp32 rule), dz to its storage's rounding; IGNORE rows (no
/// one-hot term), a row with no coefficient (zeroed), and a target outside
/// the vocabulary (logp NaN, its dz row NaN).
#[test]
fn gpu_logprob_code_on_bf16_and_fp32_logits_matches_the_cpu() {
    use engine::backend::cpu::logprob::{logprob_bwd, logprob_fwd};
    use engine::backend::IGNORE;
    let Some(exe) = build("logprob") else { return };
    // (rows, vocab, off, fp32, entropy, temperature)
    let cases: [(usize, usize, u32, bool, bool, f32); 7] = [
        (5, 37, 1, false, true, 0.7),
        (5, 37, 3, true, true, 1.0),
        (5, 37, 2, true, false, 0.7),
        (2, 9001, 5, false, true, 1.0),
        (2, 5003, 1, true, true, 0.7),
        (2, 5003, 0, true, false, 1.0),
        (1, 1, 0, true, true, 1.0),
    ];
    let s = Stream::new(7, 1, 0);
    let mut input = Vec::new();
    let put32 = |b: &mut Vec<u8>, v: u32| b.extend_from_slice(&v.to_le_bytes());
    let putf = |b: &mut Vec<u8>, v: &[f32]| v.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
    put32(&mut input, cases.len() as u32);
    let mut want = Vec::new();
    let mut draw = 0u64;
    for &(rows, vocab, off, fp32, entropy, t) in &cases {
        let mut u = || {
            draw += 1;
            s.uniform(draw) as f32
        };
        // Logits of a few units, fp32 values that bf16 cannot hold (the fp32
        // path must read them whole); rounded to bf16 for the bf16 cases.
        let z: Vec<f32> = (0..rows * vocab)
            .map(|_| {
                let x = 6.0 * u() - 3.0;
                if fp32 {
                    x
                } else {
                    half::bf16::from_f32(x).to_f32()
                }
            })
            .collect();
        // Row 1 IGNORE, row 2 without coefficients, row 3 outside the vocabulary.
        let mut targets: Vec<u32> = (0..rows).map(|_| (u() * vocab as f32) as u32 % vocab as u32).collect();
        let mut coef: Vec<f32> = (0..rows).map(|_| u() - 0.5).collect();
        let mut ent_coef: Vec<f32> = (0..rows).map(|_| 0.1 * (u() - 0.5)).collect();
        if rows >= 4 {
            targets[1] = IGNORE;
            (coef[2], ent_coef[2]) = (0.0, 0.0);
            targets[3] = vocab as u32 + 3;
        }
        for v in [rows as u32, vocab as u32, off, fp32 as u32, entropy as u32] {
            put32(&mut input, v);
        }
        putf(&mut input, &[1.0 / t]);
        putf(&mut input, &z);
        targets.iter().for_each(|&y| put32(&mut input, y));
        putf(&mut input, &coef);
        putf(&mut input, &ent_coef);
        // The CPU on the same values, the row outside the vocabulary as IGNORE.
        let cpu_targets: Vec<u32> = targets.iter().map(|&y| if y as usize >= vocab { IGNORE } else { y }).collect();
        let (mut logp, mut lse, mut ent) = (vec![0.0; rows], vec![0.0; rows], vec![0.0; rows]);
        logprob_fwd(&z, &cpu_targets, vocab, 1.0 / t, &mut logp, &mut lse, entropy.then_some(&mut ent[..]));
        let mut dz = z.clone();
        let e = entropy.then_some((&ent_coef[..], &ent[..]));
        logprob_bwd(&mut dz, &cpu_targets, vocab, 1.0 / t, &lse, &coef, e);
        want.push((targets, logp, lse, ent, dz));
    }
    let text = run(&exe, &input);
    let mut lines = Printed(text.lines());
    for (&(rows, vocab, _, fp32, entropy, _), (targets, logp, lse, ent, dz)) in cases.iter().zip(&want) {
        let name = format!("rows {rows} vocab {vocab} {}", if fp32 { "fp32" } else { "bf16" });
        for kernel in ["fast", "reference"] {
            let mut read = |tag: &str, n: usize| -> Vec<f32> {
                (0..n).map(|_| f32::from_bits(lines.next(tag)[0] as u32)).collect()
            };
            let (g_logp, g_lse) = (read("L", rows), read("S", rows));
            let g_ent = if entropy { read("H", rows) } else { vec![0.0; rows] };
            let g_dz = read("D", rows * vocab);
            let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * b.abs().max(1.0);
            for r in 0..rows {
                let what = format!("{name} {kernel} row {r}");
                assert!(close(g_lse[r], lse[r]), "{what}: lse {} vs {}", g_lse[r], lse[r]);
                if entropy {
                    assert!(close(g_ent[r], ent[r]), "{what}: entropy {} vs {}", g_ent[r], ent[r]);
                }
                let row = &g_dz[r * vocab..(r + 1) * vocab];
                if targets[r] != IGNORE && targets[r] as usize >= vocab {
                    assert!(g_logp[r].is_nan() && row.iter().all(|x| x.is_nan()), "{what}: NaN for a bad target");
                    continue;
                }
                assert!(close(g_logp[r], logp[r]), "{what}: logp {} vs {}", g_logp[r], logp[r]);
                // dz to the rounding of its storage (bf16: half an ulp, 2^-9).
                let want_row = &dz[r * vocab..(r + 1) * vocab];
                let scale = want_row.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                let rel = if fp32 { 1e-5 } else { 2f32.powi(-8) };
                for (i, (&g, &w)) in row.iter().zip(want_row).enumerate() {
                    assert!(
                        (g - w).abs() <= rel * w.abs() + 1e-6 * scale,
                        "{what}: dz[{i}] {g} vs {w} (row max {scale})"
                    );
                }
            }
        }
    }
}
