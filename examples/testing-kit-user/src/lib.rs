//! Nothing: this crate is its tests (`tests/`), which use `batchgate::testing` as another project would.
