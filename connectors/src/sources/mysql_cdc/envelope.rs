//! Change envelopes written straight to JSON bytes, in Debezium's shape: `before`, `after`,
//! `op`, `source`, `ts_ms`, with a row's fields in column order. Nothing builds a JSON tree per
//! row: field names are escaped once per schema and the `source` block once per rows event or
//! snapshot chunk, because this encoding is most of CDC's per-row cost.

use mysql_async::Value;

use super::schema::TableSchema;
use super::value::{Origin, write_json, write_serialized, write_str};

/// The `source` block shared by the rows of one rows event (or snapshot chunk), rendered up
/// to the row index, which is all that differs between them.
pub struct SourceBlock {
    prefix: Vec<u8>,
}

/// Where a change was read.
pub struct SourceFields<'a> {
    pub server_name: &'a str,
    pub snapshot: bool,
    pub gtid: Option<&'a str>,
    pub file: &'a str,
    pub pos: u64,
    /// The server that logged the change (0 for snapshot rows).
    pub server_id: u32,
    /// When the server logged the change (0 for snapshot rows).
    pub ts_ms: i64,
}

/// The `source` block's JSON, in Debezium's field order.
#[derive(serde::Serialize)]
struct SourceJson<'a> {
    version: &'static str,
    connector: &'static str,
    name: &'a str,
    ts_ms: i64,
    snapshot: bool,
    db: &'a str,
    table: &'a str,
    server_id: u32,
    gtid: Option<&'a str>,
    file: &'a str,
    pos: u64,
}

impl SourceBlock {
    pub fn new(schema: &TableSchema, fields: &SourceFields<'_>) -> SourceBlock {
        let json = SourceJson {
            version: env!("CARGO_PKG_VERSION"),
            connector: "mysql",
            name: fields.server_name,
            ts_ms: fields.ts_ms,
            snapshot: fields.snapshot,
            db: &schema.database,
            table: &schema.table,
            server_id: fields.server_id,
            gtid: fields.gtid,
            file: fields.file,
            pos: fields.pos,
        };
        let mut prefix = Vec::with_capacity(256);
        write_serialized(&mut prefix, &json);
        assert_eq!(prefix.pop(), Some(b'}'), "a struct serialises as an object");
        prefix.extend_from_slice(br#","row":"#);
        SourceBlock { prefix }
    }
}

/// One change's envelope.
pub struct Change<'a> {
    pub op: &'static str,
    pub before: Option<&'a [Value]>,
    pub after: Option<&'a [Value]>,
    pub origin: Origin,
    /// The row's index within its rows event.
    pub row: usize,
    /// When the envelope was made.
    pub now_ms: i64,
}

/// Writes `change` as its envelope's JSON to `out` (cleared first).
pub fn write_change(out: &mut Vec<u8>, schema: &TableSchema, source: &SourceBlock, change: &Change<'_>) {
    out.clear();
    out.extend_from_slice(br#"{"before":"#);
    write_row(out, schema, change.before, change.origin);
    out.extend_from_slice(br#","after":"#);
    write_row(out, schema, change.after, change.origin);
    out.extend_from_slice(br#","op":"#);
    write_str(out, change.op);
    out.extend_from_slice(br#","source":"#);
    out.extend_from_slice(&source.prefix);
    write_serialized(out, &change.row);
    out.extend_from_slice(br#"},"ts_ms":"#);
    write_serialized(out, &change.now_ms);
    out.push(b'}');
}

/// A row image as a JSON object by column name, or `null`. Columns map by position to the
/// table's current schema: a row logged before a column was added at the end lacks it (and
/// the field is left out, not made null); one logged before a rename gets the new name.
fn write_row(out: &mut Vec<u8>, schema: &TableSchema, values: Option<&[Value]>, origin: Origin) {
    let Some(values) = values else {
        out.extend_from_slice(b"null");
        return;
    };
    out.push(b'{');
    let fields = schema.columns.iter().zip(&schema.field_prefixes).zip(values);
    for (index, ((column, prefix), value)) in fields.enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(prefix);
        write_json(column, value, origin, out);
    }
    out.push(b'}');
}

/// The message key: the primary key's value as text (one column) or a JSON object of the key
/// columns in key order; `None` without a primary key.
pub fn record_key(schema: &TableSchema, values: &[Value], origin: Origin) -> Option<String> {
    let mut out = Vec::new();
    match schema.key.as_slice() {
        [] => return None,
        [one] => {
            write_json(&schema.columns[*one], values.get(*one).unwrap_or(&Value::NULL), origin, &mut out);
            if out.first() == Some(&b'"') {
                // A JSON string: its text between the quotes, unescaped only when it has escapes.
                if !out.contains(&b'\\') {
                    return String::from_utf8(out[1..out.len() - 1].to_vec()).ok();
                }
                return serde_json::from_slice::<String>(&out).ok();
            }
        }
        many => {
            out.push(b'{');
            for (n, index) in many.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&schema.field_prefixes[*index]);
                write_json(&schema.columns[*index], values.get(*index).unwrap_or(&Value::NULL), origin, &mut out);
            }
            out.push(b'}');
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::sources::mysql_cdc::value::Column;

    fn schema() -> TableSchema {
        let column = |name: &str, data_type: &str, column_type: &str, key: &str| {
            Column::from_information_schema(name, data_type, column_type, key, None)
        };
        TableSchema::new(
            "shop",
            "orders",
            vec![
                column("id", "int", "int(11)", "PRI"),
                column("region", "varchar", "varchar(8)", "PRI"),
                column("note \"q\"", "text", "text", ""),
            ],
        )
    }

    #[test]
    fn envelopes_are_debezium_shaped_json() {
        let schema = schema();
        let source = SourceBlock::new(
            &schema,
            &SourceFields {
                server_name: "db1",
                snapshot: false,
                gtid: Some("0-1-7"),
                file: "bin.000001",
                pos: 4,
                server_id: 3,
                ts_ms: 9,
            },
        );
        let before = [Value::Int(1), Value::Bytes(b"eu".to_vec()), Value::NULL];
        let after = [Value::Int(1), Value::Bytes(b"eu".to_vec()), Value::Bytes(b"line\n".to_vec())];
        let change =
            Change { op: "u", before: Some(&before), after: Some(&after), origin: Origin::Binlog, row: 2, now_ms: 10 };
        let mut out = Vec::new();
        write_change(&mut out, &schema, &source, &change);
        let envelope: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            envelope,
            json!({"before": {"id": 1, "region": "eu", "note \"q\"": null},
                   "after": {"id": 1, "region": "eu", "note \"q\"": "line\n"}, "op": "u",
                   "source": {"version": env!("CARGO_PKG_VERSION"), "connector": "mysql", "name": "db1", "ts_ms": 9,
                              "snapshot": false, "db": "shop", "table": "orders", "server_id": 3, "gtid": "0-1-7",
                              "file": "bin.000001", "pos": 4, "row": 2},
                   "ts_ms": 10})
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.find("\"id\"").unwrap() < text.find("\"region\"").unwrap(), "column order: {text}");
        let delete = Change { op: "d", before: Some(&before), after: None, origin: Origin::Binlog, row: 0, now_ms: 10 };
        let mut out = Vec::new();
        write_change(&mut out, &schema, &source, &delete);
        let envelope: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(envelope["after"], serde_json::Value::Null);
        assert_eq!(record_key(&schema, &before, Origin::Binlog).as_deref(), Some(r#"{"id":1,"region":"eu"}"#));
        let single = TableSchema::new(
            "shop",
            "t",
            vec![Column::from_information_schema("k", "varchar", "varchar(9)", "PRI", None)],
        );
        assert_eq!(record_key(&single, &[Value::Bytes(b"a\"b".to_vec())], Origin::Query).as_deref(), Some("a\"b"));
        assert_eq!(record_key(&single, &[Value::Bytes(b"plain".to_vec())], Origin::Query).as_deref(), Some("plain"));
    }
}
