//! The prompt expander's GPT-2 against transformers on the tiny fixture model
//! (`scripts/fixtures/make_gpt2.py`): token ids, logits, greedy continuations, the KV cache,
//! seeded sampling, the allow-list, and broken folders.

use std::path::{Path, PathBuf};

use huaxian_engine::textgen::{Decoding, Expander, Strategy};
use huaxian_engine::weights::SafetensorsFile;
use huaxian_engine::Error;
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn folder() -> PathBuf {
    fixtures().join("models/gpt2")
}

fn expander() -> Expander {
    Expander::load(&folder(), Device::Cpu).unwrap()
}

struct Refs {
    prompts: Vec<String>,
    file: SafetensorsFile,
}

impl Refs {
    fn load() -> Self {
        let text = std::fs::read_to_string(fixtures().join("refs/gpt2.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let prompts = json["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect();
        let file = SafetensorsFile::open(&fixtures().join("refs/gpt2.safetensors")).unwrap();
        Self { prompts, file }
    }

    fn tensor(&self, name: &str) -> Tensor {
        self.file.load(name, Kind::Float, Device::Cpu).unwrap()
    }

    fn ids(&self, name: &str) -> Vec<u32> {
        let values: Vec<f32> = Vec::try_from(self.tensor(name)).unwrap();
        values.into_iter().map(|v| v as u32).collect()
    }
}

fn greedy(tokens: usize) -> Decoding {
    Decoding {
        max_new_tokens: tokens,
        strategy: Strategy::Greedy,
        stop_at_end: false,
        stop_at_newline: false,
        allowed: None,
    }
}

#[test]
fn token_ids_equal_transformers_from_either_tokenizer_layout() {
    let refs = Refs::load();
    let with_json = expander();
    // The same folder without tokenizer.json: vocab.json and merges.txt only.
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "config.json",
        "model.safetensors",
        "vocab.json",
        "merges.txt",
    ] {
        std::fs::copy(folder().join(name), dir.path().join(name)).unwrap();
    }
    let without_json = Expander::load(dir.path(), Device::Cpu).unwrap();
    for (i, prompt) in refs.prompts.iter().enumerate() {
        let expected = refs.ids(&format!("ids_{i}"));
        assert_eq!(with_json.encode(prompt).unwrap(), expected, "{prompt:?}");
        assert_eq!(without_json.encode(prompt).unwrap(), expected, "{prompt:?}");
        assert_eq!(with_json.decode(&expected).unwrap(), *prompt);
    }
}

#[test]
fn logits_equal_transformers() {
    let refs = Refs::load();
    let expander = expander();
    for i in 0..refs.prompts.len() {
        let ids = refs.ids(&format!("ids_{i}"));
        let ours = expander.logits(&ids).unwrap();
        let theirs = refs.tensor(&format!("logits_{i}"));
        assert_eq!(ours.size(), theirs.size());
        let diff = (ours - theirs).abs().max().double_value(&[]);
        assert!(diff <= 1e-4, "prompt {i}: logits differ by {diff}");
    }
}

#[test]
fn greedy_continuations_equal_transformers_and_the_cache_changes_nothing() {
    let refs = Refs::load();
    let expander = expander();
    for i in 0..refs.prompts.len() {
        let ids = refs.ids(&format!("ids_{i}"));
        let expected = refs.ids(&format!("greedy_{i}"));
        let generated = expander.generate(&ids, &greedy(expected.len())).unwrap();
        assert_eq!(generated, expected, "prompt {i}");

        // Token by token through the cache, the logits of the whole sequence are those of
        // one pass without it.
        let mut sequence = ids.clone();
        sequence.extend(&generated);
        let whole = expander.logits(&sequence).unwrap();
        let mut cache = expander.model().cache();
        let mut rows = vec![expander
            .model()
            .forward(&ids, &mut cache)
            .unwrap()
            .squeeze_dim(0)];
        for id in &generated {
            rows.push(
                expander
                    .model()
                    .forward(&[*id], &mut cache)
                    .unwrap()
                    .squeeze_dim(0),
            );
        }
        let cached = Tensor::cat(&rows, 0);
        let diff = (cached - whole).abs().max().double_value(&[]);
        assert!(diff <= 1e-5, "prompt {i}: cached logits differ by {diff}");
    }
}

#[test]
fn sampling_is_reproducible_for_a_seed() {
    let expander = expander();
    let sampled = |seed| Decoding {
        max_new_tokens: 24,
        strategy: Strategy::Sample {
            top_k: Some(50),
            top_p: Some(0.95),
            temperature: 1.0,
            seed,
        },
        stop_at_end: false,
        stop_at_newline: false,
        allowed: None,
    };
    let first = expander.expand("a lighthouse", &sampled(7)).unwrap();
    let again = expander.expand("a lighthouse", &sampled(7)).unwrap();
    assert_eq!(first, again);
    assert_eq!(first.ids.len(), 24);
    let others: Vec<_> = (8..12)
        .map(|seed| expander.expand("a lighthouse", &sampled(seed)).unwrap().ids)
        .collect();
    assert!(
        others.iter().any(|ids| *ids != first.ids),
        "seeds make no difference"
    );
    assert!(first.text.starts_with("a lighthouse"));
}

#[test]
fn the_allow_list_is_honoured() {
    let expander = expander();
    let allowed = expander
        .allow_words("soft light\ncinematic\n# a comment\n\nfog\n")
        .unwrap();
    for seed in 0..5 {
        let options = Decoding {
            max_new_tokens: 30,
            strategy: Strategy::Sample {
                top_k: None,
                top_p: None,
                temperature: 1.5,
                seed,
            },
            stop_at_end: false,
            stop_at_newline: true,
            allowed: Some(allowed.clone()),
        };
        let expansion = expander.expand("a castle", &options).unwrap();
        assert!(!expansion.ids.is_empty());
        for id in &expansion.ids {
            assert!(allowed.contains(id), "token {id} is not allowed");
        }
    }
}

#[test]
fn stops_at_the_token_budget_and_the_position_limit() {
    let expander = expander();
    let expansion = expander.expand("a cat", &greedy(5)).unwrap();
    assert_eq!(expansion.ids.len(), 5);
    let long = "a cat ".repeat(60);
    let ids = expander.encode(&long).unwrap();
    let room = expander.model().config().n_positions as usize - ids.len();
    let generated = expander.generate(&ids, &greedy(500)).unwrap();
    assert_eq!(generated.len(), room, "never past n_positions");
}

#[test]
fn broken_folders_name_the_file() {
    let copy = |skip: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(folder()).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            if !skip.contains(&name.as_str()) {
                std::fs::copy(entry.path(), dir.path().join(&name)).unwrap();
            }
        }
        dir
    };
    let message = |dir: &Path| match Expander::load(dir, Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(error) => error.to_string(),
    };

    let dir = copy(&["config.json"]);
    assert!(message(dir.path()).contains("config.json"));

    let dir = copy(&["model.safetensors"]);
    std::fs::write(dir.path().join("pytorch_model.bin"), b"pickle").unwrap();
    let text = message(dir.path());
    assert!(text.contains("pytorch_model.bin"), "{text}");

    let dir = copy(&["tokenizer.json", "merges.txt"]);
    assert!(message(dir.path()).contains("merges.txt"));

    let dir = copy(&[]);
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("\"n_embd\": 32", "\"n_embd\": 48"),
    )
    .unwrap();
    let text = message(dir.path());
    assert!(
        text.contains("model.safetensors") && text.contains("expected [48]"),
        "{text}"
    );

    let dir = copy(&[]);
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    assert!(matches!(
        Expander::load(dir.path(), Device::Cpu),
        Err(Error::BadConfig { .. })
    ));
}
