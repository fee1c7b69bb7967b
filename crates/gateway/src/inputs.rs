//! Image attachments users give (`/blend`, `/imagine image:`): fetched only from Discord's
//! attachment hosts, within a size limit, checked to be an image of sane dimensions, and
//! stored as blobs for the worker. The worker decodes them again with its own limits.

use std::io::Cursor;

use image::ImageReader;
use serenity::all::Attachment;

use crate::fit::human_bytes;
use crate::reply::Pending;
use crate::App;

/// Widest and tallest input accepted.
const MAX_SIDE: u32 = 8192;

/// Downloads, checks and stores `attachments` in order; returns their blob keys, or a
/// message for the user naming the file and what to change.
pub async fn store(
    app: &App,
    pending: &Pending,
    attachments: &[Attachment],
) -> Result<Vec<String>, String> {
    let mut keys = Vec::with_capacity(attachments.len());
    for (index, attachment) in attachments.iter().enumerate() {
        let bytes = download(app, attachment).await?;
        let format = check(&attachment.filename, &bytes)?;
        let key = format!("inputs/{}/{index}.{format}", pending.id.get());
        app.blobs.put(&key, bytes).await.map_err(|error| {
            tracing::warn!(%error, "input image not stored");
            "The image could not be stored right now; nothing was queued. Try again in a \
             minute."
                .to_string()
        })?;
        keys.push(key);
    }
    Ok(keys)
}

async fn download(app: &App, attachment: &Attachment) -> Result<Vec<u8>, String> {
    let name = &attachment.filename;
    let max = app.settings.blob.max_input_bytes;
    if u64::from(attachment.size) > max {
        return Err(format!(
            "`{name}` is {}; images may be at most {}. Send a smaller image.",
            human_bytes(u64::from(attachment.size)),
            human_bytes(max)
        ));
    }
    let url = reqwest::Url::parse(&attachment.url)
        .map_err(|_| format!("`{name}` has no usable address; upload it again."))?;
    let host = url.host_str().unwrap_or_default();
    let allowed = &app.settings.discord.attachment_hosts;
    if !allowed.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        return Err(format!(
            "`{name}` is not hosted by Discord; attach the image to the command itself."
        ));
    }

    let failed = |detail: String| {
        tracing::warn!(file = %name, %detail, "attachment download failed");
        format!("`{name}` could not be downloaded from Discord; try again.")
    };
    let mut response = app
        .fetcher
        .get(url)
        .send()
        .await
        .map_err(|e| failed(e.to_string()))?;
    if !response.status().is_success() {
        return Err(failed(format!("status {}", response.status())));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| failed(e.to_string()))? {
        if (bytes.len() + chunk.len()) as u64 > max {
            return Err(format!(
                "`{name}` is larger than {}; send a smaller image.",
                human_bytes(max)
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// The image's format as a file extension, after checking its header and dimensions.
fn check(name: &str, bytes: &[u8]) -> Result<&'static str, String> {
    let unreadable =
        || format!("`{name}` is not an image huaxian reads: send a PNG, JPEG or WebP.");
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|_| unreadable())?;
    let format = match reader.format() {
        Some(image::ImageFormat::Png) => "png",
        Some(image::ImageFormat::Jpeg) => "jpg",
        Some(image::ImageFormat::WebP) => "webp",
        _ => return Err(unreadable()),
    };
    let (width, height) = reader.into_dimensions().map_err(|_| unreadable())?;
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(format!(
            "`{name}` is {width}×{height}; images may be at most {MAX_SIDE}×{MAX_SIDE}."
        ));
    }
    Ok(format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_readable_images_of_sane_size_pass() {
        let mut png = Vec::new();
        image::RgbImage::new(8, 8)
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert_eq!(check("a.png", &png), Ok("png"));
        assert!(check("a.txt", b"hello").unwrap_err().contains("`a.txt`"));
        // A PNG header claiming 100000×1: refused before any pixel is decoded.
        let mut huge = png.clone();
        huge[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        assert!(check("wide.png", &huge).is_err());
    }
}
