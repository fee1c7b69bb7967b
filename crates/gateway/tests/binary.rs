//! The `huaxian-gateway` binary of the gateway's container image: it links no libtorch, and
//! it refuses a missing configuration with the path in the message.

use std::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_huaxian-gateway");

#[test]
fn links_no_libtorch() {
    let output = Command::new("ldd").arg(BINARY).output();
    let Ok(output) = output else {
        panic!("ldd is needed to list the binary's libraries");
    };
    let libraries = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{libraries}");
    assert!(libraries.contains("libc.so"), "{libraries}");
    assert!(!libraries.contains("libtorch"), "{libraries}");
    assert!(!libraries.contains("libc10"), "{libraries}");
}

#[test]
fn a_missing_configuration_names_the_file() {
    let output = Command::new(BINARY)
        .args(["--config", "/nonexistent/huaxian.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/huaxian.toml"), "{stderr}");
}

fn migrate(database_url: Option<&str>) -> std::process::Output {
    let mut command = Command::new(BINARY);
    command.arg("migrate").env_remove("HUAXIAN_CONFIG");
    match database_url {
        Some(url) => command.env("HUAXIAN__DATABASE__URL", url),
        None => command.env_remove("HUAXIAN__DATABASE__URL"),
    };
    command.output().unwrap()
}

#[tokio::test]
async fn migrate_applies_the_schema_once_and_refuses_a_newer_database() {
    let url = huaxian_testkit::scratch_database("huaxian_migrate")
        .await
        .unwrap();

    let first = migrate(Some(&url));
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success(), "{stdout}\n{:?}", first.stderr);
    assert!(stdout.contains("applied 1 core"), "{stdout}");
    assert!(stdout.contains("applied 3 gateway"), "{stdout}");

    let again = migrate(Some(&url));
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success());
    assert_eq!(stdout.trim(), "migrate: the database is up to date");

    // TLS is built in: asking for it either works (a server with TLS on) or fails on the
    // server's side, never for want of support in the binary.
    let tls = migrate(Some(&format!("{url}?sslmode=require")));
    let stderr = String::from_utf8_lossy(&tls.stderr);
    assert!(!stderr.contains("without TLS support"), "{stderr}");

    // A database a newer build migrated: this build must not run against it.
    {
        use sqlx::{Connection, Executor};
        let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
        db.execute(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, \
             execution_time) VALUES (9999, 'from the future', true, '\\x00', 0)",
        )
        .await
        .unwrap();
    }
    let newer = migrate(Some(&url));
    let stderr = String::from_utf8_lossy(&newer.stderr);
    assert_eq!(newer.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("9999"), "{stderr}");

    huaxian_testkit::drop_database(&url).await.unwrap();
}

#[test]
fn migrate_without_a_database_names_the_key() {
    let output = migrate(None);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("database"), "{stderr}");
}

#[test]
fn migrate_against_an_unreachable_server_says_where_and_never_the_password() {
    let started = std::time::Instant::now();
    let output = migrate(Some("postgres://huaxian:hunter2secret@127.0.0.1:1/huaxian"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot connect to Postgres at 127.0.0.1:1"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2secret"), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "no long wait for a refused connection"
    );

    let output = migrate(Some("mysql://root@127.0.0.1/huaxian"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a postgres:// URL"), "{stderr}");
}
