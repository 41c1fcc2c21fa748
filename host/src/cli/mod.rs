//! The subcommands, one module per group.

pub(crate) mod args;
pub(crate) mod listing;
pub(crate) mod models;
pub(crate) mod plugin_cmds;
pub(crate) mod serve;

pub(crate) use args::*;
pub(crate) use listing::*;
pub(crate) use models::*;
pub(crate) use plugin_cmds::*;
pub(crate) use serve::*;
