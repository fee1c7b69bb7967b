//! The configuration files we ship load, for every service, with no unknown key, and the
//! README's configuration reference lists exactly the keys the code reads, with the code's
//! defaults and environment names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(name)
}

#[test]
fn the_example_and_compose_files_load_for_the_gateway_and_the_worker() {
    for name in ["huaxian.example.toml", "huaxian.compose.toml"] {
        let file = shipped(name);
        let gateway: Result<huaxian_gateway::Settings, _> = huaxian_service::load(Some(&file));
        let gateway = gateway.unwrap_or_else(|e| panic!("{name} for the gateway: {e}"));
        let worker: Result<huaxian_worker::Settings, _> = huaxian_service::load(Some(&file));
        let worker = worker.unwrap_or_else(|e| panic!("{name} for the worker: {e}"));
        assert!(!worker.worker.models.is_empty(), "{name}: no model");
        assert_eq!(
            gateway.prompt.default_model, worker.worker.models[0].name,
            "{name}: /imagine's default model is one the worker loads"
        );
    }
}

/// Every key path of a serialized settings value: `worker.max_batch`, and
/// `worker.models[].name` for arrays of tables.
fn key_paths(value: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                key_paths(value, &path, out);
            }
        }
        serde_json::Value::Array(items) if items.iter().any(|i| i.is_object()) => {
            for item in items {
                key_paths(item, &format!("{prefix}[]"), out);
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

/// A configuration with every optional part present, so every key shows when serialized.
const FULL: &str = r#"
[database]
url = "postgres://db/huaxian"
[redis]
url = "redis://r"
[discord]
token = "t"
guild_id = 1
[discord.shards]
first = 0
last = 0
total = 1
[gateway]
consumer = "g"
metrics_addr = "127.0.0.1:1"
[worker]
id = "w"
metrics_addr = "127.0.0.1:2"
[[worker.models]]
name = "sd15"
path = "/m"
config_dir = "/c"
[worker.expander]
path = "/e"
allow_words = "/w"
"#;

/// Every key the gateway or the worker reads.
fn code_keys() -> BTreeSet<String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("full.toml");
    std::fs::write(&file, FULL).unwrap();
    let gateway: huaxian_gateway::Settings = huaxian_service::load(Some(&file)).unwrap();
    let worker: huaxian_worker::Settings = huaxian_service::load(Some(&file)).unwrap();
    let mut keys = BTreeSet::new();
    key_paths(&serde_json::to_value(&gateway).unwrap(), "", &mut keys);
    key_paths(&serde_json::to_value(&worker).unwrap(), "", &mut keys);
    keys
}

/// One row of the README's reference table.
struct Row {
    key: String,
    /// A TOML literal, when the key has a default.
    default: Option<String>,
    environment: String,
}

fn readme_rows() -> Vec<Row> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let start = readme
        .find("## Configuration reference")
        .expect("README has a configuration reference");
    let section = &readme[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let code = |cell: &str| {
        let cell = cell.trim();
        (cell.starts_with('`') && cell.ends_with('`') && cell.len() > 1)
            .then(|| cell[1..cell.len() - 1].to_string())
    };
    section[..end]
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
            let key = code(cells.first()?)?;
            Some(Row {
                key,
                default: code(cells.get(1)?),
                environment: cells.get(2)?.trim().trim_matches('`').to_string(),
            })
        })
        .collect()
}

#[test]
fn the_readme_lists_every_key_with_its_environment_name() {
    let rows = readme_rows();
    let listed: BTreeSet<String> = rows.iter().map(|row| row.key.clone()).collect();
    assert_eq!(listed.len(), rows.len(), "a key is listed twice");
    let code = code_keys();
    let undocumented: Vec<_> = code.difference(&listed).collect();
    let unknown: Vec<_> = listed.difference(&code).collect();
    assert!(
        undocumented.is_empty(),
        "not in the README: {undocumented:?}"
    );
    assert!(
        unknown.is_empty(),
        "in the README, not read by the code: {unknown:?}"
    );
    for row in &rows {
        let expected = if row.key.contains("[]") {
            "file only".to_string()
        } else {
            huaxian_service::settings::environment_name(&row.key)
        };
        assert_eq!(row.environment, expected, "{}", row.key);
    }
}

/// The settings of both services from `toml`, as text to compare.
fn loaded(toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("huaxian.toml");
    std::fs::write(&file, toml).unwrap();
    let gateway: Result<huaxian_gateway::Settings, _> = huaxian_service::load(Some(&file));
    let worker: Result<huaxian_worker::Settings, _> = huaxian_service::load(Some(&file));
    let (gateway, worker) = match (gateway, worker) {
        (Ok(gateway), Ok(worker)) => (gateway, worker),
        (gateway, worker) => panic!("{toml}\n{:?} {:?}", gateway.err(), worker.err()),
    };
    format!("{gateway:#?}\n{worker:#?}")
}

#[test]
fn the_readme_defaults_are_the_codes() {
    // The keys without a default, in both files; the expander section is present so its
    // keys' defaults apply.
    let required = [
        ("database", "url", "\"postgres://db/huaxian\""),
        ("redis", "url", "\"redis://r\""),
        ("discord", "token", "\"t\""),
        ("worker.expander", "path", "\"/e\""),
    ];
    let mut sections: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (section, key, value) in required {
        sections
            .entry(section.to_string())
            .or_default()
            .push(format!("{key} = {value}"));
    }
    let minimal = toml(&sections);
    let mut stated = 0;
    for row in readme_rows() {
        let Some(default) = row.default else { continue };
        let (section, key) = row.key.rsplit_once('.').unwrap();
        sections
            .entry(section.to_string())
            .or_default()
            .push(format!("{key} = {default}"));
        stated += 1;
    }
    assert!(stated > 40, "only {stated} defaults read from the README");
    let models = "[[worker.models]]\nname = \"sd15\"\npath = \"/m\"\n";
    assert_eq!(
        loaded(&format!("{}{models}", toml(&sections))),
        loaded(&format!("{minimal}{models}")),
        "a default in the README differs from the code's"
    );
}

fn toml(sections: &BTreeMap<String, Vec<String>>) -> String {
    sections
        .iter()
        .map(|(section, lines)| format!("[{section}]\n{}\n", lines.join("\n")))
        .collect()
}
