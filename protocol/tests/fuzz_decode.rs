//! Arbitrary bytes and arbitrary JSON never panic the decoders; they give typed errors.

use flowhub_protocol::*;
use proptest::prelude::*;

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "[a-z_]{0,12}".prop_map(serde_json::Value::from),
        prop::sample::select(vec![
            "hello",
            "subscribe_flow",
            "unsubscribe_flow",
            "ping",
            "type",
            "id",
            "flow_id"
        ])
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec!["type", "id", "flow_id", "protocol", "client", "x"])
                    .prop_map(String::from),
                inner,
                0..5
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(s in ".{0,256}") {
        let _ = decode_client_text(&s);
    }

    #[test]
    fn arbitrary_json_decodes_or_fails_typed(v in arb_json()) {
        let text = v.to_string();
        match decode_client_text(&text) {
            Ok(msg) => prop_assert_eq!(decode_client_text(&encode(&msg)).unwrap(), msg),
            Err(f) => prop_assert_eq!(f.error.code(), ErrorCode::BadRequest),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_frame_decoder(b in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(frame) = SyncFrame::decode(&b) {
            prop_assert_eq!(frame.encode(), b);
        }
    }
}
