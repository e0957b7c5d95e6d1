//! Pipeline files (DESIGN.md §5): the YAML model, `${ENV}` interpolation, and validation
//! with errors that name the file, line and field.
//!
//! Loading is parse → validate: `load` interpolates the environment into the text, parses it
//! into the model (unknown fields are errors), then checks what serde cannot (names, topic
//! references, addresses, tag expressions). Running a pipeline (`weir run`) comes with the
//! Connect worker; today `weir validate FILE` lints a file.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use weir_broker::filter::TagExpression;
use weir_broker::topic::{QUEUE_COUNT_MAX, validate_topic_name};
use weir_connect::{ConnectError, ErrorTolerance, SinkTaskConfig, SourceTaskConfig};

/// A pipeline file: topics are the edges between sources, stream jobs and sinks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// The pipeline's name, used in logs and metrics.
    pub pipeline: String,
    /// Where the broker runs: embedded by default.
    #[serde(default)]
    pub broker: BrokerSection,
    /// Topics the pipeline creates (if missing) and uses.
    #[serde(default)]
    pub topics: BTreeMap<String, TopicSection>,
    /// Sources by name.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceSection>,
    /// Stream jobs by name (executed once the streams engine lands).
    #[serde(default)]
    pub streams: BTreeMap<String, StreamSection>,
    /// Sinks by name.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkSection>,
}

/// `broker: { embedded: { data_dir: ./data } }` or `broker: { namesrv: host:port }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSection {
    /// An in-process broker on a data directory (the default).
    pub embedded: Option<EmbeddedBroker>,
    /// A NameServer address (needs the network protocol, not available yet).
    pub namesrv: Option<String>,
}

/// The embedded broker's settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedBroker {
    /// Data directory, relative to the working directory.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}

/// One topic.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSection {
    /// Number of queues (1..=1024).
    #[serde(default = "default_queues")]
    pub queues: u32,
}

fn default_queues() -> u32 {
    4
}

/// A source, by `type`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceSection {
    /// Logs and metrics posted over HTTP.
    Http(HttpSource),
    /// Lines of a growing text file (an application log), resumed from a saved position.
    File(FileSource),
    /// Row changes of MySQL/MariaDB tables from the binlog, after a snapshot
    /// (`weir_connectors::sources::mysql_cdc::MySqlCdcConfig`).
    MysqlCdc(CdcSource),
}

/// `type: mysql_cdc`: the worker settings every source has, and the connector's own
/// (documented on `MySqlCdcConfig`, checked by `validate`).
#[derive(Clone, Debug, Deserialize)]
pub struct CdcSource {
    #[serde(default)]
    pub errors: ErrorsSection,
    #[serde(default)]
    pub batch: SourceBatchSection,
    #[serde(default)]
    pub retry: RetrySection,
    /// The connector's own settings.
    #[serde(flatten)]
    pub settings: serde_json::Map<String, serde_json::Value>,
}

impl CdcSource {
    /// The connector's settings; the error names the field at fault when serde says.
    pub fn settings(&self) -> Result<weir_connectors::sources::mysql_cdc::MySqlCdcConfig, (Option<String>, String)> {
        parse_settings(&self.settings)
    }

    /// The source task's settings: the defaults, with what the file sets.
    pub fn task_config(&self, name: &str) -> SourceTaskConfig {
        let mut config = SourceTaskConfig::new(name);
        config.errors_tolerance = self.errors.tolerance.into();
        config.batch_records_max = self.batch.records_max.unwrap_or(config.batch_records_max);
        self.retry.apply(&mut config.retries_max, &mut config.backoff_initial, &mut config.backoff_max);
        config
    }
}

/// `type: file`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSource {
    /// The file followed; it may not exist yet.
    pub path: PathBuf,
    /// Topic the lines go to.
    pub topic: String,
    /// Tag of every record.
    #[serde(default)]
    pub tag: Option<String>,
    /// Where to start without a saved position (default `beginning`).
    #[serde(default)]
    pub start_at: Option<StartAt>,
    /// Longest line (default 102400); longer lines are skipped and counted.
    #[serde(default)]
    pub line_bytes_max: Option<u64>,
    #[serde(default)]
    pub errors: ErrorsSection,
    #[serde(default)]
    pub batch: SourceBatchSection,
    #[serde(default)]
    pub retry: RetrySection,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StartAt {
    Beginning,
    End,
}

/// `type: http`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSource {
    /// Address to listen on, `ip:port`.
    pub listen: String,
    /// Path → topic routes.
    pub routes: Vec<HttpRoute>,
    /// Largest request body accepted (default 10 MiB).
    #[serde(default)]
    pub body_bytes_max: Option<u64>,
    /// Bearer token required on every request, when set.
    #[serde(default)]
    pub auth_token: Option<String>,
    /// Longest a request may take, upload included (default 30000; 408 after it).
    #[serde(default)]
    pub request_timeout_ms: Option<u64>,
}

/// One HTTP route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRoute {
    /// URL path, starting with `/`.
    pub path: String,
    /// Topic the records go to.
    pub topic: String,
    /// Body format.
    pub format: RouteFormat,
    /// Message tag template, e.g. `"{{domain}}"`.
    #[serde(default)]
    pub tag: Option<String>,
    /// Message key template, e.g. `"{{request_id}}"`.
    #[serde(default)]
    pub key: Option<String>,
    /// Field holding the event time (default: receive time).
    #[serde(default)]
    pub timestamp_field: Option<String>,
}

/// Body formats of the HTTP source.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RouteFormat {
    Ndjson,
    JsonArray,
    Json,
    Text,
    Influx,
}

/// A stream job: SQL over topics.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSection {
    /// The job's SQL statements: `CREATE TABLE` over topics, `INSERT INTO <topic> SELECT …`.
    pub sql: String,
    /// How often the job saves its input offsets, watermarks and window state together
    /// (default 1000 ms).
    #[serde(default)]
    pub checkpoint_interval_ms: Option<u64>,
}

/// A sink, by `type`.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkSection {
    /// JSON lines into files, rotated by size.
    File(FileSink),
    /// Each record printed on standard output.
    Stdout(TopicSink),
    /// Records consumed and dropped (benchmarks).
    Blackhole(TopicSink),
    /// Rows in a MySQL or MariaDB table (`weir_connectors::sinks::mysql::MySqlSinkConfig`).
    Mysql(ExternalSink),
    /// Redis commands (`weir_connectors::sinks::redis::RedisSinkConfig`).
    Redis(ExternalSink),
    /// Elasticsearch documents (`weir_connectors::sinks::elasticsearch::ElasticsearchSinkConfig`).
    Elasticsearch(ExternalSink),
    /// Apache Doris Stream Loads (`weir_connectors::sinks::doris::DorisSinkConfig`).
    Doris(ExternalSink),
}

/// `type: mysql|redis|elasticsearch|doris`: the settings every sink has, and the connector's
/// own, which are documented on its config type in `weir-connectors` and checked (unknown
/// fields included) by `validate`.
#[derive(Clone, Debug, Deserialize)]
pub struct ExternalSink {
    /// Topic consumed.
    pub topic: String,
    /// Tag expression (`*`, `TagA || TagB`).
    #[serde(default)]
    pub tags: Option<String>,
    #[serde(default)]
    pub errors: ErrorsSection,
    #[serde(default)]
    pub batch: SinkBatchSection,
    #[serde(default)]
    pub retry: RetrySection,
    /// The connector's own settings.
    #[serde(flatten)]
    pub settings: serde_json::Map<String, serde_json::Value>,
}

impl ExternalSink {
    /// The connector's settings as its config type; the error names the field at fault
    /// (when serde says) and the reason.
    pub fn settings<T: serde::de::DeserializeOwned>(&self) -> Result<T, (Option<String>, String)> {
        parse_settings(&self.settings)
    }
}

/// A connector's own settings (collected by `flatten`) as its config type; the error names
/// the field at fault when serde says, and the reason.
fn parse_settings<T: serde::de::DeserializeOwned>(
    settings: &serde_json::Map<String, serde_json::Value>,
) -> Result<T, (Option<String>, String)> {
    serde_json::from_value(serde_json::Value::Object(settings.clone())).map_err(|error| {
        let text = error.to_string();
        // serde names fields in backquotes ("unknown field `x`", "missing field `y`"), but
        // a bad enum value by its variant: find the setting holding it.
        let quoted = text.split('`').nth(1).map(str::to_string);
        let field = match quoted {
            Some(variant) if text.starts_with("unknown variant") => settings
                .iter()
                .find(|(_, value)| value.as_str() == Some(variant.as_str()))
                .map(|(name, _)| name.clone()),
            quoted => quoted,
        };
        (field, text)
    })
}

/// `type: file`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSink {
    /// Topic consumed.
    pub topic: String,
    /// Tag expression (`*`, `TagA || TagB`).
    #[serde(default)]
    pub tags: Option<String>,
    /// Output file (rotated files get a numeric suffix).
    pub path: PathBuf,
    /// Rotate after this many bytes (default 100 MiB).
    #[serde(default)]
    pub rotate_bytes: Option<u64>,
    #[serde(default)]
    pub errors: ErrorsSection,
    #[serde(default)]
    pub batch: SinkBatchSection,
    #[serde(default)]
    pub retry: RetrySection,
}

/// `type: stdout` and `type: blackhole`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSink {
    /// Topic consumed.
    pub topic: String,
    /// Tag expression (`*`, `TagA || TagB`).
    #[serde(default)]
    pub tags: Option<String>,
    #[serde(default)]
    pub errors: ErrorsSection,
    #[serde(default)]
    pub batch: SinkBatchSection,
    #[serde(default)]
    pub retry: RetrySection,
}

/// `errors:` — what a record the target refuses for good (bad data, not an outage) does,
/// as Kafka Connect's `errors.tolerance`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorsSection {
    /// `none` (default): the task stops and is reported failed; `all`: the record goes to
    /// the dead-letter topic `%DLQ%<connector>` with the error in its properties.
    #[serde(default)]
    pub tolerance: Tolerance,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Tolerance {
    #[default]
    None,
    All,
}

/// `batch:` of a sink: a batch is written and flushed when any limit is reached.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkBatchSection {
    /// Most records per batch (default 500).
    pub records_max: Option<usize>,
    /// About this many value bytes per batch at most (default 4 MiB).
    pub bytes_max: Option<usize>,
    /// How long a partial batch waits for more records (default 100 ms).
    pub linger_ms: Option<u64>,
}

/// `batch:` of a source.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceBatchSection {
    /// Most records read per poll and sent to the broker together (default 1000).
    pub records_max: Option<usize>,
}

/// `retry:` — retries of a failed write, flush, poll or send before the task fails (the
/// supervisor then restarts it with its own backoff).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    /// Retries of one operation (default 10).
    pub retries_max: Option<u32>,
    /// First wait; it doubles per retry, with ±25 % jitter (default 100 ms).
    pub backoff_initial_ms: Option<u64>,
    /// Longest wait (default 30000 ms).
    pub backoff_max_ms: Option<u64>,
}

impl SinkSection {
    /// The consumed topic and tag expression, and the worker settings every sink has.
    pub fn common(&self) -> (&str, Option<&str>, &ErrorsSection, &SinkBatchSection, &RetrySection) {
        match self {
            SinkSection::File(file) => (&file.topic, file.tags.as_deref(), &file.errors, &file.batch, &file.retry),
            SinkSection::Stdout(sink) | SinkSection::Blackhole(sink) => {
                (&sink.topic, sink.tags.as_deref(), &sink.errors, &sink.batch, &sink.retry)
            }
            SinkSection::Mysql(sink)
            | SinkSection::Redis(sink)
            | SinkSection::Elasticsearch(sink)
            | SinkSection::Doris(sink) => (&sink.topic, sink.tags.as_deref(), &sink.errors, &sink.batch, &sink.retry),
        }
    }

    /// The sink task's settings: the defaults, with what the file sets.
    pub fn task_config(&self, name: &str) -> SinkTaskConfig {
        let (topic, tags, errors, batch, retry) = self.common();
        let mut config = SinkTaskConfig::new(name, topic);
        if let Some(tags) = tags {
            config.tag_expression = tags.to_string();
        }
        config.errors_tolerance = errors.tolerance.into();
        config.batch_records_max = batch.records_max.unwrap_or(config.batch_records_max);
        config.batch_bytes_max = batch.bytes_max.unwrap_or(config.batch_bytes_max);
        config.linger = batch.linger_ms.map_or(config.linger, Duration::from_millis);
        retry.apply(&mut config.retries_max, &mut config.backoff_initial, &mut config.backoff_max);
        config
    }
}

impl FileSource {
    /// The source task's settings: the defaults, with what the file sets.
    pub fn task_config(&self, name: &str) -> SourceTaskConfig {
        let mut config = SourceTaskConfig::new(name);
        config.errors_tolerance = self.errors.tolerance.into();
        config.batch_records_max = self.batch.records_max.unwrap_or(config.batch_records_max);
        self.retry.apply(&mut config.retries_max, &mut config.backoff_initial, &mut config.backoff_max);
        config
    }
}

impl RetrySection {
    fn apply(&self, retries_max: &mut u32, backoff_initial: &mut Duration, backoff_max: &mut Duration) {
        *retries_max = self.retries_max.unwrap_or(*retries_max);
        *backoff_initial = self.backoff_initial_ms.map_or(*backoff_initial, Duration::from_millis);
        *backoff_max = self.backoff_max_ms.map_or(*backoff_max, Duration::from_millis);
    }
}

impl From<Tolerance> for ErrorTolerance {
    fn from(tolerance: Tolerance) -> Self {
        match tolerance {
            Tolerance::None => ErrorTolerance::None,
            Tolerance::All => ErrorTolerance::All,
        }
    }
}

/// The YAML path of a task setting the connect crate names in a `Config` error.
fn setting_path(field: &str) -> &'static str {
    match field {
        "batch_records_max" => "batch.records_max",
        "batch_bytes_max" => "batch.bytes_max",
        "linger" => "batch.linger_ms",
        "retries_max" => "retry.retries_max",
        "backoff_initial" => "retry.backoff_initial_ms",
        "backoff_max" => "retry.backoff_max_ms",
        _ => "name",
    }
}

/// A problem in a pipeline file, with where it is.
#[derive(Debug, PartialEq, Eq)]
pub struct PipelineError {
    pub file: PathBuf,
    /// 1-based; 0 when the position is unknown.
    pub line: u64,
    pub column: u64,
    /// The field at fault, as a dotted path (`sinks.to_file.topic`), when known.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for PipelineError {}

/// Reads, interpolates, parses and validates a pipeline file.
pub fn load(path: &Path) -> Result<Pipeline, PipelineError> {
    let text = std::fs::read_to_string(path).map_err(|error| PipelineError {
        file: path.to_path_buf(),
        line: 0,
        column: 0,
        field: None,
        message: format!("cannot read the file: {error}"),
    })?;
    parse(path, &text, &|name| std::env::var(name).ok())
}

/// `load` on text already read; `env` looks variables up.
pub fn parse(path: &Path, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Pipeline, PipelineError> {
    let text = interpolate(path, text, env)?;
    let pipeline: Pipeline = serde_saphyr::from_str(&text).map_err(|error| {
        let location = error.location();
        let mut line = location.as_ref().map_or(0, |l| l.line());
        let mut column = location.as_ref().map_or(0, |l| l.column());
        let mut message = error.without_snippet().to_string();
        if let Some(suffix) = message.rfind(" at line ") {
            message.truncate(suffix); // the position leads the line instead
        }
        // Inside a `type:`-tagged section the parser reports the section's line; point at the
        // unknown field itself.
        let mut field = None;
        if let Some(name) = message.strip_prefix("unknown field `").and_then(|rest| rest.split('`').next()) {
            if let Some((found_line, found_column)) = position_of_key_after(&text, name, line) {
                (line, column) = (found_line, found_column);
            }
            field = Some(name.to_string());
        } else if let Some(value) = message.strip_prefix("unknown variant `").and_then(|rest| rest.split('`').next())
            && let Some((found_line, found_column, key)) = position_of_value_after(&text, value, line)
        {
            (line, column, field) = (found_line, found_column, Some(key));
        }
        PipelineError { file: path.to_path_buf(), line, column, field, message }
    })?;
    validate(path, &text, &pipeline)?;
    Ok(pipeline)
}

/// Replaces `${NAME}` and `${NAME:-default}`; `$${` stands for a literal `${`.
///
/// Values are text, never YAML: inside a double-quoted scalar a value is escaped (`"`, `\`,
/// line breaks), inside a single-quoted one its `'` are doubled, and a value that would not
/// read back as itself in a plain scalar (a line break, ` #`, `: `, a leading indicator, a
/// flow character inside `{ }` or `[ ]`, surrounding spaces) is refused with a hint to quote
/// it. Comments are copied as they are, so `# export ${X}` needs no `X`. The lines of a
/// block scalar (`sql: |`, `>`) are text: values go in as they are (a line break refused),
/// and no quote or comment is looked for there.
fn interpolate(path: &Path, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, PipelineError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Scalar {
        Plain,
        Double,
        Single,
    }
    let mut out = String::with_capacity(text.len());
    let mut scalar = Scalar::Plain;
    let mut flow_depth = 0usize;
    // The indentation of the line that opened a block scalar, while its lines last.
    let mut block_indent: Option<usize> = None;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let error = |column: usize, message: String| PipelineError {
            file: path.to_path_buf(),
            line: index as u64 + 1,
            column: column as u64 + 1,
            field: None,
            message,
        };
        let indent = line.len() - line.trim_start_matches(' ').len();
        if let Some(opener) = block_indent {
            if line.trim().is_empty() || indent > opener {
                out.push_str(&interpolate_raw(line, env).map_err(|(at, message)| error(at, message))?);
                continue;
            }
            block_indent = None;
        }
        let mut comment_at = None;
        // The last character that was not a space, in plain context: a quote starts a quoted
        // scalar only where a scalar may start.
        let mut last_significant: Option<char> = None;
        let mut at = 0;
        while at < line.len() {
            let rest = &line[at..];
            if let Some(literal) = rest.strip_prefix("$${") {
                out.push_str("${");
                at = line.len() - literal.len();
                last_significant = Some('{');
                continue;
            }
            if let Some(body) = rest.strip_prefix("${") {
                let (value, name, end) = resolve_reference(body, env).map_err(|message| error(at, message))?;
                match scalar {
                    Scalar::Double => {
                        for c in value.chars() {
                            match c {
                                '"' => out.push_str("\\\""),
                                '\\' => out.push_str("\\\\"),
                                '\n' => out.push_str("\\n"),
                                '\r' => out.push_str("\\r"),
                                '\t' => out.push_str("\\t"),
                                other => out.push(other),
                            }
                        }
                    }
                    Scalar::Single if value.contains(['\n', '\r']) => {
                        return Err(error(
                            at,
                            format!("environment variable {name} holds a line break; use it in a double-quoted string"),
                        ));
                    }
                    Scalar::Single => out.push_str(&value.replace('\'', "''")),
                    Scalar::Plain => {
                        let starts_scalar =
                            last_significant.is_none_or(|c| matches!(c, ':' | '-' | '[' | '{' | ',' | '?'));
                        if let Some(reason) = plain_value_problem(&value, starts_scalar, flow_depth > 0) {
                            return Err(error(
                                at,
                                format!(
                                    "environment variable {name} {reason}, so it would not read back as itself here; quote it: \"${{{name}}}\""
                                ),
                            ));
                        }
                        out.push_str(&value);
                        last_significant = value.chars().last().or(last_significant);
                    }
                }
                at = line.len() - body.len() + end + 1;
                continue;
            }
            let c = rest.chars().next().expect("not at the end");
            let width = c.len_utf8();
            match scalar {
                Scalar::Plain => {
                    let after_space = at == 0 || line[..at].ends_with([' ', '\t']);
                    if c == '#' && after_space {
                        out.push_str(rest); // a comment, copied as it is
                        comment_at = Some(at);
                        break;
                    }
                    let starts_scalar = last_significant.is_none_or(|c| matches!(c, ':' | '-' | '[' | '{' | ',' | '?'));
                    match c {
                        '"' if starts_scalar => scalar = Scalar::Double,
                        '\'' if starts_scalar => scalar = Scalar::Single,
                        '{' | '[' => flow_depth += 1,
                        '}' | ']' => flow_depth = flow_depth.saturating_sub(1),
                        _ => {}
                    }
                    if !c.is_whitespace() {
                        last_significant = Some(c);
                    }
                    out.push(c);
                }
                Scalar::Double => {
                    out.push(c);
                    if c == '\\' {
                        // An escaped character (an escaped line break ends the line).
                        if let Some(next) = line[at + width..].chars().next() {
                            out.push(next);
                            at += next.len_utf8();
                        }
                    } else if c == '"' {
                        scalar = Scalar::Plain;
                        last_significant = Some('"');
                    }
                }
                Scalar::Single => {
                    out.push(c);
                    if c == '\'' {
                        if line[at + width..].starts_with('\'') {
                            out.push('\'');
                            at += 1;
                        } else {
                            scalar = Scalar::Plain;
                            last_significant = Some('\'');
                        }
                    }
                }
            }
            at += width;
        }
        if scalar == Scalar::Plain && opens_block_scalar(&line[..comment_at.unwrap_or(line.len())]) {
            block_indent = Some(indent);
        }
    }
    Ok(out)
}

/// The reference at the start of `body` (just after `${`): its value, its name, and where its
/// `}` is in `body`.
fn resolve_reference<'a>(
    body: &'a str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, &'a str, usize), String> {
    let end = body.find('}').ok_or_else(|| "`${` without a closing `}`".to_string())?;
    let (name, default) = match body[..end].split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (&body[..end], None),
    };
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!("`${{{}}}` is not a valid environment variable name", &body[..end]));
    }
    match (env(name), default) {
        (Some(value), _) => Ok((value, name, end)),
        (None, Some(default)) => Ok((default.to_string(), name, end)),
        (None, None) => {
            Err(format!("environment variable {name} is not set (give a default with `${{{name}:-value}}`)"))
        }
    }
}

/// Whether a line (its comment cut off) ends in a block scalar header: `key: |`, `- >-`,
/// `key: |2+`.
fn opens_block_scalar(line: &str) -> bool {
    let content = line.trim_end();
    let Some(header) = content.rsplit([' ', '\t']).next() else { return false };
    let mut chars = header.chars();
    if !matches!(chars.next(), Some('|' | '>'))
        || header.len() > 3
        || !chars.all(|c| matches!(c, '+' | '-' | '1'..='9'))
    {
        return false;
    }
    let before = content[..content.len() - header.len()].trim_end();
    before.is_empty() || before.ends_with(':') || before.ends_with('-')
}

/// A block scalar's line with its references replaced verbatim (`$${` for a literal `${`);
/// `Err` is the column and the message.
fn interpolate_raw(line: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, (usize, String)> {
    let mut out = String::with_capacity(line.len());
    let mut at = 0;
    while let Some(found) = line[at..].find('$') {
        let start = at + found;
        out.push_str(&line[at..start]);
        let rest = &line[start..];
        if rest.starts_with("$${") {
            out.push_str("${");
            at = start + 3;
            continue;
        }
        let Some(body) = rest.strip_prefix("${") else {
            out.push('$');
            at = start + 1;
            continue;
        };
        let (value, name, end) = resolve_reference(body, env).map_err(|message| (start, message))?;
        if value.contains(['\n', '\r']) {
            return Err((
                start,
                format!("environment variable {name} holds a line break, which a block scalar's line cannot take"),
            ));
        }
        out.push_str(&value);
        at = start + 2 + end + 1;
    }
    out.push_str(&line[at..]);
    Ok(out)
}

/// Why `value` would not read back as itself in a plain YAML scalar, if it would not.
fn plain_value_problem(value: &str, starts_scalar: bool, in_flow: bool) -> Option<&'static str> {
    if value.contains(['\n', '\r']) {
        return Some("holds a line break");
    }
    if value.contains(" #") || value.contains('\t') {
        return Some("holds ` #` or a tab");
    }
    if value.contains(": ") || value.ends_with(':') {
        return Some("holds `: `");
    }
    if value.starts_with(char::is_whitespace) || value.ends_with(char::is_whitespace) {
        return Some("starts or ends with a space");
    }
    if in_flow && value.contains([',', '[', ']', '{', '}']) {
        return Some("holds a flow character (`,[]{}`) inside `{ }` or `[ ]`");
    }
    if starts_scalar {
        let mut chars = value.chars();
        let first = chars.next();
        let indicator = match first {
            Some(',' | '[' | ']' | '{' | '}' | '#' | '&' | '*' | '!' | '|' | '>' | '\'' | '"' | '%' | '@' | '`') => {
                true
            }
            Some('-' | '?' | ':') => chars.next().is_none_or(char::is_whitespace),
            _ => false,
        };
        if indicator {
            return Some("starts with a YAML indicator");
        }
    }
    None
}

/// Where `key:` first appears as a mapping key in `text` (1-based line and column).
fn position_of_key(text: &str, key: &str) -> (u64, u64) {
    position_of_key_after(text, key, 1).unwrap_or((0, 0))
}

/// Where the mapping key `block:` (a connector or job) is under the top-level `section:`.
fn block_position(text: &str, section: &str, block: &str) -> (u64, u64) {
    let section_line = position_of_key(text, section).0.max(1);
    position_of_key_after(text, block, section_line).unwrap_or_else(|| position_of_key(text, block))
}

/// Where `key:` first appears in the body of `section.block` (a connector's own settings:
/// the lines indented under it, or its flow mapping), or the block itself.
fn position_in(text: &str, section: &str, block: &str, key: &str) -> (u64, u64) {
    let block_at = block_position(text, section, block);
    if block_at.0 == 0 {
        return block_at;
    }
    let block_indent = block_at.1.saturating_sub(1) as usize;
    let needle = format!("{key}:");
    for (index, line) in text.lines().enumerate().skip(block_at.0 as usize - 1) {
        let trimmed = line.trim_start();
        let below_block = index + 1 > block_at.0 as usize;
        if below_block && !trimmed.is_empty() && !trimmed.starts_with('#') && line.len() - trimmed.len() <= block_indent
        {
            break; // the next block: the key is not in this one
        }
        // Block (`key:` leading the line) or flow (`{ a: 1, key: 2 }`) style.
        let found = line
            .match_indices(&needle)
            .find(|(at, _)| line[..*at].chars().next_back().is_none_or(|c| c.is_whitespace() || c == '{' || c == ','));
        if let Some((at, _)) = found {
            return (index as u64 + 1, at as u64 + 1);
        }
    }
    block_at
}

/// Where `key: value` first appears at or after line `from_line` (block or flow style), with
/// the key: `(line, column of the key, key)`.
fn position_of_value_after(text: &str, value: &str, from_line: u64) -> Option<(u64, u64, String)> {
    for (index, line) in text.lines().enumerate().skip(from_line.saturating_sub(1) as usize) {
        let Some(at) = line.find(&format!(": {value}")) else { continue };
        let end = at + 2 + value.len();
        if line[end..].chars().next().is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '-') {
            continue; // a longer value that starts the same
        }
        let key_start = line[..at].rfind(|c: char| c.is_whitespace() || c == '{' || c == ',').map_or(0, |i| i + 1);
        return Some((index as u64 + 1, key_start as u64 + 1, line[key_start..at].to_string()));
    }
    None
}

/// Where `key:` first appears as a mapping key at or after line `from_line`.
fn position_of_key_after(text: &str, key: &str, from_line: u64) -> Option<(u64, u64)> {
    for (index, line) in text.lines().enumerate().skip(from_line.saturating_sub(1) as usize) {
        let trimmed = line.trim_start().trim_start_matches("- ");
        let unquoted = trimmed.trim_start_matches(['"', '\'']);
        if let Some(after) = unquoted.strip_prefix(key)
            && after.trim_start_matches(['"', '\'']).starts_with(':')
        {
            return Some((index as u64 + 1, (line.len() - unquoted.len() + 1) as u64));
        }
    }
    None
}

/// Where the entry `key: value` first appears in `text`: `key` a whole mapping key (block
/// or flow style) and `value` its whole value (quoted or not).
fn position_of_entry(text: &str, key: &str, value: &str) -> (u64, u64) {
    let needle = format!("{key}:");
    for (index, line) in text.lines().enumerate() {
        for (at, _) in line.match_indices(&needle) {
            let whole_key = line[..at]
                .trim_end_matches(['"', '\''])
                .chars()
                .next_back()
                .is_none_or(|c| c.is_whitespace() || c == '{' || c == ',' || c == '-');
            let rest = line[at + needle.len()..].trim_start().trim_start_matches(['"', '\'']);
            let whole_value = rest.strip_prefix(value).is_some_and(|after| {
                after.chars().next().is_none_or(|c| matches!(c, ',' | '}' | ']' | '"' | '\'' | ' ' | '\t' | '#'))
            });
            if whole_key && whole_value {
                return (index as u64 + 1, at as u64 + 1);
            }
        }
    }
    position_of_key(text, key)
}

fn validate(path: &Path, text: &str, pipeline: &Pipeline) -> Result<(), PipelineError> {
    let fail = |(line, column): (u64, u64), field: String, message: String| PipelineError {
        file: path.to_path_buf(),
        line,
        column,
        field: Some(field),
        message,
    };
    let name = &pipeline.pipeline;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(fail(
            position_of_key(text, "pipeline"),
            "pipeline".into(),
            format!("{name:?} is not a pipeline name (letters, digits, `_` and `-`)"),
        ));
    }
    match (&pipeline.broker.embedded, &pipeline.broker.namesrv) {
        (Some(_), Some(_)) => {
            return Err(fail(
                position_of_key(text, "namesrv"),
                "broker".into(),
                "give either `embedded` or `namesrv`, not both".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(fail(
                position_of_key(text, "namesrv"),
                "broker.namesrv".into(),
                "a remote broker needs the network protocol, which this build does not have yet; \
                 use `broker: { embedded: { data_dir: ... } }`"
                    .into(),
            ));
        }
        (Some(embedded), None) if embedded.data_dir.as_os_str().is_empty() => {
            return Err(fail(
                position_of_key(text, "data_dir"),
                "broker.embedded.data_dir".into(),
                "the data directory is empty".into(),
            ));
        }
        _ => {}
    }
    for (topic, section) in &pipeline.topics {
        if let Err(error) = validate_topic_name(topic) {
            return Err(fail(position_of_key(text, topic), format!("topics.{topic}"), error.to_string()));
        }
        if section.queues == 0 || section.queues > QUEUE_COUNT_MAX {
            return Err(fail(
                position_of_entry(text, "queues", &section.queues.to_string()),
                format!("topics.{topic}.queues"),
                format!("{} is not in 1..={QUEUE_COUNT_MAX}", section.queues),
            ));
        }
    }
    // Sink names become consumer groups (`connect-<name>`) and dead-letter topics (`%DLQ%<name>`).
    for (section, names) in
        [("sources", pipeline.sources.keys().collect::<Vec<_>>()), ("sinks", pipeline.sinks.keys().collect())]
    {
        for name in names {
            let valid = !name.is_empty()
                && name.len() <= 100
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid {
                return Err(fail(
                    block_position(text, section, name),
                    format!("{section}.{name}"),
                    "a name is 1 to 100 letters, digits, `_` or `-`".into(),
                ));
            }
        }
    }
    // One name space for every connector and job: the admin API, statuses and controls are
    // keyed by name, so two of one name would replace each other's control.
    let mut seen_names: BTreeMap<&str, &str> = BTreeMap::new();
    let named = [
        ("sources", pipeline.sources.keys().collect::<Vec<_>>()),
        ("sinks", pipeline.sinks.keys().collect()),
        ("streams", pipeline.streams.keys().collect()),
    ];
    for (section, names) in named {
        for name in names {
            if let Some(first) = seen_names.insert(name, section) {
                return Err(fail(
                    block_position(text, section, name),
                    format!("{section}.{name}"),
                    format!("the name is already used in {first}; sources, sinks and streams need distinct names"),
                ));
            }
        }
    }
    let declared = |field: String, topic: &str| {
        if pipeline.topics.contains_key(topic) {
            Ok(())
        } else {
            Err(fail(
                position_of_entry(text, "topic", topic),
                field,
                format!("topic {topic:?} is not declared under `topics`"),
            ))
        }
    };
    for (source_name, source) in &pipeline.sources {
        let http = match source {
            SourceSection::Http(http) => http,
            SourceSection::File(file) => {
                validate_file_source(text, source_name, file)
                    .map_err(|(at, field, message)| fail(at, field, message))?;
                if let Err(ConnectError::Config { field, reason, .. }) = file.task_config(source_name).validate() {
                    let path = setting_path(field);
                    let key = path.rsplit('.').next().unwrap_or(path);
                    return Err(fail(
                        position_in(text, "sources", source_name, key),
                        format!("sources.{source_name}.{path}"),
                        reason,
                    ));
                }
                declared(format!("sources.{source_name}.topic"), &file.topic)?;
                continue;
            }
            SourceSection::MysqlCdc(cdc) => {
                let checked = cdc.settings().and_then(|config| {
                    let topics = [
                        ("schema_topic", config.schema_topic.clone()),
                        ("heartbeat_topic", config.heartbeat_topic.clone()),
                    ];
                    weir_connectors::sources::mysql_cdc::MySqlCdcSource::new(source_name, config).map_err(|error| {
                        let weir_connectors::sources::mysql_cdc::MySqlCdcError::Config { field, reason, .. } = error;
                        (Some(field.to_string()), reason)
                    })?;
                    Ok(topics)
                });
                let topics = checked.map_err(|(field, reason)| {
                    let at = field.as_deref().map_or_else(
                        || block_position(text, "sources", source_name),
                        |f| position_in(text, "sources", source_name, f),
                    );
                    fail(at, format!("sources.{source_name}.{}", field.as_deref().unwrap_or("type")), reason)
                })?;
                for (field, topic) in topics {
                    declared(format!("sources.{source_name}.{field}"), &topic)?;
                }
                if let Err(ConnectError::Config { field, reason, .. }) = cdc.task_config(source_name).validate() {
                    let path = setting_path(field);
                    let key = path.rsplit('.').next().unwrap_or(path);
                    return Err(fail(
                        position_in(text, "sources", source_name, key),
                        format!("sources.{source_name}.{path}"),
                        reason,
                    ));
                }
                continue;
            }
        };
        if http.listen.parse::<SocketAddr>().is_err() {
            return Err(fail(
                position_of_entry(text, "listen", &http.listen),
                format!("sources.{source_name}.listen"),
                format!("{:?} is not an `ip:port` address", http.listen),
            ));
        }
        if http.body_bytes_max.is_some_and(|max| max == 0 || max > HTTP_BODY_BYTES_MAX) {
            return Err(fail(
                position_in(text, "sources", source_name, "body_bytes_max"),
                format!("sources.{source_name}.body_bytes_max"),
                format!("must be in 1..={HTTP_BODY_BYTES_MAX}"),
            ));
        }
        if http.request_timeout_ms.is_some_and(|ms| ms == 0 || ms > 3_600_000) {
            return Err(fail(
                position_in(text, "sources", source_name, "request_timeout_ms"),
                format!("sources.{source_name}.request_timeout_ms"),
                "must be in 1..=3600000".into(),
            ));
        }
        if http.auth_token.as_deref().is_some_and(|token| token.trim().is_empty()) {
            return Err(fail(
                position_in(text, "sources", source_name, "auth_token"),
                format!("sources.{source_name}.auth_token"),
                "the token is empty (leave the field out for no authentication)".into(),
            ));
        }
        if http.routes.is_empty() {
            return Err(fail(
                block_position(text, "sources", source_name),
                format!("sources.{source_name}.routes"),
                "an HTTP source needs at least one route".into(),
            ));
        }
        let mut paths = std::collections::BTreeSet::new();
        for (index, route) in http.routes.iter().enumerate() {
            let field = format!("sources.{source_name}.routes[{index}]");
            let plain = route.path.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_-.~".contains(&b));
            if !route.path.starts_with('/') || !plain || route.path == "/health" || !paths.insert(route.path.as_str()) {
                return Err(fail(
                    position_of_entry(text, "path", &route.path),
                    format!("{field}.path"),
                    format!(
                        "{:?} must start with `/`, use only letters, digits and `/_-.~`, not be /health, \
                         and be unique within the source",
                        route.path
                    ),
                ));
            }
            declared(format!("{field}.topic"), &route.topic)?;
            let templates = [("tag", &route.tag), ("key", &route.key), ("timestamp_field", &route.timestamp_field)];
            for (name, value) in templates {
                let Some(value) = value else { continue };
                let problem = if route.format == RouteFormat::Text {
                    Some("plain text lines have no fields to take it from".to_string())
                } else if name == "timestamp_field" {
                    value.trim().is_empty().then(|| "the field name is empty".to_string())
                } else {
                    template_problem(value)
                };
                if let Some(problem) = problem {
                    return Err(fail(position_of_entry(text, name, value), format!("{field}.{name}"), problem));
                }
            }
        }
    }
    for (job, stream) in &pipeline.streams {
        let at = position_in(text, "streams", job, "sql");
        if stream.sql.trim().is_empty() {
            return Err(fail(at, format!("streams.{job}.sql"), "the SQL is empty".into()));
        }
        if stream.checkpoint_interval_ms.is_some_and(|ms| !(10..=3_600_000).contains(&ms)) {
            return Err(fail(
                position_in(text, "streams", job, "checkpoint_interval_ms"),
                format!("streams.{job}.checkpoint_interval_ms"),
                "must be in 10..=3600000".into(),
            ));
        }
        let sql = weir_streams::parse_job(&stream.sql)
            .map_err(|error| fail(at, format!("streams.{job}.sql"), error.to_string()))?;
        let read = sql.tables.iter().map(|t| &t.topic);
        let written = sql.inserts.iter().map(|i| &i.topic).filter(|target| !sql.is_blackhole(target));
        for topic in read.chain(written) {
            if !pipeline.topics.contains_key(topic) {
                return Err(fail(
                    at,
                    format!("streams.{job}.sql"),
                    format!("topic {topic:?} is not declared under `topics`"),
                ));
            }
        }
    }
    for (sink_name, sink) in &pipeline.sinks {
        let (topic, tags) = match sink {
            SinkSection::File(file) => {
                if file.rotate_bytes == Some(0) {
                    return Err(fail(
                        position_in(text, "sinks", sink_name, "rotate_bytes"),
                        format!("sinks.{sink_name}.rotate_bytes"),
                        "must be positive".into(),
                    ));
                }
                if file.path.as_os_str().is_empty() {
                    return Err(fail(
                        block_position(text, "sinks", sink_name),
                        format!("sinks.{sink_name}.path"),
                        "the path is empty".into(),
                    ));
                }
                (&file.topic, &file.tags)
            }
            SinkSection::Stdout(sink) | SinkSection::Blackhole(sink) => (&sink.topic, &sink.tags),
            SinkSection::Mysql(external)
            | SinkSection::Redis(external)
            | SinkSection::Elasticsearch(external)
            | SinkSection::Doris(external) => {
                if let Err((field, reason)) = validate_external_sink(sink) {
                    let at = match &field {
                        Some(field) => position_in(text, "sinks", sink_name, field),
                        None => block_position(text, "sinks", sink_name),
                    };
                    let path = format!("sinks.{sink_name}.{}", field.as_deref().unwrap_or("type"));
                    return Err(fail(at, path, reason));
                }
                (&external.topic, &external.tags)
            }
        };
        declared(format!("sinks.{sink_name}.topic"), topic)?;
        if let Err(ConnectError::Config { field, reason, .. }) = sink.task_config(sink_name).validate() {
            let path = setting_path(field);
            let key = path.rsplit('.').next().unwrap_or(path);
            return Err(fail(position_in(text, "sinks", sink_name, key), format!("sinks.{sink_name}.{path}"), reason));
        }
        if let Some(tags) = tags
            && let Err(error) = TagExpression::parse(tags)
        {
            return Err(fail(
                position_of_entry(text, "tags", tags),
                format!("sinks.{sink_name}.tags"),
                error.to_string(),
            ));
        }
    }
    Ok(())
}

/// An external sink's own settings, parsed and checked: `(field, reason)` of the first problem.
fn validate_external_sink(sink: &SinkSection) -> Result<(), (Option<String>, String)> {
    use weir_connectors::sinks::{doris, elasticsearch, mysql, redis};
    let checked = |result: Result<(), (&'static str, String)>| {
        result.map_err(|(field, reason)| (Some(field.to_string()), reason))
    };
    match sink {
        SinkSection::Mysql(external) => checked(external.settings::<mysql::MySqlSinkConfig>()?.validate()),
        SinkSection::Redis(external) => checked(external.settings::<redis::RedisSinkConfig>()?.validate()),
        SinkSection::Elasticsearch(external) => {
            checked(external.settings::<elasticsearch::ElasticsearchSinkConfig>()?.validate())
        }
        SinkSection::Doris(external) => checked(external.settings::<doris::DorisSinkConfig>()?.validate()),
        SinkSection::File(_) | SinkSection::Stdout(_) | SinkSection::Blackhole(_) => Ok(()),
    }
}

/// A file source's own fields: `(position, field, message)` of the first problem.
fn validate_file_source(text: &str, name: &str, file: &FileSource) -> Result<(), ((u64, u64), String, String)> {
    if file.path.as_os_str().is_empty() {
        return Err((
            block_position(text, "sources", name),
            format!("sources.{name}.path"),
            "the path is empty".into(),
        ));
    }
    let line_max = weir_connectors::sources::file::LINE_BYTES_MAX as u64;
    if file.line_bytes_max.is_some_and(|max| max == 0 || max > line_max) {
        return Err((
            position_in(text, "sources", name, "line_bytes_max"),
            format!("sources.{name}.line_bytes_max"),
            format!("must be in 1..={line_max}"),
        ));
    }
    if let Some(tag) = &file.tag
        && (tag.is_empty() || tag.contains(char::is_whitespace) || tag.contains("||"))
    {
        return Err((
            position_of_entry(text, "tag", tag),
            format!("sources.{name}.tag"),
            "a tag is a non-empty word without spaces or `||`".into(),
        ));
    }
    Ok(())
}

/// Largest `body_bytes_max` an HTTP source may set (bodies are held in memory whole).
pub const HTTP_BODY_BYTES_MAX: u64 = 64 << 20;

/// What is wrong with a `{{field}}` template, if anything.
fn template_problem(template: &str) -> Option<String> {
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            return Some(format!("{template:?} opens `{{{{` without closing it"));
        };
        let field = after[..close].trim();
        if field.is_empty() || field.contains(['{', '}']) {
            return Some(format!("{template:?} has an empty or malformed `{{{{field}}}}`"));
        }
        rest = &after[close + 2..];
    }
    rest.contains("}}").then(|| format!("{template:?} closes `}}}}` without opening it"))
}

/// One line summing a valid pipeline up.
pub fn summary(pipeline: &Pipeline) -> String {
    format!(
        "pipeline {}: {} topics, {} sources, {} stream jobs, {} sinks",
        pipeline.pipeline,
        pipeline.topics.len(),
        pipeline.sources.len(),
        pipeline.streams.len(),
        pipeline.sinks.len()
    )
}
