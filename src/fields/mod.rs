//! Field masks (Google's partial-response syntax, `fields=items(id,snippet/title),nextPageToken`): a part asks
//! for only the parts of a JSON answer it shows, and the gateway cuts the rest out.
//!
//! - `parse`: the mask's text into a [`Mask`] tree, or a [`MaskError`] naming the byte position and what was
//!   expected there;
//! - `filter`: a JSON body cut down to what a [`Mask`] selects, every value kept whole keeping its bytes.
//!
//! The stack layer that applies them to a route's answers is `stack::fields`. The semantics follow the npm
//! package `json-mask` (its answers are recorded in `tests/fixtures/fields/json-mask.json`, which a unit test in
//! `filter` and the JS client's `fields_oracle` test replay), except where `filter` says.

mod filter;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod fuzz;
mod parse;

pub(crate) use filter::filter;
pub(crate) use parse::{Mask, MaskError};
