//! The CUDA backend's index buffers keep a host copy of what `write_idx`
//! wrote, so attention plans on the host without copying `cu_seqlens` back;
//! the flash kernels keep the last tile table. Checked: the copy equals the
//! device after partial writes, and attention through the backend, with
//! packings alternating (the cached table replaced and rebuilt), gives the
//! bits the launcher gives when it reads `cu_seqlens` back from the device.

use super::util::{gpu, random_bf16};
use engine::backend::cuda::Cuda;
use engine::backend::{AttnShape, Backend, Span};

#[test]
fn index_buffers_keep_a_host_copy_equal_to_the_device() {
    if gpu("index_buffers_keep_a_host_copy_equal_to_the_device").is_none() {
        return;
    }
    let be = Cuda::new(0).unwrap();
    let mut idx = be.alloc_idx(10);
    be.write_idx(&[5, 6, 7, 8, 9], &mut idx);
    be.write_idx(&[1, 2, 3], &mut idx);
    let all = Cuda::idx_view(&idx, Span::new(0, 10));
    let dev = be.gpu.stream.clone_dtoh(&all.view()).unwrap();
    assert_eq!(dev, vec![1, 2, 3, 8, 9, 0, 0, 0, 0, 0]);
    assert_eq!(all.host(), dev.as_slice());
    assert_eq!(Cuda::idx_view(&idx, Span::new(2, 3)).host(), &[3, 8, 9]);
}

#[test]
fn attention_with_host_copies_and_cached_tiles_gives_the_read_back_bits() {
    let Some(g) = gpu("attention_with_host_copies_and_cached_tiles_gives_the_read_back_bits") else { return };
    let be = Cuda::new(0).unwrap();
    let s = AttnShape { n_heads: 4, n_kv_heads: 2, head_dim: 64, scale: 0.125 };
    let tokens = 300;
    let (q, k, v) = (
        be.upload(random_bf16(tokens * 4 * 64, 1)),
        be.upload(random_bf16(tokens * 2 * 64, 2)),
        be.upload(random_bf16(tokens * 2 * 64, 3)),
    );
    let packings: [&[u32]; 2] = [&[0, 100, 163, 300], &[0, 1, 65, 300]];
    let mut cu = be.alloc_idx(4);
    let run_backend = |cu: &engine::backend::cuda::DIdx| {
        let mut out = be.alloc(tokens * 4 * 64);
        let mut lse = be.alloc_f32(tokens * 4);
        be.attention_fwd(
            &s,
            Cuda::idx_view(cu, Span::new(0, 4)),
            Cuda::view(&q, Span::new(0, tokens * 4 * 64)),
            Cuda::view(&k, Span::new(0, tokens * 2 * 64)),
            Cuda::view(&v, Span::new(0, tokens * 2 * 64)),
            Cuda::view_mut(&mut out, Span::new(0, tokens * 4 * 64)),
            Cuda::view_mut(&mut lse, Span::new(0, tokens * 4)),
        );
        (be.read(Cuda::view(&out, Span::new(0, tokens * 4 * 64))), be.read(Cuda::view(&lse, Span::new(0, tokens * 4))))
    };
    let mut first = Vec::new();
    for round in 0..2 {
        for (i, p) in packings.iter().enumerate() {
            be.write_idx(p, &mut cu);
            let got = run_backend(&cu);
            if round == 0 {
                // The launcher on a plain device array: cu_seqlens read back, a fresh table.
                let plain = g.stream.clone_htod(*p).unwrap();
                let mut out = g.stream.alloc_zeros::<engine::backend::cuda::Bf16>(tokens * 4 * 64).unwrap();
                let mut lse = g.stream.alloc_zeros::<f32>(tokens * 4).unwrap();
                g.attention_fwd(&s, &plain, &bf16(&q), &bf16(&k), &bf16(&v), &mut out, &mut lse).unwrap();
                let want_out: Vec<f32> = g.stream.clone_dtoh(&out).unwrap().iter().map(|x| x.to_f32()).collect();
                let want_lse = g.stream.clone_dtoh(&lse).unwrap();
                assert!(got.0 == want_out && got.1 == want_lse, "packing {i}: the backend's bits differ");
                first.push(got);
            } else {
                assert!(got == first[i], "packing {i}: a cached tile table gave other bits");
            }
        }
    }
}

fn bf16(b: &engine::backend::cuda::DBuf) -> cudarc::driver::CudaView<'_, engine::backend::cuda::Bf16> {
    match b {
        engine::backend::cuda::DBuf::Bf16(x) => x.slice(..),
        engine::backend::cuda::DBuf::F32(_) => panic!("expected a bf16 buffer"),
    }
}

/// copy_rows through the backend: destinations it knows to be distinct (its
/// host copy) skip the kernel's duplicate scan; with a repeated destination
/// the last copy still wins, as on the CPU.
#[test]
fn backend_copy_rows_with_distinct_and_repeated_destinations() {
    if gpu("backend_copy_rows_with_distinct_and_repeated_destinations").is_none() {
        return;
    }
    let be = Cuda::new(0).unwrap();
    let cpu = engine::backend::cpu::Cpu;
    let width = 24;
    let src = random_bf16(10 * width, 9);
    for (src_rows, dst_rows) in
        [(vec![0u32, 3, 5, 9, 2], vec![7u32, 1, 4, 0, 6]), (vec![0, 3, 5, 9, 2], vec![7, 1, 7, 0, 1])]
    {
        let n = src_rows.len();
        let mut want = random_bf16(8 * width, 10);
        let start = want.clone();
        let (mut si, mut di) = (cpu.alloc_idx(n), cpu.alloc_idx(n));
        cpu.write_idx(&src_rows, &mut si);
        cpu.write_idx(&dst_rows, &mut di);
        cpu.copy_rows(&src, &mut want, width, &si, &di);

        let s = be.upload(src.clone());
        let mut d = be.upload(start);
        let (mut gs, mut gd) = (be.alloc_idx(n), be.alloc_idx(n));
        be.write_idx(&src_rows, &mut gs);
        be.write_idx(&dst_rows, &mut gd);
        let (sa, da) = (Span::new(0, 10 * width), Span::new(0, 8 * width));
        be.copy_rows(
            Cuda::view(&s, sa),
            Cuda::view_mut(&mut d, da),
            width,
            Cuda::idx_view(&gs, Span::new(0, n)),
            Cuda::idx_view(&gd, Span::new(0, n)),
        );
        assert_eq!(be.read(Cuda::view(&d, da)), want, "destinations {dst_rows:?}");
    }
}
