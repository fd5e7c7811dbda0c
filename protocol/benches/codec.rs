//! Protocol encode/decode on the hot path of every frame.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flowhub_protocol::*;
use std::hint::black_box;

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("protocol");
    g.throughput(Throughput::Elements(1));
    let text = r#"{"type":"subscribe_flow","id":42,"flow_id":"org:acme.flow-7"}"#;
    g.bench_function("decode_subscribe_flow", |b| {
        b.iter(|| decode_client_text(black_box(text)).unwrap())
    });
    let ack = ServerMessage::Ack {
        id: None,
        flow_id: Some("demo".into()),
        changes: vec!["ab".repeat(32)],
    };
    g.bench_function("encode_ack", |b| b.iter(|| encode(black_box(&ack))));
    let payload = vec![7u8; 256];
    g.bench_function("encode_sync_frame_256B", |b| {
        b.iter(|| frame::encode_flow_sync(black_box("demo"), black_box(&payload)))
    });
    let bytes = frame::encode_flow_sync("demo", &payload);
    g.bench_function("decode_sync_frame_256B", |b| {
        b.iter(|| SyncFrame::decode(black_box(&bytes)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
