//! A JSON → Arrow decoder for the common case of a batch: every body one flat JSON object and
//! every declared column a scalar type (integers, floats, text, booleans, millisecond
//! timestamps). It reads each body once, straight into column builders, converting only the
//! declared fields and skipping (while checking the syntax of) the rest.
//!
//! **Invariant:** for any batch it accepts, the result is the batch arrow-json's decoder makes
//! of it. Whatever it is not sure to read exactly as arrow-json does — invalid UTF-8 or JSON,
//! a number in a form arrow-json would convert (`1.0` for an integer column), a string where a
//! number is declared (arrow-json parses it), a repeated field, a key with an escape, nesting
//! past `SKIP_DEPTH_MAX`, a lone surrogate escape or a pair arrow-json joins wrongly — makes it
//! decline the whole batch (`None`), and
//! the caller decodes it with arrow-json, which also finds and explains the bad rows.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Float32Builder, Float64Builder, Int8Builder, Int16Builder, Int32Builder, Int64Builder,
    StringBuilder, TimestampMillisecondBuilder, UInt8Builder, UInt16Builder, UInt32Builder, UInt64Builder,
};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;

/// Deepest nesting of an undeclared field's value this decoder skips (deeper: declined).
const SKIP_DEPTH_MAX: usize = 32;
/// Most declared columns (a row's seen columns are one `u64` bit mask).
const COLUMNS_MAX: usize = 64;

/// Decodes `bodies`, one row each, into a batch of `schema`, or declines (see the module doc).
pub(crate) fn decode(schema: &SchemaRef, bodies: &[&[u8]]) -> Option<RecordBatch> {
    if schema.fields().len() > COLUMNS_MAX {
        return None;
    }
    let mut columns = schema
        .fields()
        .iter()
        .map(|field| Column::new(field.data_type(), bodies.len()))
        .collect::<Option<Vec<Column>>>()?;
    let names: Vec<&[u8]> = schema.fields().iter().map(|field| field.name().as_bytes()).collect();
    let nullable: u64 = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, field)| field.is_nullable())
        .fold(0, |mask, (index, _)| mask | 1 << index);
    let all: u64 = if names.len() == 64 { u64::MAX } else { (1u64 << names.len()) - 1 };
    let mut text = String::new();
    for body in bodies {
        // arrow-json refuses a body that is not UTF-8 anywhere, skipped fields included.
        let body_text = if body.is_ascii() {
            // SAFETY: ASCII is UTF-8.
            unsafe { std::str::from_utf8_unchecked(body) }
        } else {
            std::str::from_utf8(body).ok()?
        };
        let mut reader = Reader { bytes: body, text: body_text, at: 0 };
        let seen = reader.object(&names, &mut columns, &mut text)?;
        reader.whitespace();
        if reader.at != body.len() {
            return None; // something after the object
        }
        let missing = all & !seen;
        if missing & !nullable != 0 {
            return None;
        }
        for (index, column) in columns.iter_mut().enumerate() {
            if missing & (1 << index) != 0 {
                column.append_null();
            }
        }
    }
    let arrays: Vec<ArrayRef> = columns.iter_mut().map(Column::finish).collect();
    RecordBatch::try_new(schema.clone(), arrays).ok()
}

/// One declared column being built.
enum Column {
    Int8(Int8Builder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    UInt8(UInt8Builder),
    UInt16(UInt16Builder),
    UInt32(UInt32Builder),
    UInt64(UInt64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Utf8(StringBuilder),
    Boolean(BooleanBuilder),
    TimestampMs(TimestampMillisecondBuilder),
}

impl Column {
    /// A builder for `data_type`, or `None` for a type this decoder leaves to arrow-json.
    fn new(data_type: &DataType, rows: usize) -> Option<Column> {
        Some(match data_type {
            DataType::Int8 => Column::Int8(Int8Builder::with_capacity(rows)),
            DataType::Int16 => Column::Int16(Int16Builder::with_capacity(rows)),
            DataType::Int32 => Column::Int32(Int32Builder::with_capacity(rows)),
            DataType::Int64 => Column::Int64(Int64Builder::with_capacity(rows)),
            DataType::UInt8 => Column::UInt8(UInt8Builder::with_capacity(rows)),
            DataType::UInt16 => Column::UInt16(UInt16Builder::with_capacity(rows)),
            DataType::UInt32 => Column::UInt32(UInt32Builder::with_capacity(rows)),
            DataType::UInt64 => Column::UInt64(UInt64Builder::with_capacity(rows)),
            DataType::Float32 => Column::Float32(Float32Builder::with_capacity(rows)),
            DataType::Float64 => Column::Float64(Float64Builder::with_capacity(rows)),
            DataType::Utf8 => Column::Utf8(StringBuilder::with_capacity(rows, rows * 16)),
            DataType::Boolean => Column::Boolean(BooleanBuilder::with_capacity(rows)),
            DataType::Timestamp(TimeUnit::Millisecond, None) => {
                Column::TimestampMs(TimestampMillisecondBuilder::with_capacity(rows))
            }
            _ => return None,
        })
    }

    fn append_null(&mut self) {
        match self {
            Column::Int8(b) => b.append_null(),
            Column::Int16(b) => b.append_null(),
            Column::Int32(b) => b.append_null(),
            Column::Int64(b) => b.append_null(),
            Column::UInt8(b) => b.append_null(),
            Column::UInt16(b) => b.append_null(),
            Column::UInt32(b) => b.append_null(),
            Column::UInt64(b) => b.append_null(),
            Column::Float32(b) => b.append_null(),
            Column::Float64(b) => b.append_null(),
            Column::Utf8(b) => b.append_null(),
            Column::Boolean(b) => b.append_null(),
            Column::TimestampMs(b) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Column::Int8(b) => Arc::new(b.finish()),
            Column::Int16(b) => Arc::new(b.finish()),
            Column::Int32(b) => Arc::new(b.finish()),
            Column::Int64(b) => Arc::new(b.finish()),
            Column::UInt8(b) => Arc::new(b.finish()),
            Column::UInt16(b) => Arc::new(b.finish()),
            Column::UInt32(b) => Arc::new(b.finish()),
            Column::UInt64(b) => Arc::new(b.finish()),
            Column::Float32(b) => Arc::new(b.finish()),
            Column::Float64(b) => Arc::new(b.finish()),
            Column::Utf8(b) => Arc::new(b.finish()),
            Column::Boolean(b) => Arc::new(b.finish()),
            Column::TimestampMs(b) => Arc::new(b.finish()),
        }
    }
}

/// A position in one body. Every method returns `None` to decline the batch.
struct Reader<'a> {
    bytes: &'a [u8],
    /// The same bytes as text (the body is checked to be UTF-8 first); slices between ASCII
    /// delimiters are taken from it without checking again.
    text: &'a str,
    at: usize,
}

impl<'a> Reader<'a> {
    fn whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.bytes[self.at..].starts_with(word).then(|| self.at += word.len())
    }

    /// One object, its declared fields appended to `columns`; returns which were seen.
    fn object(&mut self, names: &[&[u8]], columns: &mut [Column], text: &mut String) -> Option<u64> {
        self.whitespace();
        self.expect(b'{')?;
        self.whitespace();
        let mut seen = 0u64;
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(seen);
        }
        loop {
            self.whitespace();
            let key = self.plain_string()?;
            self.whitespace();
            self.expect(b':')?;
            self.whitespace();
            match names.iter().position(|name| *name == key) {
                Some(index) => {
                    let bit = 1u64 << index;
                    if seen & bit != 0 {
                        return None; // arrow-json keeps the last; rare enough to leave to it
                    }
                    seen |= bit;
                    self.value_into(&mut columns[index], text)?;
                }
                None => self.skip_value(0)?,
            }
            if self.closed(b'}')? {
                return Some(seen);
            }
        }
    }

    /// A string without escapes (a key), as its bytes.
    fn plain_string(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let start = self.at;
        loop {
            match *self.bytes.get(self.at)? {
                b'"' => break,
                b'\\' => return None,
                byte if byte < 0x20 => return None,
                _ => self.at += 1,
            }
        }
        self.at += 1;
        Some(&self.bytes[start..self.at - 1])
    }

    /// A string value with its escapes resolved, borrowed when it has none.
    fn string<'t>(&mut self, text: &'t mut String) -> Option<&'t str>
    where
        'a: 't,
    {
        self.expect(b'"')?;
        let start = self.at;
        if self.plain_run()? == b'"' {
            self.at += 1;
            return self.text.get(start..self.at - 1);
        }
        text.clear();
        text.push_str(self.text.get(start..self.at)?);
        loop {
            match *self.bytes.get(self.at)? {
                b'"' => {
                    self.at += 1;
                    return Some(text.as_str());
                }
                b'\\' => {
                    self.at += 1;
                    let escaped = self.escape()?;
                    text.push(escaped);
                }
                byte if byte < 0x20 => return None,
                _ => {
                    let run = self.at;
                    while let Some(&byte) = self.bytes.get(self.at)
                        && byte != b'"'
                        && byte != b'\\'
                        && byte >= 0x20
                    {
                        self.at += 1;
                    }
                    text.push_str(self.text.get(run..self.at)?);
                }
            }
        }
    }

    /// The character an escape (after its backslash) stands for.
    fn escape(&mut self) -> Option<char> {
        let byte = self.peek()?;
        self.at += 1;
        Some(match byte {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let high = self.hex4()?;
                match high {
                    0xD800..=0xDBFF => {
                        self.literal(b"\\u")?;
                        let low = self.hex4()?;
                        // arrow-json 59 joins a pair with `|` where it needs `+`, so for a high
                        // half with bit 6 set above 0xD800 (planes 2, 4, …, 16) it makes another
                        // character: declined, so a message reads the same in any batch.
                        if !(0xDC00..=0xDFFF).contains(&low) || (high - 0xD800) & 0x40 != 0 {
                            return None;
                        }
                        char::from_u32(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))?
                    }
                    0xDC00..=0xDFFF => return None,
                    code => char::from_u32(code)?,
                }
            }
            _ => return None,
        })
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.bytes.get(self.at..self.at + 4)?;
        let mut value = 0u32;
        for &digit in digits {
            value = value * 16 + (digit as char).to_digit(16)?;
        }
        self.at += 4;
        Some(value)
    }

    /// A JSON number's text, checked against the JSON grammar; `integral` when it has no
    /// fraction or exponent.
    fn number(&mut self) -> Option<(&'a str, bool)> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        let mut integral = true;
        if self.peek() == Some(b'.') {
            self.at += 1;
            integral = false;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            integral = false;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.some_digits()?;
        }
        Some((self.text.get(start..self.at)?, integral))
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }

    /// An integer in a form arrow-json reads the same way (no fraction or exponent).
    fn integer<T: std::str::FromStr>(&mut self) -> Option<T> {
        let (text, integral) = self.number()?;
        if !integral {
            return None;
        }
        text.parse().ok()
    }

    /// A declared field's value, appended to its column.
    fn value_into(&mut self, column: &mut Column, text: &mut String) -> Option<()> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            column.append_null();
            return Some(());
        }
        match column {
            Column::Int8(b) => b.append_value(self.integer()?),
            Column::Int16(b) => b.append_value(self.integer()?),
            Column::Int32(b) => b.append_value(self.integer()?),
            Column::Int64(b) => b.append_value(self.integer()?),
            Column::UInt8(b) => b.append_value(self.integer()?),
            Column::UInt16(b) => b.append_value(self.integer()?),
            Column::UInt32(b) => b.append_value(self.integer()?),
            Column::UInt64(b) => b.append_value(self.integer()?),
            Column::TimestampMs(b) => b.append_value(self.integer()?),
            Column::Float32(b) => b.append_value(self.number()?.0.parse().ok().filter(|v: &f32| v.is_finite())?),
            Column::Float64(b) => b.append_value(self.number()?.0.parse().ok().filter(|v: &f64| v.is_finite())?),
            Column::Utf8(b) => {
                if self.peek()? != b'"' {
                    return None; // arrow-json refuses or coerces; leave it to it
                }
                b.append_value(self.string(text)?)
            }
            Column::Boolean(b) => match self.peek()? {
                b't' => {
                    self.literal(b"true")?;
                    b.append_value(true)
                }
                b'f' => {
                    self.literal(b"false")?;
                    b.append_value(false)
                }
                _ => return None,
            },
        }
        Some(())
    }

    /// Moves to the next `"` or `\\` inside a string and returns it; `None` at the end of the
    /// input or at a control character before it (JSON strings hold none).
    fn plain_run(&mut self) -> Option<u8> {
        let rest = &self.bytes[self.at..];
        let stop = memchr::memchr2(b'"', b'\\', rest)?;
        if rest[..stop].iter().any(|byte| *byte < 0x20) {
            return None;
        }
        self.at += stop;
        Some(rest[stop])
    }

    /// Passes over an undeclared field's value, checking its syntax.
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        if depth > SKIP_DEPTH_MAX {
            return None;
        }
        match self.peek()? {
            b'"' => {
                self.at += 1;
                while self.plain_run()? == b'\\' {
                    self.at += 1;
                    self.escape()?;
                }
                self.at += 1;
            }
            b'-' | b'0'..=b'9' => {
                self.number()?;
            }
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'n' => self.literal(b"null")?,
            open @ (b'[' | b'{') => {
                let close = if open == b'[' { b']' } else { b'}' };
                self.at += 1;
                self.whitespace();
                if self.peek()? == close {
                    self.at += 1;
                    return Some(());
                }
                loop {
                    self.whitespace();
                    if open == b'{' {
                        self.expect(b'"')?;
                        self.at -= 1;
                        self.skip_value(depth + 1)?; // the key, a string
                        self.whitespace();
                        self.expect(b':')?;
                        self.whitespace();
                    }
                    self.skip_value(depth + 1)?;
                    if self.closed(close)? {
                        return Some(());
                    }
                }
            }
            _ => return None,
        }
        Some(())
    }

    /// After a member: `,` (more follow, `false`) or `close` (`true`).
    fn closed(&mut self, close: u8) -> Option<bool> {
        self.whitespace();
        let byte = self.peek()?;
        self.at += 1;
        match byte {
            b',' => Some(false),
            byte if byte == close => Some(true),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
    use proptest::prelude::*;

    use super::decode;

    fn schema() -> SchemaRef {
        let field = |name: &str, data_type| Field::new(name, data_type, true);
        Arc::new(Schema::new(vec![
            field("a", DataType::Int64),
            field("b", DataType::Utf8),
            field("c", DataType::Float64),
            field("d", DataType::Boolean),
            field("e", DataType::Timestamp(TimeUnit::Millisecond, None)),
            field("f", DataType::Int8),
            field("g", DataType::UInt32),
            field("h", DataType::Float32),
        ]))
    }

    /// arrow-json's batch of `bodies`, or its error.
    fn arrow_json(
        schema: &SchemaRef,
        bodies: &[&[u8]],
    ) -> Result<datafusion::arrow::record_batch::RecordBatch, String> {
        super::super::decode_all(schema, bodies).map_err(|error| error.to_string())
    }

    /// Values in the forms that matter: every JSON kind, numbers arrow-json converts,
    /// escapes, invalid text.
    fn value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            (-300i64..300).prop_map(|n| n.to_string()),
            any::<f64>().prop_filter("finite", |v| v.is_finite()).prop_map(|v| format!("{v:e}")),
            any::<f32>().prop_map(|v| v.to_string()),
            prop::sample::select(vec![
                "0",
                "-0",
                "1.0",
                "1e3",
                "1E-2",
                "-12.5e+1",
                "01",
                "1.",
                "-",
                "1e400",
                "+1",
                ".5",
                "\"12\"",
                "\"a\"",
                "\"\\ud840\\udc00\"",
                "\"\\udb40\\udc67\"",
                "\"\"",
                "\"\\u00e9t\\u00E9\"",
                "\"\\ud83d\\ude00\"",
                "\"\\ud83d\"",
                "\"\\ude00x\"",
                "\"\\n\\t\\\"q\\\\\"",
                "\"é ü\"",
                "\"\\/x\"",
                "\"\\x\"",
                "\"tab\there\"",
                "\"\\u12\"",
                "tru",
                "nul",
                "\"2024-01-01T00:00:00\"",
                "\"unterminated",
            ])
            .prop_map(str::to_string),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(|items| format!("[{}]", items.join(","))),
                prop::collection::vec(("[a-c]{1,2}", inner), 0..4).prop_map(|fields| {
                    let fields: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                    format!("{{{}}}", fields.join(","))
                }),
            ]
        })
    }

    /// A body: an object of declared and undeclared fields (repeats possible), with spacing,
    /// sometimes damaged.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        let key = prop::sample::select(vec!["a", "b", "c", "d", "e", "f", "g", "h", "x", "y\\u0041", "é"]);
        let space = prop::sample::select(vec!["", " ", "\n", "\t ", "\r\n"]);
        (prop::collection::vec((key, value(), space.clone()), 0..7), space, 0u8..16, any::<prop::sample::Index>())
            .prop_map(|(fields, space, damage, at)| {
                let fields: Vec<String> = fields.iter().map(|(k, v, s)| format!("{s}\"{k}\"{s}:{s}{v}{s}")).collect();
                let mut body = format!("{space}{{{}}}{space}", fields.join(",")).into_bytes();
                match damage {
                    0 => body.truncate(at.index(body.len() + 1)),
                    1 => body.insert(at.index(body.len() + 1), b'}'),
                    2 => body.insert(at.index(body.len() + 1), 0xff),
                    3 => body.extend_from_slice(b" {}"),
                    _ => {}
                }
                body
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        #[test]
        fn accepted_batches_are_what_arrow_json_makes(bodies in prop::collection::vec(body(), 1..4)) {
            let schema = schema();
            let bodies: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
            if let Some(batch) = decode(&schema, &bodies) {
                prop_assert_eq!(Ok(batch), arrow_json(&schema, &bodies));
            }
        }
    }

    /// A well-formed body of declared fields in their own types, in any order, some missing.
    fn clean_body() -> impl Strategy<Value = Vec<u8>> {
        let field = prop_oneof![
            any::<i64>().prop_map(|n| format!("\"a\":{n}")),
            any::<String>().prop_map(|text| format!("\"b\":{}", serde_json::to_string(&text).unwrap())),
            any::<f64>().prop_filter("finite", |v| v.is_finite()).prop_map(|v| format!("\"c\":{v}")),
            any::<bool>().prop_map(|flag| format!("\"d\":{flag}")),
            any::<i64>().prop_map(|ms| format!("\"e\":{ms}")),
            any::<i8>().prop_map(|n| format!("\"f\":{n}")),
            any::<u32>().prop_map(|n| format!("\"g\":{n}")),
            any::<f32>().prop_map(|v| format!("\"h\":{v:e}")),
            Just("\"b\":null".to_string()),
            Just("\"b\":\"\\ud83d\\ude00 \\u00e9\\n\"".to_string()),
            Just("\"x\":{\"nested\":[1,\"two\",null]}".to_string()),
        ];
        prop::collection::btree_map(0..9usize, field, 0..9).prop_map(|fields| {
            // One value per declared name: the map's keys only order them.
            let mut names = std::collections::HashSet::new();
            let fields: Vec<String> =
                fields.into_values().filter(|field| names.insert(field[..4].to_string())).collect();
            format!("{{{}}}", fields.join(",")).into_bytes()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        #[test]
        fn well_formed_batches_are_decoded_here(bodies in prop::collection::vec(clean_body(), 1..8)) {
            let schema = schema();
            let bodies: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
            let batch = decode(&schema, &bodies);
            prop_assert!(batch.is_some(), "declined {:?}", bodies.iter().map(|b| String::from_utf8_lossy(b)).collect::<Vec<_>>());
            prop_assert_eq!(Ok(batch.unwrap()), arrow_json(&schema, &bodies));
        }
    }

    #[test]
    fn plain_rows_are_decoded_here() {
        let schema = schema();
        let bodies: Vec<&[u8]> = vec![
            br#"{"a":1,"b":"x\"y","c":2.5,"d":true,"e":1700000000000,"f":-3,"g":7,"h":0.25,"z":[1,{"k":null}]}"#,
            br#" { "b" : "\u00e9" , "a" : null } "#,
            br#"{}"#,
        ];
        let batch = decode(&schema, &bodies).expect("plain rows decode here");
        assert_eq!(Ok(batch), arrow_json(&schema, &bodies));
    }

    #[test]
    fn doubtful_rows_are_left_to_arrow_json() {
        let schema = schema();
        for body in [
            &br#"{"a":1.0}"#[..],
            br#"{"a":"12"}"#,
            br#"{"a":1,"a":2}"#,
            br#"{"b":"\ud800"}"#,
            br#"{"b":"\ud840\udc00"}"#,
            br#"{"c":1e400}"#,
            br#"{"a":1} x"#,
            b"[1]",
            b"",
        ] {
            assert_eq!(decode(&schema, &[body]), None, "{}", String::from_utf8_lossy(body));
        }
        // A declared field that may not be null, missing or null.
        let strict = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        for body in [&br#"{}"#[..], br#"{"a":null}"#] {
            assert_eq!(decode(&strict, &[body]), None, "{}", String::from_utf8_lossy(body));
        }
    }
}
