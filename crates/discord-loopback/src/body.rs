//! Request bodies: JSON, or `multipart/form-data` with `payload_json` and
//! `files[n]` parts, the two forms Discord accepts for message routes.
//!
//! The multipart reader is small on purpose: it understands what reqwest
//! sends (CRLF line ends, `Content-Disposition` with `name` and `filename`)
//! and answers anything else with a 400 instead of guessing.

use serde_json::Value;

use crate::rules::Failure;
use crate::state::Attachment;

/// A parsed body: the JSON payload and the uploaded files.
#[derive(Debug, Default)]
pub(crate) struct Body {
    pub json: Value,
    pub files: Vec<Attachment>,
}

/// Parses a request body by its `Content-Type`.
pub(crate) fn parse(content_type: Option<&str>, bytes: &[u8]) -> Result<Body, Failure> {
    let content_type = content_type.unwrap_or("");
    if let Some(boundary) = boundary(content_type) {
        return parse_multipart(&boundary, bytes);
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Body::default());
    }
    let json = serde_json::from_slice(bytes).map_err(|e| Failure::bad_json(&e.to_string()))?;
    Ok(Body {
        json,
        files: Vec::new(),
    })
}

fn boundary(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (key, value) = p.trim().split_once('=')?;
        key.eq_ignore_ascii_case("boundary")
            .then(|| value.trim_matches('"').to_owned())
    })
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from > haystack.len() {
        return None;
    }
    haystack[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

fn malformed(why: &str) -> Failure {
    Failure::bad_json(&format!("malformed multipart body: {why}"))
}

fn parse_multipart(boundary: &str, bytes: &[u8]) -> Result<Body, Failure> {
    let delimiter = format!("--{boundary}").into_bytes();
    let next_part = format!("\r\n--{boundary}").into_bytes();
    let mut body = Body::default();
    let mut at = find(bytes, &delimiter, 0).ok_or_else(|| malformed("no boundary"))?;
    at += delimiter.len();

    loop {
        if bytes[at..].starts_with(b"--") {
            break;
        }
        if !bytes[at..].starts_with(b"\r\n") {
            return Err(malformed("boundary not followed by CRLF"));
        }
        let head_start = at + 2;
        let head_end =
            find(bytes, b"\r\n\r\n", head_start).ok_or_else(|| malformed("no headers"))?;
        let head = String::from_utf8_lossy(&bytes[head_start..head_end]);
        let data_start = head_end + 4;
        let data_end =
            find(bytes, &next_part, data_start).ok_or_else(|| malformed("unterminated part"))?;
        let data = &bytes[data_start..data_end];

        let (name, filename) = disposition(&head).ok_or_else(|| malformed("no part name"))?;
        if name == "payload_json" {
            body.json = serde_json::from_slice(data)
                .map_err(|e| Failure::bad_json(&format!("payload_json: {e}")))?;
        } else if let Some(index) = file_index(&name) {
            let filename = filename.unwrap_or_else(|| format!("file{index}"));
            body.files.push(Attachment {
                id: index,
                filename,
                bytes: data.to_vec(),
            });
        }
        at = data_end + next_part.len();
    }

    // The payload's own `attachments` list names the files as Discord shows them.
    if let Some(listed) = body.json.get("attachments").and_then(Value::as_array) {
        for file in &mut body.files {
            let entry = listed.iter().find(|a| id_of(a) == Some(file.id));
            if let Some(name) = entry
                .and_then(|a| a.get("filename"))
                .and_then(Value::as_str)
            {
                file.filename = name.to_owned();
            }
        }
    }
    Ok(body)
}

/// An attachment entry's id, which Discord accepts as a number or a string.
pub(crate) fn id_of(entry: &Value) -> Option<u64> {
    match entry.get("id")? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// `files[3]` → 3; the old single-file field `file` counts as 0.
fn file_index(name: &str) -> Option<u64> {
    if name == "file" {
        return Some(0);
    }
    name.strip_prefix("files[")?.strip_suffix(']')?.parse().ok()
}

fn disposition(head: &str) -> Option<(String, Option<String>)> {
    let line = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))?;
    let mut name = None;
    let mut filename = None;
    for param in line.split(';').skip(1) {
        let Some((key, value)) = param.trim().split_once('=') else {
            continue;
        };
        let value = percent_decode(value.trim().trim_matches('"'));
        match key.trim() {
            "name" => name = Some(value),
            "filename" => filename = Some(value),
            _ => {}
        }
    }
    Some((name?, filename))
}

/// reqwest percent-encodes unusual characters in file names.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_payload_and_files() {
        let raw = b"--XyZ\r\nContent-Disposition: form-data; name=\"files[0]\"; filename=\"a%20b.png\"\r\n\
Content-Type: image/png\r\n\r\n\x89PNG\r\n--XyZ\r\nContent-Disposition: form-data; name=\"payload_json\"\r\n\r\n\
{\"content\":\"hi\"}\r\n--XyZ--\r\n";
        let body = parse(Some("multipart/form-data; boundary=XyZ"), raw).unwrap();
        assert_eq!(body.json["content"], "hi");
        assert_eq!(body.files.len(), 1);
        assert_eq!(body.files[0].filename, "a b.png");
        assert_eq!(body.files[0].bytes, b"\x89PNG");
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(parse(Some("multipart/form-data; boundary=XyZ"), b"--XyZ\r\nnope").is_err());
        assert!(parse(Some("multipart/form-data; boundary=XyZ"), b"").is_err());
        assert!(parse(Some("application/json"), b"{").is_err());
        assert!(parse(None, b"").unwrap().json.is_null());
    }
}
