//! Host-side bindings generated from `wit/`, one module per world.

pub mod alias_policy {
    wasmtime::component::bindgen!({ world: "alias-policy-plugin", path: "../wit" });
}

pub mod output_parser {
    wasmtime::component::bindgen!({ world: "output-parser-plugin", path: "../wit" });
}
