//! Chat templates rendered with minijinja against transformers'
//! `apply_chat_template(..., add_generation_prompt=True)`
//! (tests/fixtures/rollout/chat.json): a Qwen2.5-style template from
//! tokenizer_config.json and a Llama-3-style one from chat_template.jinja.

mod common;
use common::*;
use engine::data::chat::{ChatTemplate, Message};

#[test]
fn templates_render_like_transformers() {
    let dir = fixtures().join("rollout");
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("chat.json")).unwrap()).unwrap();
    assert!(cases.len() >= 10);
    for c in &cases {
        let t = ChatTemplate::load(&dir.join(c["template_dir"].as_str().unwrap())).unwrap();
        let messages: Vec<Message> = serde_json::from_value(c["messages"].clone()).unwrap();
        let got = t.render(&messages, true).unwrap();
        assert_eq!(got, c["text"].as_str().unwrap(), "{} with {messages:?}", c["template_dir"]);
    }
}

#[test]
fn a_model_without_template_is_a_clear_error() {
    let err = ChatTemplate::load(&fixtures().join("qwen3")).err().unwrap().to_string();
    assert!(err.contains("no chat template"), "{err}");
}
