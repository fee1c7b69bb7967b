//! Give the engine's own tests an rpath to the build-time libtorch, so `cargo test` runs
//! without LD_LIBRARY_PATH, and export the MKL dispatch override (`src/cpu.rs`) from them as
//! the binaries do.

fn main() {
    export_mkl_override();
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}

include!("mkl_export.rs");
