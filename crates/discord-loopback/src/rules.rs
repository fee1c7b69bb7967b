//! Discord's rules for message bodies and its JSON errors.
//!
//! The limits are Discord's documented ones. A broken rule is answered the way
//! Discord answers it: 400 code 50035 with an `errors` object whose nesting
//! names the offending field (`components.0.components.2.custom_id`), so the
//! bot sees the same error text it would see in production.

use serde_json::{json, Map, Value};

use crate::state::Attachment;

/// A Discord JSON error: HTTP status, error code, message and field errors.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub status: u16,
    pub code: u64,
    pub message: String,
    pub errors: Option<Value>,
}

impl Failure {
    fn new(status: u16, code: u64, message: &str) -> Failure {
        Failure {
            status,
            code,
            message: message.to_owned(),
            errors: None,
        }
    }

    pub fn unauthorized() -> Failure {
        Failure::new(401, 0, "401: Unauthorized")
    }

    pub fn unknown_route(method: &str, path: &str) -> Failure {
        Failure::new(
            404,
            0,
            &format!("404: Not Found ({method} {path} is not faked)"),
        )
    }

    pub fn unknown_application() -> Failure {
        Failure::new(404, 10002, "Unknown Application")
    }

    pub fn unknown_message() -> Failure {
        Failure::new(404, 10008, "Unknown Message")
    }

    pub fn unknown_webhook() -> Failure {
        Failure::new(404, 10015, "Unknown Webhook")
    }

    pub fn unknown_interaction() -> Failure {
        Failure::new(404, 10062, "Unknown interaction")
    }

    pub fn already_acknowledged() -> Failure {
        Failure::new(400, 40060, "Interaction has already been acknowledged.")
    }

    pub fn invalid_webhook_token() -> Failure {
        Failure::new(401, 50027, "Invalid Webhook Token")
    }

    pub fn too_large() -> Failure {
        Failure::new(413, 40005, "Request entity too large")
    }

    pub fn empty_message() -> Failure {
        Failure::new(400, 50006, "Cannot send an empty message")
    }

    pub fn bad_json(why: &str) -> Failure {
        Failure::new(
            400,
            50109,
            &format!("The request body contains invalid JSON. ({why})"),
        )
    }

    /// 50035 with one field error at `path` (dot separated).
    pub fn invalid_form(path: &str, code: &str, message: &str) -> Failure {
        let mut errors = json!({ "_errors": [{ "code": code, "message": message }] });
        for key in path.rsplit('.') {
            let mut outer = Map::new();
            outer.insert(key.to_owned(), errors);
            errors = Value::Object(outer);
        }
        Failure {
            errors: Some(errors),
            ..Failure::new(400, 50035, "Invalid Form Body")
        }
    }

    /// The JSON body Discord sends with this error.
    pub fn body(&self) -> Value {
        let mut body = json!({ "message": self.message, "code": self.code });
        if let Some(errors) = &self.errors {
            body["errors"] = errors.clone();
        }
        body
    }
}

/// Checks the files of one request against the upload limits.
pub(crate) fn check_files(files: &[Attachment], limit: u64) -> Result<(), Failure> {
    if files.len() > 10 {
        return Err(Failure::invalid_form(
            "attachments",
            "BASE_TYPE_MAX_LENGTH",
            "Must be 10 or fewer in length.",
        ));
    }
    let total: u64 = files.iter().map(|f| f.bytes.len() as u64).sum();
    if total > limit {
        return Err(Failure::too_large());
    }
    Ok(())
}

/// Checks a message body (create or edit) against Discord's limits.
pub(crate) fn check_message(body: &Value) -> Result<(), Failure> {
    if let Some(content) = body.get("content").and_then(Value::as_str) {
        check_length("content", content, 2000)?;
    }
    if let Some(embeds) = body.get("embeds").filter(|v| !v.is_null()) {
        check_embeds(embeds)?;
    }
    if let Some(rows) = body.get("components").filter(|v| !v.is_null()) {
        check_components(rows)?;
    }
    Ok(())
}

/// Whether a new message would show nothing, which Discord refuses.
pub(crate) fn is_empty_message(body: &Value, files: &[Attachment]) -> bool {
    let has = |key: &str| match body.get(key) {
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Null) | None => false,
        Some(_) => true,
    };
    files.is_empty()
        && !["content", "embeds", "components", "sticker_ids", "poll"]
            .iter()
            .any(|k| has(k))
}

fn too_long(path: &str, max: usize) -> Failure {
    Failure::invalid_form(
        path,
        "BASE_TYPE_MAX_LENGTH",
        &format!("Must be {max} or fewer in length."),
    )
}

fn check_length(path: &str, text: &str, max: usize) -> Result<(), Failure> {
    if text.chars().count() > max {
        return Err(too_long(path, max));
    }
    Ok(())
}

fn array<'a>(path: &str, value: &'a Value) -> Result<&'a Vec<Value>, Failure> {
    value
        .as_array()
        .ok_or_else(|| Failure::invalid_form(path, "BASE_TYPE_ARRAY", "Must be an array."))
}

fn check_embeds(embeds: &Value) -> Result<(), Failure> {
    let embeds = array("embeds", embeds)?;
    if embeds.len() > 10 {
        return Err(too_long("embeds", 10));
    }
    let mut total = 0;
    for (i, embed) in embeds.iter().enumerate() {
        let text = |key: &str| embed.get(key).and_then(Value::as_str).unwrap_or("");
        let nested = |outer: &str, key: &str| {
            embed
                .get(outer)
                .and_then(|o| o.get(key))
                .and_then(Value::as_str)
                .unwrap_or("")
        };
        let parts = [
            ("title", text("title"), 256),
            ("description", text("description"), 4096),
            ("footer.text", nested("footer", "text"), 2048),
            ("author.name", nested("author", "name"), 256),
        ];
        for (field, value, max) in parts {
            check_length(&format!("embeds.{i}.{field}"), value, max)?;
            total += value.chars().count();
        }
        let fields = match embed.get("fields") {
            Some(f) if !f.is_null() => array(&format!("embeds.{i}.fields"), f)?.as_slice(),
            _ => &[],
        };
        if fields.len() > 25 {
            return Err(too_long(&format!("embeds.{i}.fields"), 25));
        }
        for (j, field) in fields.iter().enumerate() {
            let name = field.get("name").and_then(Value::as_str).unwrap_or("");
            let value = field.get("value").and_then(Value::as_str).unwrap_or("");
            check_length(&format!("embeds.{i}.fields.{j}.name"), name, 256)?;
            check_length(&format!("embeds.{i}.fields.{j}.value"), value, 1024)?;
            total += name.chars().count() + value.chars().count();
        }
    }
    // Discord also caps the text of all embeds of a message together.
    if total > 6000 {
        return Err(too_long("embeds", 6000));
    }
    Ok(())
}

fn check_components(rows: &Value) -> Result<(), Failure> {
    let rows = array("components", rows)?;
    if rows.len() > 5 {
        return Err(Failure::invalid_form(
            "components",
            "BASE_TYPE_BAD_LENGTH",
            "Must be between 1 and 5 in length.",
        ));
    }
    let mut seen = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let path = format!("components.{i}");
        if row.get("type").and_then(Value::as_u64) != Some(1) {
            return Err(Failure::invalid_form(
                &format!("{path}.type"),
                "UNION_TYPE_CHOICES",
                "Value of field \"type\" must be one of (1,).",
            ));
        }
        let children = array(&format!("{path}.components"), &row["components"])?;
        let selects = children
            .iter()
            .filter(|c| (3..=8).contains(&kind(c)))
            .count();
        let width = if selects > 0 {
            5 * selects + (children.len() - selects)
        } else {
            children.len()
        };
        if children.is_empty() || width > 5 {
            return Err(Failure::invalid_form(
                &format!("{path}.components"),
                "BASE_TYPE_BAD_LENGTH",
                "Must be between 1 and 5 in length.",
            ));
        }
        for (j, child) in children.iter().enumerate() {
            check_component(&format!("{path}.components.{j}"), child, &mut seen)?;
        }
    }
    Ok(())
}

fn kind(component: &Value) -> u64 {
    component.get("type").and_then(Value::as_u64).unwrap_or(0)
}

fn check_component(path: &str, component: &Value, seen: &mut Vec<String>) -> Result<(), Failure> {
    let custom_id = component.get("custom_id").and_then(Value::as_str);
    let is_link = kind(component) == 2 && component.get("style").and_then(Value::as_u64) == Some(5);
    match kind(component) {
        2 => {
            if let Some(label) = component.get("label").and_then(Value::as_str) {
                check_length(&format!("{path}.label"), label, 80)?;
            }
            if is_link {
                if component.get("url").and_then(Value::as_str).is_none() {
                    return Err(Failure::invalid_form(
                        &format!("{path}.url"),
                        "BASE_TYPE_REQUIRED",
                        "This field is required",
                    ));
                }
                return Ok(());
            }
        }
        3..=8 => {}
        other => {
            return Err(Failure::invalid_form(
                &format!("{path}.type"),
                "UNION_TYPE_CHOICES",
                &format!("Component type {other} is not allowed in an action row."),
            ))
        }
    }
    let Some(custom_id) = custom_id else {
        return Err(Failure::invalid_form(
            &format!("{path}.custom_id"),
            "BASE_TYPE_REQUIRED",
            "This field is required",
        ));
    };
    check_length(&format!("{path}.custom_id"), custom_id, 100)?;
    if seen.iter().any(|s| s == custom_id) {
        return Err(Failure::invalid_form(
            &format!("{path}.custom_id"),
            "COMPONENT_CUSTOM_ID_DUPLICATED",
            "Component custom id cannot be duplicated",
        ));
    }
    seen.push(custom_id.to_owned());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buttons(n: usize, prefix: &str) -> Value {
        let row: Vec<Value> = (0..n)
            .map(|i| json!({"type": 2, "style": 1, "custom_id": format!("{prefix}{i}"), "label": "x"}))
            .collect();
        json!({"type": 1, "components": row})
    }

    #[test]
    fn six_rows_name_the_components_field() {
        let rows: Vec<Value> = (0..6).map(|i| buttons(1, &format!("r{i}-"))).collect();
        let err = check_message(&json!({ "components": rows })).unwrap_err();
        assert_eq!(err.code, 50035);
        assert!(err.body()["errors"]["components"]["_errors"].is_array());
    }

    #[test]
    fn long_custom_id_points_at_the_button() {
        let id = "x".repeat(101);
        let body = json!({"components": [{"type": 1, "components": [
            {"type": 2, "style": 1, "custom_id": id}]}]});
        let err = check_message(&body).unwrap_err();
        let at = &err.body()["errors"]["components"]["0"]["components"]["0"]["custom_id"];
        assert_eq!(at["_errors"][0]["code"], "BASE_TYPE_MAX_LENGTH");
    }

    #[test]
    fn a_full_message_passes() {
        let rows: Vec<Value> = (0..5).map(|i| buttons(5, &format!("r{i}-"))).collect();
        let body =
            json!({"content": "a".repeat(2000), "components": rows, "embeds": [{"title": "t"}]});
        assert!(check_message(&body).is_ok());
        assert!(check_message(&json!({"content": "a".repeat(2001)})).is_err());
    }

    #[test]
    fn empty_messages_are_recognised() {
        assert!(is_empty_message(&json!({"content": ""}), &[]));
        assert!(!is_empty_message(&json!({"content": "hi"}), &[]));
        let file = Attachment {
            id: 0,
            filename: "a.png".into(),
            bytes: vec![1],
        };
        assert!(!is_empty_message(&json!({}), &[file]));
    }
}
