//! The binary must keep `libtorch_cuda` as a dependency when the libtorch it was built against
//! has one: with the linker's default `--as-needed` it is silently dropped, and CUDA then
//! reports as unavailable on a GPU machine.

use std::process::Command;

#[test]
fn binary_links_libtorch_cuda_when_libtorch_has_it() {
    let binary = env!("CARGO_BIN_EXE_huaxian");
    let output = Command::new("readelf").args(["-d", binary]).output();
    let Ok(output) = output else {
        panic!("readelf (binutils) is needed for this check");
    };
    let dynamic = String::from_utf8_lossy(&output.stdout);
    let runpath = dynamic
        .lines()
        .find_map(|l| l.split("runpath: [").nth(1))
        .and_then(|rest| rest.split(']').next())
        .expect("the binary carries an rpath to its build-time libtorch");
    let has_cuda = runpath
        .split(':')
        .any(|dir| std::path::Path::new(dir).join("libtorch_cuda.so").exists());
    assert!(dynamic.contains("libtorch_cpu.so"), "{dynamic}");
    assert_eq!(
        dynamic.contains("libtorch_cuda.so"),
        has_cuda,
        "libtorch_cuda present in libtorch: {has_cuda}; linked: {dynamic}"
    );
}
