//! Decode-attention plans shared by the emulator test (tests/kernel_emu.rs)
//! and the GPU tests (tests/cuda/attention.rs).

use engine::backend::DecodeSeq;

/// The plan of sequences of `lens` whose own positions start at slot
/// `slots[b]` and whose first `prefix[b].1` positions are shared-prefix rows
/// starting at row `prefix[b].0` of slot `prefix_slot` (slots of `capacity`
/// rows).
pub fn plan_in_slots(
    lens: &[u32],
    slots: &[u32],
    prefix: &[(u32, u32)],
    prefix_slot: u32,
    capacity: usize,
) -> Vec<DecodeSeq> {
    let cap = capacity as u32;
    (0..lens.len())
        .map(|b| DecodeSeq {
            prefix_row: prefix_slot * cap + prefix[b].0,
            prefix_len: prefix[b].1,
            own_row: slots[b] * cap,
            len: lens[b],
        })
        .collect()
}

/// Sequences of 1 to 257 keys (one warp's chunk of the grouped kernel,
/// several, every warp, partial chunks) in slots out of order of a cache of
/// 7 slots of 264 rows. Sequences 1, 2 and 3 read their first 130, 6 and 1
/// positions from slot 6 (as a prompt's samples do; lengths that split a
/// chunk of keys), and sequence 3 has no position of its own but the new
/// one. Returns the plan and the cache's rows.
pub fn grouped_plan() -> (Vec<DecodeSeq>, usize) {
    let lens = [1u32, 257, 33, 2, 200];
    let slots = [3u32, 0, 5, 1, 4];
    let prefix = [(0u32, 0u32), (0, 130), (130, 6), (136, 1), (0, 0)];
    let (capacity, n_slots) = (264usize, 7usize);
    (plan_in_slots(&lens, &slots, &prefix, 6, capacity), n_slots * capacity)
}

/// A cache of `n_rows` rows of `kv_row` that holds `src`'s rows at the rows
/// the plan reads and NaN everywhere else, so a read past a sequence's
/// length or of a wrong row shows.
pub fn cache_for(plan: &[DecodeSeq], n_rows: usize, kv_row: usize, src: &[f32]) -> Vec<f32> {
    let mut cache = vec![f32::NAN; n_rows * kv_row];
    for d in plan {
        for j in 0..d.len {
            let r = d.row(j) as usize * kv_row..(d.row(j) as usize + 1) * kv_row;
            cache[r.clone()].copy_from_slice(&src[r]);
        }
    }
    cache
}
