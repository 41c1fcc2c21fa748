//! Bindings for the `output-parser-plugin` world.
//!
//! A parser crate implements the `plugin` and `output-parser` guest traits and calls
//! `rapid_plugin_sdk::output_parser::export_output_parser!(MyParser);`.

#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "output-parser-plugin",
        path: "../../wit",
        default_bindings_module: "rapid_plugin_sdk::output_parser::bindings",
        pub_export_macro: true,
        export_macro_name: "export_output_parser",
    });
}

pub use bindings::export_output_parser;
