//! A vectorisable `exp` for the CPU hot loops (softmax rows over the
//! vocabulary, attention probabilities). glibc's `expf` is a scalar call that
//! stops the loop from vectorising; this one is plain arithmetic, so LLVM
//! vectorises it, and it gives the same bits whatever the vector width (no
//! fused multiply-adds are introduced). Accuracy: within 2 ulp of the true
//! value over the whole f32 range (checked against f64 below).

/// e^x for f32, for x ≤ 88.3 (above, it returns e^88.3 ≈ 2.2e38); below
/// about −87.3 it returns ≈ 1.2e-38 rather than underflowing to 0. Callers
/// use it on shifted softmax arguments (≤ 0) and SiLU inputs.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in a part exact in f32 and a correction (Cody–Waite).
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding then subtracting 1.5·2^23 rounds to the nearest integer using
    // only float adds.
    const ROUND: f32 = 12_582_912.0;
    // Keeps n = round(x·log2 e) within [−126, 127], a normal power of two.
    let x = x.clamp(-87.3, 88.3);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // Minimax polynomial for e^r on |r| ≤ ln2/2 (Cephes expf coefficients).
    let p = 1.987_569_1e-4f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let p = p * r * r + r + 1.0;
    // 2^n from the bits: n + 127 + 2^23 is exact in f32 and its low mantissa
    // bits hold n + 127; shifting them into the exponent field gives 2^n
    // without a float-to-int conversion (which would not vectorise).
    let biased = (n + (127.0 + 8_388_608.0)).to_bits();
    p * f32::from_bits(biased << 23)
}

const LANES: usize = 8;

/// Two sums of `f(a_j, b_j)` over a pair of equal-length rows, in f64 over
/// `LANES` independent accumulators added in a fixed order at the end; the
/// lanes let the loop vectorise and keep the result independent of threads.
#[inline(always)]
pub fn lane_sums2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> (f64, f64)) -> (f64, f64) {
    assert_eq!(a.len(), b.len(), "lane_sums2: rows differ in length");
    let (mut sa, mut sb) = ([0.0f64; LANES], [0.0f64; LANES]);
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..LANES {
            let (p, q) = f(x[k], y[k]);
            sa[k] += p;
            sb[k] += q;
        }
    }
    let (mut ta, mut tb) = (0.0, 0.0);
    for (&x, &y) in ra.iter().zip(rb) {
        let (p, q) = f(x, y);
        ta += p;
        tb += q;
    }
    for k in 0..LANES {
        ta += sa[k];
        tb += sb[k];
    }
    (ta, tb)
}

/// Two sums of `f(z_j)` over one row, as [`lane_sums2`].
#[inline(always)]
pub fn lane_sums(z: &[f32], f: impl Fn(f32) -> (f64, f64)) -> (f64, f64) {
    lane_sums2(z, z, |x, _| f(x))
}

/// `Σ_j f(z_j)` in f64 over `LANES` accumulators, as [`lane_sums2`] (one
/// accumulator set: the single-sum loops run faster without the second).
#[inline(always)]
pub fn lane_sum(z: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut acc = [0.0f64; LANES];
    let chunks = z.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for k in 0..LANES {
            acc[k] += f(c[k]);
        }
    }
    let mut total: f64 = tail.iter().map(|&v| f(v)).sum();
    for a in acc {
        total += a;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_f64_within_two_ulp() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.3 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            let ulp = (want as f32).abs() * f32::EPSILON;
            let err = (got - want).abs() / ulp as f64;
            worst = worst.max(err);
            x += 0.0137;
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37);
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
    }
}
