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
//!   `policy_loss` on `common::policy_cases`.
//!
//! Needs g++ (C++20); without it each test says so on one line and passes.

mod common;

use common::policy_cases::{policy_cases, policy_mismatches};
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

/// Runs an emulator on `input`, returns what it printed.
fn run(exe: &Path, input: &[u8]) -> String {
    let mut child = Command::new(exe).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
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
    let mut lines = text.lines();
    let hex = |s: &str| u64::from_str_radix(s, 16).unwrap();

    for t in &tuples {
        let f: Vec<&str> = lines.next().expect("a K line per stream").split(' ').collect();
        assert_eq!(f[0], "K");
        let stream = Stream::new(t[0], t[1], t[2]);
        assert_eq!(hex(f[1]), stream.key(), "rng.h's key of {t:?}");
        assert_eq!(hex(f[2]), stream.uniform(t[3]).to_bits(), "rng.h's draw of {t:?}");
    }
    let mut bad = Vec::new();
    for c in &cases {
        let got: Vec<Sampled> = (0..c.rows())
            .map(|_| {
                let f: Vec<&str> = lines.next().expect("a T line per row").split(' ').collect();
                assert_eq!(f[0], "T");
                Sampled { token: hex(f[1]) as u32, logprob: f32::from_bits(hex(f[2]) as u32) }
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
    let mut lines = text.lines();
    let mut field = |tag: &str| -> Vec<u64> {
        let line = lines.next().unwrap_or_else(|| panic!("a {tag} line"));
        let mut f = line.split(' ');
        assert_eq!(f.next(), Some(tag), "{line}");
        f.map(|x| u64::from_str_radix(x, 16).unwrap()).collect()
    };
    let mut bad = Vec::new();
    for c in &cases {
        let n = c.logp.len();
        let coef: Vec<f32> = (0..n).map(|_| f32::from_bits(field("C")[0] as u32)).collect();
        let ent: Option<Vec<f32>> =
            (c.cfg.entropy_coef != 0.0).then(|| (0..n).map(|_| f32::from_bits(field("E")[0] as u32)).collect());
        let rows: Vec<f64> = (0..c.advantages.len()).flat_map(|_| field("S")).map(f64::from_bits).collect();
        bad.extend(policy_mismatches(c, &coef, ent.as_deref(), &rows));
        let st = c.expected().stats;
        println!(
            "{}: {} tokens, clipped low/high/dual {}/{}/{}",
            c.name, st.tokens, st.clipped_low, st.clipped_high, st.clipped_dual
        );
    }
    assert!(bad.is_empty(), "{} differences:\n{}", bad.len(), bad.join("\n"));
}
