//! Hostile plugins (issue 20, cases 3 and 5-9): a plugin that stalls, hogs memory, lies in
//! its policy answers, claims a bundled plugin's name, breaks the event protocol or is not
//! what its file name says fails alone, with an error naming it; the server stays up and
//! answers. Plugins under `plugins/testing/` misbehave on purpose (`parser-rogue`,
//! `parser-hijack`, `policy-greedy`, `policy-chaos`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rapid_host::parsers::{AssembledMessage, ParseEvent, ParserPipeline, PipelineConfig, tool_prompt};
use rapid_host::plugins::limits::OutputScope;
use rapid_host::plugins::{PluginError, PluginRuntime, PluginSet, SandboxLimits};
use rapid_host::resolve::{ModelResolver, ResolveFailure};
use serde_json::{Value, json};

use crate::support::{facts, plugin_file, policy, registry, test_limits};

// ---------------------------------------------------------------------------------------
// A real server, and HTTP/1.1 by hand (chunked SSE included).

/// `rapid-host serve` on a free port; killed when dropped.
struct Served {
    child: Child,
    port: u16,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    /// Resident memory of the server process, in bytes.
    fn rss(&self) -> u64 {
        proc_field(self.child.id(), "status", "VmRSS:") * 1024
    }

    /// Bytes the server process has read through read(2) and friends.
    fn bytes_read(&self) -> u64 {
        proc_field(self.child.id(), "io", "rchar:")
    }
}

fn proc_field(pid: u32, file: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).expect("/proc readable");
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/{pid}/{file}"))
}

fn serve(plugins: &Path, extra: &[&str], env: &[(&str, &str)]) -> Served {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rapid-host"))
        .args(["serve", "--no-plugin-cache", "--port", &port.to_string()])
        .arg("--models-dir")
        .arg(crate::support::repo_root().join("models"))
        .args(extra)
        .arg("--plugins")
        .arg(plugins)
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut banner = String::new();
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("listening on") {
            break;
        }
    }
    assert!(banner.contains("listening on"), "server did not start:\n{banner}");
    std::thread::spawn(move || for _ in lines {});
    Served { child, port }
}

/// `rapid-host serve` that must refuse to start: its exit status and everything it printed.
fn serve_refuses(plugins: &Path, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_rapid-host"))
        .args(["serve", "--no-plugin-cache", "--port", "0"])
        .arg("--models-dir")
        .arg(crate::support::repo_root().join("models"))
        .args(extra)
        .arg("--plugins")
        .arg(plugins)
        .output()
        .expect("serve runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "serve should have refused:\n{text}");
    text
}

fn connect(port: u16, method: &str, path: &str, body: &str) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    stream
}

/// Status line and headers, then a reader of the (possibly chunked) body.
fn response_head(stream: TcpStream) -> (u16, bool, BufReader<TcpStream>) {
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("status line");
    let status = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut chunked = false;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header");
        if line.trim().is_empty() {
            break;
        }
        chunked |= line.to_ascii_lowercase().starts_with("transfer-encoding: chunked");
    }
    (status, chunked, reader)
}

/// The next piece of a chunked body, `None` at its end.
fn next_chunk(reader: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut size = String::new();
    reader.read_line(&mut size).ok()?;
    let size = usize::from_str_radix(size.trim(), 16).ok()?;
    if size == 0 {
        return None;
    }
    let mut data = vec![0u8; size + 2];
    reader.read_exact(&mut data).ok()?;
    data.truncate(size);
    Some(data)
}

fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let (status, chunked, mut reader) = response_head(connect(port, method, path, body));
    let mut text = Vec::new();
    if chunked {
        while let Some(chunk) = next_chunk(&mut reader) {
            text.extend(chunk);
        }
    } else {
        reader.read_to_end(&mut text).expect("body");
    }
    (status, String::from_utf8_lossy(&text).into_owned())
}

fn chat(port: u16, body: &Value) -> (u16, Value) {
    let (status, text) = http(port, "POST", "/v1/chat/completions", &body.to_string());
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("JSON body ({e}): {text}")))
}

/// The value of a counter in `/metrics`.
fn metric(port: u16, name: &str) -> u64 {
    let (_, text) = http(port, "GET", "/metrics", "");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} in /metrics:\n{text}"))
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
}

/// A directory holding copies of built plugins, under the given names.
fn plugin_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (from, to) in files {
        std::fs::copy(plugin_file(from), dir.path().join(to)).expect("copy plugin");
    }
    dir
}

fn pipeline(set: &PluginSet, parser: &str) -> ParserPipeline {
    let config = PipelineConfig {
        tool_parser: Some(parser.to_string()),
        reasoning_parser: None,
        tools_json: weather_tools().to_string(),
        reasoning_started: false,
    };
    ParserPipeline::new(set, &config).expect("pipeline starts")
}

fn rogue(limits: SandboxLimits) -> PluginSet {
    let mut set = PluginSet::empty(PluginRuntime::new(limits, None).expect("runtime"));
    set.load_file(&plugin_file("testing/parser-rogue.wasm"));
    assert!(set.failures.is_empty(), "{:?}", set.failures);
    set
}

fn refused_control(c: char) -> bool {
    c.is_control() || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}')
}

// ---------------------------------------------------------------------------------------
// Case 3: plugin calls never run on the async runtime's threads.

/// `rogue-stall` spins in `finish` until its 2 s deadline stops it. The server runs on ONE
/// runtime thread (`TOKIO_WORKER_THREADS=1`), so a plugin call on it would stall every
/// connection. While the stall runs (between the stream's last chunk before the finish
/// chunk and the finish chunk), `/health` must keep answering (counted, not timed), a
/// bystander chat must succeed, and the stalled response must still end properly.
#[test]
fn a_stalling_parser_stalls_only_its_own_response() {
    let dir = plugin_dir(&[("policy-strict.wasm", "policy-strict.wasm"), ("testing/parser-rogue.wasm", "rogue.wasm")]);
    let server = serve(dir.path(), &["--tool-call-parser", "rogue-stall"], &[("TOKIO_WORKER_THREADS", "1")]);
    let port = server.port;

    let answered = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let health = {
        let (answered, refused, stop) = (Arc::clone(&answered), Arc::clone(&refused), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let (status, body) = http(port, "GET", "/health", "");
                let counter = if status == 200 && body.contains("ok") { &answered } else { &refused };
                counter.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let bystander = std::thread::spawn(move || {
        let body = json!({"messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 4});
        chat(port, &body)
    });

    let request = json!({"messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": weather_tools(), "max_tokens": 6, "stream": true});
    let (status, chunked, mut reader) =
        response_head(connect(port, "POST", "/v1/chat/completions", &request.to_string()));
    assert_eq!((status, chunked), (200, true));
    // Each SSE event, with the number of /health answers seen when it arrived.
    let mut timeline: Vec<(u64, String)> = Vec::new();
    let mut pending = String::new();
    while let Some(chunk) = next_chunk(&mut reader) {
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            timeline.push((answered.load(Ordering::SeqCst), event.trim().to_string()));
        }
    }
    stop.store(true, Ordering::SeqCst);
    health.join().expect("health thread");

    let finish_at = timeline
        .iter()
        .position(|(_, e)| e.contains("\"finish_reason\":\"") && !e.contains("\"finish_reason\":null"))
        .unwrap_or_else(|| panic!("no finish chunk: {timeline:#?}"));
    assert!(finish_at > 0, "{timeline:#?}");
    assert_eq!(timeline.last().map(|(_, e)| e.as_str()), Some("data: [DONE]"), "{timeline:#?}");
    let during_stall = timeline[finish_at].0 - timeline[finish_at - 1].0;
    // Measured here: thousands when plugin code runs off the runtime, 0-10 when it runs on it
    // (those few are answered between the last chunk and the start of the stall).
    assert!(during_stall >= 100, "/health answered only {during_stall} times during the 2 s stall: {timeline:#?}");
    assert_eq!(refused.load(Ordering::SeqCst), 0, "/health failed while the parser stalled");

    let (status, body) = bystander.join().expect("bystander thread");
    assert_eq!(status, 200, "{body}");
    assert!(body["choices"][0]["message"]["content"].is_string(), "{body}");
    assert!(metric(port, "rapid_host_parser_failures_total") >= 1);
    assert_eq!(http(port, "GET", "/health", "").0, 200);
}

// ---------------------------------------------------------------------------------------
// Case 5: our memory cap, and limits on what a plugin may return.

/// The guest's linear memory is capped at the documented 64 MiB by our own limiter: 40 MiB
/// more is fine, 80 MiB is not, and the error names the plugin and our limit.
#[test]
fn a_parser_store_is_capped_at_64_mib() {
    let limits = SandboxLimits::default();
    assert_eq!(limits.memory_bytes, 64 << 20);
    let set = rogue(limits);
    let mut p = pipeline(&set, "rogue-bloat");
    p.feed("bloat:40");
    assert!(p.failures.is_empty(), "40 MiB is within the cap: {:?}", p.failures);
    let events = p.feed("bloat:40");
    match p.failures.as_slice() {
        [PluginError::MemoryExceeded { plugin, call, limit_bytes }] => {
            assert_eq!((plugin.as_str(), *call, *limit_bytes), ("rogue", "feed", 64 << 20));
        }
        other => panic!("expected the 64 MiB cap, got {other:?}"),
    }
    // The text still gets through, raw.
    assert_eq!(events, [ParseEvent::Content(String::from("bloat:40"))]);
    assert_eq!(p.feed("after"), [ParseEvent::Content(String::from("after"))]);
}

/// One call may hand back at most `output_bytes_per_call` (wasmtime stops copying the
/// answer there, so the host never allocates it); a response's parsers at most their
/// budget; a tool prompt at most its limit. Each failure names the plugin and the limit.
#[test]
fn what_a_parser_returns_is_bounded_per_call_per_response_and_per_tool_prompt() {
    // Per call: 4 MiB in one answer against a 1 MiB limit (and a roomy response budget).
    let limits =
        SandboxLimits { output_bytes_per_call: 1 << 20, output_bytes_per_response: 256 << 20, ..test_limits() };
    let set = rogue(limits);
    let mut p = pipeline(&set, "rogue-burst");
    assert_eq!(p.feed("before "), [ParseEvent::Content(String::from("before "))]);
    assert_eq!(p.feed("burst:4"), [ParseEvent::Content(String::from("burst:4"))]);
    match p.failures.as_slice() {
        [PluginError::OutputExceeded { plugin, call, limit_bytes, scope }] => {
            assert_eq!(
                (plugin.as_str(), *call, *limit_bytes, *scope),
                ("rogue", "feed", 1 << 20, OutputScope::PerCall)
            );
        }
        other => panic!("expected the per-call output limit, got {other:?}"),
    }

    // Per response: 768 KiB extra per feed against the default 1 MiB budget.
    let set = rogue(SandboxLimits::default());
    let mut p = pipeline(&set, "rogue-hog");
    let mut message = AssembledMessage::default();
    for i in 0..20 {
        message.extend(&p.feed(&format!("word{i} ")));
    }
    message.extend(&p.finish());
    match p.failures.as_slice() {
        [PluginError::OutputExceeded { plugin, call: "feed", scope: OutputScope::Response, .. }] => {
            assert_eq!(plugin, "rogue");
        }
        other => panic!("expected the response's output budget, got {other:?}"),
    }
    assert!(message.content.len() <= (1 << 20) + 4096, "{} bytes of content", message.content.len());
    assert!(message.content.ends_with("word18 word19 "), "the rest passes through raw");

    // A tool prompt: 11 MB against 64 KiB plus twice the tools JSON.
    let tools = weather_tools().to_string();
    match tool_prompt(&set, "rogue-hog", &tools) {
        Err(rapid_host::parsers::pipeline::PipelineError::Plugin(PluginError::OutputExceeded {
            plugin,
            call,
            limit_bytes,
            scope,
        })) => {
            assert_eq!((plugin.as_str(), call, scope), ("rogue", "tool-prompt", OutputScope::ToolPrompt));
            assert_eq!(limit_bytes, SandboxLimits::default().tool_prompt_limit(tools.len()));
        }
        other => panic!("expected the tool-prompt limit, got {other:?}"),
    }
}

/// On a real server: `rogue-hog`'s 11 MB tool prompt is refused (the host writes its own,
/// the request is answered, not a 400), its flood of content is cut at the response's
/// budget, and the server's memory returns to idle afterwards.
#[test]
fn a_hogging_parser_costs_the_server_no_memory() {
    let dir = plugin_dir(&[("policy-strict.wasm", "policy-strict.wasm"), ("testing/parser-rogue.wasm", "rogue.wasm")]);
    let server = serve(dir.path(), &["--tool-call-parser", "rogue-hog"], &[]);
    let port = server.port;
    let plain = json!({"messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 2});
    for _ in 0..3 {
        assert_eq!(chat(port, &plain).0, 200);
    }
    let idle = server.rss();

    let hostile = json!({"messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": weather_tools(), "max_tokens": 6});
    for _ in 0..3 {
        let (status, body) = chat(port, &hostile);
        assert_eq!(status, 200, "{body}");
        let content = body["choices"][0]["message"]["content"].as_str().unwrap_or_default();
        assert!(content.len() <= (1 << 20) + 4096, "{} bytes of content", content.len());
        assert!(body["usage"]["prompt_tokens"].as_u64().is_some_and(|n| n < 2000), "{}", body["usage"]);
    }
    // Each request's tool prompt, and the flood (cut at the second feed) at least once.
    assert!(metric(port, "rapid_host_parser_failures_total") > 3);
    assert_eq!(chat(port, &plain).0, 200);
    let after = server.rss();
    assert!(after < idle + (50 << 20), "RSS {} MB after, {} MB idle", after >> 20, idle >> 20);
}

// ---------------------------------------------------------------------------------------
// Case 6: a policy's answer is checked against the alias table.

#[test]
fn policy_answers_that_reach_outside_the_alias_table_are_refused() {
    let mut set = PluginSet::empty(crate::support::runtime());
    set.load_file(&plugin_file("testing/policy-chaos.wasm"));
    assert!(set.failures.is_empty(), "{:?}", set.failures);
    let registry = registry();
    let chaos = ModelResolver::new(&registry, policy(&set, "chaos"), facts(16));
    let first_alias = registry.iter().next().map(|(name, _)| name.to_string()).expect("aliases");
    for (name, expect) in [
        ("passwd", "local path is allowed only when it is the path the user gave"),
        ("escape", "is not a plain file name"),
        ("other-file", "is the file"),
        ("dotdot", "is not an org/repo id"),
        ("pip-free", "a pip package can only be an alias"),
        (first_alias.as_str(), "no other model may run under an alias's name"),
    ] {
        match chaos.resolve(name) {
            Err(ResolveFailure::Plugin(PluginError::BadAnswer { plugin, call, detail })) => {
                assert_eq!((plugin.as_str(), call), ("chaos", "resolve"));
                assert!(detail.contains(expect), "{name}: {detail}");
            }
            other => panic!("{name}: expected the answer to be refused, got {other:?}"),
        }
    }
    // A path the user typed is theirs to load; notes come back printable.
    let typed = plugin_file("policy-strict.wasm");
    let local = chaos.resolve(&typed.display().to_string()).expect("the typed path is allowed");
    assert_eq!(local.hf_path, typed.display().to_string());
    let ansi = chaos.resolve("ansi").expect("resolves");
    assert!(ansi.notes.iter().all(|n| !n.chars().any(char::is_control)), "{:?}", ansi.notes);
}

/// On the command line: a policy pointing at `/etc/passwd` is refused before anything is
/// opened; a user who types `/etc/passwd` gets "not a GGUF model", never its bytes.
#[test]
fn serve_refuses_a_policy_that_points_at_system_files_and_never_prints_them() {
    let dir = plugin_dir(&[
        ("policy-strict.wasm", "policy-strict.wasm"),
        ("testing/policy-chaos.wasm", "chaos.wasm"),
        ("parser-hermes.wasm", "parser-hermes.wasm"),
    ]);
    let refused = serve_refuses(dir.path(), &["--alias-policy", "chaos", "passwd"]);
    assert!(refused.contains("plugin `chaos`") && refused.contains("/etc/passwd"), "{refused}");
    assert!(refused.contains("allowed only when it is the path the user gave"), "{refused}");
    let typed = serve_refuses(dir.path(), &["--alias-policy", "chaos", "/etc/passwd"]);
    assert!(typed.contains("does not start with the GGUF magic bytes"), "{typed}");
    let first_line = std::fs::read_to_string("/etc/passwd").ok().and_then(|t| t.lines().next().map(String::from));
    for text in [&refused, &typed] {
        assert!(!text.contains("root:") && !text.contains("746f6f72"), "file contents echoed: {text}");
        if let Some(line) = &first_line {
            assert!(!text.contains(line.as_str()), "file contents echoed: {text}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Case 7: name conflicts are settled by who the plugins are, not by file order.

fn tool_parser_file(set: &PluginSet, name: &str) -> String {
    set.tool_parser(name)
        .map(|p| p.file.file_name().unwrap_or_default().to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[test]
fn a_bundled_parser_keeps_its_name_whatever_the_file_order() {
    for hijacker in ["00-hijack.wasm", "zz-hijack.wasm"] {
        let dir = plugin_dir(&[("parser-hermes.wasm", "parser-hermes.wasm"), ("testing/parser-hijack.wasm", hijacker)]);
        let set =
            PluginSet::load_dir(PluginRuntime::new(test_limits(), None).expect("runtime"), dir.path()).expect("dir");
        assert_eq!(tool_parser_file(&set, "hermes"), "parser-hermes.wasm", "{hijacker}");
        assert!(set.tool_parser("hijack").is_none(), "the hijacker loads not at all");
        let failure = set.failures.iter().find(|f| f.file.ends_with(hijacker)).expect("hijacker refused");
        let error = failure.error.to_string();
        assert!(error.contains("belongs to the bundled plugin parser-hermes.wasm"), "{error}");
    }
    // Two plugins that are not bundled: neither gets the name, and both are told why.
    let dir = plugin_dir(&[("testing/parser-hijack.wasm", "a-hijack.wasm"), ("parser-hermes.wasm", "b-hermes.wasm")]);
    let set = PluginSet::load_dir(PluginRuntime::new(test_limits(), None).expect("runtime"), dir.path()).expect("dir");
    assert!(set.tool_parser("hermes").is_none());
    assert_eq!(set.failures.len(), 2, "{:?}", set.failures);
    for failure in &set.failures {
        let error = failure.error.to_string();
        assert!(error.contains("a-hijack.wasm and b-hermes.wasm") && error.contains("none of them"), "{error}");
    }
    // Two copies of the same bytes are one plugin, loaded once.
    let dir = plugin_dir(&[("parser-hermes.wasm", "copy.wasm"), ("parser-hermes.wasm", "parser-hermes.wasm")]);
    let set = PluginSet::load_dir(PluginRuntime::new(test_limits(), None).expect("runtime"), dir.path()).expect("dir");
    assert_eq!(tool_parser_file(&set, "hermes"), "parser-hermes.wasm");
    assert!(set.failures[0].error.to_string().contains("is a copy of parser-hermes.wasm"), "{:?}", set.failures);
}

/// The loader's list of bundled files is what `scripts/build-plugins` writes for the
/// crates directly under `plugins/` (test-only crates live in `plugins/testing/`).
#[test]
fn the_bundled_plugin_list_matches_the_plugin_crates() {
    let mut built: Vec<String> = std::fs::read_dir(crate::support::plugins_dir())
        .expect("plugins/")
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path().join("Cargo.toml")).ok())
        .filter(|manifest| manifest.contains("crate-type = [\"cdylib\"]"))
        .filter_map(|manifest| {
            manifest
                .lines()
                .find_map(|l| l.strip_prefix("name = \"").and_then(|r| r.strip_suffix('"')).map(String::from))
        })
        .map(|name| format!("{name}.wasm"))
        .collect();
    built.sort();
    let mut listed: Vec<&str> = rapid_host::plugins::loader::BUNDLED_PLUGIN_FILES.to_vec();
    listed.sort_unstable();
    assert_eq!(built, listed);
}

/// A real server with `00-hijack.wasm` and a 512 MiB `huge.wasm` beside the bundled
/// plugins: hermes parses (never the hijacker), and the huge file was never read (case 9).
#[test]
fn serve_keeps_the_bundled_hermes_and_never_reads_an_oversized_plugin() {
    let dir = plugin_dir(&[
        ("policy-strict.wasm", "policy-strict.wasm"),
        ("parser-hermes.wasm", "parser-hermes.wasm"),
        ("testing/parser-hijack.wasm", "00-hijack.wasm"),
    ]);
    let huge = std::fs::File::create(dir.path().join("huge.wasm")).expect("create");
    huge.set_len(512 << 20).expect("sparse file");
    let server = serve(dir.path(), &[], &[]);
    let port = server.port;
    // The model file is read once (~90 MB); 512 MiB more would show.
    assert!(server.bytes_read() < 400 << 20, "the server read {} MB", server.bytes_read() >> 20);

    let (status, listing) = http(port, "GET", "/v1/plugins", "");
    assert_eq!(status, 200);
    let listing: Value = serde_json::from_str(&listing).expect("JSON");
    let hermes = listing["data"].as_array().expect("data").iter().find(|p| p["name"] == "hermes").expect("hermes");
    assert!(hermes["file"].as_str().is_some_and(|f| f.ends_with("parser-hermes.wasm")), "{hermes}");
    let failures = listing["failures"].as_array().expect("failures");
    let failure = |file: &str| {
        failures.iter().find(|f| f["file"].as_str().is_some_and(|p| p.ends_with(file))).map(|f| f["error"].to_string())
    };
    assert!(failure("00-hijack.wasm").is_some_and(|e| e.contains("bundled")), "{failures:?}");
    assert!(failure("huge.wasm").is_some_and(|e| e.contains("512 MiB")), "{failures:?}");

    let (status, body) = chat(
        port,
        &json!({"messages": [{"role": "user", "content": "What is the weather in Paris?"}], "tools": weather_tools(),
            "max_tokens": 8}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(!body.to_string().contains("HIJACKED"), "{body}");
}

// ---------------------------------------------------------------------------------------
// Case 8: what a parser emits is checked before it reaches a client.

/// The calls `rogue-events` emits, as a client must see them.
fn assert_only_sound_calls(message: &AssembledMessage) {
    let calls: Vec<(&str, &str)> = message.tool_calls.iter().map(|c| (c.name.as_str(), c.arguments.as_str())).collect();
    assert_eq!(calls, [("get_weather", "{\"city\": \"Paris\"}"), ("get_weather", "{\"city\": \"Oslo\"}")]);
    for call in &message.tool_calls {
        assert!(call.id.starts_with("call_") && call.id.len() == 29, "{:?}", call.id);
        assert!(!call.id.chars().any(refused_control) && !call.name.chars().any(refused_control));
    }
    assert_ne!(message.tool_calls[0].id, message.tool_calls[1].id);
    // Not JSON, not an object, U+202E in a name, NUL in a name.
    assert_eq!(message.malformed.len(), 4, "{:?}", message.malformed);
    assert!(message.malformed.iter().all(|m| m.contains("plugin `rogue`")), "{:?}", message.malformed);
    assert!(message.content.contains("{\"city\": \"Par") && message.content.contains("[1, 2]"), "{}", message.content);
    assert!(!message.content.chars().any(|c| matches!(c, '\u{0}' | '\u{202E}')), "{:?}", message.content);
    let everything = format!("{message:?}");
    assert!(!everything.contains("injected") && !everything.contains("delete_everything"), "{everything}");
}

#[test]
fn parser_events_are_checked_before_they_reach_a_client() {
    let set = rogue(test_limits());
    let mut p = pipeline(&set, "rogue-events");
    let mut events = p.feed("Let me check.");
    events.extend(p.finish());
    let mut message = AssembledMessage::default();
    message.extend(&events);
    assert!(message.content.starts_with("Let me check."), "{}", message.content);
    assert_only_sound_calls(&message);
    // Arguments and a begin after the call ended, the second end, and a call never begun.
    assert_eq!(p.dropped_events, 5);
    assert!(p.failures.is_empty(), "{:?}", p.failures);
    // Calls go out whole, with indices 0 and 1.
    let indices: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            ParseEvent::ToolCallBegin { index, .. } => Some(*index),
            _ => None,
        })
        .collect();
    assert_eq!(indices, [0, 1]);
}

/// The same through a real server, streamed and not.
#[test]
fn a_server_passes_on_only_sound_tool_calls() {
    let dir = plugin_dir(&[("policy-strict.wasm", "policy-strict.wasm"), ("testing/parser-rogue.wasm", "rogue.wasm")]);
    let server = serve(dir.path(), &["--tool-call-parser", "rogue-events"], &[]);
    let port = server.port;
    let request = json!({"messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": weather_tools(), "max_tokens": 4});

    let (status, body) = chat(port, &request);
    assert_eq!(status, 200, "{body}");
    let m = &body["choices"][0]["message"];
    let calls = m["tool_calls"].as_array().expect("tool_calls");
    let names: Vec<&str> = calls.iter().filter_map(|c| c["function"]["name"].as_str()).collect();
    assert_eq!(names, ["get_weather", "get_weather"], "{body}");
    for call in calls {
        let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().expect("string")).expect("JSON");
        assert!(args.is_object() && args.get("injected").is_none(), "{args}");
        assert!(!call["id"].as_str().unwrap_or_default().chars().any(refused_control), "{call}");
    }
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    assert!(metric(port, "rapid_host_malformed_tool_calls_total") >= 4);

    let mut stream = request.clone();
    stream["stream"] = json!(true);
    let (status, text) = http(port, "POST", "/v1/chat/completions", &stream.to_string());
    assert_eq!(status, 200);
    let mut message = AssembledMessage::default();
    let mut open: Vec<u64> = Vec::new();
    for data in text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).filter(|d| *d != "[DONE]") {
        let chunk: Value = serde_json::from_str(data).expect("chunk JSON");
        let delta = &chunk["choices"][0]["delta"];
        if let Some(content) = delta["content"].as_str() {
            message.content.push_str(content);
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = call["index"].as_u64().expect("index");
            if let Some(id) = call["id"].as_str() {
                assert_eq!(index, open.len() as u64, "indices count from 0 without gaps");
                open.push(index);
                message.tool_calls.push(rapid_host::parsers::message::AssembledCall {
                    id: id.to_string(),
                    name: call["function"]["name"].as_str().unwrap_or_default().to_string(),
                    arguments: String::new(),
                });
            }
            let slot = usize::try_from(index).expect("index");
            message.tool_calls[slot].arguments.push_str(call["function"]["arguments"].as_str().unwrap_or_default());
        }
    }
    message.malformed = vec![String::from("plugin `rogue`"); 4];
    assert_only_sound_calls(&message);
}

// ---------------------------------------------------------------------------------------
// Case 9: the loader looks before it reads, and reads before it compiles.

#[test]
fn the_loader_checks_size_and_magic_before_reading_and_interface_before_compiling() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = tempfile::tempdir().expect("tempdir");
    // A component header, then 512 MiB of nothing (sparse: no disk used).
    let mut huge = std::fs::File::create(dir.path().join("huge.wasm")).expect("create");
    huge.write_all(b"\0asm\x0d\0\x01\0").expect("write");
    huge.set_len(512 << 20).expect("sparse");
    std::fs::write(dir.path().join("text.wasm"), "root:x:0:0:root:/root:/bin/bash\n").expect("write");
    std::fs::write(dir.path().join("core.wasm"), b"\0asm\x01\0\0\0").expect("write");
    // A valid component that exports nothing, padded with a 20 MB custom section.
    let mut empty = b"\0asm\x0d\0\x01\0".to_vec();
    let name = b"padding";
    let payload_len = 20_000_000 + 1 + name.len();
    empty.push(0);
    let mut n = payload_len;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        empty.push(if n == 0 { byte } else { byte | 0x80 });
        if n == 0 {
            break;
        }
    }
    empty.push(name.len() as u8);
    empty.extend_from_slice(name);
    empty.resize(empty.len() + 20_000_000, 0);
    std::fs::write(dir.path().join("exports-nothing.wasm"), &empty).expect("write");
    std::fs::copy(plugin_file("testing/policy-greedy.wasm"), dir.path().join("greedy.wasm")).expect("copy");
    std::fs::copy(plugin_file("policy-strict.wasm"), dir.path().join("policy-strict.wasm")).expect("copy");

    let runtime = PluginRuntime::new(test_limits(), Some(cache.path().to_path_buf())).expect("runtime");
    let set = PluginSet::load_dir(runtime, dir.path()).expect("dir");
    assert_eq!(set.plugins.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["strict"]);
    let failure = |file: &str| {
        set.failures
            .iter()
            .find(|f| f.file.ends_with(file))
            .map(|f| f.error.to_string())
            .unwrap_or_else(|| panic!("{file} should have failed: {:?}", set.failures))
    };
    assert!(failure("huge.wasm").contains("is 512 MiB; a plugin may be at most 128 MiB"), "{}", failure("huge.wasm"));
    let text = failure("text.wasm");
    assert!(text.contains("does not start with the `\\0asm` magic bytes") && !text.contains("root"), "{text}");
    assert!(failure("core.wasm").contains("core WebAssembly module, not a component"), "{}", failure("core.wasm"));
    assert!(failure("exports-nothing.wasm").contains("exports neither"), "{}", failure("exports-nothing.wasm"));
    let greedy = failure("greedy.wasm");
    for import in ["wasi:filesystem/", "wasi:sockets/", "wasi:clocks/", "wasi:random/"] {
        assert!(greedy.contains(import), "{import} not named: {greedy}");
    }
    assert!(greedy.contains("--stub-wasi"), "{greedy}");
    // Only strict was compiled: the refused components never reached the compiler.
    let artifacts = std::fs::read_dir(cache.path()).expect("cache").count();
    assert_eq!(artifacts, 1, "{greedy}");
    assert_eq!(set.failures.len(), 5, "{:?}", set.failures);
}
