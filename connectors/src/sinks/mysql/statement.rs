//! Records → row changes → multi-row SQL statements with bound parameters.

use std::collections::BTreeMap;

use mysql_async::Value;
use serde_json::Value as Json;
use weir_connect::SinkRecord;

use super::config::{MySqlMode, UnknownFields};

/// Most rows in one statement.
pub(super) const STATEMENT_ROWS_MAX: usize = 1000;
/// Most placeholders in one statement (the protocol's limit).
pub(super) const STATEMENT_PARAMS_MAX: usize = 65_535;
/// About this many parameter bytes in one statement at most (well under the server's
/// `max_allowed_packet`, 16 MiB by default).
pub(super) const STATEMENT_BYTES_MAX: usize = 4 << 20;

/// What one record does to the table.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum RowChange {
    /// Insert or upsert these columns; `types` are the SQL types auto-create would give them.
    Write { columns: Vec<String>, values: Vec<Value>, types: Vec<&'static str> },
    /// Delete the row with this key (in `key_columns` order).
    Delete { key: Vec<Value> },
}

/// The table as the sink knows it.
#[derive(Clone, Debug)]
pub(super) struct TableShape {
    pub name: String,
    pub key_columns: Vec<String>,
    /// Known columns and what they hold; `None` until the table exists (auto-create from the
    /// first record).
    pub columns: Option<BTreeMap<String, ColumnKind>>,
    pub unknown_fields: UnknownFields,
    /// Records are CDC row images, with values as the CDC source writes them: a binary
    /// column's value is base64 (written as the bytes it stands for) and a JSON column's value
    /// is the JSON itself (written as JSON text, a string scalar with its quotes). Otherwise a
    /// string for a JSON column is taken as JSON text already (a producer that serialised it).
    pub cdc_images: bool,
}

/// What a column holds, as far as binding a JSON value to it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ColumnKind {
    /// Bytes (BINARY, VARBINARY, BLOBs).
    Binary,
    /// A JSON column: every non-null value is written as JSON text (a JSON string scalar
    /// keeps its quotes).
    Json,
    Other,
}

impl ColumnKind {
    /// From `information_schema.COLUMNS.DATA_TYPE`.
    pub fn from_data_type(data_type: &str) -> ColumnKind {
        match data_type.to_ascii_lowercase().as_str() {
            "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => ColumnKind::Binary,
            "json" => ColumnKind::Json,
            _ => ColumnKind::Other,
        }
    }
}

/// A statement and its parameters.
#[derive(Debug)]
pub(super) struct Statement {
    pub sql: String,
    pub params: Vec<Value>,
}

/// The changes a record makes; `Err` is why it is poison.
#[cfg(test)]
pub(super) fn changes(record: &SinkRecord, mode: MySqlMode, table: &TableShape) -> Result<Vec<RowChange>, String> {
    changes_noting_unknown(record, mode, table, &mut false)
}

/// `changes`, setting `unknown_seen` when the record has a field that is not one of the
/// table's known columns (refused or ignored by `unknown_fields`).
pub(super) fn changes_noting_unknown(
    record: &SinkRecord,
    mode: MySqlMode,
    table: &TableShape,
    unknown_seen: &mut bool,
) -> Result<Vec<RowChange>, String> {
    let value = &record.record.value;
    if value.is_empty() {
        return match mode {
            MySqlMode::Cdc => Ok(Vec::new()), // tombstone after a delete
            _ => Err("the record's value is empty".into()),
        };
    }
    let json: Json = serde_json::from_slice(value).map_err(|e| format!("the record's value is not JSON: {e}"))?;
    match mode {
        MySqlMode::Insert | MySqlMode::Upsert => Ok(vec![write(&json, table, mode, unknown_seen)?]),
        MySqlMode::Cdc => cdc_changes(&json, table, unknown_seen),
    }
}

fn cdc_changes(json: &Json, table: &TableShape, unknown_seen: &mut bool) -> Result<Vec<RowChange>, String> {
    let envelope = json.get("payload").filter(|p| p.is_object()).unwrap_or(json);
    let op = envelope.get("op").and_then(Json::as_str).ok_or("the change has no `op` (c, r, u or d)")?;
    let present = |name: &str| envelope.get(name).filter(|v| !v.is_null());
    match op {
        "c" | "r" => {
            let after = present("after").ok_or("a create has no `after`")?;
            Ok(vec![write(after, table, MySqlMode::Upsert, unknown_seen)?])
        }
        "u" => {
            let after = present("after").ok_or("an update has no `after`")?;
            let mut out = Vec::new();
            if let Some(before) = present("before") {
                let old_key = key_of(before, table)?;
                if old_key != key_of(after, table)? {
                    out.push(RowChange::Delete { key: old_key }); // the key itself changed
                }
            }
            out.push(write(after, table, MySqlMode::Upsert, unknown_seen)?);
            Ok(out)
        }
        "d" => {
            Ok(vec![RowChange::Delete { key: key_of(present("before").ok_or("a delete has no `before`")?, table)? }])
        }
        other => Err(format!("unknown change op {other:?} (expected c, r, u or d)")),
    }
}

fn key_of(row: &Json, table: &TableShape) -> Result<Vec<Value>, String> {
    let object = row.as_object().ok_or("a row image is not a JSON object")?;
    check_key(object, table)?;
    table
        .key_columns
        .iter()
        .map(|column| {
            let kind = table.columns.as_ref().and_then(|known| known.get(column)).copied().unwrap_or(ColumnKind::Other);
            bind_to(&object[column], kind, table.cdc_images).map_err(|reason| format!("key {column:?}: {reason}"))
        })
        .collect()
}

/// Every key column has a non-null value in `object`.
fn check_key(object: &serde_json::Map<String, Json>, table: &TableShape) -> Result<(), String> {
    match table.key_columns.iter().find(|column| object.get(*column).is_none_or(Json::is_null)) {
        Some(column) => Err(format!("the row has no value for key column {column:?}")),
        None => Ok(()),
    }
}

fn write(row: &Json, table: &TableShape, mode: MySqlMode, unknown_seen: &mut bool) -> Result<RowChange, String> {
    let object = row.as_object().ok_or("the record is not a JSON object")?;
    if mode != MySqlMode::Insert {
        check_key(object, table)?;
    }
    let mut columns = Vec::with_capacity(object.len());
    let mut values = Vec::with_capacity(object.len());
    let mut types = Vec::with_capacity(object.len());
    for (name, value) in object {
        let kind = match &table.columns {
            Some(known) => match known.get(name) {
                Some(kind) => *kind,
                None => {
                    *unknown_seen = true;
                    match table.unknown_fields {
                        UnknownFields::Ignore => continue,
                        UnknownFields::Error => {
                            return Err(format!("field {name:?} is not a column of table {}", table.name));
                        }
                    }
                }
            },
            None => {
                // Only a name that may become a column (auto-create) needs checking; known
                // columns are names the server already accepted.
                super::config::check_identifier(name).map_err(|reason| format!("field name {reason}"))?;
                ColumnKind::Other
            }
        };
        values.push(bind_to(value, kind, table.cdc_images).map_err(|reason| format!("field {name:?}: {reason}"))?);
        columns.push(name.clone());
        types.push(column_type(value, table.key_columns.contains(name)));
    }
    if columns.is_empty() {
        return Err("the record has no field that is a column".into());
    }
    Ok(RowChange::Write { columns, values, types })
}

/// A JSON value as the parameter for a column of `kind`.
fn bind_to(value: &Json, kind: ColumnKind, cdc_images: bool) -> Result<Value, String> {
    Ok(match (kind, value) {
        (_, Json::Null) => Value::NULL,
        (ColumnKind::Json, Json::String(text)) if !cdc_images => Value::Bytes(text.as_bytes().to_vec()),
        (ColumnKind::Json, value) => Value::Bytes(value.to_string().into_bytes()),
        (ColumnKind::Binary, Json::String(text)) if cdc_images => {
            Value::Bytes(base64_decode(text).ok_or("a binary column's value is not base64")?)
        }
        (_, value) => bind(value),
    })
}

/// Standard base64 (with or without padding) → bytes; `None` when it is not base64.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let trimmed = text.trim_end_matches('=');
    if text.len() - trimmed.len() > 2 || trimmed.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(trimmed.len() * 3 / 4);
    let (mut bits, mut count) = (0u32, 0);
    for c in trimmed.bytes() {
        bits = (bits << 6) | u32::from(digit(c)?);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    Some(out)
}

/// A JSON value as a statement parameter.
pub(super) fn bind(value: &Json) -> Value {
    match value {
        Json::Null => Value::NULL,
        Json::Bool(flag) => Value::Int(i64::from(*flag)),
        Json::Number(number) => match (number.as_i64(), number.as_u64()) {
            (Some(signed), _) => Value::Int(signed),
            (None, Some(unsigned)) => Value::UInt(unsigned),
            _ => Value::Double(number.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(text) => Value::Bytes(text.as_bytes().to_vec()),
        other => Value::Bytes(other.to_string().into_bytes()),
    }
}

/// The SQL type a JSON value gets when the sink creates the table.
pub(super) fn column_type(value: &Json, is_key: bool) -> &'static str {
    match value {
        Json::Bool(_) => "BOOLEAN",
        Json::Number(number) if number.is_i64() => "BIGINT",
        Json::Number(number) if number.is_u64() => "BIGINT UNSIGNED",
        Json::Number(_) => "DOUBLE",
        Json::String(_) if is_key => "VARCHAR(255)",
        Json::Object(_) | Json::Array(_) => "JSON",
        _ if is_key => "VARCHAR(255)",
        _ => "TEXT",
    }
}

fn quote(identifier: &str) -> String {
    format!("`{identifier}`")
}

fn value_bytes(value: &Value) -> usize {
    match value {
        Value::Bytes(bytes) => bytes.len(),
        _ => 8,
    }
}

/// Groups consecutive changes of one shape into statements, in order.
pub(super) fn statements(changes: &[(usize, RowChange)], table: &TableShape, mode: MySqlMode) -> Vec<Statement> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < changes.len() {
        let mut end = start + 1;
        let mut bytes: usize = params_of(&changes[start].1).iter().map(value_bytes).sum();
        let mut params = params_of(&changes[start].1).len();
        while end < changes.len()
            && end - start < STATEMENT_ROWS_MAX
            && bytes < STATEMENT_BYTES_MAX
            && params + params_of(&changes[end].1).len() <= STATEMENT_PARAMS_MAX
            && same_shape(&changes[start].1, &changes[end].1)
        {
            bytes += params_of(&changes[end].1).iter().map(value_bytes).sum::<usize>();
            params += params_of(&changes[end].1).len();
            end += 1;
        }
        out.push(statement(&changes[start..end], table, mode));
        start = end;
    }
    out
}

fn params_of(change: &RowChange) -> &[Value] {
    match change {
        RowChange::Write { values, .. } => values,
        RowChange::Delete { key } => key,
    }
}

fn same_shape(a: &RowChange, b: &RowChange) -> bool {
    match (a, b) {
        (RowChange::Write { columns: x, .. }, RowChange::Write { columns: y, .. }) => x == y,
        (RowChange::Delete { .. }, RowChange::Delete { .. }) => true,
        _ => false,
    }
}

fn statement(group: &[(usize, RowChange)], table: &TableShape, mode: MySqlMode) -> Statement {
    let params: Vec<Value> = group.iter().flat_map(|(_, change)| params_of(change).iter().cloned()).collect();
    let sql = match &group[0].1 {
        RowChange::Write { columns, .. } => {
            let row = format!("({})", vec!["?"; columns.len()].join(","));
            let mut sql = format!(
                "INSERT INTO {} ({}) VALUES {}",
                quote(&table.name),
                columns.iter().map(|c| quote(c)).collect::<Vec<_>>().join(","),
                vec![row.as_str(); group.len()].join(",")
            );
            if mode != MySqlMode::Insert {
                let updates: Vec<String> = columns
                    .iter()
                    .filter(|c| !table.key_columns.contains(c))
                    .map(|c| format!("{0}=VALUES({0})", quote(c)))
                    .collect();
                let updates = if updates.is_empty() {
                    let key = quote(&table.key_columns[0]);
                    format!("{key}={key}")
                } else {
                    updates.join(",")
                };
                sql.push_str(" ON DUPLICATE KEY UPDATE ");
                sql.push_str(&updates);
            }
            sql
        }
        RowChange::Delete { .. } => {
            // `k IN (…)` for one key column; `(a = ? AND b = ?) OR …` for several, which every
            // server turns into index lookups (a row-constructor IN may scan and lock more).
            let condition = match table.key_columns.as_slice() {
                [one] => format!("{} IN ({})", quote(one), vec!["?"; group.len()].join(",")),
                many => {
                    let tuple = format!(
                        "({})",
                        many.iter().map(|c| format!("{} = ?", quote(c))).collect::<Vec<_>>().join(" AND ")
                    );
                    vec![tuple.as_str(); group.len()].join(" OR ")
                }
            };
            format!("DELETE FROM {} WHERE {condition}", quote(&table.name))
        }
    };
    Statement { sql, params }
}

/// `CREATE TABLE IF NOT EXISTS` from declared columns (name → SQL type).
pub(super) fn create_table_sql<'a>(
    table: &str,
    columns: impl IntoIterator<Item = (&'a str, String)>,
    key_columns: &[String],
) -> String {
    let mut parts: Vec<String> = columns
        .into_iter()
        .map(|(name, sql_type)| {
            let null = if key_columns.iter().any(|k| k == name) { " NOT NULL" } else { "" };
            format!("{} {sql_type}{null}", quote(name))
        })
        .collect();
    if !key_columns.is_empty() {
        parts.push(format!("PRIMARY KEY ({})", key_columns.iter().map(|c| quote(c)).collect::<Vec<_>>().join(",")));
    }
    format!("CREATE TABLE IF NOT EXISTS {} ({})", quote(table), parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use weir_connect::Record;

    fn record(value: &str) -> SinkRecord {
        SinkRecord {
            record: Record { topic: "t".into(), value: value.as_bytes().to_vec(), ..Record::default() },
            queue_id: 0,
            queue_offset: 0,
            message_id: String::new(),
        }
    }

    fn shape(columns: Option<&[&str]>) -> TableShape {
        TableShape {
            name: "users".into(),
            key_columns: vec!["id".into()],
            columns: columns.map(|c| c.iter().map(|s| (s.to_string(), ColumnKind::Other)).collect()),
            unknown_fields: UnknownFields::Error,
            cdc_images: false,
        }
    }

    #[test]
    fn records_become_statements() {
        let table = shape(Some(&["id", "name", "n"]));
        let inputs = [
            (MySqlMode::Upsert, r#"{"id":1,"name":"a"}"#),
            (MySqlMode::Upsert, r#"{"id":2,"name":"b"}"#),
            (MySqlMode::Upsert, r#"{"id":3,"n":7}"#),
        ];
        let changes: Vec<(usize, RowChange)> = inputs
            .iter()
            .enumerate()
            .flat_map(|(i, (mode, json))| {
                changes(&record(json), *mode, &table).unwrap().into_iter().map(move |c| (i, c))
            })
            .collect();
        let built = statements(&changes, &table, MySqlMode::Upsert);
        let sql: Vec<&str> = built.iter().map(|s| s.sql.as_str()).collect();
        assert_eq!(
            sql,
            [
                "INSERT INTO `users` (`id`,`name`) VALUES (?,?),(?,?) ON DUPLICATE KEY UPDATE `name`=VALUES(`name`)",
                "INSERT INTO `users` (`id`,`n`) VALUES (?,?) ON DUPLICATE KEY UPDATE `n`=VALUES(`n`)",
            ]
        );
        assert_eq!(built[0].params.len(), 4);
    }

    #[test]
    fn cdc_envelopes() {
        let table = shape(None);
        let cases: &[(&str, Result<usize, &str>)] = &[
            (r#"{"op":"c","after":{"id":1,"name":"a"}}"#, Ok(1)),
            (r#"{"payload":{"op":"r","after":{"id":1}}}"#, Ok(1)),
            (r#"{"op":"u","before":{"id":1},"after":{"id":1,"name":"b"}}"#, Ok(1)),
            (r#"{"op":"u","before":{"id":1},"after":{"id":2,"name":"b"}}"#, Ok(2)),
            (r#"{"op":"d","before":{"id":1,"name":"b"},"after":null}"#, Ok(1)),
            ("", Ok(0)),
            (r#"{"op":"d","before":{"name":"b"}}"#, Err("key column")),
            (r#"{"op":"x","after":{}}"#, Err("unknown change op")),
            (r#"{"after":{"id":1}}"#, Err("no `op`")),
            ("nope", Err("not JSON")),
        ];
        for (json, expected) in cases {
            match (changes(&record(json), MySqlMode::Cdc, &table), expected) {
                (Ok(got), Ok(count)) => assert_eq!(got.len(), *count, "{json}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{json}: {got}"),
                (got, want) => panic!("{json}: got {got:?}, want {want:?}"),
            }
        }
        let delete = changes(&record(r#"{"op":"d","before":{"id":5}}"#), MySqlMode::Cdc, &table).unwrap();
        let built = statements(&[(0, delete[0].clone())], &table, MySqlMode::Cdc);
        assert_eq!(built[0].sql, "DELETE FROM `users` WHERE `id` IN (?)");
    }

    #[test]
    fn values_bind_by_column_kind() {
        let bytes = |b: &[u8]| Ok(Value::Bytes(b.to_vec()));
        let cases: [(ColumnKind, bool, Json, Result<Value, &str>); 8] = [
            (ColumnKind::Json, true, json!("abc"), bytes(b"\"abc\"")),
            (ColumnKind::Json, false, json!("{\"a\":1}"), bytes(b"{\"a\":1}")),
            (ColumnKind::Json, false, json!(true), bytes(b"true")),
            (ColumnKind::Json, true, json!({"k": [1]}), bytes(b"{\"k\":[1]}")),
            (ColumnKind::Json, false, Json::Null, Ok(Value::NULL)),
            (ColumnKind::Binary, true, json!("AP9h"), bytes(b"\0\xffa")),
            (ColumnKind::Binary, true, json!("not base64!"), Err("not base64")),
            (ColumnKind::Binary, false, json!("AP9h"), bytes(b"AP9h")),
        ];
        for (kind, base64, value, expected) in cases {
            match (bind_to(&value, kind, base64), expected) {
                (Ok(bound), Ok(expected)) => assert_eq!(bound, expected, "{value}"),
                (Err(error), Err(expected)) => assert!(error.contains(expected), "{error}"),
                (other, expected) => panic!("{value}: {other:?}, expected {expected:?}"),
            }
        }
        assert_eq!(base64_decode("AP9hYg==").unwrap(), b"\0\xffab");
        assert_eq!(base64_decode("").unwrap(), b"");
    }

    #[test]
    fn unknown_fields_and_bad_names() {
        let mut table = shape(Some(&["id"]));
        let error = changes(&record(r#"{"id":1,"extra":2}"#), MySqlMode::Upsert, &table).unwrap_err();
        assert!(error.contains("\"extra\" is not a column"), "{error}");
        table.unknown_fields = UnknownFields::Ignore;
        assert_eq!(changes(&record(r#"{"id":1,"extra":2}"#), MySqlMode::Upsert, &table).unwrap().len(), 1);
        let error = changes(&record(r#"{"id":1,"a`b":2}"#), MySqlMode::Insert, &shape(None)).unwrap_err();
        assert!(error.contains("backquote"), "{error}");
        assert!(changes(&record("[1]"), MySqlMode::Insert, &shape(None)).unwrap_err().contains("not a JSON object"));
    }
}
