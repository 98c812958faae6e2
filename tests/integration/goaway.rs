//! HTTP/2 upstreams that close connections with GOAWAY, against a real nginx (Debian's `nginx-light`) that
//! ends every connection after 10 requests (`keepalive_requests`): the streams beyond each GOAWAY's last
//! stream id were never processed, and go again on another connection, whatever their method, without a
//! retry and without counting against the upstream's health. Skipped, saying so, without nginx on PATH.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http::{Method, StatusCode};

/// Requests nginx serves on one connection before it sends GOAWAY.
const REQUESTS_PER_CONNECTION: usize = 10;

/// An nginx serving h2c (HTTP/2 with prior knowledge) on loopback from a directory of its own, stopped when
/// dropped. Every answer is `200 <method> <uri>`; its access log has one line per request it processed.
struct Nginx {
    addr: SocketAddr,
    dir: TempDir,
    child: Child,
}

impl Nginx {
    fn start() -> Nginx {
        let dir = TempDir::new("nginx");
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let path = |name: &str| dir.join(name).display().to_string();
        // Root's nginx would hand its workers to `nobody`, who cannot read the temp dir: keep root.
        let user = if is_root() { "user root;" } else { "" };
        let config = format!(
            "{user}
daemon off;
master_process off;
worker_processes 1;
pid {pid};
lock_file {lock};
error_log {error_log} info;
events {{ worker_connections 1024; }}
http {{
    log_format conn '$connection $request_method $request_uri';
    access_log {access_log} conn;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests {REQUESTS_PER_CONNECTION};
    server {{
        listen {addr} http2;
        location / {{ return 200 '$request_method $request_uri'; }}
    }}
}}
",
            pid = path("nginx.pid"),
            lock = path("nginx.lock"),
            error_log = path("error.log"),
            access_log = path("access.log"),
            tmp = dir.path.display(),
        );
        std::fs::write(dir.join("nginx.conf"), config).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&dir.path)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Nginx { addr, dir, child }
    }

    /// Waits until nginx accepts connections (or has exited, showing its error log).
    async fn ready(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(self.addr).await.is_err() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("nginx exited ({status}): {}", self.error_log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nginx did not listen on {} within 10 s: {}",
                self.addr,
                self.error_log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// What nginx processed: `(connection, method, uri)`, one per request.
    fn processed(&self) -> Vec<(u64, String, String)> {
        std::fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(|line| {
                let mut fields = line.split(' ');
                let connection = fields.next().unwrap().parse().unwrap();
                let method = fields.next().unwrap().to_owned();
                (connection, method, fields.next().unwrap().to_owned())
            })
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

fn nginx_installed() -> bool {
    Command::new("nginx")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// 100 parts, GETs and POSTs, through an h2 route to an nginx that sends GOAWAY after every 10 requests on a
/// connection: every part is answered 200 with its own answer, nginx processed each exactly once, over at
/// least 10 connections, nothing was retried, the address was never ejected (`eject_after = 1`, so a single
/// counted failure would), and the gateway stays ready. A second batch reuses the pool after the GOAWAYs.
#[tokio::test]
async fn parts_refused_by_a_goaway_go_again_on_a_new_connection() {
    if !nginx_installed() {
        println!(
            "SKIPPED parts_refused_by_a_goaway_go_again_on_a_new_connection: nginx is not installed \
             (apt-get install nginx-light)"
        );
        return;
    }
    let mut nginx = Nginx::start();
    nginx.ready().await;
    let gw = gateway(&format!(
        "[limits]\nconcurrency = 100\nwindow = 100\n\
         [upstream]\neject_after = 1\neject_for = \"60s\"\n\
         [[routes]]\nprefix = \"/n/\"\nupstream = \"http://{}\"\nhttp_version = \"2\"\n",
        nginx.addr
    ))
    .await;
    let request = |i: usize| {
        if i.is_multiple_of(2) {
            format!("GET /n/{i} HTTP/1.1\r\n")
        } else {
            format!("POST /n/{i} HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody")
        }
    };
    for round in 0..2 {
        let ids: Vec<usize> = (round * 100..round * 100 + 100).collect();
        let parts: Vec<String> = ids
            .iter()
            .map(|&i| part(&format!("p{i}"), &request(i)))
            .collect();
        let reply = within(30, "the batch", gw.post(MP, batch(&parts))).await;
        let parts = reply.parts();
        assert_eq!(parts.len(), 100);
        for (part, &i) in parts.iter().zip(&ids) {
            let method = if i.is_multiple_of(2) { "GET" } else { "POST" };
            assert_eq!(
                (
                    part.status,
                    String::from_utf8_lossy(&part.body).into_owned()
                ),
                (StatusCode::OK, format!("{method} /n/{i}")),
                "part {i}"
            );
        }
        assert!(gw.gateway.unready_routes().is_empty(), "round {round}");
    }

    let processed = nginx.processed();
    assert_eq!(processed.len(), 200, "each part processed exactly once");
    let mut uris: Vec<&str> = processed.iter().map(|(_, _, uri)| uri.as_str()).collect();
    uris.sort_unstable();
    uris.dedup();
    assert_eq!(uris.len(), 200);
    let mut connections: Vec<u64> = processed.iter().map(|(c, ..)| *c).collect();
    connections.sort_unstable();
    connections.dedup();
    assert!(
        connections.len() >= 200 / REQUESTS_PER_CONNECTION,
        "nginx ended its connections after {REQUESTS_PER_CONNECTION} requests: {} connections",
        connections.len()
    );

    let ready = gw.request(Method::GET, "/readyz", &[], Bytes::new()).await;
    assert_eq!(ready.status, StatusCode::OK);
    let metrics = gw.request(Method::GET, "/metrics", &[], Bytes::new()).await;
    let metrics = String::from_utf8(metrics.body.to_vec()).unwrap();
    assert_eq!(
        metric(&metrics, "batchgate_ejections_total", &[("route", "/n/")]),
        0
    );
    assert_eq!(
        metric(&metrics, "batchgate_retries_total", &[("route", "/n/")]),
        0
    );
}
