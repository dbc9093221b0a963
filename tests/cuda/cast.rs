//! kernels/cast.cu.

use super::util::gpu;
use engine::backend::cuda::Bf16;

#[test]
fn casts_round_trip() {
    let Some(g) = gpu("casts_round_trip") else { return };
    let x: Vec<f32> = (0..1000 + 7).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
    let xd = g.stream.clone_htod(&x).unwrap();
    let mut b = g.stream.alloc_zeros::<Bf16>(x.len()).unwrap();
    let mut back = g.stream.alloc_zeros::<f32>(x.len()).unwrap();
    g.cast_to_bf16(&xd, &mut b).unwrap();
    g.cast_to_f32(&b, &mut back).unwrap();
    let got = g.stream.clone_dtoh(&back).unwrap();
    let want: Vec<f32> = x.iter().map(|&v| Bf16::from_f32(v).to_f32()).collect();
    assert_eq!(got, want, "the kernel rounds to nearest even, as half::bf16 does");

    // Views at offsets: aligned together (vectors after a scalar head) and not.
    for (n, of, ob) in [(5000usize, 0usize, 0usize), (5000, 2, 4), (5000, 1, 0), (5000, 0, 3), (9, 4, 0)] {
        let x: Vec<f32> = (0..n + of).map(|i| (i as f32 * 0.731).cos() * 5.0).collect();
        let xd = g.stream.clone_htod(&x).unwrap();
        let mut b = g.stream.alloc_zeros::<Bf16>(n + ob).unwrap();
        let mut back = g.stream.alloc_zeros::<f32>(n + of).unwrap();
        g.cast_to_bf16(&xd.slice(of..of + n), &mut b.slice_mut(ob..ob + n)).unwrap();
        g.cast_to_f32(&b.slice(ob..ob + n), &mut back.slice_mut(of..of + n)).unwrap();
        let got = g.stream.clone_dtoh(&back).unwrap();
        let want: Vec<f32> = x[of..].iter().map(|&v| Bf16::from_f32(v).to_f32()).collect();
        assert_eq!(got[of..], want[..], "casts of {n} at offsets {of} (f32), {ob} (bf16)");
        assert!(got[..of].iter().all(|&v| v == 0.0), "nothing written before the view");
    }
}
