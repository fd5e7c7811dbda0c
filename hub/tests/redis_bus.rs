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
    assert!(
        a.publish("flow:x", b"lost".to_vec()).await.is_err(),
        "publishing while Redis is down fails"
    );
    redis.restart();
    // Publishes are retried until the subscriber's connection has resubscribed.
    let mut got = None;
    for _ in 0..50 {
        let _ = a.publish("flow:x", b"2".to_vec()).await;
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), sub.rx.recv()).await {
            got = Some(m);
            break;
        }
    }
    assert_eq!(
        got.as_deref(),
        Some(&b"2"[..]),
        "the subscription came back after the restart"
    );
}
