//! How Midjourney's knobs become diffusion settings. Every function here is pure and pinned
//! by tests; the formulas are part of the product's behaviour.

/// Image sides are multiples of this, as the VAE and UNet downsample by 8 and then by 2 three
/// more times.
pub const SIZE_STEP: u32 = 64;

/// Images in a grid: the engine renders seeds `s..s+3` with one guidance scale each.
pub const GRID_IMAGES: u8 = 4;

/// The `--quality` values the language accepts.
pub const QUALITIES: [f32; 4] = [0.25, 0.5, 1.0, 2.0];

/// The largest fraction by which `--chaos 100` moves an image's guidance away from the base.
pub const MAX_CHAOS_SPREAD: f64 = 0.5;

/// Width and height for aspect ratio `W:H` on a model whose native size is `native`
/// (width, height).
///
/// The image keeps the native pixel count `A = native_w × native_h`: the ideal sides are
/// `w = √(A·W/H)` and `h = √(A·H/W)`, each rounded to the nearest multiple of 64 and at least
/// 64. On 512×512, 16:9 gives 704×384; on 768×768 it gives 1024×576.
pub fn aspect_size(aspect: (u32, u32), native: (u32, u32)) -> (u32, u32) {
    let ratio = f64::from(aspect.0.max(1)) / f64::from(aspect.1.max(1));
    let area = f64::from(native.0) * f64::from(native.1);

    (snap((area * ratio).sqrt()), snap((area / ratio).sqrt()))
}

/// `side` rounded to the nearest multiple of [`SIZE_STEP`], at least one step.
fn snap(side: f64) -> u32 {
    let steps = (side / f64::from(SIZE_STEP)).round();
    let steps = steps.clamp(1.0, f64::from(u32::MAX / SIZE_STEP));
    (steps as u32).saturating_mul(SIZE_STEP)
}

/// Classifier-free guidance scale for `--stylize`.
///
/// `g = 3 + 4 · (s / 100)^log₁₀3`: 0 ↦ 3, 100 (the default) ↦ 7, 1000 ↦ 15. The exponent is
/// what makes the curve pass through all three points; it rises steeply at first, so small
/// stylize values still matter, then flattens.
pub fn stylize_guidance(stylize: u16) -> f64 {
    3.0 + 4.0 * (f64::from(stylize) / 100.0).powf(3f64.log10())
}

/// Guidance scale for image `index` of a grid, from the job's base guidance and `--chaos`.
///
/// Each image position has a fixed spread factor `k`: 0, +1, −1, +½ for images 0–3 (repeating
/// for higher indexes). The image's guidance is `base · (1 + k · 0.5 · chaos / 100)`, so
/// chaos 0 renders all four at `base`, and chaos 100 at `base` × 1, 1.5, 0.5 and 1.25: the
/// images then differ both by seed and by how literally they follow the prompt. The result
/// is never pulled below 1 (where guidance stops steering) unless `base` already was.
pub fn image_guidance(base: f64, chaos: u8, index: u8) -> f64 {
    let spread = match index % GRID_IMAGES {
        0 => 0.0,
        1 => 1.0,
        2 => -1.0,
        _ => 0.5,
    };
    let amount = f64::from(chaos.min(100)) / 100.0;
    let guidance = base * (1.0 + spread * MAX_CHAOS_SPREAD * amount);

    if guidance < base {
        guidance.max(base.min(1.0))
    } else {
        guidance
    }
}

/// Sampling steps for `--quality`: `max(1, round(base_steps × quality))`. With 30 base steps,
/// .25 ↦ 8, .5 ↦ 15, 1 ↦ 30, 2 ↦ 60.
pub fn quality_steps(base_steps: u32, quality: f32) -> u32 {
    let steps = (f64::from(base_steps) * f64::from(quality)).round();
    (steps.clamp(1.0, f64::from(u32::MAX))) as u32
}

/// Steps actually run before decoding for `--stop`: `ceil(steps × stop / 100)`, at least 1
/// and at most `steps`.
pub fn stop_steps(steps: u32, stop_percent: u8) -> u32 {
    let run = (u64::from(steps) * u64::from(stop_percent)).div_ceil(100);
    let run = u32::try_from(run).unwrap_or(u32::MAX);

    run.clamp(1, steps.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn aspect_on_512() {
        let native = (512, 512);
        assert_eq!(aspect_size((1, 1), native), (512, 512));
        assert_eq!(aspect_size((16, 9), native), (704, 384));
        assert_eq!(aspect_size((9, 16), native), (384, 704));
        assert_eq!(aspect_size((3, 2), native), (640, 448));
        assert_eq!(aspect_size((2, 3), native), (448, 640));
        assert_eq!(aspect_size((4, 1), native), (1024, 256));
        assert_eq!(aspect_size((1, 4), native), (256, 1024));
    }

    #[test]
    fn aspect_on_768() {
        let native = (768, 768);
        assert_eq!(aspect_size((1, 1), native), (768, 768));
        assert_eq!(aspect_size((16, 9), native), (1024, 576));
        assert_eq!(aspect_size((3, 2), native), (960, 640));
        assert_eq!(aspect_size((2, 3), native), (640, 960));
        assert_eq!(aspect_size((4, 1), native), (1536, 384));
    }

    #[test]
    fn aspect_keeps_roughly_the_native_area() {
        for aspect in [(1, 1), (16, 9), (21, 9), (3, 2), (5, 4), (7, 4), (4, 1)] {
            let (width, height) = aspect_size(aspect, (512, 512));
            let area = f64::from(width * height) / (512.0 * 512.0);
            assert!((0.85..=1.15).contains(&area), "{aspect:?}: {area}");
        }
    }

    #[test]
    fn aspect_never_goes_below_one_step() {
        assert_eq!(aspect_size((1000, 1), (512, 512)), (16192, 64));
        assert_eq!(aspect_size((0, 0), (0, 0)), (64, 64));
    }

    #[test]
    fn stylize_curve() {
        assert!(close(stylize_guidance(0), 3.0));
        assert!(close(stylize_guidance(100), 7.0));
        assert!(close(stylize_guidance(1000), 15.0));
        assert!((stylize_guidance(250) - 9.193).abs() < 0.001);
        let mut previous = stylize_guidance(0);
        for stylize in 1..=1000 {
            let guidance = stylize_guidance(stylize);
            assert!(guidance > previous);
            previous = guidance;
        }
    }

    #[test]
    fn chaos_spread() {
        for index in 0..4 {
            assert!(close(image_guidance(7.0, 0, index), 7.0));
        }
        let full: Vec<f64> = (0..4).map(|i| image_guidance(7.0, 100, i)).collect();
        assert!(close(full[0], 7.0));
        assert!(close(full[1], 10.5));
        assert!(close(full[2], 3.5));
        assert!(close(full[3], 8.75));
        assert!(close(image_guidance(7.0, 50, 1), 8.75));
        assert!(close(image_guidance(7.0, 50, 2), 5.25));
        assert!(close(image_guidance(7.0, 100, 5), full[1]));
        assert!(close(image_guidance(7.0, 255, 1), 10.5));
    }

    #[test]
    fn chaos_keeps_guidance_above_one() {
        assert!(close(image_guidance(1.5, 100, 2), 1.0));
        assert!(close(image_guidance(0.5, 100, 2), 0.5));
    }

    #[test]
    fn quality_multiplies_base_steps() {
        assert_eq!(quality_steps(30, 0.25), 8);
        assert_eq!(quality_steps(30, 0.5), 15);
        assert_eq!(quality_steps(30, 1.0), 30);
        assert_eq!(quality_steps(30, 2.0), 60);
        assert_eq!(quality_steps(1, 0.25), 1);
        assert_eq!(quality_steps(0, 1.0), 1);
    }

    #[test]
    fn stop_rounds_up() {
        assert_eq!(stop_steps(30, 100), 30);
        assert_eq!(stop_steps(30, 50), 15);
        assert_eq!(stop_steps(30, 55), 17);
        assert_eq!(stop_steps(30, 10), 3);
        assert_eq!(stop_steps(4, 10), 1);
        assert_eq!(stop_steps(0, 50), 1);
    }
}
