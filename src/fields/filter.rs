//! A JSON body cut down to what a [`Mask`] selects. The body is read as raw values (`serde_json::RawValue`):
//! the walk goes only where the mask does, and whatever it keeps whole keeps its bytes (number spellings,
//! key order, escapes).
//!
//! What is kept follows `json-mask`: a mask applies to an object's keys, and to each element of an array (an
//! array whose elements all fall away falls away; an empty one stays); a key the value lacks is left out; a
//! selection under a scalar drops it, except `null`, `false`, `0` and `""`, which stay. A whole answer that is
//! not an object or an array becomes `null`. Where this walk differs from `json-mask`: an array inside an
//! array is masked element by element (`json-mask` empties it), selections of one key merge (`json-mask`
//! keeps the last), and keys are JSON keys only (`json-mask` also finds JavaScript properties such as a
//! string's `length`).

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;

use super::parse::{Mask, Select};

/// How deep the walk goes into arrays and objects: as deep as `serde_json` reads a `Value`. A body nested
/// deeper where the mask walks is treated as not JSON.
const MAX_DEPTH: usize = 128;

/// `body` cut down to what `mask` selects; `None` when it is not JSON, and then passes unchanged.
pub(crate) fn filter(body: &[u8], mask: &Mask) -> Option<Vec<u8>> {
    let value: &RawValue = serde_json::from_slice(body).ok()?;
    let mut out = String::with_capacity(body.len() / 2);
    let kept =
        matches!(kind(value), Kind::Object | Kind::Array) && apply(value, mask, &mut out, 0)?;
    if !kept {
        out.clear();
        out.push_str("null");
    }
    Some(out.into_bytes())
}

enum Kind {
    Object,
    Array,
    /// `null`, `false`, `0`, `""`: kept where a mask asks for keys of them.
    Falsy,
    Scalar,
}

fn kind(value: &RawValue) -> Kind {
    let text = value.get();
    match text.as_bytes().first() {
        Some(b'{') => Kind::Object,
        Some(b'[') => Kind::Array,
        _ if matches!(text, "null" | "false" | "\"\"") => Kind::Falsy,
        Some(b'-' | b'0'..=b'9') if text.parse::<f64>() == Ok(0.0) => Kind::Falsy,
        _ => Kind::Scalar,
    }
}

/// Writes what `select` keeps of `value`; false (and nothing written) when it keeps nothing. `None` when the
/// walk would go deeper than [`MAX_DEPTH`].
fn select(value: &RawValue, select: &Select, out: &mut String, depth: usize) -> Option<bool> {
    match select {
        Select::All => {
            out.push_str(value.get());
            Some(true)
        }
        Select::Some(mask) => apply(value, mask, out, depth),
    }
}

fn apply(value: &RawValue, mask: &Mask, out: &mut String, depth: usize) -> Option<bool> {
    if depth == MAX_DEPTH {
        return None;
    }
    match kind(value) {
        Kind::Object => object(value, mask, out, depth + 1).map(|()| true),
        Kind::Array => {
            let elements: Vec<&RawValue> = serde_json::from_str(value.get()).ok()?;
            if elements.is_empty() {
                out.push_str("[]");
                return Some(true);
            }
            let start = out.len();
            out.push('[');
            let mut any = false;
            for element in elements {
                let before = out.len();
                if any {
                    out.push(',');
                }
                if apply(element, mask, out, depth + 1)? {
                    any = true;
                } else {
                    out.truncate(before);
                }
            }
            if !any {
                out.truncate(start);
                return Some(false);
            }
            out.push(']');
            Some(true)
        }
        Kind::Falsy => {
            out.push_str(value.get());
            Some(true)
        }
        Kind::Scalar => Some(false),
    }
}

fn object(value: &RawValue, mask: &Mask, out: &mut String, depth: usize) -> Option<()> {
    let Entries(entries) = serde_json::from_str(value.get()).ok()?;
    out.push('{');
    let mut any = false;
    for (key, value) in entries {
        let merged;
        let chosen = match (mask.keys.get(&key), mask.any.as_deref()) {
            (None, None) => continue,
            (Some(only), None) | (None, Some(only)) => only,
            (Some(named), Some(any)) => {
                merged = named.clone().union(any.clone());
                &merged
            }
        };
        let before = out.len();
        if any {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(&key).ok()?);
        out.push(':');
        if select(value, chosen, out, depth)? {
            any = true;
        } else {
            out.truncate(before);
        }
    }
    out.push('}');
    Some(())
}

/// An object's entries in the order they came, values unparsed.
struct Entries<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Entries<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Entries<'de>, M::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(mask: &str, body: &str) -> String {
        let mask = Mask::parse(mask).unwrap().unwrap();
        String::from_utf8(filter(body.as_bytes(), &mask).expect("JSON")).unwrap()
    }

    /// Cases run through `json-mask` 2.0.0 (`mask(JSON.parse(input), mask)`): the expected outputs are its
    /// answers, and `clients/js/test/fields_oracle.test.mjs` checks them against it and the gateway when it is
    /// installed. Compared as values: `json-mask` orders keys by the mask, this walk keeps the input's order.
    #[test]
    fn agrees_with_json_mask() {
        let cases: Vec<serde_json::Value> =
            serde_json::from_str(include_str!("../../tests/fixtures/fields/json-mask.json"))
                .unwrap();
        assert!(cases.len() >= 30);
        for case in cases {
            let (mask, input) = (case["mask"].as_str().unwrap(), case["input"].to_string());
            let ours: serde_json::Value = serde_json::from_str(&masked(mask, &input)).unwrap();
            assert_eq!(ours, case["expected"], "mask {mask:?} on {input}");
        }
    }

    #[test]
    fn kept_values_keep_their_bytes_and_order() {
        assert_eq!(
            masked(
                "z,a",
                r#"{"z": 1.50, "b": 2, "a": {"x" : 1e3, "é\n": "\u00e9"}}"#
            ),
            r#"{"z":1.50,"a":{"x" : 1e3, "é\n": "\u00e9"}}"#
        );
        assert_eq!(
            masked("a/k\\/x", r#"{"a":{"k/x":12345678901234567890123}}"#),
            r#"{"a":{"k/x":12345678901234567890123}}"#
        );
    }

    #[test]
    fn deep_bodies_do_not_overflow() {
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        let mask = Mask::parse("x").unwrap().unwrap();
        assert_eq!(filter(deep.as_bytes(), &mask), None);
        let deep = format!("{{\"x\":{deep}}}");
        let _ = filter(deep.as_bytes(), &mask);
    }

    #[test]
    fn not_json_is_none() {
        let mask = Mask::parse("a").unwrap().unwrap();
        assert_eq!(filter(b"<html>", &mask), None);
        assert_eq!(filter(b"{\"a\":1", &mask), None);
        assert_eq!(filter(b"", &mask), None);
    }

    #[test]
    fn arrays_inside_arrays_are_masked_element_by_element() {
        assert_eq!(
            masked("a/b", r#"{"a":[[{"b":1,"c":2}],[]]}"#),
            r#"{"a":[[{"b":1}],[]]}"#
        );
    }
}
