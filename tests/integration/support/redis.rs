//! A real `redis-server` (Debian's package) on a free loopback port, for the Redis cache backend's tests.
//! Missing on PATH is a failure that says how to install it, not a skip: `.ci/run` installs it.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use super::TempDir;

/// Tries at starting on a port picked by binding port 0: another process may take it in between.
const START_ATTEMPTS: usize = 5;

/// A `redis-server` with no persistence in a directory of its own, killed when dropped (or by [`kill`]).
///
/// [`kill`]: RedisServer::kill
pub(crate) struct RedisServer {
    pub addr: SocketAddr,
    dir: TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one and waits until it answers PING.
    pub(crate) async fn start() -> RedisServer {
        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            let mut server = RedisServer::spawn();
            match server.ready().await {
                Ok(()) => return server,
                // Lost the port to another process between picking and binding: pick again.
                Err(log) => last_log = log,
            }
        }
        panic!("redis-server did not start in {START_ATTEMPTS} attempts; its last log:\n{last_log}")
    }

    fn spawn() -> RedisServer {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        RedisServer::spawn_on(addr)
    }

    /// After [`kill`](RedisServer::kill): a new, empty server on the same port, as a restarted Redis would be.
    pub(crate) async fn restart(&mut self) {
        self.kill();
        let mut server = RedisServer::spawn_on(self.addr);
        if let Err(log) = server.ready().await {
            panic!("redis-server did not start again on {}:\n{log}", self.addr);
        }
        std::mem::swap(self, &mut server);
    }

    fn spawn_on(addr: SocketAddr) -> RedisServer {
        let dir = TempDir::new("redis");
        let child = Command::new("redis-server")
            .args(["--port", &addr.port().to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&dir.path)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "cannot run redis-server ({err}): these tests need a real Redis; install Debian's package \
                     (`apt-get install redis-server`), as .ci/run does"
                )
            });
        RedisServer {
            addr,
            dir,
            child: Some(child),
        }
    }

    /// Waits until the server answers PING; `Err(its log)` when it exits first.
    async fn ready(&mut self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let child = self.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                return Err(format!("exited ({status}):\n{}", self.log()));
            }
            // Ours, not another server that took the port first.
            let pid = format!("process_id:{}\r\n", child.id());
            if self
                .command(&["INFO", "server"])
                .await
                .is_ok_and(|info| info.contains(&pid))
            {
                return Ok(());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not answer PING on {} within 10 s:\n{}",
                self.addr,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `redis://ADDR/0`, for `redis_url`.
    pub(crate) fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// Sends one command on a fresh connection. The reply: a bulk string's content, else its first line
    /// (`+OK`, `:3`, `-ERR ..`, `*2`).
    pub(crate) async fn command(&self, args: &[&str]) -> std::io::Result<String> {
        let mut stream = tokio::net::TcpStream::connect(self.addr).await?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).await?;
        let mut stream = tokio::io::BufReader::new(stream);
        let mut line = String::new();
        stream.read_line(&mut line).await?;
        let line = line.trim_end().to_owned();
        match line
            .strip_prefix('$')
            .and_then(|len| len.parse::<usize>().ok())
        {
            Some(len) => {
                let mut bulk = vec![0; len + 2];
                stream.read_exact(&mut bulk).await?;
                bulk.truncate(len);
                Ok(String::from_utf8_lossy(&bulk).into_owned())
            }
            None => Ok(line),
        }
    }

    /// How many keys the server holds (DBSIZE).
    pub(crate) async fn keys(&self) -> usize {
        let reply = self.command(&["DBSIZE"]).await.unwrap();
        reply
            .strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("DBSIZE answered {reply:?}"))
    }

    /// Kills the server now (SIGKILL, as a crash would) and waits for it: its port refuses from here on.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
