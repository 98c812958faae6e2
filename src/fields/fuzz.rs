//! The checks behind the `fields` fuzz target (`fuzz/fuzz_targets/fields.rs`), shared with the replay of its
//! saved inputs (`tests/fixtures/fuzz/fields/`, the test below): parsing a mask never panics, a refusal names
//! a position inside the mask, an accepted mask written back out parses to the same tree, and cutting a JSON
//! body gives JSON that the same mask leaves as it is.

use super::filter::filter;
use super::parse::{Mask, Select};

/// `fields`: `[mask length][mask][body]`.
///
/// Panics when:
/// - a malformed mask's position is past its end or inside a UTF-8 character;
/// - a parsed mask, written back as text, parses to another tree;
/// - a JSON body cut down is not JSON, or cutting it again changes it.
pub(crate) fn fields(data: &[u8]) {
    let [length, rest @ ..] = data else {
        return;
    };
    let (mask, body) = rest.split_at(usize::from(*length).min(rest.len()));
    let Ok(text) = std::str::from_utf8(mask) else {
        return;
    };
    let mask = match Mask::parse(text) {
        Ok(Some(mask)) => mask,
        Ok(None) => return,
        Err(error) => {
            assert!(
                error.position <= text.len() && text.is_char_boundary(error.position),
                "{text:?}: position {} is not a character boundary of the mask",
                error.position
            );
            return;
        }
    };
    let written = write(&mask);
    assert_eq!(
        Mask::parse(&written).ok().flatten().as_ref(),
        Some(&mask),
        "{text:?} written back as {written:?}"
    );
    if let Some(cut) = filter(body, &mask) {
        assert!(
            serde_json::from_slice::<&serde_json::value::RawValue>(&cut).is_ok(),
            "{text:?} cut {body:?} into {cut:?}, not JSON"
        );
        assert_eq!(
            filter(&cut, &mask).as_deref(),
            Some(cut.as_slice()),
            "{text:?}: cutting {cut:?} again changed it"
        );
    }
}

/// The mask as text: keys escaped, each selection in parentheses.
fn write(mask: &Mask) -> String {
    let mut props: Vec<String> = mask
        .keys
        .iter()
        .map(|(key, select)| {
            let mut name: String = key
                .chars()
                .flat_map(|c| {
                    let escape = matches!(c, ',' | '/' | '(' | ')' | '\\');
                    escape.then_some('\\').into_iter().chain([c])
                })
                .collect();
            if name == "*" {
                name.insert(0, '\\');
            }
            prop(name, select)
        })
        .collect();
    if let Some(any) = &mask.any {
        props.push(prop("*".to_owned(), any));
    }
    props.join(",")
}

fn prop(name: String, select: &Select) -> String {
    match select {
        Select::All => name,
        Select::Some(inner) => format!("{name}({})", write(inner)),
    }
}

#[cfg(test)]
mod tests {
    /// Every saved input (hand-made masks and bodies, and any crasher the fuzzer finds) passes the checks.
    #[test]
    fn saved_inputs_pass_the_fields_checks() {
        crate::fuzz_inputs::replay("fields", 8, super::fields);
    }

    #[test]
    fn masks_are_written_back_escaped() {
        let mask = super::Mask::parse(r"a(b/c,\*),x\,y,*/z").unwrap().unwrap();
        assert_eq!(super::write(&mask), r"a(\*,b(c)),x\,y,*(z)");
    }
}
