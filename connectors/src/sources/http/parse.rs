//! Request bodies → records: NDJSON, a JSON array, one JSON object, or text lines.

use serde_json::Value;

/// Body formats of the HTTP source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line; blank lines are skipped.
    Ndjson,
    /// A JSON array of objects.
    JsonArray,
    /// A single JSON object.
    Json,
    /// One message per non-empty line, as text.
    Text,
    /// InfluxDB line protocol, one point per line, stored as JSON.
    Influx,
}

/// One parsed event: its JSON (absent for text) and the bytes stored as the message body.
#[derive(Debug, PartialEq)]
pub struct Event {
    /// The line the event starts on (1-based; 1 for JSON arrays and objects).
    pub line: usize,
    pub json: Option<Value>,
    pub body: Vec<u8>,
}

/// A body that does not parse: which line (1-based) and why.
#[derive(Debug, PartialEq, Eq)]
pub struct BadLine {
    pub line: usize,
    pub reason: String,
}

/// Parses a whole body; the first bad line fails it all (nothing of it is written).
///
/// For NDJSON, `fields` names the top-level fields the route's templates read: each line is
/// checked to be a JSON object in full, but only those fields are kept (`Event::json` holds
/// them), which spares building a map of every field of every line.
pub fn parse(format: Format, body: &[u8], events_max: usize, fields: &[String]) -> Result<Vec<Event>, BadLine> {
    let text = std::str::from_utf8(body).map_err(|error| {
        let line = body[..error.valid_up_to()].iter().filter(|b| **b == b'\n').count() + 1;
        BadLine { line, reason: "the body is not UTF-8".into() }
    })?;
    let too_many = |line| BadLine { line, reason: format!("more than {events_max} events in one request") };
    let mut events = Vec::new();
    match format {
        Format::Ndjson | Format::Text | Format::Influx => {
            for (index, line) in text.lines().enumerate() {
                let line = line.trim_end_matches('\r');
                if line.trim().is_empty() || (format == Format::Influx && line.trim_start().starts_with('#')) {
                    continue;
                }
                if events.len() == events_max {
                    return Err(too_many(index + 1));
                }
                let (json, body) = match format {
                    Format::Ndjson => (Some(picked_fields(line, index + 1, fields)?), line.as_bytes().to_vec()),
                    Format::Influx => {
                        let point =
                            super::influx::parse_line(line).map_err(|reason| BadLine { line: index + 1, reason })?;
                        let body = point.to_string().into_bytes();
                        (Some(point), body)
                    }
                    _ => (None, line.as_bytes().to_vec()),
                };
                events.push(Event { line: index + 1, json, body });
            }
        }
        Format::Json => {
            let value = object(text, 1)?;
            events.push(Event { line: 1, body: value.to_string().into_bytes(), json: Some(value) });
        }
        Format::JsonArray => {
            let value: Value =
                serde_json::from_str(text).map_err(|e| BadLine { line: e.line(), reason: e.to_string() })?;
            let Value::Array(items) = value else {
                return Err(BadLine { line: 1, reason: "expected a JSON array".into() });
            };
            if items.len() > events_max {
                return Err(too_many(1));
            }
            for (index, item) in items.into_iter().enumerate() {
                if !item.is_object() {
                    return Err(BadLine { line: 1, reason: format!("array element {index} is not a JSON object") });
                }
                events.push(Event { line: 1, body: item.to_string().into_bytes(), json: Some(item) });
            }
        }
    }
    Ok(events)
}

/// Validates `text` as one JSON object and keeps only the top-level `fields`.
fn picked_fields(text: &str, line: usize, fields: &[String]) -> Result<Value, BadLine> {
    use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};

    struct Pick<'a>(&'a [String]);

    impl<'de> Visitor<'de> for Pick<'_> {
        type Value = serde_json::Map<String, Value>;

        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut picked = serde_json::Map::new();
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if self.0.iter().any(|wanted| wanted.as_str() == key) {
                    picked.insert(key.into_owned(), map.next_value::<Value>()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(picked)
        }
    }

    impl<'de> DeserializeSeed<'de> for Pick<'_> {
        type Value = serde_json::Map<String, Value>;

        fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_map(self)
        }
    }

    let mut deserializer = serde_json::Deserializer::from_str(text);
    let picked = Pick(fields)
        .deserialize(&mut deserializer)
        .and_then(|picked| deserializer.end().map(|()| picked))
        .map_err(|e| BadLine { line: line + e.line() - 1, reason: e.to_string() })?;
    Ok(Value::Object(picked))
}

fn object(text: &str, line: usize) -> Result<Value, BadLine> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| BadLine { line: line + e.line() - 1, reason: e.to_string() })?;
    if value.is_object() { Ok(value) } else { Err(BadLine { line, reason: "expected a JSON object".into() }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_bad_lines() {
        let cases: &[(Format, &str, Result<usize, usize>)] = &[
            (Format::Ndjson, "{\"a\":1}\n\n{\"a\":2}\r\n", Ok(2)),
            (Format::Ndjson, "{\"a\":1}\n{\"a\":\n{\"a\":3}", Err(2)),
            (Format::Ndjson, "{\"a\":1}\n[1,2]", Err(2)),
            (Format::JsonArray, "[{\"a\":1},{\"a\":2}]", Ok(2)),
            (Format::JsonArray, "[{\"a\":1},\n 3]", Err(1)),
            (Format::Json, "{\"a\":1}", Ok(1)),
            (Format::Json, "\n\n{\"a\":", Err(3)),
            (Format::Text, "one\ntwo\n\nthree", Ok(3)),
            (Format::Influx, "# comment\ncpu,host=a x=1\n\nmem used=2i 1700000000000000000\n", Ok(2)),
            (Format::Influx, "cpu x=1\ncpu", Err(2)),
        ];
        for (format, body, expected) in cases {
            match (parse(*format, body.as_bytes(), 100, &["a".to_string()]), expected) {
                (Ok(events), Ok(count)) => assert_eq!(events.len(), *count, "{body:?}"),
                (Err(bad), Err(line)) => assert_eq!(bad.line, *line, "{body:?}: {bad:?}"),
                (got, want) => panic!("{body:?}: got {got:?}, want {want:?}"),
            }
        }
        assert_eq!(parse(Format::Text, b"a\nb\nc", 2, &[]).unwrap_err().line, 3);
        assert_eq!(parse(Format::Text, b"ok\n\xff", 10, &[]).unwrap_err().line, 2);
    }
}
