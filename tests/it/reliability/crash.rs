//! Crash safety: clients record into one cassette while the proxy is SIGKILLed at a
//! random moment. Every request that got its answer must be in the cassette, none
//! twice, and the store must open again as it is.
//!
//! The normal suite runs 2 rounds of 8 clients x 50 PATCHes; `GRAPHVCR_LONG=1` runs
//! the full 20 rounds of 8 x 500 (`bench/crash.sh`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{echo_upstream, eventually};
use crate::support::*;

/// A small xorshift generator: enough randomness for kill moments, seedable to replay one.
struct Rng(u64);

impl Rng {
    fn from_clock() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Self(nanos | 1)
    }

    fn below(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % bound.max(1) as u64) as usize
    }
}

fn long_run() -> bool {
    std::env::var("GRAPHVCR_LONG").is_ok_and(|v| v == "1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_recording_loses_no_acknowledged_interaction() {
    let (rounds, clients, per_client) = if long_run() { (20, 8, 500) } else { (2, 8, 50) };
    let mut rng = Rng::from_clock();
    let seed = rng.0;
    let scratch = Scratch::new();
    let upstream = echo_upstream().await;
    let http = Http::new();
    let mut acknowledged: Vec<String> = Vec::new();
    let mut sent_total = 0usize;
    let started = Instant::now();
    // A short audit trail, so retention prunes all through the run and kills also land
    // in the middle of a pruning.
    std::fs::write(scratch.join("crash.toml"), "[audit]\nmax_records = 64\n").expect("write");
    for round in 0..rounds {
        let mut proxy = proxy(
            &scratch,
            "record",
            &upstream.url(),
            &[
                "--cassette",
                "crash",
                "--config",
                &scratch.arg("crash.toml"),
            ],
        );
        let total = clients * per_client;
        // Somewhere between the first answer and 90 % of the way through.
        let kill_after = 1 + rng.below(total * 9 / 10);
        let acks = Arc::new(AtomicUsize::new(0));
        let sent = Arc::new(AtomicUsize::new(0));
        let acked_paths = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for client in 0..clients {
            let (http, acks, sent, acked_paths) = (
                http.clone(),
                acks.clone(),
                sent.clone(),
                acked_paths.clone(),
            );
            let base = proxy.url("");
            tasks.push(tokio::spawn(async move {
                for i in 0..per_client {
                    let path = format!("/v1.0/crash/r{round}/c{client}/n{i}");
                    sent.fetch_add(1, Ordering::Relaxed);
                    let reply = http
                        .try_send(
                            "PATCH",
                            &format!("{base}{path}"),
                            &[("content-type", "application/json")],
                            Bytes::from(format!(
                                r#"{{"round":{round},"client":{client},"i":{i}}}"#
                            )),
                        )
                        .await;
                    match reply {
                        Ok(reply) if reply.status == 200 => {
                            assert_eq!(reply.header("x-graphvcr-outcome"), Some("recorded"));
                            acked_paths
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(path);
                            acks.fetch_add(1, Ordering::Relaxed);
                        }
                        // The proxy is gone: this client stops.
                        Ok(_) | Err(_) => break,
                    }
                }
            }));
        }
        eventually("the kill moment", Duration::from_secs(120), || {
            acks.load(Ordering::Relaxed) >= kill_after
        })
        .await;
        proxy.kill();
        for task in tasks {
            task.await.expect("client task");
        }
        let round_acks =
            std::mem::take(&mut *acked_paths.lock().unwrap_or_else(|e| e.into_inner()));
        sent_total += sent.load(Ordering::Relaxed);
        acknowledged.extend(round_acks);

        // The store opens as it is (no repair step exists) and holds every answer given.
        let exported = export(&scratch, "crash");
        let uris: Vec<String> = exported["interactions"]
            .as_array()
            .expect("interactions")
            .iter()
            .filter_map(|i| i["request"]["uri"].as_str().map(str::to_owned))
            .collect();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for uri in &uris {
            *seen.entry(uri.as_str()).or_default() += 1;
        }
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "round {round} (seed {seed}): recorded twice: {twice:?}"
        );
        let stored: HashSet<&str> = seen.keys().copied().collect();
        let lost: Vec<&String> = acknowledged
            .iter()
            .filter(|p| !stored.contains(p.as_str()))
            .collect();
        assert!(
            lost.is_empty(),
            "round {round} (seed {seed}): {} answered requests lost, e.g. {:?}",
            lost.len(),
            lost.first()
        );
        // The audit trail survives the kill as well: what reached it is chained intact
        // (a kill may cost the last unflushed records, never one in the middle).
        let verified = cli_ok(&scratch, &["audit", "verify"]);
        assert!(
            verified.contains("audit chain intact"),
            "round {round} (seed {seed}): {verified}"
        );
        eprintln!(
            "crash round {round}: killed after {kill_after} answers; {} answered so far, {} stored",
            acknowledged.len(),
            uris.len()
        );
    }
    eprintln!(
        "crash: {rounds} rounds, {rounds} SIGKILLs, {clients} clients x {per_client} PATCHes per round, \
         {sent_total} sent, {} answered, all answered ones stored once, {:.1} s (seed {seed})",
        acknowledged.len(),
        started.elapsed().as_secs_f64()
    );
}
