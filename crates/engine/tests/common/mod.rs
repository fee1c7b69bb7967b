//! Shared helpers for the engine's integration tests: fixture paths and the manifest the
//! fixture script wrote.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use huaxian_engine::{LoadOptions, StableDiffusion};
use image::RgbImage;
use serde_json::Value;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn manifest() -> Value {
    let text = std::fs::read_to_string(fixtures().join("refs/manifest.json")).expect("manifest");
    serde_json::from_str(&text).expect("manifest is JSON")
}

pub fn case(id: &str) -> Value {
    manifest()["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no case {id}"))
        .clone()
}

pub fn load(path: &str) -> StableDiffusion {
    StableDiffusion::load(&fixtures().join(path), &LoadOptions::default()).expect("model loads")
}

pub fn read_png(relative: &str) -> RgbImage {
    image::open(fixtures().join(relative))
        .expect("reference image")
        .to_rgb8()
}

/// Mean and max absolute difference in 8-bit levels.
pub fn difference(a: &RgbImage, b: &RgbImage) -> (f64, u8) {
    assert_eq!(a.dimensions(), b.dimensions(), "image sizes differ");
    let mut sum = 0u64;
    let mut max = 0u8;
    for (x, y) in a.as_raw().iter().zip(b.as_raw()) {
        let d = x.abs_diff(*y);
        sum += d as u64;
        max = max.max(d);
    }
    (sum as f64 / a.as_raw().len() as f64, max)
}
