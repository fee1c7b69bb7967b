//! Export the engine's MKL dispatch override (`huaxian_engine::cpu`) from the worker's
//! benchmark binary and tests, as the `huaxian` binary does.

fn main() {
    println!("cargo:rustc-link-arg=-Wl,--export-dynamic-symbol=mkl_serv_intel_cpu_true");
}
