//! `weir run FILE`: starts a pipeline on the embedded broker — topics, sources, stream jobs,
//! sinks — and stops it cleanly on Ctrl-C (sources stop taking requests, stream jobs
//! checkpoint, sinks flush and commit, the store closes).
//!
//! File sources, stream jobs and sinks run under a supervisor: a failed task is logged and
//! restarted after a backoff (1 s doubling to 60 s) without stopping the rest. A source or
//! sink type the runtime lacks is refused by name.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::watch;
use weir_broker::{Messaging, TopicConfig};
use weir_connect::{FilePositionStore, Sink, run_sink_task, run_source_task};
use weir_connectors::sinks::{BlackholeSink, FileSink, FileSinkConfig, StdoutSink};
use weir_connectors::sources::file::{FileSource, FileSourceConfig, StartAt};
use weir_connectors::sources::http::{self, HttpRoute, HttpSourceConfig};
use weir_connectors::sources::mysql_cdc::MySqlCdcSource;

use crate::admin::{StoreArgs, open_broker};
use crate::pipeline::{self, RouteFormat, SinkSection, SourceSection};
use crate::rest::{self, ConnectorKind, ConnectorState, ConnectorStatus, Control, Controls, Statuses};

/// Longest wait before a failed sink task is restarted.
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(60);

pub async fn run(file: &std::path::Path, segment_size_bytes: u64, admin_listen: std::net::SocketAddr) -> Result<()> {
    let pipeline = pipeline::load(file)?;
    // Every component's metrics go to one Prometheus recorder, served on the admin API.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let statuses: Statuses = Arc::default();
    let controls: Controls = Arc::default();
    let data_dir = pipeline
        .broker
        .embedded
        .as_ref()
        .map_or_else(|| std::path::PathBuf::from("./data"), |embedded| embedded.data_dir.clone());
    let broker = open_broker(&StoreArgs { data_dir: data_dir.clone(), segment_size_bytes })?;
    let messaging: Arc<dyn Messaging> = Arc::new(broker.clone());
    let positions = FilePositionStore::open(data_dir.join("connect/source-positions.json"))?;
    // Sinks' own durable state (the Doris sink's load journal), by connector name.
    let sink_state = FilePositionStore::open(data_dir.join("connect/sink-state.json"))?;
    println!("pipeline {}: broker on {}", pipeline.pipeline, data_dir.display());
    for (name, topic) in &pipeline.topics {
        let config = messaging.ensure_topic(TopicConfig::new(name, topic.queues)).await?;
        println!("  topic {name}: {} queues", config.queue_count);
    }
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    let started =
        Started { messaging, positions, sink_state, metrics, statuses, controls, stopped, data_dir: data_dir.clone() };
    // Whatever happens once tasks run (a listener that cannot bind, a signal), they are
    // stopped and the store is closed before returning.
    let outcome = start_and_wait(&pipeline, admin_listen, started, &mut tasks).await;
    match &outcome {
        Ok(()) => println!("stopping: sources stop, sinks flush and commit"),
        Err(error) => eprintln!("cannot run the pipeline: {error:#}; stopping what started"),
    }
    let _ = stop.send(true);
    for task in tasks {
        let _ = task.await;
    }
    tokio::task::spawn_blocking(move || broker.close()).await??;
    outcome?;
    println!("stopped");
    Ok(())
}

/// What the pipeline's tasks share.
struct Started {
    messaging: Arc<dyn Messaging>,
    positions: FilePositionStore,
    /// Sinks' own durable state, by connector (`<data_dir>/connect/sink-state.json`).
    sink_state: FilePositionStore,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    statuses: Statuses,
    controls: Controls,
    stopped: watch::Receiver<bool>,
    /// Stream job checkpoints go under `<data_dir>/streams`.
    data_dir: std::path::PathBuf,
}

/// Starts the admin API, sources and sinks (pushing their tasks), then waits for SIGINT or
/// SIGTERM. An error leaves the tasks started so far for the caller to stop.
async fn start_and_wait(
    pipeline: &pipeline::Pipeline,
    admin_listen: std::net::SocketAddr,
    started: Started,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<()> {
    let Started { messaging, positions, sink_state, metrics, statuses, controls, stopped, data_dir } = started;
    let admin = tokio::net::TcpListener::bind(admin_listen)
        .await
        .with_context(|| format!("admin API: cannot listen on {admin_listen}"))?;
    println!("  admin API: http://{}/connectors, /metrics", admin.local_addr()?);
    let mut admin_stopped = stopped.clone();
    let admin_shutdown = async move {
        let _ = admin_stopped.wait_for(|stop| *stop).await;
    };
    tasks.push(tokio::spawn({
        let context = rest::AdminContext {
            metrics,
            statuses: statuses.clone(),
            controls: controls.clone(),
            broker: messaging.clone(),
            positions: positions.clone(),
            offsets_lock: Arc::default(),
        };
        async move {
            if let Err(error) = rest::serve(admin, context, admin_shutdown).await {
                tracing::error!(%error, "admin API stopped");
            }
        }
    }));
    for (name, source) in &pipeline.sources {
        let section = match source {
            SourceSection::Http(section) => section,
            SourceSection::File(section) => {
                let config = file_source_config(name, section);
                println!("  source {name}: file {} -> topic {}", section.path.display(), section.topic);
                let status = ConnectorStatus::new(ConnectorKind::Source, &section.topic);
                let control = register(&statuses, &controls, name, status);
                let task_config = section.task_config(name);
                let run_once = {
                    let (messaging, positions) = (messaging.clone(), positions.clone());
                    move |mut stop: watch::Receiver<bool>| -> RunFuture {
                        let (messaging, positions, config) = (messaging.clone(), positions.clone(), config.clone());
                        let task_config = task_config.clone();
                        Box::pin(async move {
                            let mut source = FileSource::new(config);
                            run_source_task(messaging, &mut source, &positions, &task_config, &mut stop).await?;
                            Ok(())
                        })
                    }
                };
                let supervisor = supervise(name.clone(), stopped.clone(), statuses.clone(), control, run_once);
                tasks.push(tokio::spawn(supervisor));
                continue;
            }
            SourceSection::MysqlCdc(section) => {
                let config = section.settings().map_err(|(field, reason)| {
                    anyhow::anyhow!("source {name:?}: `{}` {reason}", field.unwrap_or_default())
                })?;
                MySqlCdcSource::new(name, config.clone())?; // refuse bad settings before anything runs
                println!("  source {name}: mysql_cdc -> topic {}", config.topic);
                let status = ConnectorStatus::new(ConnectorKind::Source, &config.topic);
                let control = register(&statuses, &controls, name, status);
                let task_config = section.task_config(name);
                let run_once = {
                    let (messaging, positions, name) = (messaging.clone(), positions.clone(), name.clone());
                    move |mut stop: watch::Receiver<bool>| -> RunFuture {
                        let (messaging, positions, config) = (messaging.clone(), positions.clone(), config.clone());
                        let (task_config, name) = (task_config.clone(), name.clone());
                        Box::pin(async move {
                            let mut source = MySqlCdcSource::new(&name, config)?;
                            run_source_task(messaging, &mut source, &positions, &task_config, &mut stop).await?;
                            Ok(())
                        })
                    }
                };
                let supervisor = supervise(name.clone(), stopped.clone(), statuses.clone(), control, run_once);
                tasks.push(tokio::spawn(supervisor));
                continue;
            }
        };
        let config = http_config(name, section)?;
        let listener =
            http::bind(&config).await.with_context(|| format!("source {name}: cannot listen on {}", config.listen))?;
        for route in &config.routes {
            println!("  source {name}: POST http://{}{} -> topic {}", listener.local_addr()?, route.path, route.topic);
        }
        let topics: Vec<&str> = config.routes.iter().map(|route| route.topic.as_str()).collect();
        let mut status = ConnectorStatus::new(ConnectorKind::HttpSource, &topics.join(","));
        status.restartable = false;
        let control = register(&statuses, &controls, name, status);
        tasks.push(tokio::spawn(follow_pause(
            name.clone(),
            config.paused.clone(),
            control,
            stopped.clone(),
            statuses.clone(),
        )));
        let mut source_stopped = stopped.clone();
        let shutdown = async move {
            let _ = source_stopped.wait_for(|stop| *stop).await;
        };
        let messaging = messaging.clone();
        let name = name.clone();
        let statuses = statuses.clone();
        tasks.push(tokio::spawn(async move {
            let state = match http::serve(listener, messaging, config, shutdown).await {
                Ok(()) => ConnectorState::Stopped,
                Err(error) => {
                    tracing::error!(source = %name, %error, "HTTP source stopped");
                    ConnectorState::Failed(error.to_string())
                }
            };
            rest::set_state(&statuses, &name, state);
        }));
    }
    for (name, stream) in &pipeline.streams {
        // Plan now so a query DataFusion refuses stops the start, not a task later.
        let sql = weir_streams::parse_job(&stream.sql).with_context(|| format!("stream job {name}"))?;
        let job = weir_streams::Job::plan(name, &sql).await.with_context(|| format!("stream job {name}"))?;
        let mut config = weir_streams::JobRunConfig::new(name, &stream.sql, data_dir.join("streams"));
        if let Some(ms) = stream.checkpoint_interval_ms {
            config.checkpoint_interval = Duration::from_millis(ms);
        }
        let reads: Vec<String> = job.source_topics().into_iter().map(|(topic, _)| topic).collect();
        println!("  stream job {name}: {} -> {}", reads.join(","), job.sink_names().join(","));
        let control =
            register(&statuses, &controls, name, ConnectorStatus::new(ConnectorKind::Stream, &reads.join(",")));
        let run_once = {
            let messaging = messaging.clone();
            move |mut stop: watch::Receiver<bool>| -> RunFuture {
                let (messaging, config) = (messaging.clone(), config.clone());
                Box::pin(async move {
                    weir_streams::run_job(messaging, &config, &mut stop).await?;
                    Ok(())
                })
            }
        };
        tasks.push(tokio::spawn(supervise(name.clone(), stopped.clone(), statuses.clone(), control, run_once)));
    }
    for (name, sink) in &pipeline.sinks {
        let (config, describe) = (sink.task_config(name), describe_sink(sink));
        // Refuse a sink that cannot be built or reach its target before anything runs.
        drop(make_sink(name, sink, &sink_state).await?);
        println!("  sink {name}: topic {} -> {describe}", config.topic);
        let status = ConnectorStatus::new(ConnectorKind::Sink { group: config.group() }, &config.topic);
        let control = register(&statuses, &controls, name, status);
        let run_once = {
            let (messaging, section, name, sink_state) =
                (messaging.clone(), sink.clone(), name.clone(), sink_state.clone());
            move |mut stop: watch::Receiver<bool>| -> RunFuture {
                let (messaging, config, section, name, sink_state) =
                    (messaging.clone(), config.clone(), section.clone(), name.clone(), sink_state.clone());
                Box::pin(async move {
                    let mut sink = make_sink(&name, &section, &sink_state).await?;
                    run_sink_task(messaging, sink.as_mut(), &config, &mut stop).await?;
                    Ok(())
                })
            }
        };
        tasks.push(tokio::spawn(supervise(name.clone(), stopped.clone(), statuses.clone(), control, run_once)));
    }
    println!("running; Ctrl-C (or SIGTERM) stops, a second one exits at once");
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        signal = tokio::signal::ctrl_c() => signal.context("cannot wait for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("second interrupt: exiting without a clean stop");
            std::process::exit(130);
        }
    });
    Ok(())
}

fn http_config(name: &str, section: &pipeline::HttpSource) -> Result<HttpSourceConfig> {
    let listen = section.listen.parse().with_context(|| format!("source {name}: bad listen address"))?;
    let mut routes = Vec::new();
    for route in &section.routes {
        let format = match route.format {
            RouteFormat::Ndjson => http::Format::Ndjson,
            RouteFormat::JsonArray => http::Format::JsonArray,
            RouteFormat::Json => http::Format::Json,
            RouteFormat::Text => http::Format::Text,
            RouteFormat::Influx => http::Format::Influx,
        };
        routes.push(HttpRoute {
            path: route.path.clone(),
            topic: route.topic.clone(),
            format,
            tag: route.tag.clone(),
            key: route.key.clone(),
            timestamp_field: route.timestamp_field.clone(),
        });
    }
    let mut config = HttpSourceConfig::new(name, listen, routes);
    if let Some(max) = section.body_bytes_max {
        config.body_bytes_max = max as usize;
    }
    config.auth_token = section.auth_token.clone();
    if let Some(ms) = section.request_timeout_ms {
        config.request_timeout = Duration::from_millis(ms);
    }
    Ok(config)
}

fn file_source_config(name: &str, section: &pipeline::FileSource) -> FileSourceConfig {
    let mut config = FileSourceConfig::new(name, &section.path, &section.topic);
    config.tag = section.tag.clone();
    if section.start_at == Some(pipeline::StartAt::End) {
        config.start_at = StartAt::End;
    }
    if let Some(max) = section.line_bytes_max {
        config.line_bytes_max = max as usize;
    }
    config
}

fn describe_sink(sink: &SinkSection) -> String {
    let setting = |external: &pipeline::ExternalSink, name: &str| {
        external.settings.get(name).and_then(|value| value.as_str()).unwrap_or("?").to_string()
    };
    match sink {
        SinkSection::File(file) => format!("file {}", file.path.display()),
        SinkSection::Stdout(_) => "stdout".to_string(),
        SinkSection::Blackhole(_) => "blackhole".to_string(),
        SinkSection::Mysql(external) => format!("mysql table {}", setting(external, "table")),
        SinkSection::Redis(external) => format!("redis {} {}", setting(external, "command"), setting(external, "key")),
        SinkSection::Elasticsearch(external) => format!("elasticsearch index {}", setting(external, "index")),
        SinkSection::Doris(external) => {
            format!("doris table {}.{}", setting(external, "database"), setting(external, "table"))
        }
    }
}

/// Builds a sink; external ones connect and check their target first.
async fn make_sink(name: &str, sink: &SinkSection, sink_state: &FilePositionStore) -> Result<Box<dyn Sink>> {
    use weir_connectors::sinks::{doris, elasticsearch, mysql, redis};
    let bad = |(field, reason): (Option<String>, String)| {
        anyhow::anyhow!("sink {name:?}: `{}` {reason}", field.unwrap_or_default())
    };
    Ok(match sink {
        SinkSection::File(file) => {
            let mut config = FileSinkConfig::new(&file.path);
            if let Some(rotate_bytes) = file.rotate_bytes {
                config.rotate_bytes = rotate_bytes;
            }
            Box::new(FileSink::new(config))
        }
        SinkSection::Stdout(_) => Box::new(StdoutSink::default()),
        SinkSection::Blackhole(_) => Box::new(BlackholeSink::default()),
        SinkSection::Mysql(external) => {
            let config = external.settings().map_err(bad)?;
            Box::new(mysql::MySqlSink::connect(name, config).await?)
        }
        SinkSection::Redis(external) => {
            let config = external.settings().map_err(bad)?;
            Box::new(redis::RedisSink::connect(name, config).await?)
        }
        SinkSection::Elasticsearch(external) => {
            let config = external.settings().map_err(bad)?;
            Box::new(elasticsearch::ElasticsearchSink::connect(name, config).await?)
        }
        SinkSection::Doris(external) => {
            let config = external.settings().map_err(bad)?;
            let journal = Arc::new(sink_state.clone());
            Box::new(doris::DorisSink::connect(name, config).await?.with_load_journal(journal).await?)
        }
    })
}

/// One run of a connector task; it returns when its stop receiver turns true.
type RunFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>;

/// Adds a connector to the admin API's tables; returns its control channel.
fn register(statuses: &Statuses, controls: &Controls, name: &str, status: ConnectorStatus) -> watch::Receiver<Control> {
    statuses.lock().expect("statuses lock").insert(name.to_string(), status);
    let (control, control_rx) = watch::channel(Control::default());
    controls.lock().expect("controls lock").insert(name.to_string(), control);
    control_rx
}

/// Mirrors an HTTP source's pause control into its `paused` flag (and status).
/// Returns when the pipeline stops.
async fn follow_pause(
    name: String,
    paused: Arc<std::sync::atomic::AtomicBool>,
    mut control: watch::Receiver<Control>,
    mut stopped: watch::Receiver<bool>,
    statuses: Statuses,
) {
    loop {
        tokio::select! {
            changed = control.changed() => if changed.is_err() { return },
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        let pause = control.borrow().paused;
        paused.store(pause, std::sync::atomic::Ordering::Relaxed);
        let state = if pause { ConnectorState::Paused } else { ConnectorState::Running };
        rest::set_state(&statuses, &name, state);
    }
}

/// Runs a connector task until the pipeline stops: restarts it with backoff when it fails,
/// and follows `control` (pause, resume, restart from the admin API). Each run gets its own
/// stop signal, raised by the pipeline's stop or any control change.
async fn supervise(
    name: String,
    mut stopped: watch::Receiver<bool>,
    statuses: Statuses,
    mut control: watch::Receiver<Control>,
    mut run_once: impl FnMut(watch::Receiver<bool>) -> RunFuture,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        // One read of the control per pass: a change after it is seen by the watcher below.
        let seen = *control.borrow_and_update();
        // Paused: wait for resume (or the end), then look again.
        if seen.paused && !*stopped.borrow() {
            rest::set_state(&statuses, &name, ConnectorState::Paused);
            tokio::select! {
                // A closed control (the admin tables dropped) changes nothing.
                Ok(_) = control.wait_for(|c| !c.paused) => {}
                _ = stopped.wait_for(|stop| *stop) => {}
            }
            continue;
        }
        if *stopped.borrow() {
            rest::set_state(&statuses, &name, ConnectorState::Stopped);
            return;
        }
        // This run stops when the pipeline stops or the admin API changes the control.
        let (run_stop, run_stopped) = watch::channel(false);
        let watcher = tokio::spawn({
            let (mut stopped, mut control) = (stopped.clone(), control.clone());
            async move {
                tokio::select! {
                    _ = stopped.wait_for(|stop| *stop) => {}
                    Ok(_) = control.wait_for(|c| *c != seen) => {}
                }
                let _ = run_stop.send(true);
                // Keep the sender alive until the run notices, so a dropped sender never
                // reads as a stop by itself.
                std::future::pending::<()>().await;
            }
        });
        rest::set_state(&statuses, &name, ConnectorState::Running);
        // Its own task: a panic in a connector is a failure like any other (reported,
        // restarted with backoff), not the end of its supervisor.
        let outcome = match tokio::spawn(run_once(run_stopped)).await {
            Ok(outcome) => outcome,
            Err(join) if join.is_panic() => {
                let panic = join.into_panic();
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|text| text.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".into());
                Err(anyhow::anyhow!("the task panicked: {message}"))
            }
            Err(join) => Err(anyhow::anyhow!("the task ended abnormally: {join}")),
        };
        watcher.abort();
        match outcome {
            Ok(()) => {
                backoff = Duration::from_secs(1);
                continue; // stopped, paused or restarted: the loop head decides
            }
            Err(error) => {
                rest::set_state(&statuses, &name, ConnectorState::Failed(format!("{error:#}")));
                tracing::error!(connector = %name, error = format!("{error:#}"), restart_in_s = backoff.as_secs(), "connector task failed");
                eprintln!("connector {name}: {error:#}; restarting in {} s", backoff.as_secs());
            }
        }
        let before = *control.borrow();
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {} // restart backoff
            Ok(_) = control.wait_for(|c| *c != before) => {} // a restart or pause from the admin API
            _ = stopped.wait_for(|stop| *stop) => {}
        }
        backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
    }
}
