//! Tests of the PostgreSQL plumbing against real servers started by [`ScratchCluster`].

use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use super::migrate::{self, Applied, MIGRATIONS, Migration};
use super::*;

fn pool(cluster: &ScratchCluster) -> PgPool {
    PgPool::new(cluster.settings(4).expect("settings"))
}

fn schema_rows(pool: &PgPool) -> Vec<(i32, String, Vec<u8>)> {
    pool.run(|c| c.query("SELECT version, name, sha256 FROM hcert_schema ORDER BY version", &[]))
        .expect("read hcert_schema")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn secret_file(dir: &Path, text: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let p = dir.join("password");
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

#[test]
fn two_nodes_starting_at_once_migrate_exactly_once() {
    let cluster = ScratchCluster::start().expect("scratch cluster");
    let barrier = Arc::new(Barrier::new(2));
    let nodes: Vec<_> = (0..2)
        .map(|_| {
            let (pool, barrier) = (pool(&cluster), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                migrate::migrate(&pool)
            })
        })
        .collect();
    let mut results: Vec<migrate::Migrated> =
        nodes.into_iter().map(|t| t.join().unwrap().expect("both nodes start")).collect();
    results.sort_by_key(|m| m.applied.len());
    assert_eq!(results[0].applied, Vec::<i32>::new(), "the second node found nothing to do");
    let known: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    let last = *known.last().unwrap();
    assert_eq!(results[1].applied, known, "the first node applied every migration");
    assert!(results.iter().all(|m| m.version == last));
    let pool = pool(&cluster);
    let rows = schema_rows(&pool);
    assert_eq!(rows.len(), MIGRATIONS.len());
    assert_eq!((rows[0].0, rows[0].1.as_str()), (1, "meta"));
    for (row, m) in rows.iter().zip(MIGRATIONS) {
        assert_eq!((row.0, &row.2), (m.version, &m.sha256().to_vec()));
    }
    // hcert_meta exists and has the shape 0001 gives it.
    pool.run(|c| c.execute("INSERT INTO hcert_meta (key, value) VALUES ('k', '\\x01')", &[])).unwrap();
    // Starting again changes nothing, and verify agrees.
    assert_eq!(migrate::migrate(&pool).unwrap().applied, Vec::<i32>::new());
    assert_eq!(migrate::verify(&pool).unwrap(), last);
    assert_eq!(schema_rows(&pool).len(), MIGRATIONS.len());
    // The servers' CPU is measurable, and grows with work.
    let before = cluster.cpu_time();
    pool.run(|c| c.query_one("SELECT count(*) FROM generate_series(1, 3000000)", &[])).unwrap();
    let after = cluster.cpu_time();
    assert!(after > before && before > Duration::ZERO, "{before:?} → {after:?}");
}

#[test]
fn a_newer_or_changed_schema_is_refused_and_left_as_it_was() {
    let cluster = ScratchCluster::start().expect("scratch cluster");
    let pool = pool(&cluster);
    // verify refuses a database that was never migrated, without creating anything.
    let e = migrate::verify(&pool).unwrap_err();
    assert!(e.to_string().contains("at version 0"), "{e}");
    migrate::migrate(&pool).unwrap();
    pool.run(|c| c.execute("INSERT INTO hcert_meta (key, value) VALUES ('kept', '\\x2a')", &[])).unwrap();

    // A newer binary migrated it one version further.
    let known = MIGRATIONS.len() as i32;
    pool.run(|c| {
        c.batch_execute(&format!(
            "CREATE TABLE hcert_future (x int);
             INSERT INTO hcert_schema (version, name, sha256) VALUES ({}, 'future', '\\x00')",
            known + 1
        ))
    })
    .unwrap();
    let before = schema_rows(&pool);
    let e = migrate::migrate(&pool).unwrap_err();
    assert!(matches!(e, PgError::Schema(_)) && !e.is_unavailable(), "{e:?}");
    let said = format!("schema version {} but this binary knows versions up to {known}", known + 1);
    assert!(e.to_string().contains(&said), "{e}");
    assert_eq!(schema_rows(&pool), before, "hcert_schema untouched");
    assert!(migrate::verify(&pool).is_err());
    pool.run(|c| {
        c.batch_execute(&format!(
            "DELETE FROM hcert_schema WHERE version = {}; DROP TABLE hcert_future",
            known + 1
        ))
    })
    .unwrap();

    // A binary whose 0001 differs from the one applied.
    let mut changed = MIGRATIONS.to_vec();
    changed[0] = Migration { version: 1, name: "meta", sql: "CREATE TABLE hcert_meta (key text);" };
    let e = migrate::migrate_with(&pool, &changed).unwrap_err();
    assert!(e.to_string().contains("migration 0001 was applied as \"meta\" with SHA-256"), "{e}");
    // The same, with the recorded hash edited in the database.
    pool.run(|c| c.execute("UPDATE hcert_schema SET sha256 = '\\xdeadbeef' WHERE version = 1", &[])).unwrap();
    let e = migrate::migrate(&pool).unwrap_err();
    assert!(e.to_string().contains("a migration was changed after it was applied"), "{e}");
    let rows = schema_rows(&pool);
    assert_eq!((rows.len(), rows[0].2.as_slice()), (MIGRATIONS.len(), &[0xde, 0xad, 0xbe, 0xef][..]));
    let kept: Vec<u8> =
        pool.run(|c| c.query_one("SELECT value FROM hcert_meta WHERE key = 'kept'", &[])).unwrap().get(0);
    assert_eq!(kept, [0x2a]);
}

#[test]
fn plan_accepts_exactly_a_prefix_of_the_shipped_migrations() {
    let known = [
        Migration { version: 1, name: "a", sql: "1" },
        Migration { version: 2, name: "b", sql: "2" },
        Migration { version: 3, name: "c", sql: "3" },
    ];
    let applied = |vs: &[i32]| -> Vec<Applied> {
        vs.iter()
            .map(|&v| {
                let m = known[usize::try_from(v - 1).unwrap()];
                Applied { version: v, name: m.name.into(), sha256: m.sha256().to_vec() }
            })
            .collect()
    };
    assert_eq!(migrate::plan(&[], &known), Ok(0));
    assert_eq!(migrate::plan(&applied(&[1, 2]), &known), Ok(2));
    assert_eq!(migrate::plan(&applied(&[1, 2, 3]), &known), Ok(3));
    let gap = migrate::plan(&applied(&[1, 3]), &known).unwrap_err();
    assert!(gap.contains("versions 1, 3 with version 2 missing"), "{gap}");
    let newer = migrate::plan(&applied(&[1, 2, 3]), &known[..2]).unwrap_err();
    assert!(newer.contains("schema version 3 but this binary knows versions up to 2"), "{newer}");
    let mut renamed = applied(&[1, 2]);
    renamed[1].name = "b2".into();
    assert!(migrate::plan(&renamed, &known).unwrap_err().contains("migration 0002 was applied as \"b2\""));
}

#[test]
fn shipped_migrations_are_numbered_without_holes() {
    for (i, m) in MIGRATIONS.iter().enumerate() {
        assert_eq!(usize::try_from(m.version).unwrap(), i + 1, "{m:?}");
        assert!(!m.sql.trim().is_empty());
    }
}

#[test]
fn a_stopped_database_is_unavailable_promptly_and_the_same_pool_recovers() {
    let cluster = ScratchCluster::start().expect("scratch cluster");
    let pool = pool(&cluster);
    migrate::migrate(&pool).unwrap();
    {
        // Several connections open and idle in the pool when the database goes away.
        let held: Vec<_> = (0..3).map(|_| pool.get().unwrap()).collect();
        drop(held);
    }
    assert_eq!(pool.open_connections(), 3);
    cluster.stop().unwrap();
    for _ in 0..2 {
        let t = Instant::now();
        let e = pool.run(|c| c.query_one("SELECT 1", &[])).unwrap_err();
        assert!(e.is_unavailable(), "{e:?}");
        assert!(t.elapsed() < Duration::from_secs(3), "took {:?}", t.elapsed());
        let t = Instant::now();
        let e = pool.check().unwrap_err();
        assert!(e.is_unavailable() && e.to_string().contains("PostgreSQL unavailable"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(3), "took {:?}", t.elapsed());
    }
    cluster.start_again().unwrap();
    // The first use after the restart works: the dead connections were not kept.
    let one: i32 = pool.run(|c| c.query_one("SELECT 1", &[])).unwrap().get(0);
    assert_eq!(one, 1);
    pool.check().unwrap();

    // The same after SIGKILL (crash recovery on restart).
    cluster.kill9().unwrap();
    assert!(pool.run(|c| c.query_one("SELECT 1", &[])).unwrap_err().is_unavailable());
    cluster.start_again().unwrap();
    pool.check().unwrap();
    assert_eq!(migrate::migrate(&pool).unwrap().applied, Vec::<i32>::new());
}

#[test]
fn a_wrong_password_or_database_is_refused_without_the_password() {
    let cluster = ScratchCluster::start().expect("scratch cluster");
    let dir = tempfile::tempdir().unwrap();
    let wrong = "wrong-pass-7c1e9a";
    let file = secret_file(dir.path(), &format!("{wrong}\n"));
    let pool = PgPool::new(PgSettings::new(&cluster.url(), Some(&file), None, 2).unwrap());
    let e = pool.get().err().expect("refused");
    let text = e.to_string();
    assert!(!e.is_unavailable(), "{e:?}");
    assert!(text.contains("password authentication failed"), "{text}");
    let right = std::fs::read_to_string(cluster.password_file()).unwrap();
    assert!(!text.contains(wrong) && !text.contains(right.trim()), "{text}");
    assert!(!format!("{e:?}").contains(wrong));
    assert!(!format!("{pool:?}").contains(wrong));

    // No password at all where the server wants one.
    let pool = PgPool::new(PgSettings::new(&cluster.url(), None, None, 2).unwrap());
    assert!(!pool.get().err().expect("refused").is_unavailable());

    // The right password, a database that does not exist.
    let url = cluster.url().replace("/hcert", "/nosuchdb");
    let pool = PgPool::new(PgSettings::new(&url, Some(cluster.password_file()), None, 2).unwrap());
    let e = pool.get().err().expect("refused");
    assert!(!e.is_unavailable() && e.to_string().contains("nosuchdb"), "{e}");

    // A password file others can read is refused before any connection.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let pool = PgPool::new(PgSettings::new(&cluster.url(), Some(&file), None, 2).unwrap());
    let e = pool.get().err().expect("refused");
    assert!(matches!(e, PgError::Password(_)) && e.to_string().contains("readable by other users"), "{e}");
}

#[test]
fn a_pool_on_both_hosts_follows_the_promoted_standby() {
    let cluster = ScratchCluster::start_with_standby().expect("primary and standby");
    assert!(cluster.url().contains("target_session_attrs=read-write"), "{}", cluster.url());
    let pool = pool(&cluster);
    migrate::migrate(&pool).unwrap();
    // Committed on the primary means on the standby too (synchronous replication).
    pool.run(|c| c.execute("INSERT INTO hcert_meta (key, value) VALUES ('before', '\\x01')", &[])).unwrap();
    // Which server answers: each postmaster has its own start time.
    let server = |pool: &PgPool| -> (String, bool) {
        let row = pool
            .run(|c| c.query_one("SELECT pg_postmaster_start_time()::text, pg_is_in_recovery()", &[]))
            .unwrap();
        (row.get(0), row.get(1))
    };
    let primary = server(&pool);
    assert!(!primary.1);
    // A listener on the same two-host URL (LISTEN works on a primary only).
    let (events, heard) = std::sync::mpsc::channel();
    let _listener = super::listen::Listener::start(cluster.settings(1).unwrap(), &["hcert_keys"], move |e| {
        let _ = events.send(e);
    })
    .unwrap();
    let listening = || heard.recv_timeout(Duration::from_secs(30)).expect("an event");
    assert_eq!(listening(), super::listen::Event::Listening);

    cluster.kill9_primary().unwrap();
    let e = pool.run(|c| c.query_one("SELECT 1", &[])).unwrap_err();
    assert!(e.is_unavailable(), "{e:?}");
    // A new connection finds only the standby, read-only until promoted: a failover in
    // progress (503, retried), not a refusal.
    let e = super::connect::PgPool::new(cluster.settings(1).unwrap()).get().err().expect("no primary");
    assert!(e.is_unavailable() && e.to_string().contains("does not allow writes"), "{e:?}");
    cluster.promote_standby().unwrap();

    // The same pool, no rebuild: it finds the new primary and writes there.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match pool.run(|c| c.execute("INSERT INTO hcert_meta (key, value) VALUES ('after', '\\x02')", &[])) {
            Ok(_) => break,
            Err(e) => {
                assert!(e.is_unavailable(), "a failover is transient, not a refusal: {e}");
                assert!(Instant::now() < deadline, "no new primary: {e}\n{}", cluster.logs());
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    let promoted = server(&pool);
    assert!(promoted.0 != primary.0 && !promoted.1, "connected to the promoted standby, now primary");
    // The listener found the new primary by itself and hears what is sent there.
    assert_eq!(listening(), super::listen::Event::Listening);
    pool.run(|c| super::listen::notify(c, "hcert_keys", "failed-over")).unwrap();
    assert_eq!(
        listening(),
        super::listen::Event::Notified { channel: "hcert_keys".into(), payload: "failed-over".into() }
    );
    let keys: Vec<String> = pool
        .run(|c| c.query("SELECT key FROM hcert_meta ORDER BY key", &[]))
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(keys, ["after", "before"]);
    assert_eq!(migrate::verify(&pool).unwrap(), MIGRATIONS.len() as i32);
    let e = cluster.start_again().unwrap_err();
    assert!(e.to_string().contains("the old primary stays down"), "{e}");
}

#[test]
fn settings_refuse_what_would_leak_or_silently_downgrade() {
    let e = PgSettings::new("postgresql://hcert:s3cret-pw@db/hcert", None, None, 4).unwrap_err();
    assert!(e.to_string().contains("password_file") && !e.to_string().contains("s3cret-pw"), "{e}");
    let e = PgSettings::new("host=db user=hcert password=s3cret-pw", None, None, 4).unwrap_err();
    assert!(e.to_string().contains("contains a password") && !e.to_string().contains("s3cret-pw"), "{e}");
    let e = PgSettings::new("postgresql://hcert@db/hcert?sslmode=require", None, None, 4).unwrap_err();
    assert!(e.to_string().contains("store.tls_ca is not set"), "{e}");
    let e = PgSettings::new("postgresql://hcert@db/hcert?nosuchoption=1", None, None, 4).unwrap_err();
    assert!(e.to_string().contains("not a PostgreSQL connection URL"), "{e}");
    let e = PgSettings::new("postgresql:///hcert", None, None, 4).unwrap_err();
    assert!(e.to_string().contains("names no host"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let not_pem = secret_file(dir.path(), "not a certificate\n");
    let e = PgSettings::new("postgresql://hcert@db/hcert", None, Some(&not_pem), 4).unwrap_err();
    assert!(matches!(e, PgError::TlsCa { .. }) && e.to_string().contains("no PEM certificate"), "{e}");
    let ca = rcgen::generate_simple_self_signed(vec!["db.example".into()]).unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert.pem()).unwrap();
    let s = PgSettings::new("postgresql://hcert@db.example/hcert", None, Some(&ca_file), 4).unwrap();
    assert!(format!("{s:?}").contains("tls: true"));
    // Several hosts and Unix socket directories, in both syntaxes.
    let s = PgSettings::new(
        "postgresql://hcert@%2Frun%2Fa,%2Frun%2Fb/hcert?target_session_attrs=read-write",
        None,
        None,
        4,
    )
    .unwrap();
    assert_eq!(s.describe(), "database hcert as hcert on /run/a, /run/b");
    let s = PgSettings::new(
        "host=db1,db2 user=hcert dbname=hcert target_session_attrs=read-write",
        None,
        None,
        4,
    )
    .unwrap();
    assert_eq!(s.describe(), "database hcert as hcert on db1, db2");
}

#[test]
fn redact_hides_passwords_in_urls_and_key_value_strings() {
    use super::connect::redact;
    assert_eq!(
        redact("postgresql://hcert:s3cret@db1,db2/hcert?x=1"),
        "postgresql://hcert:***@db1,db2/hcert?x=1"
    );
    assert_eq!(redact("url = \"postgres://u:p%40ss@h\" and more"), "url = \"postgres://u:***@h\" and more");
    assert_eq!(redact("postgresql://hcert@db/hcert"), "postgresql://hcert@db/hcert");
    assert_eq!(redact("postgresql://db:5432/hcert"), "postgresql://db:5432/hcert");
    assert_eq!(redact("host=db PASSWORD=s3cret user=u"), "host=db PASSWORD=*** user=u");
    assert_eq!(redact("host=db password='s3 \\'cret' user=u"), "host=db password=*** user=u");
    assert_eq!(
        redact("postgresql://db/h?password=s3cret&sslmode=disable"),
        "postgresql://db/h?password=***&sslmode=disable"
    );
    assert_eq!(redact("no secret here"), "no secret here");
}

/// A TCP server that speaks just enough of PostgreSQL's protocol to offer TLS: it accepts the
/// SSLRequest, completes a real rustls handshake with `cert` (or fails it, as the client
/// decides), reads the startup message and hangs up. It tests the client's TLS, not a database.
fn tls_offering_server(cert: &crate::pki::dev::Issued) -> u16 {
    use rustls_pki_types::pem::PemObject as _;
    use std::io::{Read as _, Write as _};
    let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let Ok((mut tcp, _)) = listener.accept() else { return };
        let mut request = [0u8; 8];
        if tcp.read_exact(&mut request).is_err() || request != [0, 0, 0, 8, 4, 210, 22, 47] {
            return;
        }
        let _ = tcp.write_all(b"S");
        let conn = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut startup = [0u8; 8];
        let _ = tls.read(&mut startup);
    });
    port
}

#[test]
fn with_tls_ca_the_server_certificate_is_required_to_verify() {
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::pki::dev::DevCa::new("VN", "Test", "Database CA", 1).unwrap();
    let ca_file = dir.path().join("db-ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let connect = |host: &str, port: u16| {
        let url = format!("postgresql://hcert@{host}:{port}/hcert?connect_timeout=5");
        PgPool::new(PgSettings::new(&url, None, Some(&ca_file), 1).unwrap()).get().err().expect("no database")
    };

    // Trusted and named: the handshake succeeds, and the server hanging up afterwards is an
    // outage, not a refusal.
    let good = ca.issue_server("localhost", &["localhost"]).unwrap();
    let e = connect("localhost", tls_offering_server(&good));
    assert!(e.is_unavailable(), "{e}");

    // Signed by another CA: refused, naming the certificate problem.
    let other = crate::pki::dev::DevCa::new("VN", "Other", "Other CA", 1).unwrap();
    let e =
        connect("localhost", tls_offering_server(&other.issue_server("localhost", &["localhost"]).unwrap()));
    assert!(!e.is_unavailable() && e.to_string().contains("UnknownIssuer"), "{e}");

    // Trusted, but for another name.
    let e = connect("127.0.0.1", tls_offering_server(&good));
    assert!(!e.is_unavailable() && e.to_string().contains("certificate"), "{e}");
}

#[test]
fn the_pool_opens_at_most_its_size_and_hands_connections_on() {
    let cluster = ScratchCluster::start().expect("scratch cluster");
    let pool = PgPool::new(cluster.settings(2).unwrap());
    let a = pool.get().unwrap();
    let mut b = pool.get().unwrap();
    let sessions: i64 = b
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'hcert-signer'", &[])
        .unwrap()
        .get(0);
    assert_eq!((sessions, pool.open_connections()), (2, 2));
    // The server enforces the timeouts the settings ask for.
    for (setting, value) in [("statement_timeout", "30s"), ("idle_in_transaction_session_timeout", "15s")] {
        let shown: String = b.query_one(&format!("SHOW {setting}"), &[]).unwrap().get(0);
        assert_eq!(shown, value, "{setting}");
    }
    // A third caller waits for one to come back…
    let waiter = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            pool.get().map(|_| t.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    drop(a);
    let waited = waiter.join().unwrap().expect("handed on");
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(2), "{waited:?}");
    // …and gives up with a transient error when none does.
    let held = pool.get().unwrap();
    let t = Instant::now();
    let e = pool.get().err().expect("busy");
    assert!(e.is_unavailable() && e.to_string().contains("all 2 connections stayed busy"), "{e}");
    assert!(t.elapsed() >= connect::ACQUIRE_TIMEOUT && t.elapsed() < connect::ACQUIRE_TIMEOUT * 2);
    // A connection that failed in a way that leaves its state unknown is not reused.
    b.discard();
    drop((b, held));
    assert_eq!(pool.open_connections(), 1);
}

#[test]
fn the_pool_works_on_the_daemons_blocking_threads() {
    // The daemon calls the store from tokio's blocking threads (spawn_blocking), where the
    // synchronous client may run its own small runtime; on an async worker it would panic.
    let cluster = ScratchCluster::start().expect("scratch cluster");
    let pool = pool(&cluster);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    let sums: Vec<i64> = runtime.block_on(async {
        let tasks: Vec<_> = (0..8)
            .map(|i: i64| {
                let pool = pool.clone();
                tokio::task::spawn_blocking(move || {
                    pool.run(|c| c.query_one("SELECT $1::bigint + 1", &[&i])).map(|r| r.get::<_, i64>(0))
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap().unwrap());
        }
        out
    });
    assert_eq!(sums, (1..=8).collect::<Vec<i64>>());
    assert!(pool.open_connections() <= 4);
}

#[test]
fn a_listener_hears_notifications_and_listens_again_after_a_restart() {
    use super::listen::{Event, Listener, notify};
    let cluster = ScratchCluster::start().expect("scratch cluster");
    let pool = pool(&cluster);
    let (tx, rx) = std::sync::mpsc::channel();
    let listener = Listener::start(cluster.settings(1).unwrap(), &["hcert_keys", "hcert_other"], move |e| {
        let _ = tx.send(e);
    })
    .unwrap();
    let next = || rx.recv_timeout(Duration::from_secs(20)).expect("an event");
    assert_eq!(next(), Event::Listening);
    pool.run(|c| notify(c, "hcert_keys", "rotated")).unwrap();
    pool.run(|c| notify(c, "not_listened", "x")).unwrap();
    // Sent inside a transaction: delivered at its commit, in order.
    pool.run(|c| {
        let mut tx = c.transaction()?;
        notify(&mut tx, "hcert_other", "in-tx")?;
        tx.commit()
    })
    .unwrap();
    assert_eq!(next(), Event::Notified { channel: "hcert_keys".into(), payload: "rotated".into() });
    assert_eq!(next(), Event::Notified { channel: "hcert_other".into(), payload: "in-tx".into() });

    // The database restarts: the listener reports that it listens again, and hears on.
    cluster.stop().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    cluster.start_again().unwrap();
    assert_eq!(next(), Event::Listening);
    // A pooled connection from before the restart, used within VALIDATE_AFTER, fails once
    // (transient, and the pool then drops it); the retry works.
    if let Err(e) = pool.run(|c| notify(c, "hcert_keys", "after")) {
        assert!(e.is_unavailable(), "{e}");
        pool.run(|c| notify(c, "hcert_keys", "after")).unwrap();
    }
    assert_eq!(next(), Event::Notified { channel: "hcert_keys".into(), payload: "after".into() });

    let t = Instant::now();
    drop(listener);
    assert!(t.elapsed() < Duration::from_secs(2), "stopping took {:?}", t.elapsed());
    let e = Listener::start(cluster.settings(1).unwrap(), &["Bad-Name"], |_| {}).err().expect("refused");
    assert!(e.to_string().contains("LISTEN channel \"Bad-Name\""), "{e}");
}

#[test]
fn a_commit_whose_wait_for_the_standby_is_cancelled_is_not_reported_durable() {
    use crate::store::conformance::kit;
    use crate::store::{StoreError, StoreOptions};
    let cluster = ScratchCluster::start_with_standby().expect("primary and standby");
    let options = StoreOptions { key_wrap: Some(kit::kek()), ..StoreOptions::default() };
    let store = PgStore::open(cluster.settings(4).unwrap(), options).expect("open the store");
    let refs = kit::refs("iss", 3);
    // Replicated as promised while the standby is there.
    let first = store.submit("iss", Some("k-before"), &kit::records(&refs), 1_000).expect("submit");
    assert!(first.created);
    store.check().expect("ready");

    // The standby goes away: a COMMIT now waits for it, until an administrator cancels the wait.
    cluster.stop_standby().unwrap();
    let submitting = {
        let (store, refs) = (store.clone(), refs.clone());
        std::thread::spawn(move || store.submit("iss", Some("k-during"), &kit::records(&refs), 1_000))
    };
    // Readiness goes red once a COMMIT has waited a while: nothing can be written.
    let deadline = Instant::now() + Duration::from_secs(60);
    let stalled = loop {
        match store.check() {
            Err(e) => break e,
            Ok(()) => assert!(Instant::now() < deadline, "readiness stayed green with no standby"),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(stalled.is_unavailable() && stalled.to_string().contains("synchronous standby"), "{stalled}");
    // The same role may cancel its own sessions' statements: no superuser needed.
    let admin = pool(&cluster);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let cancelled: i64 = admin
            .run(|c| {
                c.query_one(
                    "SELECT count(*) FILTER (WHERE pg_cancel_backend(pid)) FROM pg_stat_activity
                     WHERE wait_event = 'SyncRep' AND pid <> pg_backend_pid()",
                    &[],
                )
            })
            .unwrap()
            .get(0);
        if cancelled > 0 {
            break;
        }
        assert!(!submitting.is_finished(), "the COMMIT did not wait for the stopped standby");
        assert!(Instant::now() < deadline, "no COMMIT waiting for the standby\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let e = submitting.join().unwrap().expect_err("a commit the standby may not have is not a 202");
    let text = e.to_string();
    assert!(matches!(e, StoreError::Unreachable(_)) && e.is_unavailable(), "{e:?}");
    assert!(text.contains("may exist on") && text.contains("synchronous replication"), "{text}");

    // It did commit here (which is why PostgreSQL only warned): the client's retry with the same
    // idempotency key finds that batch instead of signing it twice, but answers only once the
    // standby has it too — a 202 promises that.
    let retrying = {
        let (store, refs) = (store.clone(), refs.clone());
        std::thread::spawn(move || store.submit("iss", Some("k-during"), &kit::records(&refs), 1_001))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.check().is_ok() {
        assert!(!retrying.is_finished(), "a replay answered before the standby had the batch");
        assert!(Instant::now() < deadline, "the replay is not waiting for the standby");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!retrying.is_finished(), "a replay answered before the standby had the batch");
    cluster.start_standby_again().unwrap();
    let retry = retrying.join().unwrap().expect("the retry");
    assert!(!retry.created && retry.batch_id != first.batch_id, "{retry:?}");
    assert_eq!(retry.total, 3);
    store.check().expect("ready again: no commit waits");
}
