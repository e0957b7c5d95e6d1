//! `weir debug crash-writer`: appends in sync-flush mode and prints every acknowledged
//! message, until killed. The crash test kills it with SIGKILL and checks that every printed
//! acknowledgement survived.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use weir_broker::storage::FlushMode;
use weir_broker::{Broker, BrokerConfig, TopicConfig};

#[derive(Subcommand)]
pub enum DebugCommand {
    /// Send `p<producer>-<seq>` messages forever in sync-flush mode; print `ack` lines.
    CrashWriter {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 4)]
        producers: u32,
        #[arg(long, default_value_t = 65536)]
        segment_size_bytes: u64,
    },
}

/// The store config the crash test reopens with.
pub fn crash_config(dir: PathBuf, segment_size_bytes: u64) -> BrokerConfig {
    let mut config = BrokerConfig::new(dir);
    config.store.flush_mode = FlushMode::Sync;
    config.store.segment_size_bytes = segment_size_bytes;
    config.store.message_size_max_bytes = 4096;
    config.store.consume_queue_entries_per_file = 1000;
    config.store.index_slots = 1024;
    config.store.index_entries_max = 4096;
    config.store.checkpoint_interval_ms = 20;
    config
}

pub async fn run(command: DebugCommand) -> Result<()> {
    let DebugCommand::CrashWriter { dir, producers, segment_size_bytes } = command;
    let broker = Broker::open(crash_config(dir, segment_size_bytes))?;
    if broker.topic("crash").is_none() {
        broker.create_topic(TopicConfig::new("crash", producers))?;
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1024);
    for producer in 0..producers {
        let broker = broker.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            // Continue each producer's sequence after what earlier runs stored.
            let mut seq = broker.queue_range("crash", producer).max_offset;
            loop {
                let body = format!("p{producer}-{seq}-{}", "x".repeat((seq % 300) as usize));
                let sent = match append_to_queue(&broker, body.into_bytes(), producer).await {
                    Ok(sent) => sent,
                    Err(error) => {
                        eprintln!("send failed: {error}");
                        return;
                    }
                };
                if tx.send(format!("ack {producer} {seq} {} {}", sent.queue_id, sent.queue_offset)).await.is_err() {
                    return;
                }
                seq += 1;
            }
        });
    }
    drop(tx);
    let mut stdout = std::io::stdout().lock();
    while let Some(line) = rx.recv().await {
        writeln!(stdout, "{line}")?;
        stdout.flush()?;
    }
    Ok(())
}

/// Appends to a fixed queue, so each producer owns one queue and its order is checkable.
async fn append_to_queue(
    broker: &Broker,
    body: Vec<u8>,
    queue_id: u32,
) -> weir_broker::Result<weir_broker::storage::AppendedMessage> {
    let message = weir_broker::storage::NewMessage {
        topic: "crash".to_string(),
        queue_id,
        flags: 0,
        born_timestamp_ms: 0,
        born_host: "127.0.0.1:0".parse().expect("a valid address"),
        reconsume_count: 0,
        prepared_transaction_offset: 0,
        properties: Vec::new(),
        body,
    };
    let mut placed = broker.append(vec![message]).await?;
    Ok(placed.pop().expect("one placement per message"))
}
