//! Admin subcommands on an embedded data directory: topics, send, consume, queries, groups.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use weir_broker::storage::FlushMode;
use weir_broker::{Broker, BrokerConfig, Message, OffsetReset, PullRequest, PullStatus, StoredMessage, TopicConfig};

/// Where the embedded broker lives and how a new data directory is laid out.
pub struct StoreArgs {
    pub data_dir: std::path::PathBuf,
    pub segment_size_bytes: u64,
}

/// Opens the embedded broker with sync flush (a CLI command's writes are durable when it
/// exits). An existing data directory keeps its layout; a new one gets `segment_size_bytes`.
pub fn open_broker(store: &StoreArgs) -> Result<Broker> {
    let (data_dir, segment_size_bytes) = (store.data_dir.as_path(), store.segment_size_bytes);
    let mut config = BrokerConfig::new(data_dir);
    config.store.flush_mode = FlushMode::Sync;
    config.store.set_segment_size_bytes(segment_size_bytes);
    config.store.adopt_existing_layout()?;
    if !data_dir.join("store.json").exists() {
        eprintln!(
            "creating {} with {} MiB commitlog segments (the first one is written out now)",
            data_dir.display(),
            segment_size_bytes >> 20
        );
    }
    Broker::open(config).with_context(|| format!("cannot open the data directory {}", data_dir.display()))
}

#[derive(Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        /// Number of queues.
        #[arg(long, default_value_t = 4)]
        queues: u32,
    },
    /// List topics.
    List,
    /// Show a topic's config and the offsets of its queues.
    Describe { name: String },
    /// Delete a topic, its queues and its consumer offsets.
    Delete { name: String },
}

pub async fn topic(store: &StoreArgs, command: TopicCommand) -> Result<()> {
    let broker = open_broker(store)?;
    match command {
        TopicCommand::Create { name, queues } => {
            broker.create_topic(TopicConfig::new(&name, queues))?;
            println!("created topic {name} with {queues} queues");
        }
        TopicCommand::List => {
            for topic in broker.topics() {
                println!("{}\tqueues={}", topic.name, topic.queue_count);
            }
        }
        TopicCommand::Describe { name } => {
            let topic = broker.topic(&name).with_context(|| format!("topic {name:?} does not exist"))?;
            println!(
                "topic {} queues={} readable={} writable={}",
                topic.name, topic.queue_count, topic.permission.readable, topic.permission.writable
            );
            for queue_id in 0..topic.queue_count {
                let range = broker.queue_range(&name, queue_id);
                println!("  queue {queue_id}\tmin_offset={}\tmax_offset={}", range.min_offset, range.max_offset);
            }
        }
        TopicCommand::Delete { name } => {
            broker.delete_topic(&name).await?;
            println!("deleted topic {name}");
        }
    }
    broker.close()?;
    Ok(())
}

#[derive(Args)]
pub struct SendArgs {
    #[arg(long)]
    topic: String,
    #[arg(long)]
    tag: Option<String>,
    /// Message key (repeatable).
    #[arg(long = "key")]
    keys: Vec<String>,
    /// User property `name=value` (repeatable).
    #[arg(long = "property")]
    properties: Vec<String>,
    /// Messages with the same sharding key go to the same queue.
    #[arg(long)]
    sharding_key: Option<String>,
    /// The body; without it, every stdin line is sent as one message.
    body: Option<String>,
}

pub async fn send(store: &StoreArgs, args: SendArgs) -> Result<()> {
    let mut template = Message::new(&args.topic, Vec::new());
    template.tag = args.tag;
    template.keys = args.keys;
    template.sharding_key = args.sharding_key;
    for property in &args.properties {
        let (name, value) =
            property.split_once('=').with_context(|| format!("property {property:?} is not name=value"))?;
        template.properties.insert(name.to_string(), value.to_string());
    }
    template.validate()?;
    let bodies: Vec<String> = match args.body {
        Some(body) => vec![body],
        None => std::io::stdin().lines().collect::<std::io::Result<_>>().context("cannot read stdin")?,
    };
    let broker = open_broker(store)?;
    for body in bodies {
        let mut message = template.clone();
        message.body = body.into_bytes();
        let sent = broker.send(message).await?;
        println!("sent id={} queue={} offset={}", sent.message_id, sent.queue_id, sent.queue_offset);
    }
    broker.close()?;
    Ok(())
}

#[derive(Args)]
pub struct ConsumeArgs {
    #[arg(long)]
    topic: String,
    #[arg(long)]
    group: String,
    /// `*` or `TagA || TagB`.
    #[arg(long, default_value = "*")]
    tag_expression: String,
    /// Where a group without committed offsets starts: earliest or latest.
    #[arg(long, default_value = "earliest")]
    from: String,
    /// Stop after this many messages.
    #[arg(long, default_value_t = 100)]
    max: usize,
    /// Long-poll each queue this long when it has nothing new.
    #[arg(long, default_value_t = 0)]
    wait_ms: u64,
}

pub fn print_message(message: &StoredMessage) {
    println!(
        "queue={} offset={} id={} tag={} keys={} body={}",
        message.queue_id,
        message.queue_offset,
        message.message_id,
        message.tag.as_deref().unwrap_or("-"),
        if message.keys.is_empty() { "-".to_string() } else { message.keys.join(",") },
        String::from_utf8_lossy(&message.body)
    );
}

pub async fn consume(store: &StoreArgs, args: ConsumeArgs) -> Result<()> {
    let start_latest = match args.from.as_str() {
        "earliest" => false,
        "latest" => true,
        other => bail!("--from must be earliest or latest, not {other:?}"),
    };
    let broker = open_broker(store)?;
    let topic = broker.topic(&args.topic).with_context(|| format!("topic {:?} does not exist", args.topic))?;
    let mut printed = 0;
    for queue_id in 0..topic.queue_count {
        let range = broker.queue_range(&args.topic, queue_id);
        let mut offset = broker.committed_offset(&args.group, &args.topic, queue_id).unwrap_or(if start_latest {
            range.max_offset
        } else {
            range.min_offset
        });
        while printed < args.max {
            let mut request = PullRequest::new(&args.group, &args.topic, queue_id, offset);
            request.tag_expression = args.tag_expression.clone();
            request.messages_max = (args.max - printed).min(weir_broker::PULL_MESSAGES_MAX);
            request.long_poll_timeout = std::time::Duration::from_millis(args.wait_ms);
            let result = broker.pull(request).await?;
            for message in &result.messages {
                print_message(message);
            }
            printed += result.messages.len();
            let progressed = result.next_offset != offset;
            offset = result.next_offset;
            match result.status {
                PullStatus::Found | PullStatus::NoMatchedMessage if progressed => continue,
                PullStatus::OffsetTooSmall => continue,
                _ => break,
            }
        }
        broker.commit_offset(&args.group, &args.topic, queue_id, offset)?;
    }
    eprintln!("consumed {printed} messages");
    broker.close()?;
    Ok(())
}

#[derive(Subcommand)]
pub enum MessageCommand {
    /// Find messages by key, unique id or commitlog offset.
    Query {
        #[arg(long)]
        topic: String,
        #[arg(long, conflicts_with_all = ["id", "offset"])]
        key: Option<String>,
        #[arg(long, conflicts_with = "offset")]
        id: Option<String>,
        #[arg(long)]
        offset: Option<u64>,
        /// With --key: only messages stored at or after this time (ms since the Unix epoch).
        #[arg(long, requires = "key")]
        begin_ms: Option<i64>,
        /// With --key: only messages stored at or before this time (ms since the Unix epoch).
        #[arg(long, requires = "key")]
        end_ms: Option<i64>,
    },
}

pub async fn message(store: &StoreArgs, command: MessageCommand) -> Result<()> {
    let MessageCommand::Query { topic, key, id, offset, begin_ms, end_ms } = command;
    let broker = open_broker(store)?;
    let found = match (key, id, offset) {
        (Some(key), _, _) => {
            let (begin, end) = (begin_ms.unwrap_or(i64::MIN), end_ms.unwrap_or(i64::MAX));
            broker.query_by_key_between(&topic, &key, 64, begin, end).await?
        }
        (_, Some(id), _) => vec![broker.query_by_id(&topic, &id).await?],
        (_, _, Some(offset)) => vec![broker.query_by_offset(offset).await?],
        _ => bail!("give one of --key, --id or --offset"),
    };
    for message in &found {
        print_message(message);
    }
    eprintln!("found {} messages", found.len());
    broker.close()?;
    Ok(())
}

#[derive(Subcommand)]
pub enum GroupCommand {
    /// Show a group's committed offsets and lag per queue, or reset them.
    Offsets {
        #[arg(long)]
        group: String,
        #[arg(long)]
        topic: String,
        /// Reset to earliest, latest, or a store time in ms since the Unix epoch.
        #[arg(long)]
        reset: Option<String>,
    },
}

pub async fn group(store: &StoreArgs, command: GroupCommand) -> Result<()> {
    let GroupCommand::Offsets { group, topic, reset } = command;
    let broker = open_broker(store)?;
    let config = broker.topic(&topic).with_context(|| format!("topic {topic:?} does not exist"))?;
    if let Some(reset) = reset {
        let to = match reset.as_str() {
            "earliest" => OffsetReset::Earliest,
            "latest" => OffsetReset::Latest,
            other => OffsetReset::Timestamp(
                other
                    .parse()
                    .with_context(|| format!("--reset {other:?} is not earliest, latest or a ms timestamp"))?,
            ),
        };
        broker.reset_offsets(&group, &topic, to).await?;
    }
    let committed = broker.group_offsets(&group, &topic);
    for queue_id in 0..config.queue_count {
        let range = broker.queue_range(&topic, queue_id);
        match committed.get(&queue_id) {
            Some(offset) => println!(
                "queue {queue_id}\tcommitted={offset}\tmax_offset={}\tlag={}",
                range.max_offset,
                range.max_offset.saturating_sub(*offset)
            ),
            None => println!("queue {queue_id}\tcommitted=-\tmax_offset={}", range.max_offset),
        }
    }
    broker.close()?;
    Ok(())
}

/// `weir sql`: a bounded query over topics, printed as a table.
pub async fn sql(store: &StoreArgs, query: &str, from: &str, limit: usize, explain: bool) -> Result<()> {
    use weir_streams::inspect::{StartFrom, query_topics};
    let from = match from {
        "earliest" => StartFrom::Earliest,
        "latest" => StartFrom::Latest,
        time => StartFrom::Timestamp(
            time.parse().map_err(|_| anyhow::anyhow!("--from {time:?}: use earliest, latest or a time in ms"))?,
        ),
    };
    let broker = open_broker(store)?;
    let outcome = query_topics(&broker, query, from, limit, explain).await;
    broker.close()?;
    let inspection = outcome?;
    let table = weir_streams::datafusion::arrow::util::pretty::pretty_format_batches(&inspection.batches)?;
    println!("{table}");
    let rows: usize = inspection.batches.iter().map(|b| b.num_rows()).sum();
    let read: Vec<String> = inspection.messages_read.iter().map(|(topic, n)| format!("{n} from {topic}")).collect();
    let skipped = match inspection.messages_skipped {
        0 => String::new(),
        n => format!("; {n} messages were not JSON objects and were left out"),
    };
    eprintln!("{rows} rows; read {}{skipped}", read.join(", "));
    Ok(())
}
