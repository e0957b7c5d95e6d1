//! `weir run FILE`: starts a pipeline on the embedded broker — topics, HTTP sources, sinks —
//! and stops it cleanly on Ctrl-C (sources stop taking requests, sinks flush and commit, the
//! store closes).
//!
//! Sink tasks run under a supervisor: a failed task is logged and restarted after a backoff
//! (1 s doubling to 60 s) without stopping the rest. Stream jobs are validated but not executed
//! until the streams engine lands; a source or sink type the runtime lacks is refused by name.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::watch;
use weir_broker::{Messaging, TopicConfig};
use weir_connect::{Sink, SinkTaskConfig, run_sink_task};
use weir_connectors::sinks::{BlackholeSink, FileSink, FileSinkConfig, StdoutSink};
use weir_connectors::sources::http::{self, HttpRoute, HttpSourceConfig};

use crate::admin::{StoreArgs, open_broker};
use crate::pipeline::{self, RouteFormat, SinkSection, SourceSection};
use crate::rest::{self, ConnectorState, ConnectorStatus, Control, Controls, Statuses};

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
    println!("pipeline {}: broker on {}", pipeline.pipeline, data_dir.display());
    for (name, topic) in &pipeline.topics {
        let config = messaging.ensure_topic(TopicConfig::new(name, topic.queues)).await?;
        println!("  topic {name}: {} queues", config.queue_count);
    }
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    let admin = tokio::net::TcpListener::bind(admin_listen)
        .await
        .with_context(|| format!("admin API: cannot listen on {admin_listen}"))?;
    println!("  admin API: http://{}/connectors, /metrics", admin.local_addr()?);
    let mut admin_stopped = stopped.clone();
    let admin_shutdown = async move {
        let _ = admin_stopped.wait_for(|stop| *stop).await;
    };
    tasks.push(tokio::spawn({
        let (statuses, controls) = (statuses.clone(), controls.clone());
        async move {
            if let Err(error) = rest::serve(admin, metrics, statuses, controls, admin_shutdown).await {
                tracing::error!(%error, "admin API stopped");
            }
        }
    }));
    for (name, source) in &pipeline.sources {
        let SourceSection::Http(section) = source;
        let config = http_config(name, section)?;
        let listener =
            http::bind(&config).await.with_context(|| format!("source {name}: cannot listen on {}", config.listen))?;
        for route in &config.routes {
            println!("  source {name}: POST http://{}{} -> topic {}", listener.local_addr()?, route.path, route.topic);
        }
        let topics: Vec<&str> = config.routes.iter().map(|route| route.topic.as_str()).collect();
        let status = ConnectorStatus { kind: "source", topic: topics.join(","), state: ConnectorState::Running };
        statuses.lock().expect("statuses lock").insert(name.clone(), status);
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
    for name in pipeline.streams.keys() {
        println!("  stream job {name}: validated, not executed (the streams engine is not in this build)");
    }
    for (name, sink) in &pipeline.sinks {
        let (config, describe) = sink_config(name, sink);
        make_sink(sink)?; // refuse a sink that cannot be built before anything runs
        println!("  sink {name}: topic {} -> {describe}", config.topic);
        let status = ConnectorStatus { kind: "sink", topic: config.topic.clone(), state: ConnectorState::Running };
        statuses.lock().expect("statuses lock").insert(name.clone(), status);
        let (control, control_rx) = watch::channel(Control::default());
        controls.lock().expect("controls lock").insert(name.clone(), control);
        let supervisor =
            supervise(messaging.clone(), config, sink.clone(), stopped.clone(), statuses.clone(), control_rx);
        tasks.push(tokio::spawn(supervisor));
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
    println!("stopping: sources stop, sinks flush and commit");
    let _ = stop.send(true);
    for task in tasks {
        let _ = task.await;
    }
    tokio::task::spawn_blocking(move || broker.close()).await??;
    println!("stopped");
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

fn sink_config(name: &str, sink: &SinkSection) -> (SinkTaskConfig, String) {
    let (topic, tags, describe) = match sink {
        SinkSection::File(file) => (&file.topic, &file.tags, format!("file {}", file.path.display())),
        SinkSection::Stdout(sink) => (&sink.topic, &sink.tags, "stdout".to_string()),
        SinkSection::Blackhole(sink) => (&sink.topic, &sink.tags, "blackhole".to_string()),
    };
    let mut config = SinkTaskConfig::new(name, topic);
    if let Some(tags) = tags {
        config.tag_expression = tags.clone();
    }
    (config, describe)
}

fn make_sink(sink: &SinkSection) -> Result<Box<dyn Sink>> {
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
    })
}

/// Runs a sink task until the pipeline stops: restarts it with backoff when it fails, and
/// follows `control` (pause, resume, restart from the admin API).
async fn supervise(
    messaging: Arc<dyn Messaging>,
    config: SinkTaskConfig,
    section: SinkSection,
    mut stopped: watch::Receiver<bool>,
    statuses: Statuses,
    mut control: watch::Receiver<Control>,
) {
    let name = config.connector.clone();
    let mut backoff = Duration::from_secs(1);
    loop {
        // Paused: wait for resume (or the end).
        if control.borrow().paused {
            rest::set_state(&statuses, &name, ConnectorState::Paused);
            tokio::select! {
                _ = control.wait_for(|c| !c.paused) => {}
                _ = stopped.wait_for(|stop| *stop) => {}
            }
        }
        if *stopped.borrow() {
            rest::set_state(&statuses, &name, ConnectorState::Stopped);
            return;
        }
        let mut sink = match make_sink(&section) {
            Ok(sink) => sink,
            Err(error) => {
                tracing::error!(connector = %name, %error, "cannot build the sink");
                rest::set_state(&statuses, &name, ConnectorState::Failed(error.to_string()));
                return;
            }
        };
        // This run stops when the pipeline stops or the admin API changes the control.
        let seen = *control.borrow();
        let (run_stop, mut run_stopped) = watch::channel(false);
        let watcher = tokio::spawn({
            let (mut stopped, mut control) = (stopped.clone(), control.clone());
            async move {
                tokio::select! {
                    _ = stopped.wait_for(|stop| *stop) => {}
                    _ = control.wait_for(|c| *c != seen) => {}
                }
                let _ = run_stop.send(true);
                // Keep the sender alive until the run notices, so a dropped sender never
                // reads as a stop by itself.
                std::future::pending::<()>().await;
            }
        });
        rest::set_state(&statuses, &name, ConnectorState::Running);
        let outcome = run_sink_task(messaging.clone(), sink.as_mut(), &config, &mut run_stopped).await;
        watcher.abort();
        match outcome {
            Ok(_) => {
                backoff = Duration::from_secs(1);
                continue; // stopped, paused or restarted: the loop head decides
            }
            Err(error) => {
                rest::set_state(&statuses, &name, ConnectorState::Failed(error.to_string()));
                tracing::error!(connector = %name, %error, restart_in_s = backoff.as_secs(), "sink task failed");
                eprintln!("sink {name}: {error}; restarting in {} s", backoff.as_secs());
            }
        }
        let before = *control.borrow();
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {} // restart backoff
            _ = control.wait_for(|c| *c != before) => {} // a restart or pause from the admin API
            _ = stopped.wait_for(|stop| *stop) => {}
        }
        backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
    }
}
