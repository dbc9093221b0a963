#!/usr/bin/env python3
"""Generate the loss-library reference fixtures in tests/fixtures/losses/ (DESIGN.md §4, §6).

Run from the repository root:

    python tools/make_loss_fixtures.py              # writes tests/fixtures/losses/
    python tools/make_loss_fixtures.py --out DIR    # writes somewhere else

CPU only, a few seconds, no network. Needs torch, numpy and safetensors; written and
run with python 3.11.7, torch 2.15.0 (CPU), numpy 2.4.6, safetensors 0.8.0 (the versions
actually used are recorded in every case's JSON under "generator"). Every case has its
own seed (derived from its name), torch runs single-threaded, and the safetensors files
carry no metadata, so re-running rewrites the same bytes.

How the references are written
------------------------------
Every loss is plain PyTorch *autograd* code transcribing DESIGN.md §4 in float64: the
inputs are stored as float32, the reference upcasts exactly those float32 values to
float64, computes the loss and calls backward(). No gradient is derived by hand: the
Rust side derives them by hand, this side must not. Stop-gradients (GPPO's
gradient-preserving clip, CISPO's detached ratio, GSPO's sequence ratio, k3+) are
written with .detach() exactly as the reference codebases (Klear-Reasoner, TRL, verl)
write them.

Files
-----
For each case <name>: <name>.safetensors (tensors) and <name>.json (config, the total
loss "loss" as a float64 JSON number, "stats" where the kind has them, "generator").
Dtypes: inputs float32 (int64 for integer arrays); per-token / per-sequence outputs
float64; [N,V], [N,D], [V,D] gradients float32 (computed in float64, then cast).

Common token layout: sequences are contiguous runs of tokens, `cu_seqlens` int64 [S+1];
`mask` float32 [N] of 0/1 (~20% of tokens masked at random, exactly ONE sequence fully
masked, a few sequences of length 1-3); `micro_batches` int64 [M+1] (M = 3) splits the
SEQUENCES into three micro-batches of unequal token counts. References are over the
whole optimizer step, so micro_batches does not change any number: it is there for the
Rust side to feed the step in pieces (counts are over the whole step; a sequence with
no unmasked token is left out of every count). logp_t = log_softmax(logits_t / T)[y_t].

kind "policy" (§4.2-4.4)
  inputs : logits f32[N,V], targets i64[N], mask f32[N], cu_seqlens i64[S+1],
           micro_batches i64[4], old_logp, ref_logp, sampler_logp f32[N],
           advantages, rewards f32[S]
  outputs: logp, entropy, token_loss (L_t before mask/weight), agg_weight (aggregation
           weight w_t, 0 where masked), dlogp (d loss / d logp_t with entropy held fixed),
           dentropy (d loss / d H_t; only when entropy_coef > 0) all f64[N];
           dlogits f32[N,V]
  json   : policy_loss ("ppo"|"gppo"|"cispo"|"gspo"), eps_low, eps_high, dual_clip,
           beta1, beta2, floor, cap, agg, l_max, kl (null | {kind, coef}), entropy_coef,
           tis_cap, positive_nll_coef, correct_score, temperature, loss, stats
           (clip_frac_low/high/dual, ratio_mean/max, ppo_kl, entropy_mean,
           sampler_abs_diff_mean/max, kl_mean).
  NOTE: the policy variant is stored under "policy_loss", because "loss" is the total
  loss value in every kind's JSON.
  old_logp = logp - log(r_target), r_target from {0.3 .. 12.0} (see R_TARGETS), assigned
  so that both signs of the advantage cover every clip region (below / inside / above the
  band, beyond the dual clip c); every ratio is >= 1e-3 (relative) away from every
  boundary of its case. ref_logp = logp + N(0, 0.3); sampler_logp = old_logp + N(0, 0.05)
  (ppo_kl_k1_tis also has three tokens with exp(old - sampler) = 3 > tis_cap, so the cap
  is exercised). gspo: old_logp = logp - (target_i + per-token noise of std 1e-3 centred
  within the sequence), so each sequence ratio s_i sits at a chosen distance inside or
  outside the narrow band (>= 1e-4 in log space from both edges).
  cases: ppo_token_mean, ppo_dapo_seq_sum, ppo_kl_k3_entropy, ppo_kl_k1_tis,
         ppo_kl_k2_norm, ppo_kl_k3plus, gppo_default, gppo_beta, cispo_cap, cispo_verl,
         gspo_default (its JSON says agg "token-mean": GSPO must override it to
         seq-mean-token-mean), ppo_v1003 (V = 1003; all others V = 257).

kind "distill" (§4.6)
  inputs : student_logits, teacher_logits f32[N,V], mask, cu_seqlens, micro_batches
  outputs: token_loss f64[N] (per-token divergence), dlogits f32[N,V] (wrt the student)
  json   : mode ("forward"|"reverse"|"jsd"), beta (null for forward/reverse),
           temperature, agg ("token-mean"), loss
  cases  : distill_forward (T 1), distill_jsd_beta0 (same inputs as distill_forward;
           must equal it), distill_reverse (T 0.7), distill_jsd_beta1 (same inputs and T as
           distill_reverse; must equal it), distill_jsd (beta 0.5, T 1).

kind "dpo" (§4.7)
  inputs : logits f32[N,V], targets, mask, cu_seqlens (sequence 2k = chosen, 2k+1 =
           rejected of pair k; every sequence has >= 1 unmasked token), ref_logp f32[N]
  outputs: logp f64[N], dlogp f64[N], dlogits f32[N,V]
  json   : loss_type ("sigmoid"|"ipo"), beta, label_smoothing, temperature, loss, stats
           (reward_chosen_mean, reward_rejected_mean, reward_accuracy, reward_margin_mean;
           for ipo the rewards use the length-averaged log-probs, as TRL does)
  cases  : dpo_sigmoid, dpo_sigmoid_ls, dpo_ipo.

kind "sft" (§4.8): inputs logits, targets, mask, cu_seqlens, micro_batches; outputs
  logp, dlogp f64[N], dlogits f32[N,V]; json temperature, agg, loss. case: sft.

kind "advantages" (§4.5): inputs rewards f32[S], group_sizes i64[G], old_logp, ref_logp,
  mask f32[N], cu_seqlens i64[S+1]; outputs adv_group, adv_batch, adv_none,
  rewards_with_kl f64[S]; json kl_reward_beta, loss (null). case: advantages.

kind "lm_head" (§3): logits = hidden @ weight.T (float64); inputs hidden f32[N,D]
  (D = 48), weight f32[V,D] (V = 257) plus the inputs of the named loss (as above, minus
  logits); outputs dhidden f32[N,D], dweight f32[V,D], logp f64[N], dlogp f64[N]
  (policy cases also entropy, token_loss, agg_weight, and dentropy with an entropy bonus);
  json loss_kind ("sft"|"policy") + that loss's config keys + loss (+ stats for policy).
  cases: lm_head_sft, lm_head_gspo (gspo_default's config), lm_head_ppo_entropy
  (ppo token-mean, entropy_coef 0.01, kl k3 coef 0.1).

Checks run by the script
------------------------
- every policy case has >= 1 unmasked token in each region (A>0, r>1+eps_h),
  (A>0, r<1-eps_l), (A<0, r<1-eps_l), (A<0, 1+eps_h<r<c), (A<0, r>c) when c is set (GSPO:
  the same with s_i; CISPO additionally r<floor and r>cap), and every ratio is away from
  every boundary;
- distill_jsd_beta0 == distill_forward and distill_jsd_beta1 == distill_reverse to 1e-12;
- GPPO vs PPO on gppo_default's inputs: counts of tokens whose PPO gradient is zero and
  GPPO's is not (printed, and checked against the clip regions);
- a central finite-difference check of a few dlogits entries for every case whose
  loss has no stop-gradient (ppo without k3+, distill, dpo, sft, lm_head_sft/ppo);
- every stored number is finite; reloading the files gives back what was written.
"""

import argparse
import json
import os
import platform
import sys
import zlib

import numpy as np
import safetensors
import safetensors.torch
import torch

torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)
F64 = torch.float64

V_DEFAULT = 257
V_LARGE = 1003
D_HIDDEN = 48
M_MICRO = 3

# The ratio targets r = exp(logp - old_logp) for the policy cases.
R_TARGETS = [0.3, 0.5, 0.75, 0.79, 0.9, 1.0, 1.1, 1.19, 1.25, 1.3, 1.5, 2.0, 3.5, 4.0, 6.0, 12.0]
# Order in which the unmasked tokens of each advantage sign receive them: the first
# ones cover every region for every case's bounds (below the band, inside, above the band
# but below c = 3, beyond c = 10, beyond c = 3), the rest follow.
R_PRIORITY = [0.5, 1.0, 2.0, 12.0, 4.0, 0.3, 0.75, 1.5, 6.0, 0.79, 1.1, 3.5, 1.19, 1.25, 1.3, 0.9]
assert sorted(R_PRIORITY) == sorted(R_TARGETS)
# GSPO: target log sequence ratios (band edges log(1-3e-4) ~ -3.0e-4, log(1+4e-4) ~ 4.0e-4).
GSPO_LOG_S = [-1.5e-3, 1.2e-3, 0.0, -6e-4, 9e-4, 1e-4, -1e-4, 2e-4, 2.5e-3, -2.5e-3]


def seed_of(name: str) -> int:
    return zlib.crc32(name.encode()) ^ 0x5EED


def rng_of(name: str) -> np.random.Generator:
    return np.random.default_rng(seed_of(name))


def f64(a) -> torch.Tensor:
    """float32 (or int) numpy array -> float64 tensor holding exactly those values."""
    return torch.from_numpy(np.asarray(a)).to(F64)


# ---------------------------------------------------------------------------
# token layout


class Layout:
    def __init__(self, lengths, mask, micro):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.cu = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.mask = np.asarray(mask, dtype=np.float32)
        self.micro = np.asarray(micro, dtype=np.int64)
        self.N = int(self.cu[-1])
        self.S = len(self.lengths)
        self.seq_id = np.repeat(np.arange(self.S), self.lengths)
        self.ylen = np.array([int(self.mask[self.cu[i]:self.cu[i + 1]].sum()) for i in range(self.S)])

    def tensors(self, with_micro=True):
        d = {"mask": torch.from_numpy(self.mask), "cu_seqlens": torch.from_numpy(self.cu)}
        if with_micro:
            d["micro_batches"] = torch.from_numpy(self.micro)
        return d


def make_layout(rng, n_seqs, n_range=(40, 70), min_len=1, max_len=9, fully_masked=True):
    shorts = [1, 2, 3] if min_len == 1 else [2, 2, 3]
    while True:
        lengths = rng.integers(min_len, max_len + 1, size=n_seqs)
        lengths[rng.choice(n_seqs, len(shorts), replace=False)] = shorts
        if n_range[0] <= lengths.sum() <= n_range[1]:
            break
    N = int(lengths.sum())
    cu = np.concatenate([[0], np.cumsum(lengths)])
    mask = (rng.random(N) >= 0.2).astype(np.float32)
    dead = -1
    if fully_masked:
        dead = int(rng.choice(np.nonzero(lengths >= 3)[0]))
        mask[cu[dead]:cu[dead + 1]] = 0.0
    for i in range(n_seqs):
        if i != dead and mask[cu[i]:cu[i + 1]].sum() == 0:
            mask[cu[i] + int(rng.integers(lengths[i]))] = 1.0
    # three micro-batches (contiguous sequence ranges) of pairwise different token counts
    while True:
        a, b = sorted(rng.choice(np.arange(1, n_seqs), 2, replace=False))
        counts = {int(cu[a]), int(cu[b] - cu[a]), int(cu[-1] - cu[b])}
        if len(counts) == 3:
            break
    lay = Layout(lengths, mask, [0, a, b, n_seqs])
    assert (lay.ylen == 0).sum() == (1 if fully_masked else 0)
    return lay


# ---------------------------------------------------------------------------
# shared pieces (float64 autograd)


def log_probs(z: torch.Tensor, targets: torch.Tensor, T: float):
    """logp [N], entropy H [N] (both part of the autograd graph) of softmax(z / T)."""
    logq = torch.log_softmax(z / T, dim=-1)
    logp = logq.gather(1, targets[:, None])[:, 0]
    H = -(logq.exp() * logq).sum(-1)
    return logp, H


def logp_nograd(z64: torch.Tensor, targets: torch.Tensor, T: float) -> torch.Tensor:
    with torch.no_grad():
        return log_probs(z64, targets, T)[0]


def agg_weights(agg: str, lay: Layout, l_max=None) -> torch.Tensor:
    """Per-token aggregation weight w_t over the whole step (0 where masked)."""
    m = lay.mask.astype(np.float64)
    T_tok = m.sum()
    S_eff = float((lay.ylen > 0).sum())
    ylen_tok = np.maximum(lay.ylen[lay.seq_id], 1).astype(np.float64)
    if agg == "token-mean":
        w = np.full(lay.N, 1.0 / T_tok)
    elif agg == "seq-mean-token-mean":
        w = 1.0 / (S_eff * ylen_tok)
    elif agg == "seq-mean-token-sum":
        w = np.full(lay.N, 1.0 / S_eff)
    elif agg == "seq-mean-token-sum-norm":
        w = np.full(lay.N, 1.0 / (S_eff * float(l_max)))
    else:
        raise ValueError(agg)
    return torch.from_numpy(w * m)


# ---------------------------------------------------------------------------
# policy losses (§4.2-4.4)

POLICY_DEFAULTS = {
    "ppo": dict(eps_low=0.2, eps_high=0.2, dual_clip=3.0),
    "gppo": dict(eps_low=0.2, eps_high=0.28, dual_clip=10.0),
    "cispo": dict(eps_low=0.2, eps_high=0.2, dual_clip=None),
    "gspo": dict(eps_low=3e-4, eps_high=4e-4, dual_clip=None),
}


def policy_config(variant, **kw):
    cfg = dict(policy_loss=variant, **POLICY_DEFAULTS[variant], beta1=1.0, beta2=1.0, floor=None,
               cap=5.0, agg="token-mean", l_max=None, kl=None, entropy_coef=0.0, tis_cap=None,
               positive_nll_coef=0.0, correct_score=1.0, temperature=1.0)
    for k, v in kw.items():
        assert k in cfg, k
        cfg[k] = v
    return cfg


def policy_token_loss(cfg, logp, H, P, lay):
    """Per-token loss L_t (float64, autograd) and the per-token ratio used in the stats.

    P holds the float64 views of the stored float32 inputs: old, ref, sampler, A (per
    token), R (per token)."""
    old, ref, sampler, A = P["old"], P["ref"], P["sampler"], P["A"]
    v = cfg["policy_loss"]
    el, eh, c = cfg["eps_low"], cfg["eps_high"], cfg["dual_clip"]
    if v in ("ppo", "gppo"):
        lr = torch.clamp(logp - old, -20.0, 20.0)
        r = torch.exp(lr)
        pg1 = -A * r
        if v == "ppo":
            clipped = torch.clamp(r, 1.0 - el, 1.0 + eh)
        else:  # Klear-Reasoner's gradient-preserving clip, branches scaled by beta1 / beta2
            rd = r.detach()
            clipped = torch.where(r < 1.0 - el, cfg["beta1"] * (1.0 - el) / rd * r,
                                  torch.where(r > 1.0 + eh, cfg["beta2"] * (1.0 + eh) / rd * r, r))
        pg2 = -A * clipped
        L = torch.maximum(pg1, pg2)
        if c is not None:
            L = torch.where(A < 0, torch.minimum(L, -c * A), L)
        ratio = r.detach()
    elif v == "cispo":
        lr = torch.clamp(logp - old, -20.0, 20.0)
        r = torch.exp(lr)
        L = -torch.clamp(r, min=cfg["floor"], max=cfg["cap"]).detach() * A * logp
        ratio = r.detach()
    elif v == "gspo":
        m = P["m"]
        sid = P["sid"]
        S = lay.S
        ylen = torch.zeros(S).index_add_(0, sid, m)
        num = torch.zeros(S).index_add_(0, sid, m * (logp - old))
        log_s = num / torch.clamp(ylen, min=1.0)
        log_s_it = logp - logp.detach() + log_s.detach()[sid]
        log_s_it = torch.clamp(log_s_it, max=10.0)
        s_it = torch.exp(log_s_it)
        L = torch.maximum(-A * s_it, -A * torch.clamp(s_it, 1.0 - el, 1.0 + eh))
        ratio = s_it.detach()
    else:
        raise ValueError(v)
    if cfg["tis_cap"] is not None:
        w_tis = torch.clamp(torch.exp(old - sampler), max=cfg["tis_cap"])
        L = L * w_tis
    klv = None
    if cfg["kl"] is not None:
        kind, coef = cfg["kl"]["kind"], cfg["kl"]["coef"]
        d = logp - ref

        def k3():
            kl = torch.clamp(ref - logp, -20.0, 20.0)
            return torch.clamp(torch.exp(kl) - kl - 1.0, -10.0, 10.0)

        if kind == "k1":
            klv = d
        elif kind == "k2":
            klv = 0.5 * d * d
        elif kind == "k3":
            klv = k3()
        elif kind == "k3+":
            k2 = 0.5 * d * d
            klv = k2 + (k3() - k2).detach()
        else:
            raise ValueError(kind)
        L = L + coef * klv
    if cfg["entropy_coef"]:
        L = L - cfg["entropy_coef"] * H
    return L, ratio, klv


def policy_total(cfg, logp, H, P, lay):
    L, ratio, klv = policy_token_loss(cfg, logp, H, P, lay)
    agg = "seq-mean-token-mean" if cfg["policy_loss"] == "gspo" else cfg["agg"]
    w = agg_weights(agg, lay, cfg["l_max"])
    m = P["m"]
    total = (m * w * L).sum()
    if cfg["positive_nll_coef"]:
        sel = m * (P["R"] == cfg["correct_score"]).to(F64)
        n = sel.sum()
        if n > 0:
            total = total + cfg["positive_nll_coef"] * (-(sel * logp).sum()) / n
    return total, L, w, ratio, klv


def policy_stats(cfg, P, ratio, H, klv, lay):
    m = P["m"].numpy() > 0
    A = P["A"].numpy()[m]
    r = ratio.numpy()[m]
    old, lp = P["old"].numpy()[m], P["logp"].numpy()[m]
    el, eh, c = cfg["eps_low"], cfg["eps_high"], cfg["dual_clip"]
    v = cfg["policy_loss"]
    if v in ("ppo", "gppo", "gspo"):
        low = (A < 0) & (r < 1 - el)
        high = (A > 0) & (r > 1 + eh)
        dual = (A < 0) & (r > c) if (c is not None and v != "gspo") else np.zeros_like(low)
    else:  # cispo
        low = (r < cfg["floor"]) if cfg["floor"] is not None else np.zeros(len(r), bool)
        high = r > cfg["cap"]
        dual = np.zeros(len(r), bool)
    sd = np.abs(P["sampler"].numpy()[m] - old)
    return {
        "clip_frac_low": float(low.mean()),
        "clip_frac_high": float(high.mean()),
        "clip_frac_dual": float(dual.mean()),
        "ratio_mean": float(r.mean()),
        "ratio_max": float(r.max()),
        "ppo_kl": float((old - lp).mean()),
        "entropy_mean": float(H.detach().numpy()[m].mean()),
        "sampler_abs_diff_mean": float(sd.mean()),
        "sampler_abs_diff_max": float(sd.max()),
        "kl_mean": float(klv.detach().numpy()[m].mean()) if klv is not None else 0.0,
    }


def boundaries(cfg):
    v = cfg["policy_loss"]
    el, eh, c = cfg["eps_low"], cfg["eps_high"], cfg["dual_clip"]
    b = []
    if v in ("ppo", "gppo"):
        b += [1 - el, 1 + eh]
        if c is not None:
            b.append(c)
        if v == "gppo":  # where max(pg1, pg2) switches branch when beta != 1
            b += [cfg["beta1"] * (1 - el), cfg["beta2"] * (1 + eh)]
    elif v == "cispo":
        b.append(cfg["cap"])
        if cfg["floor"] is not None:
            b.append(cfg["floor"])
    return b


def build_policy_inputs(rng, cfg, lay, logp64):
    """old/ref/sampler log-probs, advantages, rewards (numpy float32) from the f64 logp."""
    S, N = lay.S, lay.N
    live = [i for i in range(S) if lay.ylen[i] > 0]
    # advantages: one exact 0, the rest alternating signs in random order
    A = np.zeros(S, np.float32)
    order = list(rng.permutation(live))
    zero_seq = order.pop()
    signs = np.array([1.0 if k % 2 == 0 else -1.0 for k in range(len(order))])
    rng.shuffle(signs)
    for i, s in zip(order, signs):
        A[i] = np.float32(s * rng.uniform(0.3, 1.5))
    dead = [i for i in range(S) if lay.ylen[i] == 0]
    for i in dead:
        A[i] = np.float32(rng.choice([-1, 1]) * rng.uniform(0.3, 1.5))
    A[zero_seq] = 0.0
    # rewards in {0, 1} with some 0.5; at least two live sequences with reward 1
    R = rng.choice(np.array([0.0, 1.0, 0.5], np.float32), size=S, p=[0.4, 0.45, 0.15]).astype(np.float32)
    for i in live[:2]:
        R[i] = 1.0
    A_tok = A[lay.seq_id]
    m = lay.mask > 0
    lp = logp64.numpy()
    if cfg["policy_loss"] == "gspo":
        log_s_target = np.zeros(S)
        for sign in (1.0, -1.0):
            seqs = [i for i in live if np.sign(A[i]) == sign]
            off = int(rng.integers(len(GSPO_LOG_S)))
            for k, i in enumerate(seqs):
                # the first three of each sign: below, above, inside the band
                log_s_target[i] = GSPO_LOG_S[k] if k < 3 else GSPO_LOG_S[(k + off) % len(GSPO_LOG_S)]
        for i in live:
            if A[i] == 0:
                log_s_target[i] = GSPO_LOG_S[int(rng.integers(len(GSPO_LOG_S)))]
        e = rng.normal(0.0, 1e-3, N)
        for i in range(S):
            sl = slice(lay.cu[i], lay.cu[i + 1])
            mm = m[sl]
            if mm.any():
                e[sl] = e[sl] - e[sl][mm].mean() + log_s_target[i]
        old = (lp - e).astype(np.float32)
    else:
        rt = rng.choice(np.array(R_TARGETS), size=N)
        for sign in (1.0, -1.0):
            toks = np.nonzero(m & (np.sign(A_tok) == sign))[0]
            toks = toks[rng.permutation(len(toks))]
            for k, t in enumerate(toks):
                rt[t] = R_PRIORITY[k % len(R_PRIORITY)]
        old = (lp - np.log(rt)).astype(np.float32)
    ref = (lp + rng.normal(0.0, 0.3, N)).astype(np.float32)
    sampler = (old.astype(np.float64) + rng.normal(0.0, 0.05, N)).astype(np.float32)
    if cfg["tis_cap"] is not None:
        # three unmasked tokens whose importance weight exp(old - sampler) = 3 exceeds the cap
        for t in rng.choice(np.nonzero(m)[0], 3, replace=False):
            sampler[t] = np.float32(old[t] - np.log(3.0))
    return dict(old_logp=old, ref_logp=ref, sampler_logp=sampler, advantages=A, rewards=R)


def policy_P(inp, lay, logp_detached):
    return {
        "old": f64(inp["old_logp"]), "ref": f64(inp["ref_logp"]), "sampler": f64(inp["sampler_logp"]),
        "A": f64(inp["advantages"])[torch.from_numpy(lay.seq_id)],
        "R": f64(inp["rewards"])[torch.from_numpy(lay.seq_id)],
        "m": f64(lay.mask), "sid": torch.from_numpy(lay.seq_id), "logp": logp_detached,
    }


def check_policy_regions(name, cfg, P, ratio, lay):
    m = P["m"].numpy() > 0
    A = P["A"].numpy()
    r = ratio.numpy()
    el, eh, c = cfg["eps_low"], cfg["eps_high"], cfg["dual_clip"]
    v = cfg["policy_loss"]
    if v == "gspo":
        c = None
    regions = {
        "A>0,r>1+eh": (A > 0) & (r > 1 + eh),
        "A>0,r<1-el": (A > 0) & (r < 1 - el),
        "A<0,r<1-el": (A < 0) & (r < 1 - el),
        "A<0,1+eh<r<c": (A < 0) & (r > 1 + eh) & (r < (c if c is not None else np.inf)),
        "A>0,inside": (A > 0) & (r > 1 - el) & (r < 1 + eh),
        "A<0,inside": (A < 0) & (r > 1 - el) & (r < 1 + eh),
    }
    if c is not None:
        regions["A<0,r>c"] = (A < 0) & (r > c)
    if v == "cispo":
        for s, nm in ((1, "A>0"), (-1, "A<0")):
            regions[nm + ",r>cap"] = (np.sign(A) == s) & (r > cfg["cap"])
            if cfg["floor"] is not None:
                regions[nm + ",r<floor"] = (np.sign(A) == s) & (r < cfg["floor"])
    counts = {k: int((mk & m).sum()) for k, mk in regions.items()}
    missing = [k for k, n in counts.items() if n == 0]
    assert not missing, (name, missing, counts)
    # distance from every boundary
    if v == "gspo":
        ls = np.log(r)
        edges = np.log([1 - el, 1 + eh])
        dist = np.min(np.abs(ls[:, None] - edges[None, :]), axis=1)
        assert dist[m].min() >= 1e-4, (name, dist[m].min())
    else:
        b = np.array(boundaries(cfg))
        rel = np.min(np.abs(r[:, None] - b[None, :]) / b[None, :], axis=1)
        assert rel.min() >= 1e-3, (name, rel.min())
    if cfg["tis_cap"] is not None:
        w = np.exp(P["old"].numpy() - P["sampler"].numpy())
        assert np.abs(w / cfg["tis_cap"] - 1).min() >= 1e-3
        assert ((w > cfg["tis_cap"]) & m).sum() >= 1
    return counts


# ---------------------------------------------------------------------------
# distillation (§4.6), TRL's generalized JSD


def kl_div(input_log, target_log):
    """TRL's F.kl_div(input, target, reduction='none', log_target=True).sum(-1) = KL(target || input)."""
    return (torch.exp(target_log) * (target_log - input_log)).sum(-1)


def distill_token_loss(mode, beta, zs, zt, T):
    ls = torch.log_softmax(zs / T, dim=-1)
    lt = torch.log_softmax(zt / T, dim=-1)
    if mode == "forward":  # KL(p_t || p_s), written out
        return (lt.exp() * (lt - ls)).sum(-1)
    if mode == "reverse":  # KL(p_s || p_t), written out
        return (ls.exp() * (ls - lt)).sum(-1)
    assert mode == "jsd"
    if beta == 0.0:
        return kl_div(ls, lt)
    if beta == 1.0:
        return kl_div(lt, ls)
    b = torch.tensor(beta, dtype=F64)
    lm = torch.logsumexp(torch.stack([ls + torch.log(1 - b), lt + torch.log(b)]), dim=0)
    return beta * kl_div(lm, lt) + (1 - beta) * kl_div(lm, ls)


# ---------------------------------------------------------------------------
# output helpers

GENERATOR = {
    "script": "tools/make_loss_fixtures.py",
    "python": platform.python_version(),
    "torch": torch.__version__,
    "numpy": np.__version__,
    "safetensors": safetensors.__version__,
}


class Writer:
    def __init__(self, out):
        self.out = out
        self.cases = []
        os.makedirs(out, exist_ok=True)

    def write(self, name, tensors, meta):
        tens = {}
        for k, t in tensors.items():
            t = torch.as_tensor(t).contiguous()
            assert t.dtype in (torch.float32, torch.float64, torch.int64), (name, k, t.dtype)
            if t.is_floating_point():
                assert torch.isfinite(t).all(), (name, k)
            tens[k] = t.clone()
        path = os.path.join(self.out, name + ".safetensors")
        safetensors.torch.save_file(tens, path)
        back = safetensors.torch.load_file(path)
        assert back.keys() == tens.keys() and all(torch.equal(back[k], tens[k]) for k in tens)
        meta = dict(meta)
        meta["generator"] = GENERATOR

        def finite(x):
            if isinstance(x, float):
                assert np.isfinite(x), (name, x)
            elif isinstance(x, dict):
                for y in x.values():
                    finite(y)
            elif isinstance(x, list):
                for y in x:
                    finite(y)

        finite(meta)
        with open(os.path.join(self.out, name + ".json"), "w") as f:
            json.dump(meta, f, indent=1, allow_nan=False)
            f.write("\n")
        self.cases.append(name)
        loss = meta.get("loss")
        print(f"  {name:22s} N={tensors['mask'].shape[0]:3d} loss={loss if loss is None else f'{loss:.12g}'}")


def fd_check(name, fn, x, grad, n=4, h=1e-5, tol=1e-5, seed=0):
    """Central differences of the scalar fn(x) at a few entries of x against grad."""
    g = torch.Generator().manual_seed(seed)
    flat = grad.reshape(-1).abs()
    # the largest entry plus a few random ones
    idx = [int(flat.argmax())] + [int(i) for i in torch.randint(0, flat.numel(), (n - 1,), generator=g)]
    worst = 0.0
    with torch.no_grad():
        xf = x.reshape(-1)
        for i in idx:
            v0 = float(xf[i])
            xf[i] = v0 + h
            lp = float(fn(x))
            xf[i] = v0 - h
            lm = float(fn(x))
            xf[i] = v0
            fd = (lp - lm) / (2 * h)
            gi = float(grad.reshape(-1)[i])
            worst = max(worst, abs(fd - gi) / max(abs(gi), 1e-3 * float(flat.max())))
    assert worst < tol, (name, worst)
    return worst


def random_logits(rng, N, V, std=2.0):
    return (rng.normal(0.0, std, (N, V))).astype(np.float32)


# ---------------------------------------------------------------------------
# cases

POLICY_CASES = [
    ("ppo_token_mean", "ppo", V_DEFAULT, dict(eps_low=0.2, eps_high=0.2, dual_clip=3.0, agg="token-mean",
                                             temperature=1.0)),
    ("ppo_dapo_seq_sum", "ppo", V_DEFAULT, dict(eps_low=0.2, eps_high=0.28, dual_clip=3.0,
                                               agg="seq-mean-token-sum", temperature=0.7)),
    ("ppo_kl_k3_entropy", "ppo", V_DEFAULT, dict(agg="token-mean", kl={"kind": "k3", "coef": 0.1},
                                                entropy_coef=0.01, temperature=0.7)),
    ("ppo_kl_k1_tis", "ppo", V_DEFAULT, dict(agg="seq-mean-token-mean", kl={"kind": "k1", "coef": 0.05},
                                            tis_cap=2.0, temperature=1.0)),
    ("ppo_kl_k2_norm", "ppo", V_DEFAULT, dict(agg="seq-mean-token-sum-norm", l_max=40,
                                             kl={"kind": "k2", "coef": 0.1}, temperature=0.7)),
    ("ppo_kl_k3plus", "ppo", V_DEFAULT, dict(agg="token-mean", kl={"kind": "k3+", "coef": 0.1},
                                            temperature=1.0)),
    ("gppo_default", "gppo", V_DEFAULT, dict(positive_nll_coef=0.1, correct_score=1.0, agg="token-mean",
                                            temperature=1.0)),
    ("gppo_beta", "gppo", V_DEFAULT, dict(beta1=0.5, beta2=2.0, positive_nll_coef=0.0, agg="token-mean",
                                         temperature=0.7)),
    ("cispo_cap", "cispo", V_DEFAULT, dict(floor=None, cap=5.0, agg="token-mean", temperature=1.0)),
    ("cispo_verl", "cispo", V_DEFAULT, dict(floor=0.8, cap=1.2, agg="seq-mean-token-mean", temperature=0.7)),
    ("gspo_default", "gspo", V_DEFAULT, dict(agg="token-mean", temperature=0.7)),
    ("ppo_v1003", "ppo", V_LARGE, dict(eps_low=0.2, eps_high=0.2, dual_clip=3.0, agg="token-mean",
                                      temperature=1.0)),
]

# losses with no stop-gradient, whose autograd gradient equals the derivative of the value
def _fd_ok(cfg):
    return cfg["policy_loss"] == "ppo" and (cfg["kl"] is None or cfg["kl"]["kind"] != "k3+")


def run_policy(W, name, variant, V, kw, lm_head=False):
    rng = rng_of(name)
    cfg = policy_config(variant, **kw)
    T = cfg["temperature"]
    n_seqs = 10 if V == V_LARGE else 12
    lay = make_layout(rng, n_seqs, n_range=(40, 50) if V == V_LARGE else (52, 66))
    N = lay.N
    targets = rng.integers(0, V, N).astype(np.int64)
    tg = torch.from_numpy(targets)
    if lm_head:
        hidden = rng.normal(0.0, 1.0, (N, D_HIDDEN)).astype(np.float32)
        weight = rng.normal(0.0, 2.0 / np.sqrt(D_HIDDEN), (V, D_HIDDEN)).astype(np.float32)
        z0 = f64(hidden) @ f64(weight).T
    else:
        logits = random_logits(rng, N, V)
        z0 = f64(logits)
    lp0 = logp_nograd(z0, tg, T)
    inp = build_policy_inputs(rng, cfg, lay, lp0)
    P = policy_P(inp, lay, lp0)

    if lm_head:
        h64 = f64(hidden).requires_grad_()
        w64 = f64(weight).requires_grad_()
        z = h64 @ w64.T
    else:
        z = f64(logits).requires_grad_()
    logp, H = log_probs(z, tg, T)
    logp.retain_grad()
    H.retain_grad()
    total, L, w, ratio, klv = policy_total(cfg, logp, H, P, lay)
    total.backward()
    counts = check_policy_regions(name, cfg, P, ratio, lay)
    stats = policy_stats(cfg, P, ratio, H, klv, lay)

    tens = {}
    if lm_head:
        tens.update(hidden=torch.from_numpy(hidden), weight=torch.from_numpy(weight))
    else:
        tens["logits"] = torch.from_numpy(logits)
    tens["targets"] = tg
    tens.update(lay.tensors())
    tens.update({k: torch.from_numpy(v) for k, v in inp.items()})
    tens.update(logp=logp.detach(), entropy=H.detach(), dlogp=logp.grad.clone())
    if cfg["entropy_coef"]:
        tens["dentropy"] = H.grad.clone()
    if lm_head:
        tens.update(dhidden=h64.grad.float(), dweight=w64.grad.float())
    else:
        tens["dlogits"] = z.grad.float()
    tens.update(token_loss=L.detach(), agg_weight=w)

    if _fd_ok(cfg):
        if lm_head:
            fn = lambda hh: policy_total(cfg, *log_probs(hh @ w64.detach().T, tg, T), P, lay)[0]
            fd_check(name, fn, h64.detach().clone(), h64.grad)
        else:
            fn = lambda zz: policy_total(cfg, *log_probs(zz, tg, T), P, lay)[0]
            fd_check(name, fn, z.detach().clone(), z.grad)

    meta = {"kind": "lm_head", "loss_kind": "policy"} if lm_head else {"kind": "policy"}
    meta.update(cfg)
    meta["loss"] = total.item()
    meta["stats"] = stats
    W.write(name, tens, meta)
    return counts


def load_policy(out, name):
    """A written policy case back from disk: (cfg, P, lay)."""
    t = safetensors.torch.load_file(os.path.join(out, name + ".safetensors"))
    with open(os.path.join(out, name + ".json")) as f:
        cfg = json.load(f)
    cu = t["cu_seqlens"].numpy()
    lay = Layout(np.diff(cu), t["mask"].numpy(), t["micro_batches"].numpy())
    lp0 = logp_nograd(f64(t["logits"].numpy()), t["targets"], cfg["temperature"])
    inp = {k: t[k].numpy() for k in ("old_logp", "ref_logp", "sampler_logp", "advantages", "rewards")}
    return cfg, policy_P(inp, lay, lp0), lay


def per_token_g(cfg, P, lay):
    """dL_t/dlogp_t of the policy term alone (L_t depends only on logp_t for ppo/gppo)."""
    lp = P["logp"].clone().requires_grad_()
    L, ratio, _ = policy_token_loss(cfg, lp, torch.zeros(lay.N), P, lay)
    L.sum().backward()
    return lp.grad, ratio


def gppo_vs_ppo(out):
    """On gppo_default's inputs: tokens whose PPO gradient is zero while GPPO's is not."""
    cfg_g, P, lay = load_policy(out, "gppo_default")
    cfg_g = dict(cfg_g, positive_nll_coef=0.0, kl=None, entropy_coef=0.0, tis_cap=None)
    cfg_p = dict(cfg_g, policy_loss="ppo")
    g_p, r = per_token_g(cfg_p, P, lay)
    g_g, _ = per_token_g(cfg_g, P, lay)
    m = P["m"] > 0
    A = P["A"]
    el, eh, c = cfg_g["eps_low"], cfg_g["eps_high"], cfg_g["dual_clip"]
    zero_p = g_p == 0
    nz_g = g_g != 0
    dual = (A < 0) & (r > c)
    sel = m & zero_p & nz_g & ~dual
    hi = sel & (A > 0) & (r > 1 + eh)
    lo = sel & (A < 0) & (r < 1 - el)
    exp_hi = m & (A > 0) & (r > 1 + eh)
    exp_lo = m & (A < 0) & (r < 1 - el) & ~dual
    print(f"  GPPO vs PPO on gppo_default: {int(sel.sum())} unmasked tokens have PPO gradient 0 and GPPO "
          f"gradient != 0 ({int(hi.sum())} with A>0, r>1+eps_h; {int(lo.sum())} with A<0, r<1-eps_l); "
          f"{int((m & dual).sum())} in the dual clip (zero for both: "
          f"{int((m & dual & (g_g == 0) & zero_p).sum())}); elsewhere equal: "
          f"{bool(torch.equal(g_p[m & ~sel], g_g[m & ~sel]))}")
    assert int(sel.sum()) == int(hi.sum() + lo.sum()) and bool((hi == exp_hi).all()) and bool((lo == exp_lo).all())
    assert int(hi.sum()) > 0 and int(lo.sum()) > 0
    assert int((m & dual).sum()) > 0 and bool((g_g[m & dual] == 0).all())
    # GPPO's gradient on the clipped tokens is the bound times -A (DESIGN §4.2 table, beta = 1)
    assert torch.allclose(g_g[hi], (-(1 + eh) * A)[hi], rtol=1e-12, atol=0)
    assert torch.allclose(g_g[lo], (-(1 - el) * A)[lo], rtol=1e-12, atol=0)


def gppo_beta_report(out):
    """gppo_beta (beta1 0.5, beta2 2): what max(pg1, pg2) makes of g = dL/dlogp, per region."""
    cfg, P, lay = load_policy(out, "gppo_beta")
    cfg = dict(cfg, kl=None, entropy_coef=0.0, tis_cap=None, positive_nll_coef=0.0)
    g, r = per_token_g(cfg, P, lay)
    m, A = P["m"] > 0, P["A"]
    print("  gppo_beta: g/(-A) per ratio (unmasked tokens, A != 0):")
    rows = {}
    for t in torch.nonzero(m & (A != 0))[:, 0].tolist():
        key = ("A>0" if A[t] > 0 else "A<0", round(float(r[t]), 3))
        rows.setdefault(key, set()).add(round(float(g[t] / -A[t]), 6))
    for (sg, rr), vals in sorted(rows.items()):
        print(f"      {sg} r={rr:<7} g/(-A) = {sorted(vals)}")


def run_distill(W):
    groups = [
        ("distill_T1", 1.0, [("distill_forward", "forward", None), ("distill_jsd_beta0", "jsd", 0.0)]),
        ("distill_T07", 0.7, [("distill_reverse", "reverse", None), ("distill_jsd_beta1", "jsd", 1.0)]),
        ("distill_jsd", 1.0, [("distill_jsd", "jsd", 0.5)]),
    ]
    for seed_name, T, cases in groups:
        rng = rng_of(seed_name)
        lay = make_layout(rng, 12, n_range=(52, 66))
        zs32 = random_logits(rng, lay.N, V_DEFAULT)
        zt32 = random_logits(rng, lay.N, V_DEFAULT)
        m = f64(lay.mask)
        w = agg_weights("token-mean", lay)
        results = []
        for name, mode, beta in cases:
            zs = f64(zs32).requires_grad_()
            zt = f64(zt32)
            tl = distill_token_loss(mode, beta, zs, zt, T)
            total = (m * w * tl).sum()
            total.backward()
            fd_check(name, lambda x: (m * w * distill_token_loss(mode, beta, x, zt, T)).sum(),
                     zs.detach().clone(), zs.grad)
            results.append((total.item(), zs.grad.clone()))
            tens = {"student_logits": torch.from_numpy(zs32), "teacher_logits": torch.from_numpy(zt32)}
            tens.update(lay.tensors())
            tens.update(token_loss=tl.detach(), dlogits=zs.grad.float())
            W.write(name, tens, {"kind": "distill", "mode": mode, "beta": beta, "temperature": T,
                                 "agg": "token-mean", "loss": total.item()})
        if len(results) == 2:
            dl = abs(results[0][0] - results[1][0])
            dg = float((results[0][1] - results[1][1]).abs().max())
            print(f"  {cases[1][0]} vs {cases[0][0]}: |dloss| = {dl:.1e}, max|ddlogits| = {dg:.1e}")
            assert dl <= 1e-12 and dg <= 1e-12


def run_dpo(W):
    cases = [("dpo_sigmoid", "sigmoid", 0.1, 0.0), ("dpo_sigmoid_ls", "sigmoid", 0.5, 0.1),
             ("dpo_ipo", "ipo", 0.1, 0.0)]
    for name, loss_type, beta, ls in cases:
        rng = rng_of(name)
        P = 6
        lay = make_layout(rng, 2 * P, n_range=(50, 66), min_len=2, max_len=9, fully_masked=False)
        N, V = lay.N, V_DEFAULT
        tg = torch.from_numpy(rng.integers(0, V, N).astype(np.int64))
        logits = random_logits(rng, N, V)
        lp0 = logp_nograd(f64(logits), tg, 1.0).numpy()
        ref32 = (lp0 + rng.normal(0.0, 0.3, N)).astype(np.float32)
        m = f64(lay.mask)
        sid = torch.from_numpy(lay.seq_id)
        ylen = torch.zeros(lay.S).index_add_(0, sid, m)
        ref_seq = torch.zeros(lay.S).index_add_(0, sid, m * f64(ref32))

        def loss_fn(zz):
            logp, _ = log_probs(zz, tg, 1.0)
            pi = torch.zeros(lay.S).index_add(0, sid, m * logp)
            rf = ref_seq
            if loss_type == "ipo":
                pi, rf = pi / ylen, rf / ylen
            pc, pr, rc, rr = pi[0::2], pi[1::2], rf[0::2], rf[1::2]
            h0 = (pc - rc) - (pr - rr)
            if loss_type == "sigmoid":
                h = beta * h0
                L = -(1 - ls) * torch.nn.functional.logsigmoid(h) - ls * torch.nn.functional.logsigmoid(-h)
            else:
                L = (h0 - 1.0 / (2.0 * beta)) ** 2
            return L.mean(), logp, beta * (pc - rc).detach(), beta * (pr - rr).detach()

        z = f64(logits).requires_grad_()
        total, logp, rew_c, rew_r = loss_fn(z)
        logp.retain_grad()
        total.backward()
        fd_check(name, lambda x: loss_fn(x)[0], z.detach().clone(), z.grad)
        stats = {
            "reward_chosen_mean": float(rew_c.mean()),
            "reward_rejected_mean": float(rew_r.mean()),
            "reward_accuracy": float((rew_c > rew_r).to(F64).mean()),
            "reward_margin_mean": float((rew_c - rew_r).mean()),
        }
        tens = {"logits": torch.from_numpy(logits), "targets": tg}
        tens.update(lay.tensors(with_micro=False))
        tens.update(ref_logp=torch.from_numpy(ref32), logp=logp.detach(), dlogp=logp.grad.clone(),
                    dlogits=z.grad.float())
        W.write(name, tens, {"kind": "dpo", "loss_type": loss_type, "beta": beta, "label_smoothing": ls,
                             "temperature": 1.0, "loss": total.item(), "stats": stats})


def run_sft(W, name="sft", lm_head=False):
    rng = rng_of(name)
    T = 1.0
    lay = make_layout(rng, 12, n_range=(52, 66))
    N, V = lay.N, V_DEFAULT
    tg = torch.from_numpy(rng.integers(0, V, N).astype(np.int64))
    m = f64(lay.mask)

    def loss_fn(zz):
        logp, _ = log_probs(zz, tg, T)
        return -(m * logp).sum() / m.sum(), logp

    tens = {}
    if lm_head:
        hidden = rng.normal(0.0, 1.0, (N, D_HIDDEN)).astype(np.float32)
        weight = rng.normal(0.0, 2.0 / np.sqrt(D_HIDDEN), (V, D_HIDDEN)).astype(np.float32)
        h64, w64 = f64(hidden).requires_grad_(), f64(weight).requires_grad_()
        total, logp = loss_fn(h64 @ w64.T)
        logp.retain_grad()
        total.backward()
        fd_check(name, lambda hh: loss_fn(hh @ w64.detach().T)[0], h64.detach().clone(), h64.grad)
        fd_check(name, lambda ww: loss_fn(h64.detach() @ ww.T)[0], w64.detach().clone(), w64.grad, seed=1)
        tens.update(hidden=torch.from_numpy(hidden), weight=torch.from_numpy(weight))
    else:
        logits = random_logits(rng, N, V)
        z = f64(logits).requires_grad_()
        total, logp = loss_fn(z)
        logp.retain_grad()
        total.backward()
        fd_check(name, lambda x: loss_fn(x)[0], z.detach().clone(), z.grad)
        tens["logits"] = torch.from_numpy(logits)
    tens["targets"] = tg
    tens.update(lay.tensors())
    tens.update(logp=logp.detach(), dlogp=logp.grad.clone())
    if lm_head:
        tens.update(dhidden=h64.grad.float(), dweight=w64.grad.float())
        meta = {"kind": "lm_head", "loss_kind": "sft"}
    else:
        tens["dlogits"] = z.grad.float()
        meta = {"kind": "sft"}
    meta.update(temperature=T, agg="token-mean", loss=total.item())
    W.write(name, tens, meta)


def run_advantages(W, name="advantages"):
    rng = rng_of(name)
    group_sizes = np.array([4, 4, 1, 3, 2], np.int64)
    S = int(group_sizes.sum())
    R = np.concatenate([
        rng.choice([0.0, 1.0], 4),            # binary, forced mixed below
        np.full(4, 1.0),                      # all equal: no signal
        rng.choice([0.0, 1.0], 1),            # group of one
        rng.uniform(0.0, 1.0, 3),             # continuous rewards
        np.array([0.5, 1.0]),
    ]).astype(np.float32)
    R[0], R[1] = 1.0, 0.0
    Rt = f64(R)
    gs = torch.from_numpy(group_sizes)
    gid = torch.repeat_interleave(torch.arange(len(group_sizes)), gs)
    adv_group = torch.zeros(S)
    adv_none = torch.zeros(S)
    mean_tok = torch.zeros(S)
    start = 0
    for g in group_sizes.tolist():
        r = Rt[start:start + g]
        if g > 1:
            mu = r.mean()
            adv_group[start:start + g] = (r - mu) / (r.std(unbiased=True) + 1e-6)
            adv_none[start:start + g] = r - mu
            mean_tok[start:start + g] = mu
        else:
            mean_tok[start:start + g] = r
        start += g
    adv_batch = (Rt - mean_tok) / (Rt.std(unbiased=True) + 1e-6)
    assert (adv_group[gid == 2] == 0).all() and (adv_group[gid == 1] == 0).all()
    # kl_in_reward
    lay = make_layout(rng, S, n_range=(50, 66))
    lp = rng.normal(-4.0, 1.5, lay.N)
    old = lp.astype(np.float32)
    ref = (lp + rng.normal(0.0, 0.3, lay.N)).astype(np.float32)
    beta = 0.05
    m = f64(lay.mask)
    k1 = torch.zeros(S).index_add_(0, torch.from_numpy(lay.seq_id), m * (f64(old) - f64(ref)))
    rewards_with_kl = Rt - beta * k1
    tens = {"rewards": torch.from_numpy(R), "group_sizes": gs, "old_logp": torch.from_numpy(old),
            "ref_logp": torch.from_numpy(ref)}
    tens.update(lay.tensors(with_micro=False))
    tens.update(adv_group=adv_group, adv_batch=adv_batch, adv_none=adv_none, rewards_with_kl=rewards_with_kl)
    W.write(name, tens, {"kind": "advantages", "scale_eps": 1e-6, "kl_reward_beta": beta, "loss": None})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join("tests", "fixtures", "losses"))
    args = ap.parse_args()
    if not torch.__version__.startswith("2.15"):
        print(f"warning: written with torch 2.15, running {torch.__version__}", file=sys.stderr)
    W = Writer(args.out)

    print("== policy")
    for name, variant, V, kw in POLICY_CASES:
        counts = run_policy(W, name, variant, V, kw)
        print("      regions: " + ", ".join(f"{k} {n}" for k, n in counts.items()))
    gppo_vs_ppo(args.out)
    gppo_beta_report(args.out)
    print("== distill")
    run_distill(W)
    print("== dpo")
    run_dpo(W)
    print("== sft")
    run_sft(W)
    print("== advantages")
    run_advantages(W)
    print("== lm_head")
    run_sft(W, "lm_head_sft", lm_head=True)
    gspo_kw = next(c for c in POLICY_CASES if c[0] == "gspo_default")[3]
    run_policy(W, "lm_head_gspo", "gspo", V_DEFAULT, gspo_kw, lm_head=True)
    run_policy(W, "lm_head_ppo_entropy", "ppo", V_DEFAULT,
               dict(eps_low=0.2, eps_high=0.2, dual_clip=3.0, agg="token-mean", entropy_coef=0.01,
                    kl={"kind": "k3", "coef": 0.1}, temperature=1.0), lm_head=True)

    stale = sorted(f for f in os.listdir(args.out)
                   if f.rsplit(".", 1)[0] not in W.cases and f.endswith((".json", ".safetensors")))
    if stale:
        print(f"warning: files not written by this run: {stale}", file=sys.stderr)
    print(f"wrote {len(W.cases)} cases to {args.out}")


if __name__ == "__main__":
    main()
