//! How `batchgate send` shows a reply part: `[1] <response-1> 200 OK`, then the body indented below it,
//! JSON pretty-printed in the order it came, other text as it is, anything else as `<N bytes>`.

use std::io::{self, Write};

use http::{HeaderMap, StatusCode};

/// How far a body is indented under its part's line.
const INDENT: &str = "  ";

/// Writes reply parts as they come and counts those that failed.
#[derive(Debug)]
pub(super) struct Printer<W: Write> {
    out: W,
    /// Parts shown so far.
    pub parts: usize,
    /// Parts whose status is not 2xx.
    pub failed: usize,
    /// The output so far ends in the middle of a line (`--raw` bytes without a final line break).
    mid_line: bool,
}

impl<W: Write> Printer<W> {
    pub(super) fn new(out: W) -> Printer<W> {
        Printer {
            out,
            parts: 0,
            failed: 0,
            mid_line: false,
        }
    }

    /// Shows one part (`number` from 1) and flushes, so that each part is seen as soon as it is in.
    pub(super) fn part(
        &mut self,
        number: usize,
        content_id: Option<&str>,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> io::Result<()> {
        self.count(status);
        self.out
            .write_all(render(number, content_id, status, headers, body).as_bytes())?;
        self.out.flush()
    }

    /// Writes reply bytes as they are (`--raw`).
    pub(super) fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Some(&last) = bytes.last() {
            self.mid_line = last != b'\n';
        }
        self.out.write_all(bytes)?;
        self.out.flush()
    }

    /// Ends the output's last line if `--raw` bytes left it open, so that what is printed next starts a line.
    pub(super) fn end_line(&mut self) -> io::Result<()> {
        if std::mem::take(&mut self.mid_line) {
            self.out.write_all(b"\n")?;
            self.out.flush()?;
        }
        Ok(())
    }

    /// Counts a part without showing it (`--raw` shows the bytes instead).
    pub(super) fn count(&mut self, status: StatusCode) {
        self.parts += 1;
        if !status.is_success() {
            self.failed += 1;
        }
    }
}

/// One part as text, ending in a line break.
pub(super) fn render(
    number: usize,
    content_id: Option<&str>,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> String {
    let mut out = format!("[{number}] ");
    if let Some(id) = content_id {
        // Nothing from the wire reaches the terminal as a control character.
        out.extend(id.chars().map(|c| if c.is_control() { '?' } else { c }));
        out.push(' ');
    }
    out.push_str(status.as_str());
    if let Some(reason) = status.canonical_reason() {
        out.push(' ');
        out.push_str(reason);
    }
    out.push('\n');
    for line in body_lines(headers, body) {
        out.push_str(INDENT);
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The body as lines to show: pretty JSON, text, or its size.
fn body_lines(headers: &HeaderMap, body: &[u8]) -> Vec<String> {
    if body.is_empty() {
        return Vec::new();
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return vec![size(body)];
    };
    if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
        return pretty_json(text).lines().map(str::to_owned).collect();
    }
    let json_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_json_type);
    if text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return vec![size(body)];
    }
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    if json_type {
        lines.push("(not valid JSON although its Content-Type says so)".to_owned());
    }
    lines
}

fn size(body: &[u8]) -> String {
    format!("<{} bytes>", body.len())
}

/// `application/json`, or any `+json` type, with or without parameters.
pub(super) fn is_json_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

/// Valid JSON text re-indented by two spaces a level, keys in the order they came and numbers and strings
/// exactly as written (serde_json's own printer would sort the keys and reformat numbers).
pub(super) fn pretty_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0usize;
    let mut chars = text.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        for _ in 0..depth {
            out.push_str("  ");
        }
    };
    let is_space = |c: &char| matches!(c, ' ' | '\t' | '\n' | '\r');
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                out.push('"');
                while let Some(c) = chars.next() {
                    out.push(c);
                    match c {
                        '\\' => out.extend(chars.next()),
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '{' | '[' => {
                while chars.next_if(is_space).is_some() {}
                let close = if c == '{' { '}' } else { ']' };
                out.push(c);
                if chars.next_if_eq(&close).is_some() {
                    out.push(close);
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(',');
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if is_space(&c) => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn pretty_json_keeps_order_numbers_and_strings() {
        let text = r#" {"z":1.50,"a":[ ],"s":"x, {\"y\": [1]}\\","o":{"k":[1,2e3,{}]},"n":null} "#;
        assert_eq!(
            pretty_json(text),
            "{\n  \"z\": 1.50,\n  \"a\": [],\n  \"s\": \"x, {\\\"y\\\": [1]}\\\\\",\n  \"o\": {\n    \"k\": [\n      1,\n      2e3,\n      {}\n    ]\n  },\n  \"n\": null\n}"
        );
        assert_eq!(pretty_json("42"), "42");
        assert_eq!(pretty_json("\"a b\""), "\"a b\"");
    }

    #[test]
    fn parts_render_compactly() {
        let json = HeaderMap::from_iter([(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )]);
        assert_eq!(
            render(
                1,
                Some("<response-1>"),
                StatusCode::OK,
                &json,
                br#"{"a":[1]}"#
            ),
            "[1] <response-1> 200 OK\n  {\n    \"a\": [\n      1\n    ]\n  }\n"
        );
        assert_eq!(
            render(2, None, StatusCode::NO_CONTENT, &HeaderMap::new(), b""),
            "[2] 204 No Content\n"
        );
        assert_eq!(
            render(
                3,
                Some("x\u{1b}"),
                StatusCode::from_u16(599).unwrap(),
                &HeaderMap::new(),
                b"line 1\r\nline 2\n"
            ),
            "[3] x? 599\n  line 1\n  line 2\n"
        );
        assert_eq!(
            render(
                4,
                None,
                StatusCode::OK,
                &HeaderMap::new(),
                b"\x89PNG\r\n\x1a\n\0"
            ),
            "[4] 200 OK\n  <9 bytes>\n"
        );
        assert_eq!(
            render(5, None, StatusCode::OK, &HeaderMap::new(), b"a\x1b[31m"),
            "[5] 200 OK\n  <6 bytes>\n"
        );
        assert_eq!(
            render(6, None, StatusCode::BAD_GATEWAY, &json, b"{oops"),
            "[6] 502 Bad Gateway\n  {oops\n  (not valid JSON although its Content-Type says so)\n"
        );
        assert!(is_json_type("application/problem+json; charset=utf-8"));
        assert!(!is_json_type("text/plain"));
    }

    #[test]
    fn the_printer_counts_failures() {
        let mut printer = Printer::new(Vec::new());
        printer
            .part(1, None, StatusCode::CREATED, &HeaderMap::new(), b"")
            .unwrap();
        printer.count(StatusCode::NOT_FOUND);
        assert_eq!((printer.parts, printer.failed), (2, 1));
        assert_eq!(printer.out, b"[1] 201 Created\n");
    }
}
