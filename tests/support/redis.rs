//! A real Redis (`redis-server`, Debian package `redis-server`, installed by
//! `scripts/install-deps`) on a free loopback port, without persistence and requiring a password
//! (so that clients must `AUTH`), for registries that cache blob descriptors in it; inspected with
//! `redis-cli`.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::server::ServerProcess;

/// The password every test Redis requires.
pub const PASSWORD: &str = "regsweep-test-redis";

/// A running `redis-server`. Dropping it kills the process.
#[derive(Debug)]
pub struct RedisServer {
    server: ServerProcess,
}

/// `name` on `PATH` (or in `/usr/bin`); panics with how to install it: these tests never skip.
fn binary(name: &str) -> PathBuf {
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} was not found: install it with `apt-get install redis-server` (Debian), \
                 or run scripts/install-deps"
            )
        })
}

/// `redis-cli` against database `db` of the Redis on `port`.
fn redis_cli(port: u16, db: u32, args: &[&str]) -> Result<String, String> {
    let output = Command::new(binary("redis-cli"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-n",
            &db.to_string(),
        ])
        .args([
            "--user",
            "default",
            "--pass",
            PASSWORD,
            "--no-auth-warning",
            "--raw",
        ])
        .args(args)
        .output()
        .map_err(|e| format!("run redis-cli: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let refused = ["ERR", "NOAUTH", "WRONGPASS"]
        .iter()
        .any(|e| stdout.starts_with(e));
    if output.status.success() && !refused {
        Ok(stdout)
    } else {
        Err(format!(
            "redis-cli {args:?}: {}: {stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port (`--save ''`, `--appendonly no`,
    /// `--requirepass` [`PASSWORD`], working directory `dir`), logging to `dir/redis.log`, and
    /// waits until it answers `PING`.
    pub fn start(dir: &Path) -> RedisServer {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let bin = binary("redis-server");
        let server = ServerProcess::start(
            "redis-server",
            &dir.join("redis.log"),
            |port| {
                let mut command = Command::new(&bin);
                command
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--save", "", "--appendonly", "no"])
                    .args(["--requirepass", PASSWORD])
                    .arg("--dir")
                    .arg(dir);
                command
            },
            |port| redis_cli(port, 0, &["PING"]).is_ok_and(|reply| reply.trim() == "PONG"),
        );
        RedisServer { server }
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// `127.0.0.1:<port>`, as the registry's `redis.addr` takes it.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port())
    }

    /// `redis://:<password>@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: u32) -> String {
        format!("redis://:{PASSWORD}@{}/{db}", self.addr())
    }

    /// Every key of database `db` (a test database is small), sorted.
    pub fn keys(&self, db: u32) -> Vec<String> {
        self.lines(db, &["KEYS", "*"])
    }

    /// Members of the set `key` in database `db`, sorted.
    pub fn members(&self, db: u32, key: &str) -> Vec<String> {
        self.lines(db, &["SMEMBERS", key])
    }

    fn lines(&self, db: u32, args: &[&str]) -> Vec<String> {
        let mut lines: Vec<String> = self
            .cli(db, args)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    }

    /// Runs `redis-cli <args>` against database `db`; panics on failure.
    pub fn cli(&self, db: u32, args: &[&str]) -> String {
        redis_cli(self.port(), db, args).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.server.log_tail(lines)
    }
}
