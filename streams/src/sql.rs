//! Job text → statements: `CREATE TABLE` over a topic (columns, watermark, `WITH` options)
//! and `INSERT INTO <topic> <query>`, with window table functions (`TUMBLE`, `HOP`,
//! `SESSION`) in the
//! query's `FROM` replaced by generated relation names and described by a `WindowSpec`.
//!
//! DataFusion parses and plans the queries; this module only handles what DataFusion does not
//! know (watermarks, topic options, windows over unbounded input). Errors name the statement
//! (1-based) and the offending text.

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::error::{Result, StreamsError};

/// A source table: a topic read as rows of a declared schema.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceTable {
    pub name: String,
    pub schema: SchemaRef,
    pub topic: String,
    /// `*` or `TagA || TagB`.
    pub tag_expression: String,
    /// The event-time column (a `TIMESTAMP`), from the `WATERMARK FOR` clause.
    pub event_time: Option<String>,
    /// How far the watermark trails the largest event time seen.
    pub watermark_delay_ms: i64,
    /// `WITH (lookup_key = 'col')`: a lookup table holding the latest row per key, for
    /// enriching other tables' rows with a JOIN (its own rows drive no query).
    pub lookup_key: Option<String>,
}

/// Which window table function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowKind {
    Tumble,
    Hop,
    /// `SESSION(t, ts, gap)`: `size_ms` and `slide_ms` hold the gap.
    Session,
}

/// A window table function found in a query, e.g. `TUMBLE(access_logs, ts, INTERVAL '1' MINUTE)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowSpec {
    pub kind: WindowKind,
    /// The relation name that replaced the call in the query text.
    pub relation: String,
    pub table: String,
    pub time_column: String,
    pub size_ms: i64,
    /// Equal to `size_ms` for `TUMBLE`.
    pub slide_ms: i64,
}

/// `INSERT INTO <topic> <query>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InsertStatement {
    pub topic: String,
    /// The query with window calls replaced by relation names.
    pub query: String,
    pub windows: Vec<WindowSpec>,
}

/// A parsed job.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobSql {
    pub tables: Vec<SourceTable>,
    /// Tables declared `WITH (connector = 'blackhole')`: an `INSERT INTO` one computes its
    /// results, counts them and keeps nothing (Flink's blackhole connector).
    pub blackholes: Vec<String>,
    pub inserts: Vec<InsertStatement>,
}

impl JobSql {
    /// Whether `name` is a blackhole table (table names compare case-insensitively).
    pub fn is_blackhole(&self, name: &str) -> bool {
        self.blackholes.iter().any(|b| b.eq_ignore_ascii_case(name))
    }
}

/// What a `CREATE TABLE` declares.
enum CreatedTable {
    Source(SourceTable),
    Blackhole(String),
}

/// Prefix of the relation names that replace window calls.
pub const WINDOW_RELATION_PREFIX: &str = "__weir_window_";
/// Shortest window size and slide.
pub const WINDOW_MS_MIN: i64 = 1;
/// Longest window (state for a window lives until it closes).
pub const WINDOW_MS_MAX: i64 = 7 * 24 * 3600 * 1000;
/// Most panes (size / slide) of a hopping window.
pub const PANES_PER_WINDOW_MAX: i64 = 1000;

/// Parses a job's SQL text.
pub fn parse_job(text: &str) -> Result<JobSql> {
    let mut job = JobSql::default();
    let mut windows = 0usize;
    for (index, statement) in split_statements(text).into_iter().enumerate() {
        let statement = strip_comments(statement);
        let statement = statement.trim();
        let number = index + 1;
        let bad = |reason: String| StreamsError::Sql { statement: number, reason };
        let words: Vec<String> = statement.split_whitespace().take(2).map(str::to_ascii_uppercase).collect();
        match words.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["CREATE", "TABLE"] => {
                let created = parse_create_table(statement).map_err(bad)?;
                let name = match &created {
                    CreatedTable::Source(table) => &table.name,
                    CreatedTable::Blackhole(name) => name,
                };
                let declared = job.tables.iter().map(|t| &t.name).chain(&job.blackholes);
                if declared.into_iter().any(|earlier| earlier.eq_ignore_ascii_case(name)) {
                    return Err(bad(format!("table {name} is declared twice")));
                }
                match created {
                    CreatedTable::Source(table) => job.tables.push(table),
                    CreatedTable::Blackhole(name) => job.blackholes.push(name),
                }
            }
            ["INSERT", "INTO"] => job.inserts.push(parse_insert(statement, &mut windows).map_err(bad)?),
            _ => {
                let head: String = statement.chars().take(40).collect();
                return Err(bad(format!("expected CREATE TABLE or INSERT INTO, found {head:?}")));
            }
        }
    }
    for insert in &job.inserts {
        for window in &insert.windows {
            let Some(table) = job.tables.iter().find(|t| t.name.eq_ignore_ascii_case(&window.table)) else {
                return Err(StreamsError::Plan(format!("window over {:?}: no such table", window.table)));
            };
            if table.event_time.as_deref().is_none_or(|c| !c.eq_ignore_ascii_case(&window.time_column)) {
                return Err(StreamsError::Plan(format!(
                    "window over {}.{}: the time column must be the table's WATERMARK FOR column ({})",
                    window.table,
                    window.time_column,
                    table.event_time.as_deref().unwrap_or("none declared")
                )));
            }
        }
    }
    Ok(job)
}

/// Splits on `;` outside quotes and comments; drops empty statements.
fn split_statements(text: &str) -> Vec<&str> {
    let mut statements = Vec::new();
    let (mut start, mut quote, mut comment) = (0, None::<char>, false);
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if comment {
            comment = c != '\n';
        } else if let Some(q) = quote {
            if c == q {
                quote = None;
            }
        } else if c == '\'' || c == '"' {
            quote = Some(c);
        } else if c == '-' && chars.peek().is_some_and(|(_, next)| *next == '-') {
            comment = true;
        } else if c == ';' {
            statements.push(&text[start..at]);
            start = at + 1;
        }
    }
    statements.push(&text[start..]);
    statements.into_iter().map(str::trim).filter(|s| !strip_comments(s).trim().is_empty()).collect()
}

/// Drops `-- …` comments (not inside quotes).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut quote, mut comment) = (None::<char>, false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if comment {
            if c == '\n' {
                comment = false;
                out.push(c);
            }
            continue;
        }
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '-' && chars.peek() == Some(&'-') => {
                comment = true;
                continue;
            }
            None => {}
        }
        out.push(c);
    }
    out
}

/// The text inside the parentheses that open at byte `open` (which must be `(`), and the
/// index just past the closing one.
fn balanced(text: &str, open: usize) -> std::result::Result<(&str, usize), String> {
    let mut depth = 0;
    let mut quote = None;
    for (at, c) in text[open..].char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => {
                depth -= 1;
                if depth == 0 {
                    return Ok((&text[open + 1..open + at], open + at + 1));
                }
            }
            _ => {}
        }
    }
    Err("unbalanced parentheses".into())
}

/// Splits on commas at depth 0 outside quotes.
fn split_top_level(text: &str) -> Vec<&str> {
    let (mut parts, mut start, mut depth, mut quote) = (Vec::new(), 0, 0, None);
    for (at, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => depth -= 1,
            (None, ',') if depth == 0 => {
                parts.push(text[start..at].trim());
                start = at + 1;
            }
            _ => {}
        }
    }
    parts.push(text[start..].trim());
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

fn unquote_identifier(name: &str) -> String {
    name.trim().trim_matches('"').trim_matches('`').to_string()
}

/// `CREATE TABLE name (col TYPE, …, WATERMARK FOR col AS col - INTERVAL '5' SECOND)
/// WITH (topic = '…', format = 'json', tag = '…')`, or `CREATE TABLE name WITH (connector =
/// 'blackhole')`.
fn parse_create_table(statement: &str) -> std::result::Result<CreatedTable, String> {
    let statement = strip_comments(statement);
    let after = statement.trim_start()[6..].trim_start()[5..].trim_start(); // CREATE, TABLE
    let name_end = after.find(|c: char| c == '(' || c.is_whitespace()).unwrap_or(after.len());
    let name = unquote_identifier(&after[..name_end]);
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("{name:?} is not a table name (letters, digits and `_`)"));
    }
    let rest = after[name_end..].trim_start();
    if !rest.starts_with('(') {
        if !rest.to_ascii_uppercase().starts_with("WITH") {
            return Err("expected a column list in parentheses".into());
        }
        let options = parse_options(rest)?;
        return match options.get("connector").map(|c| c.to_ascii_lowercase()).as_deref() {
            Some("blackhole") if options.len() == 1 => Ok(CreatedTable::Blackhole(name)),
            Some("blackhole") => Err("a blackhole table takes no other option than connector".into()),
            _ => Err("expected a column list in parentheses (only a blackhole table has none)".into()),
        };
    }
    let (columns_text, end) = balanced(after, after.len() - rest.len())?;
    let mut fields = Vec::new();
    let (mut event_time, mut watermark_delay_ms) = (None, 0);
    for part in split_top_level(columns_text) {
        if part.to_ascii_uppercase().starts_with("WATERMARK") {
            let (column, delay) = parse_watermark(part)?;
            event_time = Some(column);
            watermark_delay_ms = delay;
            continue;
        }
        let mut pieces = part.splitn(2, char::is_whitespace);
        let column = unquote_identifier(pieces.next().unwrap_or_default());
        let sql_type = pieces.next().map(str::trim).ok_or_else(|| format!("column {column:?} has no type"))?;
        if fields.iter().any(|f: &Field| f.name() == &column) {
            return Err(format!("column {column:?} is declared twice"));
        }
        fields.push(Field::new(&column, data_type(sql_type).map_err(|e| format!("column {column}: {e}"))?, true));
    }
    if let Some(column) = &event_time {
        let Some(field) = fields.iter().find(|f| f.name() == column) else {
            return Err(format!("WATERMARK FOR {column}: no such column"));
        };
        if !matches!(field.data_type(), DataType::Timestamp(..)) {
            return Err(format!("WATERMARK FOR {column}: the column must be a TIMESTAMP"));
        }
    }
    let mut options = parse_options(&after[end..])?;
    match options.remove("connector").map(|c| c.to_ascii_lowercase()).as_deref() {
        None | Some("topic") => {}
        Some("blackhole") => {
            return Err(
                "a blackhole table takes no column list: CREATE TABLE name WITH (connector = 'blackhole')".into()
            );
        }
        Some(other) => return Err(format!("connector {other:?} is not supported (topic, blackhole)")),
    }
    for key in options.keys() {
        if !["topic", "format", "tag", "lookup_key"].contains(&key.as_str()) {
            return Err(format!("unknown option {key:?} (topic, format, tag, lookup_key, connector)"));
        }
    }
    let topic = options.remove("topic").ok_or("WITH (topic = '…') is required")?;
    weir_broker::topic::validate_topic_name(&topic).map_err(|e| e.to_string())?;
    let format = options.remove("format").unwrap_or_else(|| "json".into());
    if format != "json" {
        return Err(format!("format {format:?} is not supported (json)"));
    }
    let tag_expression = options.remove("tag").unwrap_or_else(|| "*".into());
    weir_broker::filter::TagExpression::parse(&tag_expression).map_err(|e| e.to_string())?;
    let lookup_key = options.remove("lookup_key");
    if let Some(key) = &lookup_key
        && !fields.iter().any(|f| f.name() == key)
    {
        return Err(format!("lookup_key {key:?} is not a column"));
    }
    Ok(CreatedTable::Source(SourceTable {
        name,
        schema: std::sync::Arc::new(Schema::new(fields)),
        topic,
        tag_expression,
        event_time,
        watermark_delay_ms,
        lookup_key,
    }))
}

/// `WITH (key = 'value', …)` (or nothing) → options by lowercased key.
fn parse_options(text: &str) -> std::result::Result<std::collections::BTreeMap<String, String>, String> {
    let rest = text.trim();
    let mut options = std::collections::BTreeMap::new();
    if rest.is_empty() {
        return Ok(options);
    }
    if !rest.to_ascii_uppercase().starts_with("WITH") {
        return Err(format!("expected WITH (…) after the columns, found {rest:?}"));
    }
    let open = rest.find('(').ok_or("expected WITH (key = 'value', …)")?;
    let (options_text, end) = balanced(rest, open)?;
    if !rest[end..].trim().is_empty() {
        return Err(format!("unexpected text after WITH (…): {:?}", rest[end..].trim()));
    }
    for option in split_top_level(options_text) {
        let (key, value) = option.split_once('=').ok_or_else(|| format!("option {option:?} is not key = 'value'"))?;
        let value = value.trim();
        let value = value
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .ok_or_else(|| format!("option {}: the value must be quoted: {value}", key.trim()))?;
        if options.insert(key.trim().to_ascii_lowercase(), value.to_string()).is_some() {
            return Err(format!("option {} is given twice", key.trim()));
        }
    }
    Ok(options)
}

/// `WATERMARK FOR ts AS ts - INTERVAL '5' SECOND` (or `AS ts`): (column, delay in ms).
fn parse_watermark(text: &str) -> std::result::Result<(String, i64), String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let [_, for_word, column, as_word, rest @ ..] = words.as_slice() else {
        return Err(format!("expected WATERMARK FOR col AS col - INTERVAL 'n' UNIT, found {text:?}"));
    };
    if !for_word.eq_ignore_ascii_case("FOR") || !as_word.eq_ignore_ascii_case("AS") {
        return Err(format!("expected WATERMARK FOR col AS …, found {text:?}"));
    }
    let column = unquote_identifier(column);
    match rest {
        [same] if unquote_identifier(same) == column => Ok((column, 0)),
        [same, "-", interval @ ..] if unquote_identifier(same) == column => {
            let delay_ms = parse_interval_ms(&interval.join(" "))?;
            // Bounded so watermark arithmetic cannot overflow, whatever the event times.
            if !(0..=WINDOW_MS_MAX).contains(&delay_ms) {
                return Err(format!("the watermark delay must be 0 to 7 days, found {text:?}"));
            }
            Ok((column, delay_ms))
        }
        _ => Err(format!("the watermark must be `{column}` or `{column} - INTERVAL 'n' UNIT`, found {text:?}")),
    }
}

/// `INTERVAL '5' SECOND`, `INTERVAL '5 seconds'`, `INTERVAL '1' MINUTE` → ms.
pub fn parse_interval_ms(text: &str) -> std::result::Result<i64, String> {
    let text = text.trim();
    let rest = text
        .get(..8)
        .filter(|head| head.eq_ignore_ascii_case("INTERVAL"))
        .map(|_| text[8..].trim())
        .ok_or_else(|| format!("expected INTERVAL 'n' UNIT, found {text:?}"))?;
    let (quoted, unit_after) = rest
        .strip_prefix('\'')
        .and_then(|r| r.split_once('\''))
        .ok_or_else(|| format!("expected INTERVAL 'n' UNIT, found {text:?}"))?;
    let mut words = quoted.split_whitespace();
    let amount: i64 = words.next().and_then(|n| n.parse().ok()).ok_or_else(|| format!("{quoted:?} is not a number"))?;
    let unit = words.next().unwrap_or(unit_after.trim());
    let unit_ms = match unit.to_ascii_uppercase().trim_end_matches('S') {
        "MILLISECOND" => 1,
        "SECOND" => 1000,
        "MINUTE" => 60_000,
        "HOUR" => 3_600_000,
        "DAY" => 86_400_000,
        _ => return Err(format!("unknown interval unit {unit:?} (MILLISECOND, SECOND, MINUTE, HOUR, DAY)")),
    };
    amount.checked_mul(unit_ms).filter(|ms| *ms >= 0).ok_or_else(|| format!("interval {text:?} is out of range"))
}

/// SQL type → Arrow type.
fn data_type(sql_type: &str) -> std::result::Result<DataType, String> {
    let upper = sql_type.trim().to_ascii_uppercase();
    let base = upper.split('(').next().unwrap_or_default().trim();
    Ok(match base {
        "TEXT" | "STRING" | "VARCHAR" | "CHAR" => DataType::Utf8,
        "BOOLEAN" | "BOOL" => DataType::Boolean,
        "TINYINT" => DataType::Int8,
        "SMALLINT" => DataType::Int16,
        "INT" | "INTEGER" => DataType::Int32,
        "BIGINT" => DataType::Int64,
        "FLOAT" | "REAL" => DataType::Float32,
        "DOUBLE" | "DOUBLE PRECISION" => DataType::Float64,
        "TIMESTAMP" => DataType::Timestamp(TimeUnit::Millisecond, None),
        _ => {
            return Err(format!(
                "type {sql_type:?} is not supported (TEXT, BOOLEAN, INT, BIGINT, DOUBLE, TIMESTAMP, …)"
            ));
        }
    })
}

/// `INSERT INTO topic SELECT …`; window calls in the query become relation names.
fn parse_insert(statement: &str, windows_so_far: &mut usize) -> std::result::Result<InsertStatement, String> {
    let after = statement.trim_start()[6..].trim_start()[4..].trim_start(); // INSERT, INTO
    let end = after.find(char::is_whitespace).ok_or("expected INSERT INTO <topic> SELECT …")?;
    let topic = unquote_identifier(&after[..end]);
    weir_broker::topic::validate_topic_name(&topic).map_err(|e| e.to_string())?;
    let mut query = after[end..].trim().to_string();
    let mut windows = Vec::new();
    while let Some((start, kind)) = find_window_call(&query) {
        let open = start + query[start..].find('(').unwrap_or(0);
        let (args_text, end) = balanced(&query, open)?;
        let args = split_top_level(args_text);
        let (table, time_column, size_ms, slide_ms) = match (kind, args.as_slice()) {
            (WindowKind::Tumble, [table, column, size]) => {
                let size = parse_interval_ms(size)?;
                (table, column, size, size)
            }
            (WindowKind::Hop, [table, column, slide, size]) => {
                (table, column, parse_interval_ms(size)?, parse_interval_ms(slide)?)
            }
            (WindowKind::Session, [table, column, gap]) => {
                let gap = parse_interval_ms(gap)?;
                (table, column, gap, gap)
            }
            (WindowKind::Tumble, _) => return Err("TUMBLE takes (table, time column, size)".into()),
            (WindowKind::Session, _) => return Err("SESSION takes (table, time column, gap)".into()),
            (WindowKind::Hop, _) => return Err("HOP takes (table, time column, slide, size)".into()),
        };
        if !(WINDOW_MS_MIN..=WINDOW_MS_MAX).contains(&size_ms) || !(WINDOW_MS_MIN..=size_ms).contains(&slide_ms) {
            return Err(format!("window size {size_ms} ms and slide {slide_ms} ms: need 0 < slide <= size <= 7 days"));
        }
        if size_ms % slide_ms != 0 || size_ms / slide_ms > PANES_PER_WINDOW_MAX {
            return Err(format!(
                "a hopping window's size ({size_ms} ms) must be a multiple of its slide ({slide_ms} ms), \
                 at most {PANES_PER_WINDOW_MAX} times"
            ));
        }
        let relation = format!("{WINDOW_RELATION_PREFIX}{}", *windows_so_far);
        *windows_so_far += 1;
        windows.push(WindowSpec {
            kind,
            relation: relation.clone(),
            table: unquote_identifier(table),
            time_column: unquote_identifier(time_column),
            size_ms,
            slide_ms,
        });
        query.replace_range(start..end, &relation);
    }
    if query.is_empty() {
        return Err("INSERT INTO needs a query".into());
    }
    Ok(InsertStatement { topic, query, windows })
}

/// The first `TUMBLE(`, `HOP(` or `SESSION(` outside quotes, as a whole word.
fn find_window_call(query: &str) -> Option<(usize, WindowKind)> {
    let upper = query.to_ascii_uppercase();
    let mut quote = None;
    for (at, c) in upper.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            _ => {
                let boundary = at == 0 || !upper[..at].ends_with(|p: char| p.is_ascii_alphanumeric() || p == '_');
                for (word, kind) in
                    [("TUMBLE", WindowKind::Tumble), ("HOP", WindowKind::Hop), ("SESSION", WindowKind::Session)]
                {
                    if boundary
                        && upper[at..].starts_with(word)
                        && upper[at + word.len()..].trim_start().starts_with('(')
                    {
                        return Some((at, kind));
                    }
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_with_a_table_and_a_tumbling_insert() {
        let job = parse_job(
            "-- per-domain errors
            CREATE TABLE access_logs (domain TEXT, status INT, bytes BIGINT, ts TIMESTAMP,
              WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) WITH (topic = 'access-logs', format = 'json');
            INSERT INTO domain_stats
            SELECT domain, window_start, window_end, count(*) AS hits
            FROM TUMBLE(access_logs, ts, INTERVAL '1' MINUTE)
            GROUP BY domain, window_start, window_end;",
        )
        .unwrap();
        let table = &job.tables[0];
        assert_eq!((table.name.as_str(), table.topic.as_str()), ("access_logs", "access-logs"));
        assert_eq!((table.event_time.as_deref(), table.watermark_delay_ms), (Some("ts"), 5000));
        assert_eq!(table.schema.fields().len(), 4);
        let insert = &job.inserts[0];
        assert_eq!(insert.topic, "domain_stats");
        assert!(insert.query.contains("FROM __weir_window_0\n"), "{}", insert.query);
        assert_eq!(insert.windows[0].size_ms, 60_000);
        assert_eq!(insert.windows[0].slide_ms, 60_000);
    }

    #[test]
    fn bad_statements_name_the_statement_and_the_text() {
        let cases = [
            ("SELECT 1", "statement 1: expected CREATE TABLE or INSERT INTO"),
            ("CREATE TABLE t (a TEXT)", "WITH (topic = '…') is required"),
            ("CREATE TABLE t (a BLOB) WITH (topic = 'x')", "type \"BLOB\" is not supported"),
            ("CREATE TABLE t (a TEXT, WATERMARK FOR a AS a) WITH (topic = 'x')", "must be a TIMESTAMP"),
            ("CREATE TABLE t (ts TIMESTAMP) WITH (topic = 'x', colour = 'red')", "unknown option \"colour\""),
            (
                "CREATE TABLE t (ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '5' FORTNIGHT) WITH (topic = 'x')",
                "unknown interval unit",
            ),
            ("INSERT INTO out SELECT * FROM TUMBLE(t, ts)", "TUMBLE takes (table, time column, size)"),
            (
                "INSERT INTO out SELECT * FROM HOP(t, ts, INTERVAL '7' SECOND, INTERVAL '1' MINUTE)",
                "must be a multiple",
            ),
            (
                "CREATE TABLE t (ts TIMESTAMP) WITH (topic = 'x');\nINSERT INTO out SELECT * FROM TUMBLE(t, ts, INTERVAL '1' SECOND)",
                "WATERMARK FOR column",
            ),
        ];
        for (text, expected) in cases {
            let error = parse_job(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn a_blackhole_table_is_declared_without_columns() {
        let job = parse_job(
            "CREATE TABLE t (a TEXT) WITH (topic = 'x', connector = 'topic');
             CREATE TABLE Discard WITH (connector = 'Blackhole');
             INSERT INTO discard SELECT a FROM t",
        )
        .unwrap();
        assert_eq!(job.blackholes, ["Discard"]);
        assert!(job.is_blackhole("DISCARD") && !job.is_blackhole("t"));
        assert_eq!(job.tables[0].topic, "x");
        let cases = [
            ("CREATE TABLE d (a TEXT) WITH (connector = 'blackhole')", "takes no column list"),
            ("CREATE TABLE d WITH (connector = 'blackhole', topic = 'x')", "no other option than connector"),
            ("CREATE TABLE d WITH (connector = 'kafka')", "expected a column list"),
            ("CREATE TABLE d (a TEXT) WITH (connector = 'kafka', topic = 'x')", "connector \"kafka\" is not supported"),
            ("CREATE TABLE d", "expected a column list"),
            ("CREATE TABLE d WITH (connector = 'blackhole', connector = 'blackhole')", "given twice"),
            (
                "CREATE TABLE d (a TEXT) WITH (topic = 'x');\nCREATE TABLE D WITH (connector = 'blackhole')",
                "statement 2: table D is declared twice",
            ),
        ];
        for (text, expected) in cases {
            let error = parse_job(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
