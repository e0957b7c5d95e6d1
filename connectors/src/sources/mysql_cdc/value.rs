//! MySQL values → JSON, faithfully and the same way for snapshot rows (text protocol) and
//! binlog rows: integers as numbers (unsigned ones corrected from the binlog's signed form),
//! DECIMAL as a string (no precision lost), FLOAT/DOUBLE as numbers (a FLOAT with the fewest
//! digits that read back as the same 32-bit float), DATE as `YYYY-MM-DD`,
//! DATETIME and TIMESTAMP as `YYYY-MM-DDTHH:MM:SS[.ffffff]` with the column's fractional
//! digits (TIMESTAMP in UTC), TIME as `[-]HH:MM:SS[.ffffff]`, YEAR as a number, BIT(1) as a
//! boolean and wider BITs as an unsigned number, ENUM as its label, SET as its labels joined
//! by `,`, JSON as the JSON value, CHAR/VARCHAR/TEXT as strings, BINARY/VARBINARY/BLOB (and
//! anything that is not UTF-8 text) as base64, NULL as null.

use mysql_async::Value;
use serde_json::Value as Json;

/// What the decoder needs to know of a column (from `information_schema.COLUMNS`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// `DATA_TYPE`, lowercase: `int`, `varchar`, `datetime`, `enum`, ….
    pub data_type: String,
    pub unsigned: bool,
    /// Fractional seconds digits of temporal columns.
    pub fraction_digits: u32,
    /// ENUM or SET labels, in declaration order.
    pub labels: Vec<String>,
    /// BIT width.
    pub bits: u32,
    pub primary_key: bool,
    /// Binary collation or binary type: bytes, not text.
    pub binary: bool,
}

impl Column {
    /// Parses `COLUMN_TYPE` (`int(10) unsigned`, `enum('a','b')`, `bit(3)`, `datetime(6)`).
    pub fn from_information_schema(
        name: &str,
        data_type: &str,
        column_type: &str,
        column_key: &str,
        charset: Option<&str>,
    ) -> Column {
        let data_type = data_type.to_ascii_lowercase();
        let inside =
            column_type.find('(').and_then(|open| Some(&column_type[open + 1..open + column_type[open..].find(')')?]));
        let number = inside.and_then(|text| text.trim().parse::<u32>().ok()).unwrap_or(0);
        let labels = match data_type.as_str() {
            "enum" | "set" => parse_labels(column_type),
            _ => Vec::new(),
        };
        let binary =
            matches!(data_type.as_str(), "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob")
                || charset == Some("binary");
        Column {
            name: name.to_string(),
            unsigned: column_type.to_ascii_lowercase().contains("unsigned"),
            fraction_digits: if matches!(data_type.as_str(), "datetime" | "timestamp" | "time") { number } else { 0 },
            bits: if data_type == "bit" { number.max(1) } else { 0 },
            labels,
            primary_key: column_key == "PRI",
            binary,
            data_type,
        }
    }
}

/// `enum('a','b''c')` → [a, b'c].
fn parse_labels(column_type: &str) -> Vec<String> {
    let Some(open) = column_type.find('(') else { return Vec::new() };
    let mut labels = Vec::new();
    let mut chars = column_type[open + 1..].chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\'' {
            continue;
        }
        let mut label = String::new();
        while let Some(c) = chars.next() {
            if c == '\'' {
                if chars.peek() == Some(&'\'') {
                    chars.next();
                    label.push('\'');
                    continue;
                }
                break;
            }
            if c == '\\'
                && let Some(escaped) = chars.next()
            {
                label.push(escaped);
                continue;
            }
            label.push(c);
        }
        labels.push(label);
    }
    labels
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            out.push(if i <= chunk.len() { ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

/// `.ffffff` cut to a column's fractional digits (nothing for none).
struct Fraction {
    micros: u32,
    digits: u32,
}

impl std::fmt::Display for Fraction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digits = self.digits.min(6);
        if digits == 0 {
            return Ok(());
        }
        write!(f, ".{:0width$}", self.micros / 10u32.pow(6 - digits), width = digits as usize)
    }
}

/// The bit width of an integer type, for undoing the binlog's signed encoding.
fn integer_bits(data_type: &str) -> Option<u32> {
    Some(match data_type {
        "tinyint" => 8,
        "smallint" => 16,
        "mediumint" => 24,
        "int" | "integer" => 32,
        "bigint" => 64,
        _ => return None,
    })
}

/// Where a value was read: the two encode SET and TIMESTAMP differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A snapshot query (text protocol): SET as labels, TIMESTAMP as UTC text.
    Query,
    /// A binlog row: SET as a bitmask, TIMESTAMP as epoch seconds.
    Binlog,
}

/// A value of `column` as JSON (`write_json` parsed back).
pub fn to_json(column: &Column, value: &Value, origin: Origin) -> Json {
    let mut text = Vec::new();
    write_json(column, value, origin, &mut text);
    serde_json::from_slice(&text).expect("write_json writes valid JSON")
}

/// Writes a value of `column` as JSON text to `out`, without building a JSON tree (this runs
/// for every column of every captured row).
pub fn write_json(column: &Column, value: &Value, origin: Origin, out: &mut Vec<u8>) {
    match (column.data_type.as_str(), value) {
        (_, Value::NULL) => out.extend_from_slice(b"null"),
        ("enum", Value::Int(index)) => {
            let label = usize::try_from(*index).ok().and_then(|i| i.checked_sub(1)).and_then(|i| column.labels.get(i));
            write_str(out, label.map_or("", String::as_str));
        }
        ("set", Value::Bytes(bytes)) if origin == Origin::Binlog => {
            // A little-endian bitmask over the labels.
            let mask = bytes.iter().rev().fold(0u64, |mask, b| (mask << 8) | u64::from(*b));
            let chosen: Vec<&str> = column
                .labels
                .iter()
                .enumerate()
                .filter(|(i, _)| *i < 64 && mask & (1 << i) != 0)
                .map(|(_, l)| l.as_str())
                .collect();
            write_str(out, &chosen.join(","));
        }
        ("bit", Value::Bytes(bytes)) => write_bits(column, bytes, out),
        ("bit", Value::Int(n)) => write_bits(column, &n.to_be_bytes(), out),
        ("bit", Value::UInt(n)) => write_bits(column, &n.to_be_bytes(), out),
        (data_type, Value::Int(n)) => match integer_bits(data_type) {
            Some(bits) if column.unsigned && *n < 0 => {
                let unsigned = if bits == 64 { *n as u64 } else { (*n as u64) & ((1u64 << bits) - 1) };
                write_serialized(out, &unsigned);
            }
            _ => write_serialized(out, n),
        },
        (_, Value::UInt(n)) => write_serialized(out, n),
        (_, Value::Float(f)) => write_serialized(out, f),
        (_, Value::Double(f)) => write_serialized(out, f),
        ("date", Value::Date(y, m, d, ..)) => write_text(out, format_args!("{y:04}-{m:02}-{d:02}")),
        (_, Value::Date(y, m, d, h, mi, s, us)) => {
            let fraction = Fraction { micros: *us, digits: column.fraction_digits };
            write_text(out, format_args!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}{fraction}"));
        }
        (_, Value::Time(negative, days, h, m, s, us)) => {
            let hours = u64::from(*days) * 24 + u64::from(*h);
            let sign = if *negative { "-" } else { "" };
            let fraction = Fraction { micros: *us, digits: column.fraction_digits };
            write_text(out, format_args!("{sign}{hours:02}:{m:02}:{s:02}{fraction}"));
        }
        (data_type, Value::Bytes(bytes)) => write_bytes(column, data_type, bytes, origin, out),
    }
}

fn write_bytes(column: &Column, data_type: &str, bytes: &[u8], origin: Origin, out: &mut Vec<u8>) {
    if column.binary {
        return write_str(out, &base64(bytes));
    }
    // Text columns: UTF-8 as it is (checked once), anything else as base64.
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(_) if data_type == "bit" => return write_bits(column, bytes, out),
        Err(_) => return write_str(out, &base64(bytes)),
    };
    match data_type {
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "year" | "float" | "double" | "real" => {
            match serde_json::from_str::<serde_json::Number>(text) {
                Ok(number) => write_serialized(out, &number),
                Err(_) => write_str(out, text),
            }
        }
        "json" => match serde_json::from_str::<Json>(text) {
            Ok(json) => write_serialized(out, &json),
            Err(_) => write_str(out, text),
        },
        "timestamp" if origin == Origin::Binlog => {
            // The binlog's `seconds[.micros]` since the epoch, in UTC.
            let (seconds, micros) = text.split_once('.').unwrap_or((text, "0"));
            let seconds: i64 = seconds.parse().unwrap_or(0);
            let micros: u32 = format!("{micros:0<6}")[..6].parse().unwrap_or(0);
            match chrono::DateTime::from_timestamp(seconds, micros * 1000) {
                Some(time) => {
                    let fraction = Fraction { micros, digits: column.fraction_digits };
                    write_text(out, format_args!("{}{fraction}", time.format("%Y-%m-%dT%H:%M:%S")));
                }
                None => write_str(out, text),
            }
        }
        "datetime" | "timestamp" => write_str(out, &text.replacen(' ', "T", 1)),
        "bit" => write_bits(column, bytes, out),
        _ => write_str(out, text),
    }
}

/// BIT(1) as a boolean, wider BITs as an unsigned number (big-endian bytes).
fn write_bits(column: &Column, bytes: &[u8], out: &mut Vec<u8>) {
    let number = bytes.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b));
    if column.bits == 1 { write_serialized(out, &(number != 0)) } else { write_serialized(out, &number) }
}

/// A JSON string, escaped.
pub fn write_str(out: &mut Vec<u8>, text: &str) {
    write_serialized(out, text);
}

/// Formatted text as a JSON string (formats that need no escaping: digits and punctuation).
fn write_text(out: &mut Vec<u8>, text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    out.push(b'"');
    out.write_fmt(text).expect("writing to a Vec cannot fail");
    out.push(b'"');
}

/// A number, boolean, string or JSON value, serialised.
pub fn write_serialized<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(&mut *out, value).expect("serialising to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn column(data_type: &str, column_type: &str) -> Column {
        Column::from_information_schema("c", data_type, column_type, "", None)
    }

    #[test]
    fn values_become_json_faithfully() {
        let cases: Vec<(Column, Origin, Value, Json)> = vec![
            (column("tinyint", "tinyint(3) unsigned"), Origin::Binlog, Value::Int(-1), json!(255)),
            (column("int", "int(10) unsigned"), Origin::Binlog, Value::Int(-2), json!(4_294_967_294u64)),
            (column("bigint", "bigint(20) unsigned"), Origin::Binlog, Value::Int(-1), json!(u64::MAX)),
            (column("int", "int(11)"), Origin::Query, Value::Bytes(b"-7".to_vec()), json!(-7)),
            (column("decimal", "decimal(10,2)"), Origin::Query, Value::Bytes(b"12.30".to_vec()), json!("12.30")),
            (column("enum", "enum('a','b''c')"), Origin::Binlog, Value::Int(2), json!("b'c")),
            (column("enum", "enum('a','b')"), Origin::Query, Value::Bytes(b"a".to_vec()), json!("a")),
            (column("set", "set('x','y','z')"), Origin::Binlog, Value::Bytes(vec![0b101]), json!("x,z")),
            (column("set", "set('x','y','z')"), Origin::Query, Value::Bytes(b"x,z".to_vec()), json!("x,z")),
            (column("bit", "bit(1)"), Origin::Query, Value::Bytes(vec![1]), json!(true)),
            (column("bit", "bit(12)"), Origin::Query, Value::Bytes(vec![0x0a, 0xbc]), json!(0xabc)),
            (
                column("datetime", "datetime(3)"),
                Origin::Query,
                Value::Date(2026, 1, 2, 3, 4, 5, 678_000),
                json!("2026-01-02T03:04:05.678"),
            ),
            (
                column("datetime", "datetime(3)"),
                Origin::Query,
                Value::Bytes(b"2026-01-02 03:04:05.678".to_vec()),
                json!("2026-01-02T03:04:05.678"),
            ),
            (
                column("timestamp", "timestamp(6)"),
                Origin::Binlog,
                Value::Bytes(b"1767323045.000123".to_vec()),
                json!("2026-01-02T03:04:05.000123"),
            ),
            (column("date", "date"), Origin::Query, Value::Date(2026, 1, 2, 0, 0, 0, 0), json!("2026-01-02")),
            (column("time", "time(2)"), Origin::Query, Value::Time(true, 1, 2, 3, 4, 500_000), json!("-26:03:04.50")),
            (column("year", "year(4)"), Origin::Query, Value::Bytes(b"2026".to_vec()), json!(2026)),
            (column("json", "json"), Origin::Query, Value::Bytes(br#"{"a": [1, 2]}"#.to_vec()), json!({"a": [1, 2]})),
            (column("longtext", "longtext"), Origin::Query, Value::Bytes("héllo".as_bytes().to_vec()), json!("héllo")),
            (column("blob", "blob"), Origin::Query, Value::Bytes(vec![0, 255, 1]), json!("AP8B")),
            (column("double", "double"), Origin::Query, Value::Double(1.5), json!(1.5)),
            (column("varchar", "varchar(5)"), Origin::Query, Value::NULL, Json::Null),
        ];
        for (column, origin, value, expected) in cases {
            assert_eq!(to_json(&column, &value, origin), expected, "{column:?} {value:?}");
        }
    }
}
