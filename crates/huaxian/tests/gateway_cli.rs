//! `huaxian gateway` refusing bad configuration with a message that names the key to fix,
//! and never printing the token.

fn run(dir: &std::path::Path, text: &str) -> (Option<i32>, String) {
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_huaxian"))
        .args(["gateway", "--config"])
        .arg(&path)
        .env_remove("HUAXIAN__DISCORD__TOKEN")
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stdout));
    (output.status.code(), text)
}

const SERVICES: &str = "[database]\nurl = \"postgres://u:hunter2@127.0.0.1:1/x\"\n\
                        [redis]\nurl = \"redis://127.0.0.1:1\"\n";

#[test]
fn bad_configuration_says_what_to_change() {
    let dir = tempfile::tempdir().unwrap();

    let (code, text) = run(dir.path(), SERVICES);
    assert_eq!(code, Some(2));
    assert!(text.contains("discord"), "{text}");

    let missing = format!("{SERVICES}[discord]\ntoken = {{ file = \"/nonexistent/bot-token\" }}\n");
    let (code, text) = run(dir.path(), &missing);
    assert_eq!(code, Some(2));
    assert!(text.contains("[discord] token"), "{text}");
    assert!(text.contains("/nonexistent/bot-token"), "{text}");

    let (code, text) = run(
        dir.path(),
        &format!("{SERVICES}[discord]\ntoken = \"  \"\n"),
    );
    assert_eq!(code, Some(2));
    assert!(text.contains("HUAXIAN__DISCORD__TOKEN"), "{text}");

    let shards = format!(
        "{SERVICES}[discord]\ntoken = \"t\"\n[discord.shards]\nfirst = 2\nlast = 4\ntotal = 4\n"
    );
    let (code, text) = run(dir.path(), &shards);
    assert_eq!(code, Some(2));
    assert!(text.contains("[discord.shards]"), "{text}");

    // Postgres is unreachable here: the error names the setting, not the password.
    let (code, text) = run(
        dir.path(),
        &format!("{SERVICES}[discord]\ntoken = \"MTIz.secret-bot-token.xyz\"\n"),
    );
    assert_eq!(code, Some(2));
    assert!(text.contains("[database] url"), "{text}");
    assert!(!text.contains("secret-bot-token"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}
