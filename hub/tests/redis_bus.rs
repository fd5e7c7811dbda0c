//! The Redis bus delivers across connections, unsubscribes, and comes back after an
//! outage.

mod support;

use std::time::Duration;

use flowhub::redis_bus::RedisBus;
use flowhub_actors::bus::Bus;
use support::*;

async fn recv(sub: &mut flowhub_actors::bus::BusSubscription) -> Option<Vec<u8>> {
    tokio::time::timeout(Duration::from_secs(5), sub.rx.recv())
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_reach_subscribers_on_other_connections() {
    require_machine_redis();
    let a = RedisBus::connect(MACHINE_REDIS).await.unwrap();
    let b = RedisBus::connect(MACHINE_REDIS).await.unwrap();
    let channel = format!("flow:test-{}", uuid::Uuid::new_v4().simple());
    let mut sub1 = b.subscribe(&channel).await.unwrap();
    let mut sub2 = b.subscribe(&channel).await.unwrap();
    a.publish(&channel, b"hello".to_vec()).await.unwrap();
    assert_eq!(recv(&mut sub1).await.as_deref(), Some(&b"hello"[..]));
    assert_eq!(recv(&mut sub2).await.as_deref(), Some(&b"hello"[..]));
    drop(sub1);
    a.publish(&channel, b"again".to_vec()).await.unwrap();
    assert_eq!(recv(&mut sub2).await.as_deref(), Some(&b"again"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribes_after_redis_restarts() {
    let mut redis = PrivateRedis::start();
    let a = RedisBus::connect(&redis.url()).await.unwrap();
    let b = RedisBus::connect(&redis.url()).await.unwrap();
    let mut sub = b.subscribe("flow:x").await.unwrap();
    a.publish("flow:x", b"1".to_vec()).await.unwrap();
    assert_eq!(recv(&mut sub).await.as_deref(), Some(&b"1"[..]));
    redis.stop();
    // Publishing never waits for Redis: the message is queued (and may be lost).
    let started = std::time::Instant::now();
    assert!(a.publish("flow:x", b"lost".to_vec()).await.is_ok());
    assert!(started.elapsed() < Duration::from_millis(100));
    redis.restart();
    // Publishes are retried until the subscriber's connection has resubscribed; what
    // was queued during the outage may or may not arrive first.
    let mut got = None;
    'retry: for _ in 0..50 {
        let _ = a.publish("flow:x", b"2".to_vec()).await;
        while let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(200), sub.rx.recv()).await
        {
            if m == b"2" {
                got = Some(m);
                break 'retry;
            }
        }
    }
    assert_eq!(
        got.as_deref(),
        Some(&b"2"[..]),
        "the subscription came back after the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_returns_at_once_while_redis_is_frozen() {
    let redis = PrivateRedis::start();
    let bus = RedisBus::connect(&redis.url()).await.unwrap();
    let pid = redis_pid(redis.port);
    let signal = |s: &str| {
        assert!(std::process::Command::new("kill")
            .args([s, &pid])
            .status()
            .unwrap()
            .success());
    };
    signal("-STOP");
    let started = std::time::Instant::now();
    for i in 0..flowhub::redis_bus::PUBLISH_QUEUE + 1000 {
        let _ = bus.publish("flow:frozen", i.to_le_bytes().to_vec()).await;
    }
    let publishing = started.elapsed();
    let ping_started = std::time::Instant::now();
    let ping = bus.ping().await;
    let ping_took = ping_started.elapsed();
    // The publisher has found Redis unreachable by now: a new subscription is
    // registered locally at once and made in Redis in the background.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let subscribe_started = std::time::Instant::now();
    let mut late = bus.subscribe("flow:late").await.unwrap();
    let subscribe_took = subscribe_started.elapsed();
    signal("-CONT");
    println!(
        "{} publishes to a frozen Redis took {publishing:?}; ping failed after {ping_took:?}; subscribing took {subscribe_took:?}",
        flowhub::redis_bus::PUBLISH_QUEUE + 1000
    );
    assert!(publishing < Duration::from_secs(1), "{publishing:?}");
    assert!(ping.is_err(), "a frozen Redis does not answer PING");
    assert!(ping_took < Duration::from_secs(2), "{ping_took:?}");
    assert!(
        subscribe_took < Duration::from_millis(500),
        "{subscribe_took:?}"
    );
    // The queue holds PUBLISH_QUEUE messages (the publisher may have taken up to one
    // batch out of it before Redis failed to answer); the rest were dropped and counted.
    let dropped = bus
        .stats()
        .publish_dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    let batch = flowhub::redis_bus::PUBLISH_BATCH as u64;
    assert!(
        (1000 - batch..=1000).contains(&dropped),
        "dropped {dropped}"
    );
    // Once Redis answers again, publishing resumes by itself.
    let mut sub = bus.subscribe("flow:after").await.unwrap();
    let mut got = None;
    for _ in 0..50 {
        let _ = bus.publish("flow:after", b"back".to_vec()).await;
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), sub.rx.recv()).await {
            got = Some(m);
            break;
        }
    }
    assert_eq!(got.as_deref(), Some(&b"back"[..]));
    // The subscription made during the outage works once Redis is back.
    let mut got = None;
    for _ in 0..50 {
        let _ = bus.publish("flow:late", b"late".to_vec()).await;
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), late.rx.recv()).await
        {
            got = Some(m);
            break;
        }
    }
    assert_eq!(got.as_deref(), Some(&b"late"[..]));
}

/// The pid of the redis-server listening on `port` (PrivateRedis keeps its child
/// private; `INFO server` reports the pid).
fn redis_pid(port: u16) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "info", "server"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .map(|p| p.trim().to_owned())
        .expect("INFO server reports process_id")
}
