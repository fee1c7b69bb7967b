//! Making a result fit the attachment limit an interaction reports. A PNG that is too large
//! is re-encoded as JPEG at decreasing quality, then scaled down, until it fits; a result
//! is never dropped for its size.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;
use image::{DynamicImage, ImageReader, Limits};

/// JPEG qualities tried, best first, before the image is scaled down.
const QUALITIES: [u8; 5] = [92, 85, 75, 60, 45];

/// Each scaling step keeps this fraction of the width and height.
const SCALE_STEP: f64 = 0.75;

/// Below this width or height we stop scaling and give up.
const MIN_SIDE: u32 = 32;

/// An attachment ready to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fitted {
    pub bytes: Vec<u8>,
    pub filename: String,
    /// What was done to it, for the message; `None` when it went as it was.
    pub change: Option<String>,
}

/// Why an image could not be made to fit.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    #[error("the image could not be read: {0}")]
    Decode(#[from] image::ImageError),
    #[error("the image could not be read: {0}")]
    Io(#[from] std::io::Error),
    #[error("even a {width}×{height} JPEG is over the {limit}-byte attachment limit")]
    TooLarge { width: u32, height: u32, limit: u64 },
}

/// Returns `png` as `<stem>.png` when it is within `limit` bytes, or else the best smaller
/// version that is.
pub fn fit(png: Vec<u8>, stem: &str, limit: u64) -> Result<Fitted, FitError> {
    if png.len() as u64 <= limit {
        return Ok(Fitted {
            bytes: png,
            filename: format!("{stem}.png"),
            change: None,
        });
    }

    let mut reader = ImageReader::new(Cursor::new(&png)).with_guessed_format()?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(16_384);
    limits.max_image_height = Some(16_384);
    limits.max_alloc = Some(1 << 30);
    reader.limits(limits);
    let original = DynamicImage::ImageRgb8(reader.decode()?.to_rgb8());

    let mut image = original.clone();
    loop {
        for quality in QUALITIES {
            let mut bytes = Vec::new();
            JpegEncoder::new_with_quality(&mut bytes, quality).encode_image(&image)?;
            if bytes.len() as u64 <= limit {
                let scaled = image.width() != original.width();
                let change = if scaled {
                    format!(
                        "scaled to {}×{} and sent as JPEG (quality {quality}) to fit Discord's \
                         {} attachment limit",
                        image.width(),
                        image.height(),
                        human_bytes(limit)
                    )
                } else {
                    format!(
                        "sent as JPEG (quality {quality}) to fit Discord's {} attachment limit",
                        human_bytes(limit)
                    )
                };
                return Ok(Fitted {
                    bytes,
                    filename: format!("{stem}.jpg"),
                    change: Some(change),
                });
            }
        }
        let width = (f64::from(image.width()) * SCALE_STEP) as u32;
        let height = (f64::from(image.height()) * SCALE_STEP) as u32;
        if width < MIN_SIDE || height < MIN_SIDE {
            return Err(FitError::TooLarge {
                width: image.width(),
                height: image.height(),
                limit,
            });
        }
        image = original.resize_exact(width, height, FilterType::Lanczos3);
    }
}

/// `10 MB`, `512 KB`: the sizes users see.
pub fn human_bytes(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.0} MB", bytes as f64 / f64::from(1 << 20))
    } else if bytes >= 1 << 10 {
        format!("{:.0} KB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, RgbImage};

    /// A noisy picture: PNG compresses it badly, like a rendered image.
    fn noisy_png(side: u32) -> Vec<u8> {
        let mut state = 12345u32;
        let image = RgbImage::from_fn(side, side, |_, _| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let [a, b, c, _] = state.to_le_bytes();
            image::Rgb([a, b, c])
        });
        let mut bytes = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
            .unwrap();
        bytes
    }

    #[test]
    fn small_images_go_as_they_are() {
        let png = noisy_png(16);
        let fitted = fit(png.clone(), "grid", 1 << 20).unwrap();
        assert_eq!(fitted.bytes, png);
        assert_eq!(fitted.filename, "grid.png");
        assert_eq!(fitted.change, None);
    }

    #[test]
    fn large_images_are_reencoded_then_scaled_under_the_limit() {
        let png = noisy_png(256);
        for limit in [png.len() as u64 / 2, 20_000, 6_000] {
            let fitted = fit(png.clone(), "grid", limit).unwrap();
            assert!(fitted.bytes.len() as u64 <= limit, "{limit}");
            assert_eq!(fitted.filename, "grid.jpg");
            let decoded = image::load_from_memory(&fitted.bytes).unwrap();
            assert!(decoded.width() <= 256 && decoded.width() >= MIN_SIDE);
            assert!(fitted.change.unwrap().contains("attachment limit"));
        }
    }

    #[test]
    fn impossible_limits_and_garbage_are_errors_not_panics() {
        let png = noisy_png(64);
        assert!(matches!(
            fit(png, "grid", 10),
            Err(FitError::TooLarge { .. })
        ));
        assert!(fit(vec![1, 2, 3, 4, 5, 6, 7, 8, 9], "grid", 4).is_err());
    }
}
