// Package config owns boxctl's HCL configuration: the schema, the built-in
// defaults, where the file is looked up, decoding with diagnostics that point
// at file:line:col, and printing the effective configuration.
//
// A plugin's own `config { ... }` block is not interpreted here: its source
// is kept verbatim and handed to the plugin, which validates it (see
// sdk.Config.Decode).
package config
