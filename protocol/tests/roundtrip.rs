//! Every message survives encode → decode unchanged, and the wire form matches
//! docs/PROTOCOL.md.

use flowhub_protocol::*;
use serde_json::json;

fn client_roundtrip(msg: ClientMessage) {
    let text = encode(&msg);
    assert_eq!(decode_client_text(&text).unwrap(), msg, "{text}");
}

fn server_roundtrip(msg: ServerMessage) {
    let text = encode(&msg);
    let back: ServerMessage = serde_json::from_str(&text).unwrap();
    assert_eq!(back, msg, "{text}");
}

#[test]
fn client_messages_roundtrip() {
    client_roundtrip(ClientMessage::Hello {
        id: Some(1.into()),
        protocol: PROTOCOL_VERSION,
        client: Some("flowhub-client/0.1".into()),
    });
    client_roundtrip(ClientMessage::Hello {
        id: None,
        protocol: 1,
        client: None,
    });
    client_roundtrip(ClientMessage::SubscribeFlow {
        id: Some(RequestId::Str("a".into())),
        flow_id: "demo".into(),
        pending: vec![],
        stream: false,
        format: Default::default(),
        since_heads: Vec::new(),
    });
    client_roundtrip(ClientMessage::SubscribeFlow {
        id: Some(2.into()),
        flow_id: "demo".into(),
        pending: vec!["9be1".repeat(16)],
        stream: true,
        format: Default::default(),
        since_heads: Vec::new(),
    });
    client_roundtrip(ClientMessage::UnsubscribeFlow {
        id: Some(7.into()),
        flow_id: "demo".into(),
    });
    client_roundtrip(ClientMessage::Ping { id: None });
}

#[test]
fn server_messages_roundtrip() {
    server_roundtrip(ServerMessage::Welcome {
        id: Some(1.into()),
        protocol: 1,
        session_id: "s1".into(),
        user_id: "alice".into(),
        name: "Alice".into(),
        node_id: "node-a".into(),
        limits: Limits {
            max_frame_bytes: 1 << 20,
            max_subscriptions: 64,
        },
    });
    server_roundtrip(ServerMessage::FlowState {
        id: Some(2.into()),
        flow_id: "demo".into(),
        role: Role::Editor,
        heads: vec!["ab".repeat(32)],
        stream: true,
    });
    server_roundtrip(ServerMessage::Ack {
        id: None,
        flow_id: Some("demo".into()),
        changes: vec!["cd".repeat(32)],
    });
    server_roundtrip(ServerMessage::Ack {
        id: Some(3.into()),
        flow_id: None,
        changes: vec![],
    });
    server_roundtrip(ServerMessage::Pong { id: Some(4.into()) });
    server_roundtrip(
        ServerMessage::error(ErrorCode::Forbidden, "viewers cannot edit")
            .with_id(Some(5.into()))
            .with_flow("demo"),
    );
}

#[test]
fn wire_form_is_snake_case_and_tagged() {
    let v: serde_json::Value = serde_json::from_str(&encode(&ServerMessage::error(
        ErrorCode::TooLarge,
        "frame of 2000000 bytes exceeds 1048576",
    )))
    .unwrap();
    assert_eq!(
        v,
        json!({"type":"error","code":"too_large","message":"frame of 2000000 bytes exceeds 1048576"})
    );
    let m = decode_client_text(r#"{"type":"subscribe_flow","id":9,"flow_id":"demo"}"#).unwrap();
    assert_eq!(m.id(), Some(&RequestId::Num(9)));
    assert_eq!(m.kind(), "subscribe_flow");
}

#[test]
fn decode_errors_are_typed_and_echo_the_id() {
    let f = decode_client_text("{not json").unwrap_err();
    assert!(matches!(f.error, ProtocolError::MalformedJson(_)));
    assert_eq!(f.id, None);

    let f = decode_client_text(r#"{"type":"teleport","id":"x1"}"#).unwrap_err();
    assert_eq!(f.error, ProtocolError::UnknownType("teleport".into()));
    assert_eq!(f.id, Some(RequestId::Str("x1".into())));

    let f = decode_client_text(r#"{"id":3}"#).unwrap_err();
    assert_eq!(f.error, ProtocolError::MissingType);
    assert_eq!(f.id, Some(RequestId::Num(3)));

    let f = decode_client_text(r#"{"type":"subscribe_flow","id":4}"#).unwrap_err();
    assert!(
        matches!(f.error, ProtocolError::InvalidMessage { ref kind, .. } if kind == "subscribe_flow")
    );
    assert_eq!(f.id, Some(RequestId::Num(4)));
    assert_eq!(f.error.code(), ErrorCode::BadRequest);
}

#[test]
fn sync_frames_roundtrip_and_reject_bad_headers() {
    let frame = SyncFrame::flow_sync("demo", vec![0x42, 1, 2, 3]);
    let bytes = frame.encode();
    assert_eq!(&bytes[..6], &[0x01, 4, b'd', b'e', b'm', b'o']);
    assert_eq!(SyncFrame::decode(&bytes).unwrap(), frame);

    // Change frames: the same header, kind 0x02, chunks concatenated.
    let changes = flowhub_protocol::frame::encode_flow_changes("demo", [&[1u8, 2][..], &[3u8][..]]);
    assert_eq!(&changes[..6], &[0x02, 4, b'd', b'e', b'm', b'o']);
    assert_eq!(
        SyncFrame::decode(&changes).unwrap(),
        SyncFrame::flow_changes("demo", vec![1, 2, 3])
    );
    assert_eq!(
        SyncFrame::flow_changes("demo", vec![1, 2, 3]).encode(),
        changes
    );

    assert_eq!(SyncFrame::decode(&[]), Err(ProtocolError::TruncatedFrame));
    assert_eq!(
        SyncFrame::decode(&[0x01]),
        Err(ProtocolError::TruncatedFrame)
    );
    assert_eq!(
        SyncFrame::decode(&[0x01, 10, b'a']),
        Err(ProtocolError::TruncatedFrame)
    );
    assert_eq!(
        SyncFrame::decode(&[0x07, 1, b'a', 1]),
        Err(ProtocolError::UnknownFrameKind(7))
    );
    assert!(matches!(
        SyncFrame::decode(&[0x01, 1, b'/', 1]),
        Err(ProtocolError::InvalidFlowId(_))
    ));
    assert_eq!(
        SyncFrame::decode(&[0x01, 1, b'a']),
        Err(ProtocolError::EmptyPayload)
    );
    assert!(matches!(
        SyncFrame::decode(&[0x01, 0, 1]),
        Err(ProtocolError::InvalidFlowId(_))
    ));
}
