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
