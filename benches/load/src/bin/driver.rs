//! A small HTTP/1.1 load driver in which every connection is one client session: it keeps the
//! cookie its responses set and sends it back, as a browser would.
//!
//! `driver PORT[,PORT...] PATH CONNECTIONS SECONDS [SETUP_PATH]` prints one line (each client
//! first requests SETUP_PATH once, unmeasured, to get its session). With several ports (several
//! instances of one app), each client keeps a connection to each and sends its requests to
//! them in turn, with its one cookie, as a load balancer's round robin would:
//! `requests=N ok=N errors=N seconds=S rps=R p50_us=A p99_us=B`.
//! Traffic goes to 127.0.0.1 only, and stops after SECONDS. The clients run on two tokio worker
//! threads, or on `BENCH_DRIVER_THREADS` of them.

use std::time::{Duration, Instant};

use rocket::tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use rocket::tokio::net::TcpStream;

struct Tally {
    ok: u64,
    errors: u64,
    latencies_us: Vec<u32>,
}

async fn client(
    ports: Vec<u16>,
    path: String,
    setup: Option<String>,
    until: Instant,
) -> std::io::Result<Tally> {
    let mut connections = Vec::new();
    for port in ports {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        connections.push((BufReader::new(read), write));
    }
    let mut turn = 0;
    let mut cookies: Vec<(String, String)> = Vec::new();
    let mut tally = Tally {
        ok: 0,
        errors: 0,
        latencies_us: Vec::with_capacity(1 << 16),
    };
    let mut line = String::new();
    let mut body = Vec::new();
    let mut setup = setup;
    // The request is built again only when its path or cookies change: a client's own work
    // per request shares the cores with the server, so it must not grow with a cookie.
    let mut request = Vec::new();
    let mut stale = true;
    while Instant::now() < until {
        let measured = setup.is_none();
        if stale {
            let path = setup.as_deref().unwrap_or(&path);
            let mut text = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
            if !cookies.is_empty() {
                let pairs: Vec<String> = cookies.iter().map(|(n, v)| format!("{n}={v}")).collect();
                text.push_str(&format!("Cookie: {}\r\n", pairs.join("; ")));
            }
            text.push_str("\r\n");
            request = text.into_bytes();
            stale = false;
        }
        if setup.take().is_some() {
            // The next request is on the measured path.
            stale = true;
        }
        let at = turn % connections.len();
        turn += 1;
        let (read, write) = &mut connections[at];
        let start = Instant::now();
        write.write_all(&request).await?;
        line.clear();
        read.read_line(&mut line).await?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut length = 0usize;
        loop {
            line.clear();
            if read.read_line(&mut line).await? == 0 {
                return Ok(tally);
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("set-cookie") {
                let pair = value.split(';').next().unwrap_or("");
                if let Some((n, v)) = pair.split_once('=') {
                    let same = cookies.iter().any(|(name, value)| name == n && value == v);
                    if !same {
                        cookies.retain(|(name, _)| name != n);
                        if !v.is_empty() {
                            cookies.push((n.to_string(), v.to_string()));
                        }
                        stale = true;
                    }
                }
            }
        }
        body.resize(length, 0);
        read.read_exact(&mut body).await?;
        if !measured {
            continue;
        }
        tally
            .latencies_us
            .push(start.elapsed().as_micros().min(u32::MAX as u128) as u32);
        match status {
            200..=299 => tally.ok += 1,
            _ => tally.errors += 1,
        }
    }
    Ok(tally)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (port, path, connections, seconds, setup) = match args.as_slice() {
        [_, port, path, connections, seconds] => (port, path, connections, seconds, None),
        [_, port, path, connections, seconds, setup] => {
            (port, path, connections, seconds, Some(setup.clone()))
        }
        _ => panic!("usage: driver PORT[,PORT...] PATH CONNECTIONS SECONDS [SETUP_PATH]"),
    };
    let ports: Vec<u16> = port.split(',').map(|p| p.parse().unwrap()).collect();
    let connections: usize = connections.parse().unwrap();
    let seconds: f64 = seconds.parse().unwrap();
    let runtime = rocket::tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            std::env::var("BENCH_DRIVER_THREADS")
                .ok()
                .and_then(|t| t.parse().ok())
                .unwrap_or(2),
        )
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let tallies = runtime.block_on(async {
        let tasks: Vec<_> = (0..connections)
            .map(|_| {
                rocket::tokio::spawn(client(ports.clone(), path.clone(), setup.clone(), until))
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let elapsed = started.elapsed().as_secs_f64();
    let (mut ok, mut errors, mut failed, mut latencies) = (0, 0, 0, Vec::new());
    for t in tallies {
        match t {
            Ok(t) => {
                ok += t.ok;
                errors += t.errors;
                latencies.extend(t.latencies_us);
            }
            Err(_) => failed += 1,
        }
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let requests = ok + errors;
    println!(
        "requests={requests} ok={ok} errors={errors} broken_connections={failed} seconds={elapsed:.3} rps={:.1} p50_us={} p99_us={}",
        requests as f64 / elapsed,
        pct(0.50),
        pct(0.99)
    );
}
