//! Images in and out of the engine: tensors to pixels, grids, previews, PNG metadata, and
//! decoding untrusted input within limits.

use std::io::Cursor;
use std::path::Path;

use image::{imageops, ImageReader, Limits, RgbImage};
use tch::{Device, Kind, Tensor};

use crate::{Error, Result};

/// The largest side and pixel budget accepted for an input image. A decompression bomb is
/// refused before its pixels are allocated.
pub const MAX_INPUT_SIDE: u32 = 8192;
pub const MAX_INPUT_BYTES: u64 = 512 << 20;

/// Converts `[b, 3, h, w]` images in `[-1, 1]` into 8-bit RGB, rounding like diffusers'
/// `(x * 255).round()` after `x / 2 + 0.5` is clamped to `[0, 1]`.
pub fn tensor_to_images(images: &Tensor) -> Result<Vec<RgbImage>> {
    let (b, c, h, w) = images.size4()?;
    if c != 3 {
        return Err(Error::InvalidRequest(format!(
            "expected 3 channels, got {c}"
        )));
    }
    let pixels = (images.to_kind(Kind::Float) / 2.0 + 0.5)
        .clamp(0.0, 1.0)
        .f_mul_scalar(255.0)?
        .round()
        .to_kind(Kind::Uint8)
        .permute([0, 2, 3, 1])
        .contiguous()
        .to_device(Device::Cpu);
    let flat: Vec<u8> = Vec::<u8>::try_from(pixels.flatten(0, -1))?;
    let per = (h * w * 3) as usize;
    (0..b as usize)
        .map(|i| {
            RgbImage::from_raw(w as u32, h as u32, flat[i * per..(i + 1) * per].to_vec())
                .ok_or_else(|| Error::InvalidRequest("image buffer size mismatch".into()))
        })
        .collect()
}

/// Converts an RGB image into a `[1, 3, h, w]` float tensor in `[-1, 1]`.
pub fn image_to_tensor(image: &RgbImage, device: Device) -> Result<Tensor> {
    let (w, h) = image.dimensions();
    let t = Tensor::from_slice(image.as_raw())
        .reshape([h as i64, w as i64, 3])
        .permute([2, 0, 1])
        .unsqueeze(0)
        .to_kind(Kind::Float);
    Ok((t / 255.0 * 2.0 - 1.0).to_device(device))
}

/// Decodes an image from bytes of unknown origin, with size and memory limits, into RGB.
pub fn decode_untrusted(bytes: &[u8]) -> Result<RgbImage> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::InvalidRequest(format!("cannot read image: {e}")))?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_INPUT_SIDE);
    limits.max_image_height = Some(MAX_INPUT_SIDE);
    limits.max_alloc = Some(MAX_INPUT_BYTES);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| {
        Error::InvalidRequest(format!(
            "cannot decode image (PNG, JPEG or WebP up to {MAX_INPUT_SIDE}×{MAX_INPUT_SIDE}): {e}"
        ))
    })?;
    Ok(image.to_rgb8())
}

/// Reads and decodes an image file with [`decode_untrusted`]'s limits.
pub fn read_image(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_untrusted(&bytes).map_err(|e| match e {
        Error::InvalidRequest(m) => Error::InvalidRequest(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// Resizes to exactly `width`×`height`, cropping the centre to keep the aspect ratio.
///
/// The crop comes first, so the resize never allocates more than the output: scaling a
/// 1×8192 strip to cover 512×512 before cropping would need gigabytes.
pub fn fit(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    if image.dimensions() == (width, height) {
        return image.clone();
    }
    let (w, h) = image.dimensions();
    let (w64, h64) = (u64::from(w), u64::from(h));
    // The largest centred region with the target's aspect ratio.
    let (crop_w, crop_h) = if w64 * u64::from(height) > h64 * u64::from(width) {
        let crop_w = (h64 * u64::from(width) / u64::from(height.max(1))).clamp(1, w64);
        (crop_w as u32, h)
    } else {
        let crop_h = (w64 * u64::from(height) / u64::from(width.max(1))).clamp(1, h64);
        (w, crop_h as u32)
    };
    let cropped =
        imageops::crop_imm(image, (w - crop_w) / 2, (h - crop_h) / 2, crop_w, crop_h).to_image();
    imageops::resize(&cropped, width, height, imageops::FilterType::Lanczos3)
}

/// Places four equally sized images in a 2×2 grid: 0 top left, 1 top right, 2 bottom left,
/// 3 bottom right, as U1–U4 number them.
pub fn grid(images: &[RgbImage]) -> Result<RgbImage> {
    let [a, ..] = images else {
        return Err(Error::InvalidRequest(
            "a grid needs four images, got none".into(),
        ));
    };
    if images.len() != 4 || images.iter().any(|i| i.dimensions() != a.dimensions()) {
        return Err(Error::InvalidRequest(format!(
            "a grid needs four images of one size, got {}",
            images.len()
        )));
    }
    let (w, h) = a.dimensions();
    let mut out = RgbImage::new(w * 2, h * 2);
    for (i, image) in images.iter().enumerate() {
        let (x, y) = ((i as u32 % 2) * w, (i as u32 / 2) * h);
        imageops::replace(&mut out, image, x as i64, y as i64);
    }
    Ok(out)
}

/// One quadrant of a 2×2 grid (index 0–3), the inverse of [`grid`].
pub fn quadrant(grid: &RgbImage, index: u32) -> Result<RgbImage> {
    if index > 3 {
        return Err(Error::InvalidRequest(format!(
            "grid image {} does not exist; use 1–4",
            index + 1
        )));
    }
    let (w, h) = (grid.width() / 2, grid.height() / 2);
    Ok(imageops::crop_imm(grid, (index % 2) * w, (index / 2) * h, w, h).to_image())
}

/// Encodes a PNG carrying `parameters` where A1111-compatible tools look: a tEXt chunk when
/// the text is Latin-1 (as A1111 writes it), else an iTXt chunk, which holds UTF-8, so
/// prompts in any script or with emoji keep their metadata.
pub fn png_with_parameters(image: &RgbImage, parameters: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, image.width(), image.height());
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let latin1 = parameters.chars().all(|c| u32::from(c) <= 0xff);
        let added = if latin1 {
            encoder.add_text_chunk("parameters".to_string(), parameters.to_string())
        } else {
            encoder.add_itxt_chunk("parameters".to_string(), parameters.to_string())
        };
        added.map_err(|e| Error::InvalidRequest(format!("PNG metadata: {e}")))?;
        let mut writer = encoder
            .write_header()
            .map_err(|e| Error::InvalidRequest(format!("PNG encoding: {e}")))?;
        writer
            .write_image_data(image.as_raw())
            .map_err(|e| Error::InvalidRequest(format!("PNG encoding: {e}")))?;
    }
    Ok(out)
}

/// Reads back the `parameters` text of a PNG written by [`png_with_parameters`] (or A1111).
pub fn png_parameters(bytes: &[u8]) -> Option<String> {
    let decoder = png::Decoder::new(Cursor::new(bytes));
    let reader = decoder.read_info().ok()?;
    let info = reader.info();
    info.uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == "parameters")
        .map(|t| t.text.clone())
        .or_else(|| {
            info.utf8_text
                .iter()
                .find(|t| t.keyword == "parameters")
                .and_then(|t| t.get_text().ok())
        })
}

/// An approximate RGB rendering of SD latents, one 4→3 linear map per cell: cheap enough to
/// run every step. The factors are the widely used fit for the SD 1.x/2.x VAE.
pub fn latent_preview(latents: &Tensor) -> Result<Vec<RgbImage>> {
    let (_, c, _, _) = latents.size4()?;
    let factors: [[f32; 3]; 4] = [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ];
    let flat: Vec<f32> = factors.iter().flatten().copied().collect();
    let latents = latents.to_device(Device::Cpu).to_kind(Kind::Float);
    let latents = if c == 4 {
        latents
    } else {
        // Another latent layout: show the first channels as grey rather than nothing.
        latents.narrow(1, 0, 1).repeat([1, 4, 1, 1]) / 4.0
    };
    let map = Tensor::from_slice(&flat).reshape([4, 3]);
    let rgb = Tensor::einsum("bchw,cd->bdhw", &[&latents, &map], None::<i64>);
    tensor_to_images(&rgb)
}

/// Encodes `image` as JPEG no larger than `max_bytes`: at falling quality first, then at
/// falling sizes. Errors only when even a 16-pixel-wide thumbnail does not fit.
pub fn jpeg_within(image: &RgbImage, max_bytes: usize) -> Result<Vec<u8>> {
    let mut current = image.clone();
    loop {
        for quality in [90u8, 80, 70, 55, 40] {
            let mut bytes = Vec::new();
            let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality);
            current
                .write_with_encoder(encoder)
                .map_err(|e| Error::InvalidRequest(format!("cannot encode JPEG: {e}")))?;
            if bytes.len() <= max_bytes {
                return Ok(bytes);
            }
        }
        let (width, height) = current.dimensions();
        if width <= 16 || height <= 16 {
            return Err(Error::InvalidRequest(format!(
                "the image does not fit in {max_bytes} bytes even as a thumbnail"
            )));
        }
        current = imageops::resize(
            &current,
            (width * 3 / 4).max(1),
            (height * 3 / 4).max(1),
            imageops::FilterType::Triangle,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_crops_before_it_scales() {
        let strip = RgbImage::from_pixel(1, 8192, image::Rgb([9, 9, 9]));
        assert_eq!(fit(&strip, 512, 512).dimensions(), (512, 512));
        let wide = RgbImage::from_fn(300, 100, |x, _| image::Rgb([x as u8, 0, 0]));
        let square = fit(&wide, 64, 64);
        assert_eq!(square.dimensions(), (64, 64));
        // The centre of the wide image, not its left edge.
        assert!(square.get_pixel(32, 32)[0] > 120 && square.get_pixel(32, 32)[0] < 180);
    }

    #[test]
    fn parameters_round_trip_in_any_script() {
        let image = RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]));
        for text in [
            "a café at dusk\nSteps: 4",
            "画仙 山水 🐉 over the city\nSteps: 4",
        ] {
            let png = png_with_parameters(&image, text).unwrap();
            assert_eq!(png_parameters(&png).as_deref(), Some(text));
            assert_eq!(decode_untrusted(&png).unwrap(), image);
        }
    }
}
