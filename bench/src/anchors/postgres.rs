//! PostgreSQL 15 as an anchors system: a primary and 4 streaming standbys
//! on loopback, `synchronous_commit = on` and `synchronous_standby_names =
//! 'ANY 2 (s1, s2, s3, s4)'`: a commit returns once the primary and 2 of
//! the 4 standbys flushed its WAL, the same durability as Bunker's (3 of
//! 5 servers). Clients insert 256-byte rows with a prepared statement over
//! a persistent connection.
//!
//! The servers run as the `postgres` user (PostgreSQL refuses root), with
//! their data in the harness's directory, stopped with `pg_ctl stop -m
//! immediate` at the end. No failover: PostgreSQL has none built in.

use super::{ensure_installed, free_ports, sh, wait_until, Conn, Skip, System};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BIN: &str = "/usr/lib/postgresql/15/bin";
const STANDBYS: usize = 4;

pub struct Postgres {
    dir: PathBuf,
    port: u16,
    nodes: Vec<PathBuf>,
}

fn as_postgres(program: &str, args: &[&str]) -> Result<String, String> {
    let path = format!("{BIN}/{program}");
    let mut all = vec!["-u", "postgres", "--", &path];
    all.extend_from_slice(args);
    sh("runuser", &all)
}

impl Postgres {
    pub fn start(dir: &Path, no_install: bool) -> Result<Postgres, Skip> {
        ensure_installed(
            &Path::new(BIN).join("postgres"),
            &["postgresql-15"],
            no_install,
        )?;
        // The data directories belong to the postgres user.
        sh("chown", &["postgres:postgres", &dir.display().to_string()])?;
        let ports = free_ports(1 + STANDBYS)?;
        let port = ports[0];
        let primary = dir.join("primary");
        let p = primary.display().to_string();
        as_postgres(
            "initdb",
            &[
                "-D",
                &p,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        )?;
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{sock}'\n\
             wal_level = replica\nmax_wal_senders = 10\nfsync = on\nsynchronous_commit = on\n\
             synchronous_standby_names = 'ANY 2 (s1, s2, s3, s4)'\nmax_connections = 400\n\
             shared_buffers = 256MB\nlogging_collector = off\n",
            sock = dir.display()
        );
        append(&primary.join("postgresql.conf"), &conf)?;
        append(
            &primary.join("pg_hba.conf"),
            "\nhost replication all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 trust\n",
        )?;
        let mut pg = Postgres {
            dir: dir.to_path_buf(),
            port,
            nodes: vec![primary.clone()],
        };
        pg.pg_ctl_start(&primary)?;
        for (i, &standby_port) in ports[1..].iter().enumerate() {
            let name = format!("s{}", i + 1);
            let data = dir.join(&name);
            let d = data.display().to_string();
            as_postgres(
                "pg_basebackup",
                &[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    "postgres",
                    "-D",
                    &d,
                    "-R",
                    "-X",
                    "stream",
                ],
            )?;
            append(
                &data.join("postgresql.auto.conf"),
                &format!(
                    "\nport = {standby_port}\nprimary_conninfo = 'host=127.0.0.1 port={port} user=postgres application_name={name}'\n\
                     synchronous_standby_names = ''\n"
                ),
            )?;
            pg.nodes.push(data.clone());
            pg.pg_ctl_start(&data)?;
        }
        // Every standby streaming, the quorum in force.
        let url = pg.url();
        wait_until("postgres standbys", Duration::from_secs(60), || {
            postgres::Client::connect(&url, postgres::NoTls)
                .and_then(|mut c| {
                    c.query_one(
                        "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'quorum'",
                        &[],
                    )
                })
                .map(|row| row.get::<_, i64>(0) == STANDBYS as i64)
                .unwrap_or(false)
        })?;
        let mut c = postgres::Client::connect(&url, postgres::NoTls).map_err(|e| e.to_string())?;
        c.batch_execute(
            "CREATE TABLE records (id bigserial PRIMARY KEY, client int NOT NULL, \
             seq bigint NOT NULL, payload bytea NOT NULL)",
        )
        .map_err(|e| e.to_string())?;
        Ok(pg)
    }

    fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    fn pg_ctl_start(&self, data: &Path) -> Result<(), String> {
        let d = data.display().to_string();
        let log = format!("{d}.log");
        sh("touch", &[&log])?;
        sh("chown", &["postgres:postgres", &log])?;
        as_postgres("pg_ctl", &["-D", &d, "-l", &log, "-w", "-t", "60", "start"]).map(|_| ())
    }
}

fn append(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))
}

struct PgConn {
    client: postgres::Client,
    insert: postgres::Statement,
    id: i32,
}

impl Conn for PgConn {
    fn write(&mut self, seq: u64) -> Result<(), String> {
        let payload = super::payload(self.id as usize, seq);
        self.client
            .execute(&self.insert, &[&self.id, &(seq as i64), &payload])
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl System for Postgres {
    fn name(&self) -> String {
        "postgres-sync-any2".into()
    }

    fn connect(&self, client: usize) -> Result<Box<dyn Conn>, String> {
        let mut c =
            postgres::Client::connect(&self.url(), postgres::NoTls).map_err(|e| e.to_string())?;
        let insert = c
            .prepare("INSERT INTO records (client, seq, payload) VALUES ($1, $2, $3)")
            .map_err(|e| e.to_string())?;
        Ok(Box::new(PgConn {
            client: c,
            insert,
            id: client as i32,
        }))
    }

    fn kill_leader(&mut self) -> Result<Option<Instant>, String> {
        Ok(None)
    }

    fn recover(&mut self) -> Result<(), String> {
        Ok(())
    }

    fn stop(&mut self) {
        for data in self.nodes.iter().rev() {
            let _ = as_postgres(
                "pg_ctl",
                &["-D", &data.display().to_string(), "-m", "immediate", "stop"],
            );
        }
        let _ = &self.dir;
    }
}
