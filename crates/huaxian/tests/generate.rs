//! `huaxian generate` as a user runs it: files written, metadata readable, one-line errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use huaxian_engine::image_io::png_parameters;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn huaxian(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_huaxian"))
        .args(args)
        .output()
        .expect("runs")
}

fn sd1() -> String {
    fixtures().join("models/sd1").display().to_string()
}

#[test]
fn writes_four_images_and_a_grid_with_parameters() {
    let out = tempfile::tempdir().expect("tempdir");
    let dir = out.path().display().to_string();
    let result = huaxian(&[
        "generate",
        "--model",
        &sd1(),
        "--prompt",
        "a paper crane",
        "--negative",
        "blur",
        "--seed",
        "42",
        "--steps",
        "3",
        "--sampler",
        "dpmpp_2m",
        "--width",
        "64",
        "--height",
        "64",
        "--count",
        "4",
        "--out",
        &dir,
    ]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(String::from_utf8_lossy(&result.stdout).contains("seed 42"));

    for i in 0..4 {
        let bytes = std::fs::read(out.path().join(format!("image-{i}.png"))).expect("image");
        let text = png_parameters(&bytes).expect("parameters chunk");
        assert!(
            text.starts_with("a paper crane\nNegative prompt: blur\n"),
            "{text}"
        );
        assert!(
            text.contains("Steps: 3, Sampler: DPM++ 2M, CFG scale: 7"),
            "{text}"
        );
        assert!(
            text.contains(&format!("Seed: {}, Size: 64x64, Model hash: ", 42 + i)),
            "{text}"
        );
    }
    let grid = image::open(out.path().join("grid.png"))
        .expect("grid")
        .to_rgb8();
    assert_eq!(grid.dimensions(), (128, 128));
    let first = image::open(out.path().join("image-0.png"))
        .expect("image")
        .to_rgb8();
    let quadrant = huaxian_engine::image_io::quadrant(&grid, 0).expect("quadrant");
    assert_eq!(quadrant, first);
}

#[test]
fn img2img_from_a_file() {
    let out = tempfile::tempdir().expect("tempdir");
    let dir = out.path().display().to_string();
    let init = fixtures().join("refs/init_64.png").display().to_string();
    let result = huaxian(&[
        "generate",
        "--model",
        &sd1(),
        "--prompt",
        "x",
        "--steps",
        "4",
        "--width",
        "64",
        "--height",
        "64",
        "--count",
        "1",
        "--init-image",
        &init,
        "--strength",
        "0.5",
        "--out",
        &dir,
    ]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let bytes = std::fs::read(out.path().join("image-0.png")).expect("image");
    assert!(png_parameters(&bytes)
        .expect("text")
        .contains("Denoising strength: 0.5"));
    assert!(
        !out.path().join("grid.png").exists(),
        "no grid for one image"
    );
}

fn fails_with(args: &[&str], needle: &str) {
    let out = tempfile::tempdir().expect("tempdir");
    let dir = out.path().display().to_string();
    let mut all = vec!["generate", "--prompt", "x", "--out", &dir];
    all.extend_from_slice(args);
    if !args.contains(&"--model") {
        all.extend_from_slice(&["--model", Box::leak(sd1().into_boxed_str())]);
    }
    let result = huaxian(&all);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success(), "succeeded with {args:?}");
    assert!(
        stderr.contains(needle),
        "{args:?}: expected {needle:?} in {stderr}"
    );
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one-line reason, got: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_input_gets_a_one_line_reason() {
    fails_with(&["--model", "/nonexistent/model"], "does not exist");
    fails_with(&["--width", "100"], "multiple of 8");
    fails_with(&["--sampler", "plms"], "euler_a");
    fails_with(&["--steps", "0"], "steps must be between 1 and 1000");
    fails_with(&["--device", "tpu"], "use cpu, cuda or cuda:N");
    fails_with(&["--dtype", "f8"], "use f32, f16 or bf16");
    fails_with(&["--count", "0"], "count must be between");
    fails_with(&["--init-image", "/nonexistent.png"], "nonexistent.png");
    fails_with(
        &[
            "--init-image",
            env!("CARGO_MANIFEST_DIR"),
            "--strength",
            "0.5",
        ],
        "Is a directory",
    );
}

#[test]
fn pickle_checkpoints_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ckpt = dir.path().join("model.ckpt");
    std::fs::write(&ckpt, b"pickle").expect("write");
    fails_with(&["--model", ckpt.to_str().expect("utf8")], "pickle");
}
