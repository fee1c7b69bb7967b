//! Export the engine's MKL dispatch override (`huaxian_engine::cpu`) from the worker's
//! benchmark binary and tests, as the `huaxian` binary does.

fn main() {
    export_mkl_override();
}

include!("../engine/mkl_export.rs");
