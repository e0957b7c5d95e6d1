//! `{{field}}` templates: tags and keys in sources; keys, index names and document ids in
//! sinks. A placeholder names a JSON field (dots for nested fields); in sinks, `{{$key}}`,
//! `{{$topic}}`, `{{$tag}}`, `{{$queue_id}}` and `{{$queue_offset}}` name the record's place.

use serde_json::Value;
use weir_connect::SinkRecord;

/// Renders `template` from a JSON event; `None` when a field is missing or null.
pub fn render(template: &str, json: &Value) -> Option<String> {
    render_with(template, |name| field(json, name))
}

/// Renders `template` for a sink record: JSON fields from `json` (the record's value, when it
/// is JSON), `$` names from the record.
pub fn render_record(template: &str, record: &SinkRecord, json: Option<&Value>) -> Option<String> {
    render_record_with(template, record, |name| field(json?, name))
}

/// Renders `template` for a sink record, with `lookup` giving a (dotted) field's text.
pub(crate) fn render_record_with(
    template: &str,
    record: &SinkRecord,
    lookup: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    render_with(template, |name| match name {
        "$key" => record.record.key.clone(),
        "$topic" => Some(record.record.topic.clone()),
        "$tag" => record.record.tag.clone(),
        "$queue_id" => Some(record.queue_id.to_string()),
        "$queue_offset" => Some(record.queue_offset.to_string()),
        name => lookup(name),
    })
}

/// The top-level field names a template reads (not the `$` names).
pub fn fields(template: &str) -> Vec<String> {
    let mut names = Vec::new();
    let _ = render_with(template, |name| {
        if !name.starts_with('$') {
            names.push(name.split('.').next().unwrap_or_default().to_string());
        }
        Some(String::new())
    });
    names
}

/// Checks that every `{{` is closed and names something; the error says what is wrong.
pub fn validate(template: &str) -> Result<(), String> {
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            return Err(format!("template {template:?} has `{{{{` without `}}}}`"));
        };
        let name = after[..close].trim();
        if name.is_empty() || name.split('.').any(str::is_empty) {
            return Err(format!("template {template:?} has an empty field name"));
        }
        if name.starts_with('$') && !["$key", "$topic", "$tag", "$queue_id", "$queue_offset"].contains(&name) {
            return Err(format!(
                "template {template:?} names {name:?}; the record names are $key, $topic, $tag, $queue_id, $queue_offset"
            ));
        }
        rest = &after[close + 2..];
    }
    Ok(())
}

/// A (dotted) field of `json` as template text.
pub(crate) fn field(json: &Value, name: &str) -> Option<String> {
    let mut value = json;
    for part in name.split('.') {
        value = value.get(part)?;
    }
    text_of(value)
}

/// A field's text in a template: strings as they are, other values as JSON, null as nothing.
pub(crate) fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn render_with(template: &str, mut lookup: impl FnMut(&str) -> Option<String>) -> Option<String> {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let close = after.find("}}")?;
        out.push_str(&lookup(after[..close].trim())?);
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_connect::Record;

    #[test]
    fn renders_fields_and_record_names() {
        let json = serde_json::json!({"domain": "a.com", "status": 500, "user": {"id": 7}, "gone": null});
        let cases: &[(&str, Option<&str>)] = &[
            ("{{domain}}", Some("a.com")),
            ("s{{status}}-{{user.id}}", Some("s500-7")),
            ("{{missing}}", None),
            ("{{gone}}", None),
            ("{{ domain }}:{{$topic}}:{{$queue_id}}:{{$queue_offset}}:{{$key}}", Some("a.com:logs:2:41:k1")),
            ("{{$tag}}", None),
        ];
        let record = SinkRecord {
            record: Record { topic: "logs".into(), key: Some("k1".into()), ..Record::default() },
            queue_id: 2,
            queue_offset: 41,
            message_id: String::new(),
        };
        for (template, expected) in cases {
            assert_eq!(render_record(template, &record, Some(&json)).as_deref(), *expected, "{template}");
        }
        assert_eq!(fields("x{{a.b}}{{$key}}{{c}}"), ["a", "c"]);
        assert!(validate("{{a}}-{{$queue_offset}}").is_ok());
        for bad in ["{{a", "{{}}", "{{a..b}}", "{{$nope}}"] {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }
}
