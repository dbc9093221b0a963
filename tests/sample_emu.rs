//! The GPU sampler's own code (kernels/sample.cu) and the random stream it
//! shares with the CPU (kernels/include/rng.h), built for the host by
//! tools/sample_emu (one OS thread per CUDA thread, barriers and warp
//! shuffles emulated) and compared with the CPU sampler on the cases of
//! `common::sampling`: the same tokens, the same log-probabilities, and the
//! same stream keys and uniform numbers, bit for bit. The GPU is scarce; this
//! checks the kernel's logic on every change. Needs g++ (C++20); without it
//! the test says so on one line and passes.

mod common;

use common::sampling::{cases, mismatches};
use engine::rollout::{Sampled, Stream};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn build() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
    let out = std::env::temp_dir().join(format!("engine-sample-emu-{}", std::process::id()));
    let emu = root.join("tools/sample_emu");
    let status = Command::new(&cxx)
        .args(["-std=c++20", "-O2", "-ffp-contract=off", "-fno-strict-aliasing", "-pthread", "-include"])
        .arg(emu.join("shim.h"))
        .arg("-I")
        .arg(root.join("tools/flash_attention_emu")) // its host stand-in for cuda_bf16.h
        .arg("-I")
        .arg(root.join("kernels/include"))
        .arg("-o")
        .arg(&out)
        .arg(emu.join("main.cpp"))
        .status();
    match status {
        Ok(s) if s.success() => Some(out),
        Ok(s) => panic!("{cxx} failed to build tools/sample_emu ({s})"),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "skip the GPU sampler's emulation: cannot run {cxx}: {e}");
            None
        }
    }
}

#[test]
fn gpu_sampler_code_draws_the_cpu_samplers_tokens_and_numbers() {
    let Some(exe) = build() else { return };
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

    let mut child = Command::new(&exe).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&exe);
    assert!(out.status.success(), "tools/sample_emu failed ({})", out.status);
    let text = String::from_utf8(out.stdout).unwrap();
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
