//! Link libtorch so that the binary finds it and really uses CUDA when the libtorch has it.
//!
//! With the linker's default `--as-needed`, `libtorch_cuda.so` is dropped because no symbol
//! of ours references it directly; CUDA then reports as unavailable at run time. Linking it
//! with `--no-as-needed` keeps it. An rpath to the build-time libtorch lets the binary run
//! here without LD_LIBRARY_PATH; elsewhere LD_LIBRARY_PATH, searched first, takes over.
//!
//! The binary also exports the engine's MKL dispatch override (`huaxian_engine::cpu`), so that
//! libtorch's MKL calls it instead of its own vendor check.

use std::path::PathBuf;

fn main() {
    export_mkl_override();
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    let lib = PathBuf::from(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg-bins=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg-bins=-ltorch_cuda");
        println!("cargo:rustc-link-arg-bins=-Wl,--as-needed");
    }
}

include!("../engine/mkl_export.rs");
