//! Build script. Without the `cuda` feature it does nothing, so the default
//! build needs only Rust. With it (DESIGN.md §2, issue 6):
//! - finds nvcc (`NVCC`, `CUDA_HOME`/`CUDA_PATH`, `PATH`, `/usr/local/cuda`,
//!   or the toolkit `tools/setup-cuda.sh` installs in `.cuda/`);
//! - compiles each `kernels/*.cu` into one fatbin for sm_80 and sm_90a plus
//!   compute_90 PTX (files named `*_sm90.cu` hold Hopper-only code and get
//!   sm_90a alone), embedded in the binary by `include_bytes!`;
//! - keeps ptxas's resource report (registers, shared memory, spills) in
//!   `OUT_DIR/ptxas-report.txt` and fails on a spill past a kernel's
//!   allowance (a spill would slow a memory-bound kernel or break a
//!   register split, and no GPU may run the build before it lands);
//! - runs bindgen over `kernels/include/*.h`, so kernel parameter structs
//!   have one definition for CUDA and Rust.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    for v in ["NVCC", "CUDA_HOME", "CUDA_PATH", "PATH"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    #[cfg(feature = "cuda")]
    cuda::build();
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// One clear message and a failed build (no panic backtrace).
    fn fail(msg: &str) -> ! {
        eprintln!("\nerror: {msg}\n");
        std::process::exit(1);
    }

    fn find_nvcc(root: &Path) -> Option<PathBuf> {
        let exe = |p: PathBuf| p.is_file().then_some(p);
        if let Some(p) = std::env::var_os("NVCC") {
            return exe(PathBuf::from(p));
        }
        for v in ["CUDA_HOME", "CUDA_PATH"] {
            if let Some(p) = std::env::var_os(v).and_then(|h| exe(PathBuf::from(h).join("bin/nvcc"))) {
                return Some(p);
            }
        }
        if let Some(p) =
            std::env::var_os("PATH").and_then(|path| std::env::split_paths(&path).find_map(|d| exe(d.join("nvcc"))))
        {
            return Some(p);
        }
        exe(PathBuf::from("/usr/local/cuda/bin/nvcc")).or_else(|| exe(root.join(".cuda/nvidia/cu13/bin/nvcc")))
    }

    /// The gencode flags of a kernel file.
    fn targets(name: &str) -> Vec<&'static str> {
        if name.ends_with("_sm90") {
            vec!["-gencode=arch=compute_90a,code=sm_90a"]
        } else {
            vec![
                "-gencode=arch=compute_80,code=sm_80",
                "-gencode=arch=compute_90a,code=sm_90a",
                "-gencode=arch=compute_90,code=compute_90",
            ]
        }
    }

    pub fn build() {
        let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
        let nvcc = find_nvcc(&root).unwrap_or_else(|| {
            fail(
                "the `cuda` feature needs nvcc (CUDA 13.0). Run `source tools/setup-cuda.sh`, which installs it \
                 from PyPI into .cuda/, or point NVCC or CUDA_HOME at a toolkit.",
            )
        });
        let kernels = root.join("kernels");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&kernels)
            .unwrap_or_else(|e| fail(&format!("{}: {e}", kernels.display())))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cu"))
            .collect();
        files.sort();

        // nvcc runs per file, all files at once (each is single-threaded).
        let jobs: Vec<_> = files
            .iter()
            .map(|file| {
                let name = file.file_stem().and_then(|s| s.to_str()).expect("kernel file names are UTF-8").to_string();
                let fatbin = out.join(format!("{name}.fatbin"));
                let mut cmd = Command::new(&nvcc);
                cmd.args(["-fatbin", "-O3", "-std=c++17", "--expt-relaxed-constexpr", "-Xptxas=-v", "-lineinfo"])
                    .args(targets(&name))
                    .arg("-I")
                    .arg(kernels.join("include"))
                    .arg("-o")
                    .arg(&fatbin)
                    .arg(file);
                let child = cmd
                    .stderr(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap_or_else(|e| fail(&format!("cannot run {}: {e}", nvcc.display())));
                (name, fatbin, child)
            })
            .collect();
        let mut report = String::new();
        let mut modules = String::from("/// `(file stem, fatbin)` of every `kernels/*.cu`, built by build.rs.\n");
        modules.push_str("pub const MODULES: &[(&str, &[u8])] = &[\n");
        for (name, fatbin, child) in jobs {
            let done = child.wait_with_output().unwrap_or_else(|e| fail(&format!("nvcc on {name}.cu: {e}")));
            let text = format!("{}{}", String::from_utf8_lossy(&done.stdout), String::from_utf8_lossy(&done.stderr));
            if !done.status.success() {
                fail(&format!("nvcc failed on kernels/{name}.cu:\n{text}"));
            }
            report.push_str(&format!("==== kernels/{name}.cu\n{text}"));
            spills(&name, &text);
            register_split(&name, &text);
            modules.push_str(&format!("    (\"{name}\", include_bytes!(\"{}\")),\n", fatbin.display()));
        }
        modules.push_str("];\n");
        std::fs::write(out.join("ptxas-report.txt"), &report).expect("OUT_DIR is writable");
        std::fs::write(out.join("modules.rs"), modules).expect("OUT_DIR is writable");
        println!("cargo:rustc-env=ENGINE_PTXAS_REPORT={}", out.join("ptxas-report.txt").display());
        params(&kernels.join("include"), &out);
    }

    /// The warp-specialised kernels (`*_ws_*`) split the SM's registers with
    /// `setmaxnreg` (kernels/flash_fwd_ws.cuh: 128 producer threads at 24,
    /// 256 consumer threads at 240), which only adds up if ptxas gave each of
    /// the 384 threads 168 at launch; with fewer, `setmaxnreg.inc` would wait
    /// forever. A build whose ptxas allots otherwise fails here, not on a GPU.
    /// Also a `cargo:warning` where ptxas serialises a kernel's wgmma.
    fn register_split(file: &str, report: &str) {
        let mut function = String::new();
        for line in report.lines() {
            if let Some(rest) = line.split("Compiling entry function '").nth(1) {
                function = rest.replace('\'', "");
            }
            if line.contains("Potential Performance Loss") {
                println!("cargo:warning=kernels/{file}.cu: {}", line.trim());
            }
            let Some(n) = line.split("Used ").nth(1).and_then(|r| r.split(" registers").next()) else { continue };
            if function.contains("_ws_") && function.ends_with("sm_90a") && n != "168" {
                fail(&format!(
                    "kernels/{file}.cu: {function}: ptxas allots {n} registers a thread at launch; the \
                     setmaxnreg split of the warp-specialised kernels (24 + 2 × 240 per 128 threads) needs 168"
                ));
            }
        }
    }

    /// Kernels allowed to spill, with the most bytes each may store: the
    /// warp-specialised backward at head_dim 128 gives its producer
    /// warpgroup 24 registers (its consumers need 240), and the dq writer
    /// there keeps part of its loop state in local memory (a few loads per
    /// 64-query step, L1-resident; kernels/flash_bwd_ws.cuh); the fused
    /// mma.sync backward at head_dim 128 holds dk and dv (128 registers)
    /// through the loop and, for sm_80, stores 16 bytes of loop state (none
    /// for sm_90a).
    const SPILLS_ALLOWED: &[(&str, u32)] =
        &[("flash_attention_bwd_ws_d128", 64), ("flash_attention_bwd_fused_d128", 16)];

    /// A failed build, naming each kernel and target that spills registers
    /// past its allowance ([`SPILLS_ALLOWED`]).
    fn spills(file: &str, report: &str) {
        let mut bad = Vec::new();
        let mut function = String::new();
        for line in report.lines() {
            if let Some(rest) = line.split("Compiling entry function '").nth(1) {
                function = rest.replace('\'', "");
            }
            if line.contains("spill stores") && !line.contains(" 0 bytes spill stores, 0 bytes spill loads") {
                let stores = line.split(" bytes spill stores").next().and_then(|l| l.rsplit(' ').next());
                let stores: u32 = stores.and_then(|n| n.parse().ok()).unwrap_or(u32::MAX);
                let allowed = SPILLS_ALLOWED.iter().any(|&(f, most)| function.starts_with(f) && stores <= most);
                if !allowed {
                    bad.push(format!("kernels/{file}.cu: {function}: {}", line.trim()));
                }
            }
        }
        if !bad.is_empty() {
            fail(&format!("register spills past the allowance (build.rs SPILLS_ALLOWED):\n{}", bad.join("\n")));
        }
    }

    /// bindgen over every header in `kernels/include/`.
    fn params(include: &Path, out: &Path) {
        let mut headers: Vec<PathBuf> = std::fs::read_dir(include)
            .unwrap_or_else(|e| fail(&format!("{}: {e}", include.display())))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "h"))
            .collect();
        headers.sort();
        let mut b = bindgen::Builder::default()
            .use_core()
            .derive_default(true)
            .derive_debug(true)
            .layout_tests(true)
            .allowlist_type(".*Params")
            .allowlist_var("ENGINE_.*");
        for h in &headers {
            b = b.header(h.display().to_string());
        }
        let bindings = b.generate().unwrap_or_else(|e| {
            fail(&format!("bindgen on kernels/include/*.h failed ({e}); it needs libclang: run tools/setup-cuda.sh"))
        });
        bindings.write_to_file(out.join("params.rs")).expect("OUT_DIR is writable");
    }
}
