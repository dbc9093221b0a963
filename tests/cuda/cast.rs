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
}
