//! The mask grammar, as Google's partial responses and `json-mask` read it:
//!
//! ```text
//! mask := prop ("," prop)*
//! prop := name ("/" prop | "(" mask ")")?
//! name := (any character but , / ( ) \  |  "\" any character)+      "*" alone: every key
//! ```
//!
//! Selections of the same key are merged (`a/b,a/c` is `a(b,c)`; `a,a/b` is all of `a`).

use std::collections::BTreeMap;

/// How deep parentheses and slashes may nest: deeper masks are refused rather than walked recursively.
const MAX_DEPTH: usize = 64;

/// A parsed mask: which keys of an object (or of each object in an array) are kept, and how much of each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Mask {
    /// Keys named literally (`\*` is the key `*`).
    pub(crate) keys: BTreeMap<String, Select>,
    /// What `*` keeps of every key, when the mask has one.
    pub(crate) any: Option<Box<Select>>,
}

/// How much of one selected value is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Select {
    /// The whole value.
    All,
    /// The parts the inner mask selects.
    Some(Mask),
}

/// A mask that does not parse: where (a byte offset into the mask) and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the field mask {mask:?} is malformed at byte {position}: expected {expected}")]
pub(crate) struct MaskError {
    pub(crate) mask: String,
    pub(crate) position: usize,
    pub(crate) expected: &'static str,
}

impl Mask {
    /// Parses `text`; `None` for an empty mask, which selects the whole answer.
    pub(crate) fn parse(text: &str) -> Result<Option<Mask>, MaskError> {
        if text.is_empty() {
            return Ok(None);
        }
        let mut parser = Parser {
            text,
            at: 0,
            depth: 0,
        };
        let fail = |position, expected| MaskError {
            mask: text.to_owned(),
            position,
            expected,
        };
        let mask = parser.mask().map_err(|(at, what)| fail(at, what))?;
        match parser.peek() {
            None => Ok(Some(mask)),
            Some(_) => Err(fail(parser.at, "',' or the end of the mask")),
        }
    }

    /// Adds what `select` keeps of `key` to what this mask already keeps of it.
    fn add(&mut self, key: Name, select: Select) {
        match key {
            Name::Any => {
                self.any = Some(Box::new(match self.any.take() {
                    Some(had) => had.union(select),
                    None => select,
                }));
            }
            Name::Key(key) => {
                let merged = match self.keys.remove(&key) {
                    Some(had) => had.union(select),
                    None => select,
                };
                self.keys.insert(key, merged);
            }
        }
    }

    fn union(mut self, other: Mask) -> Mask {
        for (key, select) in other.keys {
            self.add(Name::Key(key), select);
        }
        if let Some(any) = other.any {
            self.add(Name::Any, *any);
        }
        self
    }
}

impl Select {
    /// What either keeps: all of a value absorbs any part of it.
    pub(crate) fn union(self, other: Select) -> Select {
        match (self, other) {
            (Select::Some(a), Select::Some(b)) => Select::Some(a.union(b)),
            _ => Select::All,
        }
    }
}

enum Name {
    Any,
    Key(String),
}

/// A position and what was expected there.
type Fail = (usize, &'static str);

struct Parser<'a> {
    text: &'a str,
    at: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    /// `prop ("," prop)*`, stopping before `)` or the end.
    fn mask(&mut self) -> Result<Mask, Fail> {
        let mut mask = Mask::default();
        loop {
            let (name, select) = self.prop()?;
            mask.add(name, select);
            if self.peek() != Some(b',') {
                return Ok(mask);
            }
            self.at += 1;
        }
    }

    fn prop(&mut self) -> Result<(Name, Select), Fail> {
        let name = self.name()?;
        let select = match self.peek() {
            Some(b'/') => {
                self.at += 1;
                let (inner, select) = self.nested(Parser::prop)?;
                let mut mask = Mask::default();
                mask.add(inner, select);
                Select::Some(mask)
            }
            Some(b'(') => {
                self.at += 1;
                let mask = self.nested(Parser::mask)?;
                match self.peek() {
                    Some(b')') => {}
                    None => return Err((self.at, "')' to close the '(' opened before it")),
                    Some(_) => return Err((self.at, "',' or ')'")),
                }
                self.at += 1;
                Select::Some(mask)
            }
            _ => Select::All,
        };
        Ok((name, select))
    }

    /// Runs `inner` one level deeper, refusing masks nested past [`MAX_DEPTH`].
    fn nested<T>(&mut self, inner: fn(&mut Self) -> Result<T, Fail>) -> Result<T, Fail> {
        if self.depth == MAX_DEPTH {
            return Err((self.at, "a shallower mask (at most 64 levels)"));
        }
        self.depth += 1;
        let result = inner(self);
        self.depth -= 1;
        result
    }

    fn name(&mut self) -> Result<Name, Fail> {
        let start = self.at;
        let mut name = String::new();
        let mut chars = self.text[self.at..].char_indices();
        let mut escaped_star = false;
        while let Some((offset, c)) = chars.next() {
            match c {
                ',' | '/' | '(' | ')' => {
                    self.at = start + offset;
                    return self.finish(name, escaped_star);
                }
                '\\' => match chars.next() {
                    Some((_, next)) => {
                        escaped_star |= next == '*';
                        name.push(next);
                    }
                    None => {
                        return Err((start + offset + 1, "a character after '\\'"));
                    }
                },
                _ => name.push(c),
            }
        }
        self.at = self.text.len();
        self.finish(name, escaped_star)
    }

    fn finish(&self, name: String, escaped_star: bool) -> Result<Name, Fail> {
        if name.is_empty() {
            return Err((self.at, "a field name"));
        }
        Ok(if name == "*" && !escaped_star {
            Name::Any
        } else {
            Name::Key(name)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Select {
        Select::All
    }

    fn some(keys: &[(&str, Select)]) -> Select {
        Select::Some(mask(keys))
    }

    fn mask(keys: &[(&str, Select)]) -> Mask {
        Mask {
            keys: keys
                .iter()
                .map(|(k, s)| ((*k).to_owned(), s.clone()))
                .collect(),
            any: None,
        }
    }

    fn parsed(text: &str) -> Mask {
        Mask::parse(text).unwrap().unwrap()
    }

    #[test]
    fn the_documented_forms_parse() {
        assert_eq!(
            parsed("items(id,snippet/title),nextPageToken"),
            mask(&[
                (
                    "items",
                    some(&[("id", all()), ("snippet", some(&[("title", all())]))])
                ),
                ("nextPageToken", all()),
            ])
        );
        assert_eq!(parsed("a/b"), parsed("a(b)"));
        assert_eq!(parsed("a/b/c"), parsed("a(b(c))"));
        let star = parsed("*");
        assert_eq!(star.any.as_deref(), Some(&Select::All));
        assert!(star.keys.is_empty());
        let escaped = parsed(r"\*,a\/b,c\\");
        assert!(escaped.any.is_none());
        assert_eq!(
            escaped,
            mask(&[("*", all()), ("a/b", all()), (r"c\", all())])
        );
        assert_eq!(Mask::parse("").unwrap(), None);
    }

    #[test]
    fn selections_of_one_key_merge() {
        assert_eq!(parsed("a/b,a/c"), parsed("a(b,c)"));
        assert_eq!(parsed("a,a/b"), parsed("a"));
        assert_eq!(parsed("a/b,a"), parsed("a"));
        assert_eq!(parsed("a(b/c),a(b/d,e)"), parsed("a(b(c,d),e)"));
        assert_eq!(parsed("*/x,*/y"), parsed("*(x,y)"));
    }

    #[test]
    fn malformed_masks_name_the_position_and_what_was_expected() {
        for (text, position, expected) in [
            (",a", 0, "a field name"),
            ("a,,b", 2, "a field name"),
            ("a,", 2, "a field name"),
            ("a/", 2, "a field name"),
            ("a()", 2, "a field name"),
            ("a(b", 3, "')' to close the '(' opened before it"),
            ("a(b))", 4, "',' or the end of the mask"),
            (")", 0, "a field name"),
            ("a)b", 1, "',' or the end of the mask"),
            ("a(b)c", 4, "',' or the end of the mask"),
            ("a(b/c", 5, "')' to close the '(' opened before it"),
            ("a\\", 2, "a character after '\\'"),
            ("é/", 3, "a field name"),
        ] {
            let error = Mask::parse(text).unwrap_err();
            assert_eq!(
                (error.position, error.expected),
                (position, expected),
                "{text:?}"
            );
        }
        let message = Mask::parse("a(b").unwrap_err().to_string();
        assert_eq!(
            message,
            "the field mask \"a(b\" is malformed at byte 3: expected ')' to close the '(' opened before it"
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = "a/".repeat(64) + "a";
        assert!(Mask::parse(&deep).is_ok());
        let deeper = "a/".repeat(65) + "a";
        let error = Mask::parse(&deeper).unwrap_err();
        assert_eq!(error.position, 130);
        let parens = "a(".repeat(10_000);
        assert_eq!(Mask::parse(&parens).unwrap_err().position, 130);
    }
}
