//! What `batchgate send` reads: requests one a line, or a whole multipart batch sent as it is.
//!
//! The line format (`batchgate send --help` says the same to users):
//! - A request line starts in the first column: `METHOD TARGET`, optionally followed by `HTTP/1.1`. The
//!   method is upper case; the target is a path (`/mail/v1/messages/1?x=y`) or an absolute http(s) URL.
//! - The indented lines (space or tab) after a request line belong to it. First come its headers: indented
//!   `Name: value` lines. The first indented line that is not one, or any indented line after a blank line,
//!   starts the body, which runs to the next line in the first column. So a body whose first line looks like
//!   a header is written after a blank line.
//! - The body loses its common indentation; its lines are joined with `\n`, blank lines between them kept.
//!   Without a `Content-Type` header it must be JSON and is sent as `application/json`; with a JSON
//!   `Content-Type` it must be JSON too; with any other it is sent as it is.
//! - Blank lines, and lines starting with `#` in the first column, are ignored (also between body lines).
//!
//! Input whose first non-blank line starts with `--` is a raw multipart batch: it is sent byte for byte, with
//! `Content-Type: multipart/mixed; boundary=` the rest of that line.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

/// What the input holds.
#[derive(Debug)]
pub(super) enum Input {
    /// Requests in the line format, in order.
    Requests(Vec<Request>),
    /// A multipart batch, to be sent as it is.
    Raw {
        /// The `Content-Type` to send it with.
        content_type: String,
        body: Bytes,
    },
}

/// One request of the line format.
#[derive(Debug)]
pub(super) struct Request {
    pub method: Method,
    pub target: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why the input cannot be sent: what, and where.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct InputError {
    /// The input line (from 1), if the error is about one.
    pub line: Option<usize>,
    /// The column in it (from 1), if known.
    pub column: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(column)) => {
                write!(f, "input line {line}, column {column}: {}", self.message)
            }
            (Some(line), None) => write!(f, "input line {line}: {}", self.message),
            _ => write!(f, "input: {}", self.message),
        }
    }
}

fn at(line: usize, message: impl Into<String>) -> InputError {
    InputError {
        line: Some(line),
        column: None,
        message: message.into(),
    }
}

/// Reads the input: a raw multipart batch if its first non-blank line is a delimiter, else requests.
pub(super) fn parse(input: &[u8]) -> Result<Input, InputError> {
    let first = input
        .split(|&b| b == b'\n')
        .enumerate()
        .find(|(_, line)| !line.iter().all(u8::is_ascii_whitespace));
    if let Some((index, line)) = first
        && let Some(rest) = line.strip_prefix(b"--")
    {
        return raw(index + 1, rest, input);
    }
    let text = std::str::from_utf8(input).map_err(|e| {
        let line = 1 + input[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        at(line, "not UTF-8 text")
    })?;
    let requests = requests(text)?;
    if requests.is_empty() {
        return Err(InputError {
            line: None,
            column: None,
            message: "no requests in it (expected lines like `GET /mail/v1/messages/1`)".into(),
        });
    }
    Ok(Input::Requests(requests))
}

/// A multipart batch: the boundary is what follows `--` on its first delimiter line.
fn raw(line: usize, rest: &[u8], input: &[u8]) -> Result<Input, InputError> {
    let boundary = std::str::from_utf8(rest)
        .map_err(|_| at(line, "the multipart delimiter line is not UTF-8"))?
        .trim_end();
    if boundary.is_empty() || boundary.len() > 70 {
        return Err(at(
            line,
            format!(
                "a raw multipart batch starts with a delimiter line `--BOUNDARY` (1 to 70 characters); \
                 this one has {}",
                if boundary.is_empty() {
                    "none".to_owned()
                } else {
                    format!("{} characters", boundary.len())
                }
            ),
        ));
    }
    // RFC 2046's bchars; as the last character, not a space (already trimmed).
    let bchar = |c: char| c.is_ascii_alphanumeric() || "'()+_,-./:=? ".contains(c);
    if let Some(bad) = boundary.chars().find(|&c| !bchar(c)) {
        return Err(at(
            line,
            format!(
                "the multipart boundary {boundary:?} contains {bad:?}, which a boundary cannot"
            ),
        ));
    }
    let token = boundary
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "'+_-.".contains(c));
    let content_type = if token {
        format!("multipart/mixed; boundary={boundary}")
    } else {
        format!("multipart/mixed; boundary=\"{boundary}\"")
    };
    Ok(Input::Raw {
        content_type,
        body: Bytes::copy_from_slice(input),
    })
}

/// A request being read: its request line, headers, body lines.
struct Pending {
    line: usize,
    method: Method,
    target: Uri,
    headers: HeaderMap,
    /// Body lines with their input line numbers, blank ones included.
    body: Vec<(usize, String)>,
    /// A blank line came after the headers: the next indented line is body.
    blank: bool,
    /// Blank lines seen inside the body, kept if another body line follows.
    blanks: Vec<usize>,
}

fn requests(text: &str) -> Result<Vec<Request>, InputError> {
    let mut out = Vec::new();
    let mut pending: Option<Pending> = None;
    for (index, line) in text.split('\n').enumerate() {
        let number = index + 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            if let Some(p) = &mut pending {
                if p.body.is_empty() {
                    p.blank = true;
                } else {
                    p.blanks.push(number);
                }
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            let Some(p) = &mut pending else {
                return Err(at(
                    number,
                    "an indented line belongs to the request line above it, and there is none",
                ));
            };
            let content = line.trim_start();
            if p.body.is_empty() && !p.blank && header_name(content).is_some() {
                add_header(p, number, content)?;
            } else {
                for blank in p.blanks.drain(..) {
                    p.body.push((blank, String::new()));
                }
                p.body.push((number, line.to_owned()));
            }
            continue;
        }
        if let Some(p) = pending.take() {
            out.push(finish(p)?);
        }
        pending = Some(request_line(number, line)?);
    }
    if let Some(p) = pending.take() {
        out.push(finish(p)?);
    }
    Ok(out)
}

/// `METHOD TARGET [HTTP/x.y]`.
fn request_line(number: usize, line: &str) -> Result<Pending, InputError> {
    if header_name(line).is_some() {
        return Err(at(
            number,
            format!("{line:?} looks like a header: indent it under its request line"),
        ));
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let (method, target) = match words[..] {
        [method, target] => (method, target),
        [method, target, version] if version.starts_with("HTTP/") => (method, target),
        _ => {
            return Err(at(
                number,
                format!(
                    "expected a request line `METHOD TARGET` (like `GET /mail/v1/messages/1`), got {line:?}"
                ),
            ));
        }
    };
    let parsed = Method::from_bytes(method.as_bytes())
        .map_err(|_| at(number, format!("{method:?} is not an HTTP method")))?;
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(at(
            number,
            format!(
                "methods are case-sensitive and upper case: {method:?} should be {:?}",
                method.to_ascii_uppercase()
            ),
        ));
    }
    let absolute = target.starts_with("http://") || target.starts_with("https://");
    if !(target.starts_with('/') || absolute) {
        return Err(at(
            number,
            format!("the target {target:?} must be a path starting with / or an http(s) URL"),
        ));
    }
    let uri: Uri = target
        .parse()
        .map_err(|e| at(number, format!("the target {target:?}: {e}")))?;
    Ok(Pending {
        line: number,
        method: parsed,
        target: uri,
        headers: HeaderMap::new(),
        body: Vec::new(),
        blank: false,
        blanks: Vec::new(),
    })
}

/// The name of a `Name: value` line: a token right before the first colon.
fn header_name(line: &str) -> Option<&str> {
    let (name, _) = line.split_once(':')?;
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    (!name.is_empty() && name.bytes().all(tchar)).then_some(name)
}

fn add_header(p: &mut Pending, number: usize, content: &str) -> Result<(), InputError> {
    let (name, value) = content.split_once(':').unwrap_or((content, ""));
    let name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|e| at(number, format!("header name {name:?}: {e}")))?;
    if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
        return Err(at(
            number,
            format!("leave {name} out: the body is sent with a Content-Length of its own size"),
        ));
    }
    let value = HeaderValue::from_str(value.trim())
        .map_err(|e| at(number, format!("the value of {name}: {e}")))?;
    p.headers.append(name, value);
    Ok(())
}

fn finish(p: Pending) -> Result<Request, InputError> {
    let body = body(&p)?;
    let mut headers = p.headers;
    if !body.is_empty() && !headers.contains_key(CONTENT_TYPE) {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    Ok(Request {
        method: p.method,
        target: p.target,
        headers,
        body,
    })
}

/// The body, its common indentation removed; checked to be JSON unless a non-JSON `Content-Type` says
/// otherwise.
fn body(p: &Pending) -> Result<Bytes, InputError> {
    if p.body.is_empty() {
        return Ok(Bytes::new());
    }
    let indent = |line: &str| line.len() - line.trim_start().len();
    let common = p
        .body
        .iter()
        .filter(|(_, line)| !line.is_empty())
        .map(|(_, line)| indent(line))
        .min()
        .unwrap_or(0);
    let lines: Vec<&str> = p
        .body
        .iter()
        .map(|(_, line)| line.get(common..).unwrap_or(""))
        .collect();
    let text = lines.join("\n");
    let json = match p.headers.get(CONTENT_TYPE) {
        None => true,
        Some(value) => super::output::is_json_type(value.to_str().unwrap_or("")),
    };
    if json && let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&text) {
        // serde_json counts lines and columns from 1 within the body text.
        let (number, column) = match p.body.get(e.line().saturating_sub(1)) {
            Some((number, _)) => (*number, e.column() + common),
            None => (p.body[p.body.len() - 1].0, 0),
        };
        return Err(InputError {
            line: Some(number),
            column: (column > 0).then_some(column),
            message: format!(
                "the body of {} {} (line {}) is not JSON: {}; a body of another kind needs its \
                 Content-Type header",
                p.method,
                p.target,
                p.line,
                json_reason(&e)
            ),
        });
    }
    Ok(Bytes::from(text))
}

/// serde_json's message without its own "at line L column C" (the caller says where, in input lines).
fn json_reason(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests_of(text: &str) -> Vec<Request> {
        match parse(text.as_bytes()).unwrap() {
            Input::Requests(requests) => requests,
            other => panic!("{other:?}"),
        }
    }

    fn error_of(text: &str) -> String {
        parse(text.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn lines_headers_bodies_comments() {
        let input = "# the inbox\n\
                     GET /mail/v1/messages/1\n\
                     \n\
                     DELETE http://api.example/x?y=1 HTTP/1.1\r\n\
                     \x20 X-Tenant: t1\n\
                     \x20 Accept:application/json \n\
                     POST /mail/v1/messages\n\
                     \x20   {\n\
                     \x20     \"title\": \"hi\",\n\
                     \n\
                     # a note\n\
                     \x20     \"to\": [\"a\"]\n\
                     \x20   }\n\
                     \n\
                     PUT /notes/1\n\
                     \tContent-Type: text/plain\n\
                     \n\
                     \tSubject: not a header\n\
                     \t  indented\n";
        let r = requests_of(input);
        assert_eq!(r.len(), 4);
        assert_eq!(r[0].method, Method::GET);
        assert_eq!(r[0].target, "/mail/v1/messages/1");
        assert!(r[0].headers.is_empty() && r[0].body.is_empty());
        assert_eq!(r[1].method, Method::DELETE);
        assert_eq!(r[1].target, "http://api.example/x?y=1");
        assert_eq!(r[1].headers["x-tenant"], "t1");
        assert_eq!(r[1].headers["accept"], "application/json");
        assert_eq!(r[2].headers["content-type"], "application/json");
        assert_eq!(
            &r[2].body[..],
            b"{\n  \"title\": \"hi\",\n\n  \"to\": [\"a\"]\n}"
        );
        assert_eq!(r[3].headers["content-type"], "text/plain");
        assert_eq!(&r[3].body[..], b"Subject: not a header\n  indented");
    }

    #[test]
    fn header_lines_end_at_the_first_other_indented_line() {
        let r = requests_of("POST /x\n  X-A: 1\n  {\"a\": 1}\n  \nGET /y\n");
        assert_eq!(r[0].headers["x-a"], "1");
        assert_eq!(
            &r[0].body[..],
            b"{\"a\": 1}",
            "trailing blank lines dropped"
        );
        assert_eq!(r[1].target, "/y");
    }

    #[test]
    fn raw_multipart_is_kept_byte_for_byte() {
        let body = "\r\n--b=1 x\r\nContent-Type: application/http\r\n\r\nGET /a\r\n--b=1 x--\r\n";
        match parse(body.as_bytes()).unwrap() {
            Input::Raw {
                content_type,
                body: bytes,
            } => {
                assert_eq!(content_type, "multipart/mixed; boundary=\"b=1 x\"");
                assert_eq!(&bytes[..], body.as_bytes());
            }
            other => panic!("{other:?}"),
        }
        match parse(b"--abc_9\nx").unwrap() {
            Input::Raw { content_type, .. } => {
                assert_eq!(content_type, "multipart/mixed; boundary=abc_9")
            }
            other => panic!("{other:?}"),
        }
        assert!(error_of("--\n").starts_with("input line 1: a raw multipart batch starts"));
        assert!(error_of("\n--a\"b\n").starts_with("input line 2: the multipart boundary"));
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            (
                "GET /a\n  X-A: 1\nget /b\n",
                "input line 3: methods are case-sensitive",
            ),
            ("GET\n", "input line 1: expected a request line"),
            ("GET /a /b\n", "input line 1: expected a request line"),
            (
                "GET mail/1\n",
                "input line 1: the target \"mail/1\" must be a path",
            ),
            ("G@T /a\n", "input line 1: \"G@T\" is not an HTTP method"),
            ("  GET /a\n", "input line 1: an indented line"),
            (
                "POST /a\nContent-Type: application/json\n",
                "input line 2: \"Content-Type: application/json\" looks like a header",
            ),
            (
                "GET /a\n  Content-Length: 3\n",
                "input line 2: leave content-length out",
            ),
            ("GET /a\n  X-A: \u{1}\n", "input line 2: the value of x-a"),
            (
                "GET /a\n\nPOST /b\n  [\"a\",\n    1,\n  ]\n",
                "input line 6, column 3: the body of POST /b (line 3) is not JSON: expected value",
            ),
            (
                "POST /b\n  Content-Type: application/json\n  hello\n",
                "input line 3, column 3: the body of POST /b (line 1) is not JSON",
            ),
            ("# nothing\n\n", "input: no requests in it"),
        ];
        for (input, expected) in cases {
            let got = error_of(input);
            assert!(got.starts_with(expected), "{input:?}: {got}");
        }
        let bad = parse(b"GET /a\nGET /b\xff\n").unwrap_err();
        assert_eq!(bad.line, Some(2));
    }
}
