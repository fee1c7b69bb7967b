//! Loading: tokenizer ids, the RNG stream, single files against folders, determinism, and
//! every way a weights file can be broken.

mod common;

use std::ops::ControlFlow;
use std::path::Path;

use common::{fixtures, load};
use huaxian_engine::pipeline::{generate, Request};
use huaxian_engine::rng::TorchRng;
use huaxian_engine::single_file::{detect_family, Family};
use huaxian_engine::tokenizer::ClipTokenizer;
use huaxian_engine::weights::SafetensorsFile;
use huaxian_engine::{Error, LoadOptions, SamplerKind, StableDiffusion};
use tch::Tensor;

fn quick_request(steps: usize) -> Request {
    let mut request = Request::new("a lighthouse at dusk");
    request.negative = "fog".into();
    request.width = 64;
    request.height = 64;
    request.steps = steps;
    request.sampler = SamplerKind::EulerA;
    request.seed = 77;
    request.count = 2;
    request
}

fn render(model: &StableDiffusion, request: &Request) -> Vec<image::RgbImage> {
    generate(model, std::slice::from_ref(request), &mut |_| {
        ControlFlow::Continue(())
    })
    .expect("renders")
    .remove(0)
    .images
}

#[test]
fn tokenizer_ids_equal_transformers() {
    let refs: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("refs/tokenizer_ids.json")).expect("refs"),
    )
    .expect("json");
    let sd1 = ClipTokenizer::from_dir(&fixtures().join("models/sd1/tokenizer")).expect("sd1");
    let sd2 = ClipTokenizer::from_dir(&fixtures().join("models/sd2/tokenizer")).expect("sd2");
    let bundled_sd1 = bundled(Family::Sd1);
    let cases = refs["cases"].as_array().expect("cases");
    assert!(cases.len() >= 30);
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let ids = |key: &str| -> Vec<u32> {
            case[key]
                .as_array()
                .expect("ids")
                .iter()
                .map(|v| v.as_u64().expect("id") as u32)
                .collect()
        };
        let unpadded = ids("ids");
        let inner = &unpadded[1..unpadded.len() - 1];
        assert_eq!(
            sd1.encode(text).expect("encode"),
            inner,
            "sd1 ids for {text:?}"
        );
        assert_eq!(
            bundled_sd1.encode(text).expect("encode"),
            inner,
            "bundled ids for {text:?}"
        );
        assert_eq!(
            sd1.encode_truncated(text).expect("encode"),
            ids("padded77_sd1"),
            "{text:?}"
        );
        assert_eq!(
            sd2.encode_truncated(text).expect("encode"),
            ids("padded77_sd2"),
            "{text:?}"
        );
    }
}

fn bundled(family: Family) -> ClipTokenizer {
    // The bundled tokenizer is what a single file without a config folder gets.
    let path = match family {
        Family::Sd1 => "models/sd1.safetensors",
        Family::Sd2 => "models/sd2.safetensors",
    };
    StableDiffusion::load(&fixtures().join(path), &LoadOptions::default())
        .expect("single file loads without a config folder")
        .tokenizer
}

#[test]
fn rng_matches_torch_cpu_generator() {
    let refs = Tensor::read_safetensors(fixtures().join("refs/rng.safetensors")).expect("rng refs");
    let get = |name: &str| {
        refs.iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.shallow_clone())
            .unwrap_or_else(|| panic!("no {name}"))
    };
    for seed in [0u64, 42, 4_294_967_295, 1_099_511_627_783] {
        let mut rng = TorchRng::new(seed);
        for (draw, shape) in [(0, vec![1i64, 4, 8, 8]), (1, vec![1, 4, 5, 7])] {
            let ours = rng.randn(&shape, tch::Device::Cpu).expect("draw");
            let theirs = get(&format!("seed_{seed}.draw{draw}"));
            let diff = (ours - theirs).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "seed {seed} draw {draw}: max diff {diff}");
        }
    }
}

#[test]
fn single_file_equals_folder() {
    for (folder, file) in [
        ("models/sd1", "models/sd1.safetensors"),
        ("models/sd2", "models/sd2.safetensors"),
    ] {
        let from_folder = load(folder);
        let options = LoadOptions {
            config_dir: Some(fixtures().join(folder)),
            ..LoadOptions::default()
        };
        let from_file =
            StableDiffusion::load(&fixtures().join(file), &options).expect("single file");
        let request = quick_request(3);
        assert_eq!(
            render(&from_folder, &request),
            render(&from_file, &request),
            "{file}"
        );
    }
}

#[test]
fn single_file_family_is_detected_from_shapes() {
    for (file, family) in [
        ("models/sd1.safetensors", Family::Sd1),
        ("models/sd2.safetensors", Family::Sd2),
    ] {
        let path = fixtures().join(file);
        let opened = SafetensorsFile::open(&path).expect("opens");
        assert_eq!(detect_family(&opened).expect("detects"), family);

        // Without a config folder, the configs are inferred and the family's tokenizer and
        // scheduler are used: it loads and renders.
        let model = StableDiffusion::load(&path, &LoadOptions::default()).expect("loads");
        assert_eq!(render(&model, &quick_request(2)).len(), 2);
    }
    let sd2 = load("models/sd2");
    assert_eq!(
        sd2.text_encoder
            .as_ref()
            .expect("loaded")
            .config()
            .num_hidden_layers,
        2,
        "SD 2.x conditions on the penultimate OpenCLIP layer"
    );
}

#[test]
fn same_seed_is_bit_identical() {
    let model = load("models/sd1");
    let request = quick_request(3);
    assert_eq!(render(&model, &request), render(&model, &request));
}

#[test]
fn batched_requests_equal_each_alone() {
    let model = load("models/sd1");
    let a = quick_request(3);
    let mut b = quick_request(3);
    b.prompt = "a red bicycle".into();
    b.guidance = 4.0;
    b.seed = 9;
    b.count = 1;
    let together = generate(&model, &[a.clone(), b.clone()], &mut |_| {
        ControlFlow::Continue(())
    })
    .expect("batch");
    for (alone, batched) in [render(&model, &a), render(&model, &b)]
        .iter()
        .zip(&together)
    {
        for (x, y) in alone.iter().zip(&batched.images) {
            let (mean, max) = common::difference(x, y);
            assert!(
                mean < 0.05 && max <= 1,
                "batched differs: mean {mean} max {max}"
            );
        }
    }
}

#[test]
fn cancelling_stops_between_steps() {
    let model = load("models/sd1");
    let mut seen = 0;
    let result = generate(&model, &[quick_request(5)], &mut |info| {
        seen = info.step;
        assert!(info.preview(0).expect("preview").len() == 2);
        if info.step == 2 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    assert!(
        matches!(result, Err(Error::Cancelled { step: 2, steps: 5 })),
        "{:?}",
        result.err()
    );
    assert_eq!(seen, 2);
}

/// Writes a safetensors file by hand: `tensors` as (name, dtype, shape, bytes).
fn write_safetensors(path: &Path, header: &str, data: &[u8]) {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).expect("write");
}

fn load_error(path: &Path) -> String {
    match SafetensorsFile::open(path)
        .and_then(|f| f.load("w", tch::Kind::Float, tch::Device::Cpu).map(|_| f))
    {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn broken_files_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#;

    let empty = dir.path().join("empty.safetensors");
    std::fs::write(&empty, b"").expect("write");
    assert!(load_error(&empty).contains("empty"));

    let truncated = dir.path().join("truncated.safetensors");
    write_safetensors(&truncated, good, &[0u8; 8]);
    let message = load_error(&truncated);
    assert!(
        message.contains("truncated") && message.contains("truncated.safetensors"),
        "{message}"
    );

    let lying = dir.path().join("lying.safetensors");
    write_safetensors(
        &lying,
        r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[8,24]}}"#,
        &[0u8; 24],
    );
    let message = load_error(&lying);
    assert!(
        message.contains("`w`") && message.contains("offsets"),
        "{message}"
    );

    let header_too_long = dir.path().join("header.safetensors");
    let mut bytes = 1_000_000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&header_too_long, bytes).expect("write");
    assert!(load_error(&header_too_long).contains("header"));

    let wrong_dtype = dir.path().join("dtype.safetensors");
    write_safetensors(
        &wrong_dtype,
        r#"{"w":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}}"#,
        &[0u8; 16],
    );
    let message = load_error(&wrong_dtype);
    assert!(
        message.contains("`w`") && message.contains("I32"),
        "{message}"
    );

    let missing = dir.path().join("missing.safetensors");
    write_safetensors(
        &missing,
        r#"{"other":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
        &[0u8; 4],
    );
    let message = load_error(&missing);
    assert!(
        message.contains("`w` is missing") && message.contains("missing.safetensors"),
        "{message}"
    );
}

/// A model folder whose UNet has one tensor of the wrong shape or one tensor missing.
#[test]
fn broken_model_folders_name_the_tensor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("sd1");
    copy_dir(&fixtures().join("models/sd1"), &copy);
    let unet = copy.join("unet/diffusion_pytorch_model.safetensors");
    let tensors = Tensor::read_safetensors(&unet).expect("read");

    let mut altered: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| {
            let t = if n == "conv_in.weight" {
                t.narrow(0, 0, 16)
            } else {
                t.shallow_clone()
            };
            (n.clone(), t)
        })
        .collect();
    Tensor::write_safetensors(&altered, &unet).expect("write");
    let message = StableDiffusion::load(&copy, &LoadOptions::default())
        .err()
        .expect("fails")
        .to_string();
    assert!(
        message.contains("conv_in.weight") && message.contains("shape"),
        "{message}"
    );

    altered.retain(|(n, _)| n != "conv_in.weight");
    Tensor::write_safetensors(&altered, &unet).expect("write");
    let message = StableDiffusion::load(&copy, &LoadOptions::default())
        .err()
        .expect("fails")
        .to_string();
    assert!(
        message.contains("conv_in.weight") && message.contains("missing"),
        "{message}"
    );
}

#[test]
fn pickles_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["model.ckpt", "model.pt", "model.bin"] {
        let path = dir.path().join(name);
        std::fs::write(&path, b"\x80\x04not really a pickle").expect("write");
        let message = StableDiffusion::load(&path, &LoadOptions::default())
            .err()
            .expect("refused")
            .to_string();
        assert!(
            message.contains("pickle") && message.contains("safetensors"),
            "{message}"
        );
    }

    // A diffusers folder that only ships pickled weights for one component.
    let copy = dir.path().join("sd1");
    copy_dir(&fixtures().join("models/sd1"), &copy);
    let vae = copy.join("vae");
    std::fs::rename(
        vae.join("diffusion_pytorch_model.safetensors"),
        vae.join("diffusion_pytorch_model.bin"),
    )
    .expect("rename");
    let message = StableDiffusion::load(&copy, &LoadOptions::default())
        .err()
        .expect("refused")
        .to_string();
    assert!(
        message.contains("pickle") && message.contains("diffusion_pytorch_model.bin"),
        "{message}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

#[test]
fn a_failure_inside_a_render_comes_back_as_an_error() {
    let model = load("models/sd1");
    let result = generate(&model, &[quick_request(3)], &mut |_| {
        panic!("simulated libtorch failure: CUDA out of memory")
    });
    let error = result.err().expect("an error, not an unwind");
    assert!(error.is_out_of_memory(), "{error}");
}

#[test]
fn prompts_encoded_before_releasing_the_text_encoder_render_the_same() {
    let mut model = load("models/sd1");
    let request = quick_request(3);
    let together = render(&model, &request);

    let requests = std::slice::from_ref(&request);
    let encoded = huaxian_engine::pipeline::encode(&model, requests).expect("encodes");
    model.release_text_encoder();
    let apart = huaxian_engine::pipeline::generate_encoded(&model, requests, encoded, &mut |_| {
        ControlFlow::Continue(())
    })
    .expect("renders")
    .remove(0)
    .images;
    assert_eq!(together, apart);

    let again = generate(&model, requests, &mut |_| ControlFlow::Continue(()));
    let message = again.err().expect("no text encoder").to_string();
    assert!(message.contains("text encoder was released"), "{message}");
}

#[test]
fn a_unet_kept_in_half_precision_computes_exactly_what_the_widened_one_does() {
    use huaxian_engine::models::config::read_json;
    use huaxian_engine::models::unet::{UNet, UNetConfig};
    use huaxian_engine::weights::Weights;
    use tch::{Device, Kind};

    let dir = fixtures().join("models/sd2/unet");
    let file = dir.join("diffusion_pytorch_model.fp16.safetensors");
    let config = || read_json::<UNetConfig>(&dir.join("config.json")).expect("config");
    let open = || Weights::open(&file, Kind::Float, Device::Cpu).expect("weights");
    let widened = UNet::load(config(), &open()).expect("f32 UNet");
    let half = UNet::load(config(), &open().keeping_half()).expect("half UNet");

    let _no_grad = tch::no_grad_guard();
    tch::manual_seed(3);
    let sample = Tensor::randn([2, 4, 8, 8], (Kind::Float, Device::Cpu));
    let context_width = config().cross_attention_dim;
    let context = Tensor::randn([2, 77, context_width], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[500f32, 20.0]);
    let a = widened.forward(&sample, &t, &context);
    let b = half.forward(&sample, &t, &context);
    assert!(a.equal(&b), "max difference {:?}", (a - b).abs().max());
}
