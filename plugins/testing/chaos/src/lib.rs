//! Test-only policy that misbehaves on purpose. Never ship it: it exists to prove that a
//! plugin which traps, loops forever or grows memory without bound fails only its own call.
//!
//! Requested name → behaviour: `trap` panics (a wasm trap), `spin` loops forever,
//! `bloat` allocates until the store's memory cap stops it, `liar` claims an alias with
//! a repository that is not the alias's; anything else resolves to `chaos/<name>`.
//!
//! Answers the host must refuse (the alias table is the truth): `passwd` points at
//! `/etc/passwd` as a local file; `escape` gives an alias a file `../../../etc/passwd`;
//! `other-file` gives the first pip alias the file of another; `dotdot` names the
//! repository `../..`; `pip-free` is a pip package that is no alias; `ansi` carries a
//! terminal escape in its notes (kept, made printable). A path the user typed comes back
//! as a local file, whatever it is; any alias name comes back as `evil/swapped`, with no
//! alias (another model under the alias's name).

use rapid_plugin_sdk::alias_policy::{
    AliasPolicy, PathKind, PluginInfo, Resolution, ResolveError, ResolveRequest, SourceKind, policy_info,
};

struct Chaos;

impl AliasPolicy for Chaos {
    fn info() -> PluginInfo {
        policy_info("chaos", "Test-only: traps, spins or bloats on request")
    }

    fn resolve(request: ResolveRequest) -> Result<Resolution, ResolveError> {
        match request.name.as_str() {
            "trap" => panic!("chaos plugin asked to trap"),
            "spin" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "bloat" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "liar" => Ok(Resolution {
                alias: Some(String::from("qwen3.5-4b-4bit")),
                hf_path: String::from("evil/not-qwen"),
                file: None,
                source: SourceKind::HubRepo,
                notes: Vec::new(),
            }),
            "passwd" => Ok(answer(None, "/etc/passwd", None, SourceKind::LocalFile)),
            "escape" | "other-file" => {
                let mut pip = request.aliases.iter().filter(|a| a.source == SourceKind::PipPackage);
                let (Some(first), Some(second)) = (pip.next(), pip.next()) else {
                    return Err(ResolveError { message: String::from("no two pip aliases"), suggestions: Vec::new() });
                };
                let file = if request.name == "escape" {
                    String::from("../../../etc/passwd")
                } else {
                    second.file.clone().unwrap_or_default()
                };
                Ok(answer(Some(first.name.clone()), &first.hf_path, Some(file), SourceKind::PipPackage))
            }
            "dotdot" => Ok(answer(None, "../..", None, SourceKind::HubRepo)),
            "pip-free" => Ok(answer(None, "evil/model", Some(String::from("model.gguf")), SourceKind::PipPackage)),
            "ansi" => {
                let mut r = answer(None, "chaos/ansi", None, SourceKind::HubRepo);
                r.notes.push(String::from("\u{1b}[2J\u{1b}]0;pwned\u{7}cleared"));
                Ok(r)
            }
            _ if request.path != PathKind::Missing => Ok(answer(None, &request.name, None, SourceKind::LocalFile)),
            _ if request.aliases.iter().any(|a| a.name == request.name) => {
                Ok(answer(None, "evil/swapped", None, SourceKind::HubRepo))
            }
            _ => Ok(Resolution {
                alias: None,
                hf_path: format!("chaos/{}", request.name),
                file: None,
                source: SourceKind::HubRepo,
                notes: vec![format!("{} aliases seen", request.aliases.len())],
            }),
        }
    }
}

fn answer(alias: Option<String>, hf_path: &str, file: Option<String>, source: SourceKind) -> Resolution {
    Resolution { alias, hf_path: hf_path.to_string(), file, source, notes: Vec::new() }
}

rapid_plugin_sdk::alias_policy::export_alias_policy!(Chaos);
