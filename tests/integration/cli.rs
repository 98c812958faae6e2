//! The command line a test in any language drives: `--print-address` (the URL alone on stdout, once
//! listening; nothing on stdout and a non-zero exit when it cannot listen), `--route PREFIX=URL` without a
//! config file, and `batchgate demo-upstream`.

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};

use crate::support::*;
use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdout};

/// `batchgate ARGS` with stdout read by the test and stderr kept whole for failure messages.
struct Printing {
    child: Child,
    stdout: BufReader<ChildStdout>,
    stderr: tokio::task::JoinHandle<String>,
}

impl Printing {
    fn spawn(args: &[&str]) -> Printing {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_batchgate"))
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        // Read as it comes, so that the child never blocks on a full pipe.
        let mut stderr = child.stderr.take().unwrap();
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        Printing {
            child,
            stdout,
            stderr,
        }
    }

    /// The first line on stdout, without its newline; the process must still be running.
    async fn first_line(&mut self) -> String {
        let mut line = String::new();
        within(
            20,
            "the first line on stdout",
            self.stdout.read_line(&mut line),
        )
        .await
        .unwrap();
        assert!(
            line.ends_with('\n'),
            "stdout ended before a whole line: {line:?}"
        );
        line.pop();
        line
    }

    /// SIGTERM, then everything left on stdout and stderr and how it exited.
    async fn terminate(self) -> (String, String, ExitStatus) {
        let pid = self.child.id().unwrap().to_string();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(killed.success(), "kill -TERM {pid}");
        self.finish().await
    }

    /// Waits for the process to exit by itself; returns what it wrote and how it exited.
    async fn finish(mut self) -> (String, String, ExitStatus) {
        let status = within(20, "the process to exit", self.child.wait())
            .await
            .unwrap();
        let mut stdout = String::new();
        self.stdout.read_to_string(&mut stdout).await.unwrap();
        let stderr = self.stderr.await.unwrap();
        (stdout, stderr, status)
    }
}

/// The address of a `--print-address` line, which must be `http://IP:PORT` exactly.
fn address_of(line: &str) -> SocketAddr {
    let addr = line
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("not an http:// URL: {line:?}"));
    addr.parse()
        .unwrap_or_else(|e| panic!("{line:?} is not http://IP:PORT: {e}"))
}

/// A one-part batch to `/batch` at `base`: GET `target`.
async fn one_get(base: &str, target: &str) -> Reply {
    http_request(
        &format!("{base}/batch"),
        Method::POST,
        &[("content-type", MP)],
        Bytes::from(batch(&[part("p", &format!("GET {target}"))])),
    )
    .await
}

#[tokio::test]
async fn print_address_is_the_only_line_on_stdout_and_the_gateway_answers_it() {
    let mut gateway = Printing::spawn(&["--demo", "--listen", "127.0.0.1:0", "--print-address"]);
    let url = gateway.first_line().await;
    let addr = address_of(&url);
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{url}");

    let health = http_request(&format!("{url}/healthz"), Method::GET, &[], Bytes::new()).await;
    assert_eq!(health.status, StatusCode::OK);
    let parts = one_get(&url, "/mail/v1/messages/unread?max=2")
        .await
        .parts();
    assert_eq!(parts[0].status, StatusCode::OK);
    assert_eq!(&parts[0].body[..], br#"{"ids":["1","2"]}"#);

    // --demo's hints (the page, a curl to paste) go to stderr instead.
    let (rest, stderr, status) = gateway.terminate().await;
    assert!(status.success(), "{status}; stderr:\n{stderr}");
    assert_eq!(rest, "", "stdout after the address; stderr:\n{stderr}");
    assert!(stderr.contains("curl -s "), "stderr:\n{stderr}");
}

#[tokio::test]
async fn print_address_prints_nothing_and_fails_when_the_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for args in [
        &[
            "--route",
            "/mail/=http://127.0.0.1:9",
            "--listen",
            &addr,
            "--print-address",
        ][..],
        &["demo-upstream", "--listen", &addr, "--print-address"][..],
    ] {
        let (stdout, stderr, status) = Printing::spawn(args).finish().await;
        assert_eq!(status.code(), Some(2), "{args:?}: stderr:\n{stderr}");
        assert_eq!(stdout, "", "{args:?}");
        assert!(
            stderr.contains(&format!("cannot listen on {addr}")),
            "{args:?}: stderr:\n{stderr}"
        );
    }
}

#[tokio::test]
async fn route_flags_route_without_a_config_file() {
    let mail = demo_upstream(std::time::Duration::ZERO).await;
    let echo = echo_upstream(std::time::Duration::ZERO).await;
    let mail_route = format!("/mail/=http://{mail}");
    let echo_route = format!("/echo/=http://{}", echo.addr);
    let mut gateway = Printing::spawn(&[
        "--route",
        &mail_route,
        "--route",
        &echo_route,
        "--listen",
        "127.0.0.1:0",
        "--print-address",
    ]);
    let url = gateway.first_line().await;

    let mail_parts = one_get(&url, "/mail/v1/messages/unread?max=1")
        .await
        .parts();
    assert_eq!(&mail_parts[0].body[..], br#"{"ids":["1"]}"#);
    let echo_parts = one_get(&url, "/echo/hello").await.parts();
    assert_eq!(&echo_parts[0].body[..], b"/echo/hello");
    assert_eq!(echo.seen().len(), 1);
    let (_, stderr, status) = gateway.terminate().await;
    assert!(status.success(), "{status}; stderr:\n{stderr}");
}

#[tokio::test]
async fn a_bad_route_flag_is_refused_naming_the_flag_and_what_is_wrong() {
    for (value, why) in [
        ("/mail/", "expected PREFIX=URL"),
        ("/mail/=ftp://127.0.0.1:21", "scheme ftp is not supported"),
        (
            "mail/=http://127.0.0.1:9",
            "prefix \"mail/\" must start with '/'",
        ),
    ] {
        let (stdout, stderr, status) = Printing::spawn(&["--route", value]).finish().await;
        assert_eq!(status.code(), Some(2), "{value}: stderr:\n{stderr}");
        assert_eq!(stdout, "");
        assert!(
            stderr.contains(&format!(
                "invalid value '{value}' for '--route <PREFIX=URL>'"
            )),
            "{value}: stderr:\n{stderr}"
        );
        assert!(stderr.contains(why), "{value}: stderr:\n{stderr}");
    }
}

#[tokio::test]
async fn demo_upstream_serves_the_mail_service_alone() {
    let mut mail = Printing::spawn(&[
        "demo-upstream",
        "--listen",
        "127.0.0.1:0",
        "--print-address",
    ]);
    let url = mail.first_line().await;
    address_of(&url);

    let unread = http_request(
        &format!("{url}/mail/v1/messages/unread?max=3"),
        Method::GET,
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(unread.status, StatusCode::OK);
    assert_eq!(&unread.body[..], br#"{"ids":["1","2","3"]}"#);
    let (rest, stderr, status) = mail.terminate().await;
    assert!(status.success(), "{status}; stderr:\n{stderr}");
    assert_eq!(rest, "", "stdout after the address");
}
