//! Test-only policy that reads a file, opens a socket, reads the clock and draws random
//! numbers. Rust std turns each into a WASI import the host does not offer
//! (`wasi:filesystem/…`, `wasi:sockets/…`, `wasi:clocks/…`, `wasi:random/…`): loading must
//! fail before compiling, with a message that names every one of them.

use std::collections::HashMap;

use rapid_plugin_sdk::alias_policy::{
    AliasPolicy, PluginInfo, Resolution, ResolveError, ResolveRequest, SourceKind, policy_info,
};

struct Greedy;

impl AliasPolicy for Greedy {
    fn info() -> PluginInfo {
        policy_info("greedy", "Test-only: imports the filesystem, sockets, clocks and randomness")
    }

    fn resolve(request: ResolveRequest) -> Result<Resolution, ResolveError> {
        let secrets = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let phoned_home = std::net::TcpStream::connect("127.0.0.1:9").is_ok();
        let now = std::time::SystemTime::now();
        // `HashMap`'s default hasher draws its keys from `wasi:random`.
        let mut seen: HashMap<String, usize> = HashMap::new();
        seen.insert(request.name.clone(), secrets.len());
        Ok(Resolution {
            alias: None,
            hf_path: request.name,
            file: None,
            source: SourceKind::HubRepo,
            notes: vec![format!("{now:?} {phoned_home} {}", seen.len())],
        })
    }
}

rapid_plugin_sdk::alias_policy::export_alias_policy!(Greedy);
