//! InfluxDB line protocol → JSON (`{"measurement", "tags", "fields", "timestamp"}`).
//!
//! `measurement[,tag=value...] field=value[,field=value...] [timestamp_ns]`; commas, spaces
//! and equals signs are escaped with `\`; field values are floats, integers (`1i`), unsigned
//! integers (`1u`), double-quoted strings or booleans (`t`, `true`, `F`, `false`, …). Blank
//! lines and `#` comments are skipped by the caller.

use serde_json::{Map, Number, Value};

/// Splits at `separator` outside backslash escapes (and, with `quotes`, outside `"…"`).
fn split(text: &str, separator: u8, quotes: bool) -> Vec<&str> {
    let bytes = text.as_bytes();
    let (mut parts, mut start, mut index, mut quoted) = (Vec::new(), 0, 0, false);
    while index < bytes.len() {
        match bytes[index] {
            b'\\' => index += 1,
            b'"' if quotes => quoted = !quoted,
            byte if byte == separator && !quoted => {
                parts.push(&text[start..index]);
                start = index + 1;
            }
            _ => {}
        }
        index += 1;
    }
    parts.push(&text[start..]);
    parts
}

fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(next @ (',' | '=' | ' ' | '"' | '\\')) => out.push(next),
                Some(next) => {
                    out.push('\\');
                    out.push(next);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn key_value(pair: &str, what: &str) -> Result<(String, String), String> {
    let parts = split(pair, b'=', true);
    match parts.as_slice() {
        [key, value] if !key.is_empty() && !value.is_empty() => Ok((unescape(key), value.to_string())),
        _ => Err(format!("{what} {pair:?} is not key=value")),
    }
}

fn field_value(raw: &str) -> Result<Value, String> {
    if let Some(quoted) = raw.strip_prefix('"') {
        let inner = quoted.strip_suffix('"').ok_or_else(|| format!("string field {raw:?} is not closed"))?;
        return Ok(Value::String(unescape(inner)));
    }
    match raw {
        "t" | "T" | "true" | "True" | "TRUE" => return Ok(Value::Bool(true)),
        "f" | "F" | "false" | "False" | "FALSE" => return Ok(Value::Bool(false)),
        _ => {}
    }
    if let Some(integer) = raw.strip_suffix('i') {
        return integer.parse::<i64>().map(Value::from).map_err(|_| format!("{raw:?} is not an integer"));
    }
    if let Some(unsigned) = raw.strip_suffix('u') {
        return unsigned.parse::<u64>().map(Value::from).map_err(|_| format!("{raw:?} is not an unsigned integer"));
    }
    let float: f64 = raw.parse().map_err(|_| format!("field value {raw:?} is not a number, string or boolean"))?;
    Number::from_f64(float).map(Value::Number).ok_or_else(|| format!("field value {raw:?} is not finite"))
}

/// Parses one line.
pub fn parse_line(line: &str) -> Result<Value, String> {
    let sections = split(line.trim_end(), b' ', true);
    let (series, fields, timestamp) = match sections.as_slice() {
        [series, fields] => (*series, *fields, None),
        [series, fields, timestamp] => (*series, *fields, Some(*timestamp)),
        _ => return Err("expected `measurement[,tags] fields [timestamp]`".into()),
    };
    let mut series_parts = split(series, b',', false).into_iter();
    let measurement = unescape(series_parts.next().unwrap_or_default());
    if measurement.is_empty() {
        return Err("the measurement is empty".into());
    }
    let mut tags = Map::new();
    for pair in series_parts {
        let (key, value) = key_value(pair, "tag")?;
        tags.insert(key, Value::String(unescape(&value)));
    }
    let mut field_map = Map::new();
    for pair in split(fields, b',', true) {
        let (key, value) = key_value(pair, "field")?;
        field_map.insert(key, field_value(&value)?);
    }
    let timestamp = match timestamp {
        Some(text) => Value::from(text.parse::<i64>().map_err(|_| format!("timestamp {text:?} is not an integer"))?),
        None => Value::Null,
    };
    let mut object = Map::new();
    object.insert("measurement".into(), Value::String(measurement));
    object.insert("tags".into(), Value::Object(tags));
    object.insert("fields".into(), Value::Object(field_map));
    object.insert("timestamp".into(), timestamp);
    Ok(Value::Object(object))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lines() {
        let cases: &[(&str, Result<Value, &str>)] = &[
            (
                "cpu,host=a,region=eu usage=0.5,cores=4i,up=true 1465839830100400200",
                Ok(json!({"measurement":"cpu","tags":{"host":"a","region":"eu"},
                          "fields":{"usage":0.5,"cores":4,"up":true},"timestamp":1465839830100400200i64})),
            ),
            (
                r#"my\ measure,tag\,x=a\ b msg="hello, \"world\"",n=7u"#,
                Ok(json!({"measurement":"my measure","tags":{"tag,x":"a b"},
                          "fields":{"msg":"hello, \"world\"","n":7},"timestamp":null})),
            ),
            ("cpu", Err("expected")),
            ("cpu usage=", Err("key=value")),
            ("cpu usage=abc", Err("not a number")),
            ("cpu x=1i 12a", Err("timestamp")),
            ("cpu s=\"open", Err("not closed")),
            (",host=a x=1", Err("measurement is empty")),
        ];
        for (line, expected) in cases {
            match (parse_line(line), expected) {
                (Ok(got), Ok(want)) => assert_eq!(&got, want, "{line}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{line}: {got}"),
                (got, want) => panic!("{line}: got {got:?}, want {want:?}"),
            }
        }
    }
}
