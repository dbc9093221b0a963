//! Where every parameter lives in the one flat parameter buffer, under its
//! Hugging Face name. Gradients use an identical layout in a second buffer,
//! so optimizer, gradient norm and zeroing are single passes (llm.c's way).

use super::config::ModelConfig;
use crate::backend::Span;

#[derive(Clone, Debug)]
pub struct ParamEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub span: Span,
}

/// Spans of one decoder layer's parameters.
#[derive(Clone, Debug)]
pub struct LayerParams {
    pub input_norm: Span,
    pub q_w: Span,
    pub q_b: Option<Span>,
    pub k_w: Span,
    pub k_b: Option<Span>,
    pub v_w: Span,
    pub v_b: Option<Span>,
    pub o_w: Span,
    pub q_norm: Option<Span>,
    pub k_norm: Option<Span>,
    pub post_norm: Span,
    pub gate_w: Span,
    pub up_w: Span,
    pub down_w: Span,
}

#[derive(Clone, Debug)]
pub struct ParamLayout {
    pub entries: Vec<ParamEntry>,
    pub embed: Span,
    pub layers: Vec<LayerParams>,
    pub final_norm: Span,
    /// Equal to `embed` when the embeddings are tied.
    pub lm_head: Span,
    pub total: usize,
}

struct Builder {
    entries: Vec<ParamEntry>,
    total: usize,
}

impl Builder {
    fn add(&mut self, name: String, shape: &[usize]) -> Span {
        let span = Span::new(self.total, shape.iter().product());
        self.total += span.len;
        self.entries.push(ParamEntry { name, shape: shape.to_vec(), span });
        span
    }
}

impl LayerParams {
    /// gate_proj and up_proj as one `[2·intermediate, hidden]` matrix: the
    /// layout puts up right after gate, so one product makes both (the
    /// forward's `[tokens, 2·intermediate]`, gate then up in each row).
    pub fn gate_up_w(&self) -> Span {
        assert_eq!(self.up_w.off, self.gate_w.end(), "the layout keeps up_proj right after gate_proj");
        Span::new(self.gate_w.off, self.gate_w.len + self.up_w.len)
    }

    /// q_proj, k_proj and v_proj as one `[q_dim + 2·kv_dim, hidden]` matrix
    /// (the layout keeps them side by side): one product makes the rows
    /// `[tokens, q_dim + 2·kv_dim]`, q then k then v in each row.
    pub fn qkv_w(&self) -> Span {
        assert!(
            self.k_w.off == self.q_w.end() && self.v_w.off == self.k_w.end(),
            "the layout keeps q_proj, k_proj and v_proj side by side"
        );
        Span::new(self.q_w.off, self.q_w.len + self.k_w.len + self.v_w.len)
    }

    /// Their biases as one vector, laid out as [`Self::qkv_w`]'s rows (Qwen2).
    pub fn qkv_b(&self) -> Option<Span> {
        match (self.q_b, self.k_b, self.v_b) {
            (Some(q), Some(k), Some(v)) => {
                assert!(k.off == q.end() && v.off == k.end(), "the layout keeps the q, k, v biases side by side");
                Some(Span::new(q.off, q.len + k.len + v.len))
            }
            (None, None, None) => None,
            _ => panic!("q, k and v biases come together"),
        }
    }
}

impl ParamLayout {
    pub fn new(c: &ModelConfig) -> Self {
        let mut b = Builder { entries: Vec::new(), total: 0 };
        let (d, q, kv, i) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
        let embed = b.add("model.embed_tokens.weight".into(), &[c.vocab_size, d]);
        let layers = (0..c.n_layers)
            .map(|l| {
                let p = format!("model.layers.{l}");
                let input_norm = b.add(format!("{p}.input_layernorm.weight"), &[d]);
                // q, k, v weights side by side, then their biases: one
                // product makes all three (`LayerParams::qkv_w`).
                let q_w = b.add(format!("{p}.self_attn.q_proj.weight"), &[q, d]);
                let k_w = b.add(format!("{p}.self_attn.k_proj.weight"), &[kv, d]);
                let v_w = b.add(format!("{p}.self_attn.v_proj.weight"), &[kv, d]);
                let q_b = c.qkv_bias.then(|| b.add(format!("{p}.self_attn.q_proj.bias"), &[q]));
                let k_b = c.qkv_bias.then(|| b.add(format!("{p}.self_attn.k_proj.bias"), &[kv]));
                let v_b = c.qkv_bias.then(|| b.add(format!("{p}.self_attn.v_proj.bias"), &[kv]));
                let o_w = b.add(format!("{p}.self_attn.o_proj.weight"), &[d, q]);
                let q_norm = c.qk_norm.then(|| b.add(format!("{p}.self_attn.q_norm.weight"), &[c.head_dim]));
                let k_norm = c.qk_norm.then(|| b.add(format!("{p}.self_attn.k_norm.weight"), &[c.head_dim]));
                let post_norm = b.add(format!("{p}.post_attention_layernorm.weight"), &[d]);
                let gate_w = b.add(format!("{p}.mlp.gate_proj.weight"), &[i, d]);
                let up_w = b.add(format!("{p}.mlp.up_proj.weight"), &[i, d]);
                let down_w = b.add(format!("{p}.mlp.down_proj.weight"), &[d, i]);
                LayerParams {
                    input_norm,
                    q_w,
                    q_b,
                    k_w,
                    k_b,
                    v_w,
                    v_b,
                    o_w,
                    q_norm,
                    k_norm,
                    post_norm,
                    gate_w,
                    up_w,
                    down_w,
                }
            })
            .collect();
        let final_norm = b.add("model.norm.weight".into(), &[d]);
        let lm_head = if c.tie_word_embeddings { embed } else { b.add("lm_head.weight".into(), &[c.vocab_size, d]) };
        ParamLayout { entries: b.entries, embed, layers, final_norm, lm_head, total: b.total }
    }

    pub fn get(&self, name: &str) -> Option<&ParamEntry> {
        self.entries.iter().find(|e| e.name == name)
    }
}
