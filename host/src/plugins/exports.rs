//! Finding a plugin's functions under the WIT version it was built against.

use wasmtime::component::{Component, ComponentExportIndex};

use super::{SUPPORTED_WIT_VERSIONS, WIT_PACKAGE};

/// The interface a component exports, and the version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exported {
    AliasPolicy,
    OutputParser,
}

/// Finds `rapid:plugin/<interface>@<version>` among a component's export names (read
/// straight from the binary, before anything is compiled).
pub fn detect(exports: &[String]) -> Result<(Exported, String), String> {
    for name in exports {
        let Some(rest) = name.strip_prefix(WIT_PACKAGE).and_then(|r| r.strip_prefix('/')) else {
            continue;
        };
        let (interface, version) = rest.split_once('@').unwrap_or((rest, ""));
        let kind = match interface {
            "alias-policy" => Exported::AliasPolicy,
            "output-parser" => Exported::OutputParser,
            _ => continue,
        };
        if !SUPPORTED_WIT_VERSIONS.contains(&version) {
            let version: String = version.chars().take(40).collect();
            return Err(format!(
                "built against {WIT_PACKAGE}@{version}; this host supports {}",
                SUPPORTED_WIT_VERSIONS.join(", ")
            ));
        }
        return Ok((kind, version.to_string()));
    }
    Err(format!(
        "exports neither {WIT_PACKAGE}/alias-policy nor {WIT_PACKAGE}/output-parser (exports: {})",
        listing(exports)
    ))
}

/// At most ten names, each at most 100 characters: the names come from the file.
fn listing(names: &[String]) -> String {
    if names.is_empty() {
        return String::from("nothing");
    }
    let mut shown: Vec<String> = names.iter().take(10).map(|n| n.chars().take(100).collect()).collect();
    if names.len() > 10 {
        shown.push(format!("and {} more", names.len() - 10));
    }
    shown.join(", ")
}

fn function(component: &Component, interface: &ComponentExportIndex, name: &str) -> Option<ComponentExportIndex> {
    component.get_export_index(Some(interface), name)
}

fn interface(component: &Component, name: &str, version: &str) -> Result<ComponentExportIndex, String> {
    component
        .get_export_index(None, format!("{WIT_PACKAGE}/{name}@{version}").as_str())
        .ok_or_else(|| format!("does not export {WIT_PACKAGE}/{name}@{version}"))
}

fn required(component: &Component, iface: &ComponentExportIndex, name: &str) -> Result<ComponentExportIndex, String> {
    function(component, iface, name).ok_or_else(|| format!("does not export function `{name}`"))
}

/// The functions of an alias-policy plugin.
#[derive(Debug, Clone)]
pub struct AliasPolicyExports {
    pub info: ComponentExportIndex,
    pub resolve: ComponentExportIndex,
}

impl AliasPolicyExports {
    pub fn find(component: &Component, version: &str) -> Result<Self, String> {
        let iface = interface(component, "alias-policy", version)?;
        Ok(Self { info: required(component, &iface, "info")?, resolve: required(component, &iface, "resolve")? })
    }
}

/// The functions of an output-parser plugin; `tool_prompt` exists since 0.2.0.
#[derive(Debug, Clone)]
pub struct OutputParserExports {
    pub info: ComponentExportIndex,
    pub create: ComponentExportIndex,
    pub feed: ComponentExportIndex,
    pub finish: ComponentExportIndex,
    pub tool_call_grammar: ComponentExportIndex,
    pub tool_prompt: Option<ComponentExportIndex>,
}

impl OutputParserExports {
    pub fn find(component: &Component, version: &str) -> Result<Self, String> {
        let iface = interface(component, "output-parser", version)?;
        Ok(Self {
            info: required(component, &iface, "info")?,
            create: required(component, &iface, "[static]session.create")?,
            feed: required(component, &iface, "[method]session.feed")?,
            finish: required(component, &iface, "[method]session.finish")?,
            tool_call_grammar: required(component, &iface, "tool-call-grammar")?,
            tool_prompt: function(component, &iface, "tool-prompt"),
        })
    }
}
