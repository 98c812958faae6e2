//! A throwaway PostgreSQL cluster: `initdb` into a temp dir, started with `pg_ctl` on a free port, stopped
//! and removed when dropped. The server refuses to run as root, so as root it runs as the `postgres` user
//! (`runuser -u postgres --`) on a directory that user owns.

use std::path::PathBuf;
use std::process::Command;

use super::TempDir;

/// A running cluster.
pub(crate) struct Postgres {
    /// `postgres://...` for the cluster's `postgres` database.
    pub url: String,
    bin: PathBuf,
    data: PathBuf,
    as_root: bool,
    _dir: TempDir,
}

/// The folder holding `initdb` and `pg_ctl`: on PATH, or Debian's `/usr/lib/postgresql/N/bin`.
fn bin_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
    });
    on_path.or_else(|| {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| Some(e.ok()?.path().join("bin")))
            .filter(|bin| bin.join("initdb").is_file())
            .collect();
        versions.sort();
        versions.pop()
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

impl Postgres {
    /// Starts a cluster. A test that needs one fails when PostgreSQL is not installed, rather than passing
    /// without having run.
    pub(crate) fn start() -> Postgres {
        let bin = bin_dir().expect(
            "cannot run PostgreSQL: initdb and pg_ctl are neither on PATH nor in /usr/lib/postgresql/*/bin; \
             install Debian's package (`apt-get install postgresql`), as .ci/run does",
        );
        let dir = TempDir::new("postgres");
        let as_root = is_root();
        if as_root {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir.path));
        }
        let data = dir.join("data");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let postgres = Postgres {
            url: format!("postgres://batchgate@127.0.0.1:{port}/postgres"),
            bin,
            data,
            as_root,
            _dir: dir,
        };
        run(postgres
            .command("initdb")
            .args(["--auth=trust", "--username=batchgate", "--no-sync", "-D"])
            .arg(&postgres.data));
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            postgres.data.display()
        );
        run(postgres
            .command("pg_ctl")
            .args(["-w", "-l"])
            .arg(postgres.data.join("log"))
            .arg("-D")
            .arg(&postgres.data)
            .args(["-o", &options, "start"]));
        postgres
    }

    /// One of the cluster's programs, run as `postgres` when the test runs as root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_root {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-m", "immediate", "-D"])
            .arg(&self.data)
            .arg("stop")
            .output();
    }
}

fn run(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
