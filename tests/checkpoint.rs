//! Checkpoints: what is saved loads back bit for bit, in the Hugging Face
//! naming, single-file or sharded, and no temporary file is left behind.

mod common;
use common::*;
use engine::backend::cpu::Cpu;
use engine::model::checkpoint::{save, SaveDtype, INDEX_FILE};
use engine::model::{Model, ModelConfig};

fn files(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

#[test]
fn bf16_round_trip_is_exact() {
    let be = Cpu;
    let src = fixtures().join("qwen2");
    let (model, info) = Model::load(&be, &src).unwrap();
    assert_eq!(info.dtypes, vec!["BF16".to_string()]);
    let out = tempfile::tempdir().unwrap();
    save(out.path(), &src, &model.layout, &model.params, SaveDtype::BF16, usize::MAX).unwrap();
    let (back, _) = Model::load(&be, out.path()).unwrap();
    assert!(back.params == model.params, "bf16 weights changed in a save / load round trip");
    assert_eq!(back.cfg, model.cfg);
    let names = files(out.path());
    assert!(names.contains(&"model.safetensors".to_string()) && names.contains(&"tokenizer.json".to_string()));
    assert!(!names.iter().any(|n| n.contains("tmp")), "temporary files left: {names:?}");
    // Tied: no lm_head.weight written, as transformers writes it.
    let bytes = std::fs::read(out.path().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(st.tensor("lm_head.weight").is_err());
    assert_eq!(st.len(), model.layout.entries.len());
}

#[test]
fn sharded_f32_round_trip_is_exact() {
    let be = Cpu;
    let src = fixtures().join("llama");
    let (model, _) = Model::load(&be, &src).unwrap();
    let out = tempfile::tempdir().unwrap();
    save(out.path(), &src, &model.layout, &model.params, SaveDtype::F32, 150_000).unwrap();
    let names = files(out.path());
    assert!(names.contains(&INDEX_FILE.to_string()), "{names:?}");
    assert!(names.iter().filter(|n| n.starts_with("model-")).count() >= 3, "{names:?}");
    let (back, _) = Model::load(&be, out.path()).unwrap();
    assert!(back.params == model.params);
    // The legacy config keeps its form, with the dtype key updated.
    let cfg_text = std::fs::read_to_string(out.path().join("config.json")).unwrap();
    assert!(cfg_text.contains("\"torch_dtype\": \"float32\"") && cfg_text.contains("rope_scaling"));
    assert_eq!(ModelConfig::from_file(&out.path().join("config.json")).unwrap(), model.cfg);
}
