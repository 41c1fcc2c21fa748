//! `serve`: load, listen (answering 503 while loading), shut down gracefully.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

use crate::*;
use rapid_host::plugins::PluginHub;
use rapid_host::registry::AliasRegistry;
use rapid_host::server::{AppState, router};

pub(crate) fn serve(registry: &AliasRegistry, args: ServeArgs) -> anyhow::Result<ExitCode> {
    use rapid_host::engine::Engine;
    use rapid_host::engine::prefix_cache::PrefixCacheConfig;
    use rapid_host::server::ServerLimits;
    use rapid_host::server::metrics::Metrics;
    use rapid_host::server::run::{BatchLimits, Runner};

    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build_global().context("cannot set threads")?;
    }
    let hub = PluginHub::load(plugin_runtime(&args.plugins)?, &args.plugins.plugins)?;
    if args.watch {
        hub.watch(std::time::Duration::from_millis(500)).context("cannot start the plugin watcher")?;
    }
    let set = hub.current();
    for failure in &set.failures {
        tracing::warn!("skipped {}: {}", failure.file.display(), failure.error);
    }
    let model = args.model.clone().unwrap_or_else(|| registry.default_alias().to_string());
    let resolved = match resolve(registry, &set, &args.plugins, &model)? {
        Ok(resolved) => resolved,
        Err(code) => return Ok(code),
    };
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| format!("`{}:{}` is not a valid listen address", args.host, args.port))?;
    // Parsers: the alias's, unless overridden; `none` turns one off.
    let pick = |flag: &Option<String>, from_alias: Option<&String>| match flag.as_deref() {
        Some("none") => None,
        Some(name) => Some(name.to_string()),
        None => from_alias.cloned(),
    };
    let profile = resolved.profile.as_ref();
    let tool_parser = pick(&args.tool_call_parser, profile.and_then(|p| p.tool_call_parser.as_ref()));
    let reasoning_parser = pick(&args.reasoning_parser, profile.and_then(|p| p.reasoning_parser.as_ref()));
    for (kind, name, known) in [
        ("tool-call", &tool_parser, set.tool_parser_names()),
        ("reasoning", &reasoning_parser, set.reasoning_parser_names()),
    ] {
        if let Some(name) = name
            && !known.contains(name)
        {
            bail!("the {kind} parser `{name}` is not among the plugins in {}", args.plugins.plugins.display());
        }
    }

    let path = model_file(&resolved, &args.models_dir, args.offline)?;
    let device = rapid_host::engine::device(&args.device)?;
    eprintln!("rapid-host {}", env!("CARGO_PKG_VERSION"));
    eprintln!(
        "  model    {} -> {} ({})",
        resolved.alias.as_deref().unwrap_or(&resolved.requested),
        resolved.hf_path,
        path.display()
    );
    // Listen while the model loads: /health answers, /health/ready and the API say 503.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let std_listener = std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    std_listener.set_nonblocking(true)?;
    let loading = {
        let _guard = runtime.enter();
        let listener = tokio::net::TcpListener::from_std(std_listener.try_clone()?)?;
        let (done, loaded) = tokio::sync::oneshot::channel::<()>();
        let server = runtime.spawn(async move {
            let _ = axum::serve(listener, rapid_host::server::loading_router())
                .with_graceful_shutdown(async move {
                    let _ = loaded.await;
                })
                .await;
        });
        (done, server)
    };
    let engine = Arc::new(Engine::load(&path, device, true)?);
    // Warm-up: the first forward pass pays for allocations; do it before taking traffic.
    let mut cache = engine.model.new_cache();
    engine.model.forward(&[engine.tokenizer.bos.unwrap_or(0)], &mut cache).context("warm-up failed")?;
    let _ = engine.grammar();
    drop(cache);
    eprintln!("  weights  {}", engine.weight_summary());
    let limits = ServerLimits {
        max_request_bytes: args.max_request_bytes,
        max_concurrent_requests: args.max_concurrent_requests,
        default_max_tokens: args.max_tokens,
        read_timeout: std::time::Duration::from_secs(args.read_timeout.max(1)),
    };
    let batch = BatchLimits { max_running: args.max_running_requests, max_batch_tokens: args.max_batch_tokens };
    let prefix = (!args.no_prefix_cache).then(|| PrefixCacheConfig {
        max_bytes: match args.prefix_cache_mb {
            Some(mb) => mb.saturating_mul(1 << 20),
            None => {
                PrefixCacheConfig::default_bytes(rapid_host::host_facts::HostFacts::detect("cpu").free_memory_bytes)
            }
        },
        max_snapshots: args.prefix_cache_snapshots,
        snapshot_interval: args.prefix_snapshot_interval,
    });
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let metrics = Arc::new(Metrics::default());
    let state = AppState {
        model: resolved.clone(),
        created,
        plugins: Arc::clone(&hub),
        runner: Arc::new(Runner::with_prefix_cache(
            Arc::clone(&engine),
            limits.max_concurrent_requests,
            Arc::clone(&metrics),
            batch,
            prefix,
        )),
        engine,
        tool_parser: tool_parser.clone(),
        reasoning_parser: reasoning_parser.clone(),
        limits,
        metrics,
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        responses: Default::default(),
    };
    for note in &resolved.notes {
        eprintln!("  note     {note}");
    }
    eprintln!(
        "  batching up to {} sequences, {} prompt tokens per step{}",
        batch.max_running,
        batch.max_batch_tokens,
        if state.engine.model.batches() { "" } else { " (this architecture runs them one after another)" }
    );
    match &prefix {
        Some(p) => eprintln!(
            "  prefix cache {} MiB, {} recurrent snapshots (every {} prompt tokens)",
            p.max_bytes >> 20,
            p.max_snapshots,
            p.snapshot_interval
        ),
        None => eprintln!("  prefix cache off"),
    }
    eprintln!(
        "  parsers  tool calls: {}, reasoning: {}",
        tool_parser.as_deref().unwrap_or("none"),
        reasoning_parser.as_deref().unwrap_or("none")
    );
    eprintln!(
        "  plugins  {} loaded from {} ({} failed){}",
        set.plugins.len(),
        args.plugins.plugins.display(),
        set.failures.len(),
        if args.watch { ", watching for changes" } else { "" }
    );

    let (done, loading_server) = loading;
    let drain_timeout = Duration::from_secs(args.drain_timeout);
    let outcome = runtime.block_on(async move {
        let _ = done.send(());
        let _ = loading_server.await;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        eprintln!("  listening on http://{addr}/v1");
        let read_timeout = state.limits.read_timeout;
        serve_until_drained(listener, router(state), drain_timeout, read_timeout).await
    })?;
    // Generations of requests cut by the drain timeout stop at their next token; do not wait
    // on them past that.
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(match outcome {
        Drained::Clean => {
            eprintln!("rapid-host stopped");
            ExitCode::SUCCESS
        }
        Drained::Cut(n) => {
            eprintln!("rapid-host stopped with {n} request(s) still in flight (cut)");
            ExitCode::FAILURE
        }
    })
}

/// How a drain ended.
enum Drained {
    /// Every request in flight finished.
    Clean,
    /// The drain timeout or a second signal cut this many requests short.
    Cut(usize),
}

/// Serves until SIGTERM or Ctrl-C, then drains: readiness and new requests answer 503 while
/// the requests in flight finish (at most `timeout`), then the listener closes. A second
/// signal ends the drain at once.
async fn serve_until_drained(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    timeout: Duration,
    read_timeout: Duration,
) -> anyhow::Result<Drained> {
    use rapid_host::server::drain::Drain;

    let drain = Drain::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rapid_host::server::http::serve(listener, drain.wrap(app), read_timeout, async move {
        let _ = stopped.await;
    });
    let server = async move { server.await.context("server failed") };
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result.map(|()| Drained::Clean),
        () = shutdown_signal() => {}
    }
    drain.start();
    let deadline = tokio::time::Instant::now() + timeout;
    eprintln!(
        "draining: /health/ready and new requests answer 503; waiting up to {}s for {} request(s) in flight",
        timeout.as_secs(),
        drain.in_flight()
    );
    let drained = tokio::select! {
        result = &mut server => return result.map(|()| Drained::Clean),
        () = drain.idle() => true,
        () = tokio::time::sleep_until(deadline) => false,
        () = shutdown_signal() => false,
    };
    let _ = stop.send(());
    if !drained {
        return Ok(Drained::Cut(drain.in_flight()));
    }
    // Every response has its last byte queued: close the listener and the idle connections,
    // and let the connections still flushing finish.
    match tokio::time::timeout_at(deadline.max(tokio::time::Instant::now() + Duration::from_secs(5)), &mut server).await
    {
        Ok(result) => result.map(|()| Drained::Clean),
        Err(_) => Ok(Drained::Cut(drain.in_flight())),
    }
}

/// Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
