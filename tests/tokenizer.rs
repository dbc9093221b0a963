//! The tokenizer against the Python `tokenizers` encodings stored in the
//! fixtures, and the EOS ids a model declares.

mod common;
use common::*;
use engine::data::tokenizer::{eos_ids, Tokenizer};
use serde_json::Value;

#[test]
fn encodes_like_python_and_decodes_back() {
    for name in FAMILIES {
        let tok = Tokenizer::load(&fixtures().join(name)).unwrap();
        let cases: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(fixtures().join(format!("{name}.score.json"))).unwrap())
                .unwrap();
        for c in &cases {
            let text = c["text"].as_str().unwrap();
            let want: Vec<u32> = c["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
            assert_eq!(tok.encode(text, false).unwrap(), want, "{name}: {text:?}");
            assert_eq!(tok.decode(&want, false).unwrap(), text);
        }
        assert_eq!(tok.token_to_id("<|endoftext|>"), Some(400));
        assert_eq!(tok.token_to_id("<|im_end|>"), Some(401));
        // Special tokens stay whole and are dropped by skip_special_tokens.
        let ids = tok.encode("hi<|im_end|>", false).unwrap();
        assert_eq!(*ids.last().unwrap(), 401);
        assert_eq!(tok.decode(&ids, true).unwrap(), "hi");
    }
}

#[test]
fn eos_ids_from_generation_config_then_config() {
    // qwen2: generation_config lists [401, 400], config.json says 401.
    assert_eq!(eos_ids(&fixtures().join("qwen2")).unwrap(), vec![401, 400]);
    // llama: both say 400.
    assert_eq!(eos_ids(&fixtures().join("llama")).unwrap(), vec![400]);
    assert_eq!(Tokenizer::load(&fixtures().join("qwen3")).unwrap().eos_ids, vec![401]);
}
