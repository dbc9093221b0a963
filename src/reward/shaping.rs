//! Length-based reward shaping, added to the verifiable reward.

/// DAPO's soft overlong punishment (Yu et al. 2025, eq. 13, `R_length`),
/// scaled by `penalty_factor`. With `L = max_len` and `B = buffer`:
///
/// - `0` when `len ≤ L − B`;
/// - `−(len − (L − B)) / B · penalty_factor` when `L − B < len ≤ L`, a ramp
///   reaching `−penalty_factor` at `len = L`;
/// - `−penalty_factor` when `len > L` (a truncated response).
///
/// `buffer = 0` leaves only the hard step at `max_len`; a `buffer` larger
/// than `max_len` ramps from length 0.
pub fn overlong_penalty(response_len: usize, max_len: usize, buffer: usize, penalty_factor: f64) -> f64 {
    let soft_start = max_len.saturating_sub(buffer);
    if response_len > max_len {
        -penalty_factor
    } else if response_len <= soft_start {
        0.0
    } else {
        // Here buffer > 0: soft_start < response_len ≤ max_len.
        -((response_len - soft_start) as f64) / buffer as f64 * penalty_factor
    }
}

/// A linear penalty for running past a target length:
/// `−coef · max(0, len − target) / target`, i.e. `−coef` per target length
/// of excess ("twice the target" costs `coef`). `target_len = 0` turns
/// the penalty off (0.0), as a zero target would divide by zero.
pub fn length_penalty(response_len: usize, target_len: usize, coef: f64) -> f64 {
    if target_len == 0 {
        return 0.0;
    }
    -coef * response_len.saturating_sub(target_len) as f64 / target_len as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlong_boundaries() {
        // DAPO's setting: 20480 max, 4096 buffer, factor 1.
        let (max, buf) = (20480, 4096);
        assert_eq!(overlong_penalty(0, max, buf, 1.0), 0.0);
        assert_eq!(overlong_penalty(16384, max, buf, 1.0), 0.0);
        assert_eq!(overlong_penalty(16385, max, buf, 1.0), -1.0 / 4096.0);
        assert_eq!(overlong_penalty(18432, max, buf, 1.0), -0.5);
        assert_eq!(overlong_penalty(20480, max, buf, 1.0), -1.0);
        assert_eq!(overlong_penalty(20481, max, buf, 1.0), -1.0);
        assert_eq!(overlong_penalty(1_000_000, max, buf, 1.0), -1.0);
    }

    #[test]
    fn overlong_factor_and_degenerate_buffers() {
        assert_eq!(overlong_penalty(90, 100, 20, 0.5), -0.25);
        assert_eq!(overlong_penalty(100, 100, 20, 0.5), -0.5);
        assert_eq!(overlong_penalty(101, 100, 20, 0.5), -0.5);
        // No buffer: a hard step after max_len.
        assert_eq!(overlong_penalty(100, 100, 0, 1.0), 0.0);
        assert_eq!(overlong_penalty(101, 100, 0, 1.0), -1.0);
        // Buffer past max_len: the ramp starts at 0 and is still −(len/B)·f.
        assert_eq!(overlong_penalty(0, 10, 20, 1.0), 0.0);
        assert_eq!(overlong_penalty(5, 10, 20, 1.0), -0.25);
        assert_eq!(overlong_penalty(11, 10, 20, 1.0), -1.0);
    }

    #[test]
    fn length_penalty_values() {
        assert_eq!(length_penalty(0, 100, 1.0), 0.0);
        assert_eq!(length_penalty(100, 100, 1.0), 0.0);
        assert_eq!(length_penalty(101, 100, 1.0), -0.01);
        assert_eq!(length_penalty(150, 100, 0.2), -0.1);
        assert_eq!(length_penalty(200, 100, 0.5), -0.5);
        assert_eq!(length_penalty(500, 0, 1.0), 0.0);
    }
}
