//! `batchgate send URL [FILE|-]`: requests from a file or stdin, one a line, sent as one batch; each reply
//! part printed as it arrives. The exit status says how it went: 0 every part 2xx, 1 some part not, 2 the
//! batch itself failed or the input could not be used.
//!
//! Requests in the line format go through `batchgate_client` ([`BatchClient::send_stream`]); a raw
//! multipart input, and `--raw`, which prints the reply's bytes, go through [`raw`], which sends and reads
//! bytes as they are.

mod input;
mod output;
mod raw;

use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use batchgate::config::parse_duration;
use batchgate_client::{BatchBuilder, BatchClient, ClientError, Format};
use batchgate_wire::{self as wire, FramingError, PartSplitter, boundary_from_content_type};
use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{
    ACCEPT_ENCODING, AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE,
    TRANSFER_ENCODING,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use input::{Input, InputError};
use output::Printer;

const FORMAT: &str = "\
Input: one request a line, for example

  # the inbox
  GET /mail/v1/messages/1
  DELETE /mail/v1/messages/2
  POST /mail/v1/messages
    X-Request-Id: 42
    {\"title\": \"hello\",
     \"to\": [\"bob@example.com\"]}

- A request line starts in the first column: METHOD TARGET, optionally followed by HTTP/1.1. The method is
  upper case; the target is a path with its query, or an absolute http(s) URL.
- The indented lines (spaces or tabs) below a request line belong to it. First its headers: `Name: value`
  lines. The first indented line that is not one, or any indented line after a blank line, starts the
  body, which runs until the next line in the first column. (A body whose first line looks like a header
  goes after a blank line.)
- The body loses its common indentation; its lines are joined with \\n. Without a Content-Type header it
  must be JSON and is sent as application/json; with a JSON Content-Type it must be JSON too; with any
  other it is sent as it is.
- Blank lines, and lines starting with # in the first column, are ignored.
- The parts get the Content-IDs <1>, <2>, ... in request order.

Input whose first non-blank line starts with `--` is a multipart batch: it is sent byte for byte, with
Content-Type: multipart/mixed; boundary=<the rest of that line>.

Output: for each reply part as it arrives, `[N] <Content-ID> STATUS REASON`, then its body indented: JSON
pretty-printed (keys in their order), other text as it is, anything else as <N bytes>. With --raw, the
reply body exactly as received instead (and a line break after it if it does not end in one).

Exit status: 0 when every part is 2xx; 1 when any part is not; 2 when the batch itself failed (connection,
TLS, timeout, a refused batch: the gateway's error message is printed, a malformed reply, a reply with fewer
or more parts than were sent) or the input or an option cannot be used (the message names the input line).";

/// Send requests to a batch endpoint as one batch and print the reply parts.
#[derive(Debug, clap::Args)]
#[command(after_long_help = FORMAT)]
pub(crate) struct SendArgs {
    /// The batch endpoint, e.g. http://127.0.0.1:8080/batch.
    url: String,
    /// The requests, one a line (see below), or a whole multipart batch; `-` or none reads stdin.
    file: Option<PathBuf>,
    /// A header on the batch request, which the gateway passes on to every part (repeatable):
    /// -H 'Authorization: Bearer abc'.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// The longest the whole batch may take, from sending it to its last reply part (30s, 500ms); no limit
    /// by default. Connecting has 10s.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    timeout: Option<Duration>,
    /// Print the reply body exactly as received (the multipart bytes) instead of one entry per part.
    #[arg(long)]
    raw: bool,
    /// Send the requests as a JSON batch (Microsoft Graph, OData 4.01: `{"requests":[...]}`) instead of
    /// multipart/mixed. Bodies go as JSON values, text or base64url by their Content-Type.
    #[arg(long, conflicts_with = "raw")]
    json: bool,
    /// For an https URL: trust the CA certificates in this PEM file besides the system's.
    #[arg(long, value_name = "PEM")]
    cacert: Option<PathBuf>,
}

/// Why `send` stops with exit status 2.
#[derive(Debug)]
enum Failure {
    /// An option cannot be used.
    Usage(String),
    /// The input cannot be read.
    Read(String),
    /// The input cannot be sent; names the line.
    Input(InputError),
    /// The batch failed as a whole.
    Batch(ClientError),
    /// Writing the output failed.
    Output(io::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Usage(message) | Failure::Read(message) => f.write_str(message),
            Failure::Input(e) => e.fmt(f),
            // The library's advice names its API; here the option does it.
            Failure::Batch(ClientError::Tls { url, reason }) => write!(
                f,
                "TLS handshake with {url} failed: {reason} (if the gateway's certificate is signed by a \
                 private CA, trust it with --cacert FILE)"
            ),
            Failure::Batch(e) => e.fmt(f),
            Failure::Output(e) => write!(f, "writing the output: {e}"),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        Failure::Batch(e)
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Output(e)
    }
}

/// Parts shown, and how many of them failed.
#[derive(Debug)]
struct Outcome {
    parts: usize,
    failed: usize,
}

/// Runs `batchgate send`; its exit status is 0, 1 or 2 as the module says.
pub(crate) fn main(args: SendArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("batchgate send: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(Outcome { failed: 0, .. }) => ExitCode::SUCCESS,
        Ok(Outcome { parts, failed }) => {
            eprintln!("batchgate send: {failed} of {parts} parts failed (not 2xx)");
            ExitCode::from(1)
        }
        // Whoever reads the output has gone (`| head`): nothing more to say.
        Err(Failure::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::from(2),
        Err(failure) => {
            eprintln!("batchgate send: {failure}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: SendArgs) -> Result<Outcome, Failure> {
    let headers = outer_headers(&args.headers)?;
    // `host:port/batch` does not parse as a URL at all, and the parser's own word for it is "invalid format".
    if !args.url.contains("://") {
        return Err(Failure::Usage(format!(
            "the batch URL {:?} has no scheme: use http://HOST:PORT/batch or https://HOST/batch",
            args.url
        )));
    }
    let roots = match &args.cacert {
        Some(path) => read_roots(path)?,
        None => Vec::new(),
    };
    // Built first so that a bad URL is reported before the input is read.
    let mut client = BatchClient::builder(args.url.as_str());
    for (name, value) in &headers {
        client = client.header(name.clone(), value.clone());
    }
    if let Some(limit) = args.timeout {
        client = client.timeout(limit);
    }
    for cert in &roots {
        client = client.add_root_certificate(cert.clone());
    }
    let client = client.build()?;
    let input = input::parse(&read_input(args.file.as_deref())?).map_err(Failure::Input)?;
    let mut printer = Printer::new(io::stdout().lock());
    let sent = send(&args, &headers, &roots, client, input, &mut printer).await;
    // What follows (the summary, an error) goes to stderr: on a terminal it must not run into a reply that
    // `--raw` printed without a final line break.
    let ended = printer.end_line();
    sent?;
    ended?;
    Ok(Outcome {
        parts: printer.parts,
        failed: printer.failed,
    })
}

/// Sends the batch and shows its reply parts as they arrive.
async fn send<W: Write>(
    args: &SendArgs,
    headers: &HeaderMap,
    roots: &[CertificateDer<'static>],
    client: BatchClient,
    input: Input,
    printer: &mut Printer<W>,
) -> Result<(), Failure> {
    match input {
        Input::Requests(requests) => {
            let expected = requests.len();
            let mut batch = batch(requests)?;
            if args.json {
                batch.format(Format::Json);
            }
            if args.raw {
                let (content_type, body) = batch.finish();
                let endpoint = raw::Endpoint::new(&args.url, roots)?;
                let reply = endpoint
                    .post(headers, &content_type, body, args.timeout)
                    .await?;
                read_raw(reply, Some(expected), true, printer).await?;
            } else {
                let mut parts = client.send_stream(batch);
                while let Some(part) = parts.next().await {
                    let part = part?;
                    // A JSON reply names its parts by id, with no Content-ID header.
                    let id = part.raw_content_id.as_deref();
                    let id = id.or(part.content_id.as_ref().map(|id| id.id()));
                    printer.part(part.index + 1, id, part.status, &part.headers, &part.body)?;
                }
            }
        }
        Input::Raw { .. } if args.json => {
            return Err(Failure::Usage(
                "--json sends requests given in the line format; a whole multipart batch is sent as it is"
                    .to_owned(),
            ));
        }
        Input::Raw { content_type, body } => {
            let expected = parts_in(&content_type, &body);
            let endpoint = raw::Endpoint::new(&args.url, roots)?;
            let reply = endpoint
                .post(headers, &content_type, body, args.timeout)
                .await?;
            read_raw(reply, expected, args.raw, printer).await?;
        }
    }
    Ok(())
}

/// How many parts a raw multipart input holds, when it splits cleanly (otherwise the batch endpoint is the
/// judge of it): a reply with fewer or more parts is malformed, as for requests given one a line.
fn parts_in(content_type: &str, body: &Bytes) -> Option<usize> {
    let boundary = boundary_from_content_type(content_type).ok()?;
    let mut splitter = PartSplitter::new(&boundary, u64::MAX);
    splitter.push(body);
    let mut parts = 0;
    while splitter.next_part().ok()?.is_some() {
        parts += 1;
    }
    splitter.finish().ok()?;
    Some(parts)
}

/// `-H` values: `Name: value`. The batch's own framing headers are send's to set, and the reply must not be
/// compressed (the parts are read from it).
fn outer_headers(values: &[String]) -> Result<HeaderMap, Failure> {
    let mut headers = HeaderMap::new();
    for text in values {
        let bad = |why: String| Failure::Usage(format!("-H {text:?}: {why}"));
        let Some((name, value)) = text.split_once(':') else {
            return Err(bad("expected `Name: value`".to_owned()));
        };
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|e| bad(format!("header name: {e}")))?;
        if [CONTENT_TYPE, CONTENT_LENGTH, TRANSFER_ENCODING].contains(&name) {
            return Err(bad(format!("send sets the batch request's {name} itself")));
        }
        if name == ACCEPT_ENCODING {
            return Err(bad(
                "send reads the reply's parts, so it asks for an uncompressed reply".to_owned(),
            ));
        }
        let mut value =
            HeaderValue::from_str(value.trim()).map_err(|e| bad(format!("header value: {e}")))?;
        if name == AUTHORIZATION {
            value.set_sensitive(true);
        }
        headers.append(name, value);
    }
    Ok(headers)
}

fn read_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, Failure> {
    let bad = |why: String| Failure::Usage(format!("--cacert {}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| bad(format!("cannot be read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("is not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("holds no CERTIFICATE".to_owned()));
    }
    Ok(certs)
}

/// The input's bytes: the file, or stdin for `-` or none.
fn read_input(file: Option<&Path>) -> Result<Vec<u8>, Failure> {
    match file {
        Some(path) if path != Path::new("-") => std::fs::read(path)
            .map_err(|e| Failure::Read(format!("cannot read {}: {e}", path.display()))),
        _ => {
            let mut stdin = io::stdin().lock();
            if stdin.is_terminal() {
                eprintln!(
                    "batchgate send: reading requests from the terminal; end them with Ctrl-D"
                );
            }
            let mut bytes = Vec::new();
            stdin
                .read_to_end(&mut bytes)
                .map_err(|e| Failure::Read(format!("cannot read stdin: {e}")))?;
            Ok(bytes)
        }
    }
}

/// The requests as one batch, ids `1`, `2`, ... in order.
fn batch(requests: Vec<input::Request>) -> Result<BatchBuilder, Failure> {
    let mut batch = BatchBuilder::new();
    for (i, r) in requests.into_iter().enumerate() {
        let mut request = http::Request::new(r.body);
        *request.method_mut() = r.method;
        *request.uri_mut() = r.target;
        *request.headers_mut() = r.headers;
        batch.push_with_id(&(i + 1).to_string(), request)?;
    }
    Ok(batch)
}

/// Reads a 200 reply part by part as it arrives: each part shown (or, with `raw_out`, the bytes written as
/// they come and the parts only counted). `expected`: the number of parts sent, when known.
async fn read_raw<W: Write>(
    mut reply: raw::Reply,
    expected: Option<usize>,
    raw_out: bool,
    printer: &mut Printer<W>,
) -> Result<(), Failure> {
    let malformed = |offset: u64, reason: String| ClientError::MalformedReply { offset, reason };
    if let Some(coding) = reply.headers.get(CONTENT_ENCODING)
        && !coding.as_bytes().eq_ignore_ascii_case(b"identity")
    {
        let coding = String::from_utf8_lossy(coding.as_bytes()).into_owned();
        return Err(malformed(0, format!("the reply is compressed ({coding})")).into());
    }
    let content_type = reply
        .headers
        .get(CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let boundary = boundary_from_content_type(&content_type)
        .map_err(|e| malformed(0, format!("the reply is no batch reply: {e}")))?;
    let mut splitter = PartSplitter::new(&boundary, u64::MAX);
    let mut seen = 0;
    loop {
        match splitter.next_part_with(wire::ReplyPart::complete_len) {
            Err(e) => return Err(malformed(reply.received, e.to_string()).into()),
            Ok(Some(part)) => {
                let offset = splitter.part_offset();
                let parsed = wire::ReplyPart::parse(&part, seen)
                    .map_err(|e| malformed(offset, e.to_string()))?;
                seen += 1;
                if let Some(expected) = expected
                    && seen > expected
                {
                    let reason = format!(
                        "reply part {} is one too many: the batch has {expected} parts",
                        seen - 1
                    );
                    return Err(malformed(offset, reason).into());
                }
                if raw_out {
                    printer.count(parsed.status);
                } else {
                    printer.part(
                        seen,
                        content_id(&part).as_deref(),
                        parsed.status,
                        &parsed.headers,
                        &parsed.body,
                    )?;
                }
                continue;
            }
            Ok(None) if splitter.is_closed() => break,
            Ok(None) => {}
        }
        let Some(data) = reply.chunk(seen).await? else {
            let error = match splitter.finish() {
                Err(e @ FramingError::Truncated { .. }) => ClientError::BrokenOff {
                    parts: seen,
                    offset: reply.received,
                    reason: e.to_string(),
                },
                Err(e) => malformed(reply.received, e.to_string()),
                Ok(()) => malformed(reply.received, "the reply ended unexpectedly".to_owned()),
            };
            return Err(error.into());
        };
        if raw_out {
            printer.raw(&data)?;
        }
        splitter.push(&data);
    }
    // `--raw` shows what follows the close delimiter too: all of the reply, as received.
    if raw_out {
        while let Some(data) = reply.chunk(seen).await? {
            printer.raw(&data)?;
        }
    }
    if let Some(expected) = expected
        && seen < expected
    {
        let reason = format!("the reply closed after {seen} parts but the batch has {expected}");
        return Err(malformed(reply.received, reason).into());
    }
    Ok(())
}

/// A reply part's `Content-ID` header as received, from its part headers.
fn content_id(part: &Bytes) -> Option<String> {
    for line in part.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() || line.starts_with(b"HTTP/") {
            return None;
        }
        let line = String::from_utf8_lossy(line);
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-id")
        {
            return Some(value.trim().to_owned());
        }
    }
    None
}
