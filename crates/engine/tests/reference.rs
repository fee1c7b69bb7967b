//! The engine against diffusers: every sampler, both model families, img2img, long prompts
//! and clip skip, compared image by image with references rendered by
//! `scripts/fixtures/make_fixtures.py`.

mod common;

use std::ops::ControlFlow;

use common::{case, difference, fixtures, load, read_png};
use huaxian_engine::image_io::read_image;
use huaxian_engine::pipeline::{generate, InitImage, Request};
use huaxian_engine::StableDiffusion;
use serde_json::Value;

/// The tolerance: per image, mean ≤ 0.5 and max ≤ 3 levels of 255.
const MEAN_LEVELS: f64 = 0.5;
const MAX_LEVELS: u8 = 3;

fn request_for(case: &Value) -> Request {
    let mut request = Request::new(case["prompt"].as_str().unwrap_or_default());
    request.negative = case["negative_prompt"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    request.width = case["width"].as_i64().expect("width");
    request.height = case["height"].as_i64().expect("height");
    request.steps = case["num_inference_steps"].as_u64().expect("steps") as usize;
    request.sampler = case["sampler"]
        .as_str()
        .expect("sampler")
        .parse()
        .expect("known sampler");
    request.guidance = case["guidance_scale"].as_f64().expect("guidance");
    request.seed = case["seed"].as_u64().expect("seed");
    request.count = case["num_images_per_prompt"].as_u64().expect("count") as usize;
    request.clip_skip = case["clip_skip"].as_u64().unwrap_or(0) as usize;
    if let Some(path) = case["init_image"].as_str() {
        request.init = Some(InitImage::new(
            read_image(&fixtures().join(path)).expect("init image"),
            case["strength"].as_f64().expect("strength"),
        ));
    }
    request
}

fn check(model: &StableDiffusion, id: &str) {
    let case = case(id);
    let request = request_for(&case);
    let outputs = generate(model, &[request], &mut |_| ControlFlow::Continue(())).expect("renders");
    let images = &outputs[0].images;
    let references = case["images"].as_array().expect("images");
    assert_eq!(images.len(), references.len());
    for (i, (image, reference)) in images.iter().zip(references).enumerate() {
        let reference = read_png(reference.as_str().expect("path"));
        let (mean, max) = difference(image, &reference);
        assert!(
            mean <= MEAN_LEVELS && max <= MAX_LEVELS,
            "{id} image {i}: mean {mean:.3} max {max} levels from diffusers"
        );
    }
}

macro_rules! reference_tests {
    ($model:literal, $($name:ident => $id:literal),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check(&load($model), $id);
            }
        )*
    };
}

reference_tests!("models/sd1",
    sd1_ddim => "sd1_txt2img_ddim",
    sd1_euler => "sd1_txt2img_euler",
    sd1_euler_a => "sd1_txt2img_euler_a",
    sd1_dpmpp_2m => "sd1_txt2img_dpmpp_2m",
    sd1_dpmpp_2m_karras => "sd1_txt2img_dpmpp_2m_karras",
    sd1_lcm => "sd1_txt2img_lcm",
    sd1_img2img_ddim => "sd1_img2img_ddim",
    sd1_img2img_euler_a => "sd1_img2img_euler_a",
    sd1_long_prompt => "sd1_txt2img_long_prompt_ddim",
    sd1_clip_skip => "sd1_txt2img_clip_skip1_euler",
);

reference_tests!("models/sd2",
    sd2_ddim => "sd2_txt2img_ddim",
    sd2_euler => "sd2_txt2img_euler",
    sd2_euler_a => "sd2_txt2img_euler_a",
    sd2_dpmpp_2m => "sd2_txt2img_dpmpp_2m",
    sd2_dpmpp_2m_karras => "sd2_txt2img_dpmpp_2m_karras",
    sd2_lcm => "sd2_txt2img_lcm",
);

/// The comparison must be able to fail: another seed lands far outside the tolerance.
#[test]
fn a_different_seed_misses_the_reference() {
    let model = load("models/sd1");
    let case = case("sd1_txt2img_ddim");
    let mut request = request_for(&case);
    request.seed += 100;
    let outputs =
        generate(&model, &[request], &mut |_| ControlFlow::Continue(())).expect("renders");
    let reference = read_png(case["images"][0].as_str().expect("path"));
    let (mean, max) = difference(&outputs[0].images[0], &reference);
    assert!(
        mean > 5.0 * MEAN_LEVELS && max > MAX_LEVELS,
        "mean {mean} max {max}"
    );
}
