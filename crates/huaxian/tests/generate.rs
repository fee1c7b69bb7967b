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

/// A minimal hub on 127.0.0.1 serving the sd1 fixture folder as `test/sd1`, answering 404
/// for anything else and recording the Authorization header it saw.
fn serve_hub() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};

    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(64) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut header = String::new();
            while reader
                .read_line(&mut header)
                .map(|n| n > 2)
                .unwrap_or(false)
            {
                if header.to_ascii_lowercase().starts_with("authorization:") {
                    log.lock().expect("lock").push(header.trim().to_string());
                }
                header.clear();
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let file = path
                .strip_prefix("/test/sd1/resolve/main/")
                .filter(|f| !f.contains(".."))
                .map(|f| fixtures().join("models/sd1").join(f))
                .filter(|f| f.is_file());
            let response = match file.and_then(|f| std::fs::read(f).ok()) {
                Some(body) => {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(&body);
                    r
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = stream.write_all(&response);
        }
    });
    (address, seen)
}

#[test]
fn hub_models_download_once_into_the_cache() {
    let (endpoint, seen) = serve_hub();
    let cache = tempfile::tempdir().expect("cache");
    let out = tempfile::tempdir().expect("out");
    let run = |model: &str| {
        Command::new(env!("CARGO_BIN_EXE_huaxian"))
            .args([
                "generate",
                "--model",
                model,
                "--prompt",
                "a paper crane",
                "--seed",
                "5",
                "--steps",
                "2",
                "--width",
                "64",
                "--height",
                "64",
                "--count",
                "1",
                "--out",
            ])
            .arg(out.path())
            .env("HF_ENDPOINT", &endpoint)
            .env("HF_TOKEN", "hf_secret_for_test")
            .env("HUAXIAN_CACHE", cache.path())
            .env("RUST_LOG", "debug")
            .output()
            .expect("runs")
    };

    let result = run("hf:test/sd1");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(
        !stderr.contains("hf_secret_for_test"),
        "the token leaked into logs"
    );
    assert!(seen
        .lock()
        .expect("lock")
        .iter()
        .all(|h| h.ends_with("Bearer hf_secret_for_test")));
    let cached = cache
        .path()
        .join("test--sd1/main/unet/diffusion_pytorch_model.safetensors");
    assert!(cached.is_file());
    let from_hub = std::fs::read(out.path().join("image-0.png")).expect("image");

    // The same render from the local folder gives the same pixels.
    let local = huaxian(&[
        "generate",
        "--model",
        &sd1(),
        "--prompt",
        "a paper crane",
        "--seed",
        "5",
        "--steps",
        "2",
        "--width",
        "64",
        "--height",
        "64",
        "--count",
        "1",
        "--out",
        out.path().to_str().expect("utf8"),
    ]);
    assert!(local.status.success());
    let decode = |b: &[u8]| image::load_from_memory(b).expect("png").to_rgb8();
    let from_folder = std::fs::read(out.path().join("image-0.png")).expect("image");
    assert_eq!(decode(&from_hub), decode(&from_folder));

    let missing = run("hf:test/absent");
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success());
    assert!(stderr.contains("has no model_index.json"), "{stderr}");
}

#[test]
fn unreachable_hub_says_what_to_do() {
    let cache = tempfile::tempdir().expect("cache");
    let out = tempfile::tempdir().expect("out");
    // A port nothing listens on: bind one, then drop it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let result = Command::new(env!("CARGO_BIN_EXE_huaxian"))
        .args([
            "generate",
            "--model",
            "hf:test/sd1",
            "--prompt",
            "x",
            "--out",
        ])
        .arg(out.path())
        .env("HF_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("HUAXIAN_CACHE", cache.path())
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success());
    assert!(
        stderr.contains("cannot reach") && stderr.contains("local model folder"),
        "{stderr}"
    );
}

#[test]
fn expand_prints_the_continued_prompt_and_is_seeded() {
    let model = fixtures().join("models/gpt2").display().to_string();
    let run = |seed: &str| {
        let output = huaxian(&[
            "expand",
            "--model",
            &model,
            "--prompt",
            "a lighthouse",
            "--seed",
            seed,
            "--max-new-tokens",
            "8",
        ]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let first = run("3");
    assert!(first.starts_with("a lighthouse"), "{first}");
    assert!(first.trim_end().len() > "a lighthouse".len());
    assert_eq!(run("3"), first);

    let missing = huaxian(&["expand", "--model", "/nonexistent/gpt2", "--prompt", "x"]);
    assert_eq!(missing.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("/nonexistent/gpt2/config.json"), "{stderr}");
}

/// `mkl_level=N` from the model-load log line, when libtorch carries MKL.
fn mkl_level(log: &str) -> Option<i32> {
    let rest = log.split("mkl_level=").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[test]
fn mkl_picks_kernels_by_cpu_features_and_the_stock_choice_renders_the_same() {
    let render = |stock: bool| {
        let out = tempfile::tempdir().expect("tempdir");
        let dir = out.path().display().to_string();
        let mut command = Command::new(env!("CARGO_BIN_EXE_huaxian"));
        command.env("RUST_LOG", "huaxian_engine=info");
        command.env_remove(huaxian_engine::cpu::STOCK_MKL_DISPATCH_ENV);
        if stock {
            command.env(huaxian_engine::cpu::STOCK_MKL_DISPATCH_ENV, "1");
        }
        let result = command
            .args(["generate", "--model", &sd1(), "--prompt", "a paper crane"])
            .args([
                "--seed", "5", "--steps", "2", "--width", "64", "--height", "64",
            ])
            .args(["--out", &dir])
            .output()
            .expect("runs");
        let log = String::from_utf8_lossy(&result.stderr).into_owned();
        assert!(result.status.success(), "{log}");
        let image = image::open(out.path().join("image-0.png"))
            .expect("image")
            .to_rgb8();
        (log, image)
    };
    let (log, features) = render(false);
    let (stock_log, stock) = render(true);
    let (level, stock_level) = (mkl_level(&log), mkl_level(&stock_log));

    // Where the override matters (not Intel's, with AVX-512), MKL must take a wider path
    // than its own choice; anywhere else the override gives MKL's own answer.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let matters = cfg!(target_arch = "x86_64")
        && !cpuinfo.contains("GenuineIntel")
        && cpuinfo.contains(" avx512f");
    if matters && level.is_some() {
        assert!(log.contains("mkl_by_features=true"), "{log}");
        assert!(level > stock_level, "{log}\n{stock_log}");
    } else {
        assert_eq!(level, stock_level, "{log}\n{stock_log}");
    }
    assert!(!stock_log.contains("mkl_by_features=true"), "{stock_log}");

    // Both are float32 products; only their rounding may differ.
    let diffs: Vec<f64> = features
        .as_raw()
        .iter()
        .zip(stock.as_raw())
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
        .collect();
    let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
    let max = diffs.iter().cloned().fold(0.0, f64::max);
    assert!(mean <= 0.5 && max <= 3.0, "mean {mean}, max {max}");
}
