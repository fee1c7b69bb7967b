// Included by the build scripts of every package whose binaries or tests run the engine:
// exports `huaxian_engine::cpu::mkl_serv_intel_cpu_true` from the executable, so that the MKL
// inside libtorch finds it before its own. A dynamic list, which GNU ld, gold, lld and mold
// all accept for executables. Linux on x86_64 only, as the override is.

fn export_mkl_override() {
    let env = |key: &str| std::env::var(key).unwrap_or_default();
    if env("CARGO_CFG_TARGET_OS") != "linux" || env("CARGO_CFG_TARGET_ARCH") != "x86_64" {
        return;
    }
    let list = std::path::Path::new(&env("OUT_DIR")).join("mkl-override.dynlist");
    if let Err(e) = std::fs::write(&list, "{ mkl_serv_intel_cpu_true; };\n") {
        panic!("cannot write {}: {e}", list.display());
    }
    println!("cargo:rustc-link-arg=-Wl,--dynamic-list={}", list.display());
}
