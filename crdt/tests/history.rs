//! Change summaries (history listing) and grouping into editing sessions.

mod common;

use common::{abc, node};
use flowhub_crdt::{
    genesis_hash, group_sessions, ChangeHash, ChangeSummary, ConfigKey, CrdtError, EditSummary,
    Endpoint, FlowDoc, Position,
};
use serde_json::json;

#[test]
fn summaries_list_changes_newest_first_with_what_they_did() {
    let mut doc = FlowDoc::new();
    doc.set_edit_time(Some(1_000));
    let add = doc
        .batch(|tx| {
            tx.add_node(node("a", "trigger"))?;
            tx.add_node(node("b", "http"))?;
            tx.connect(
                Some("ab".into()),
                Endpoint::new("a", "out"),
                Endpoint::new("b", "in"),
            )
        })
        .unwrap()
        .1;
    doc.set_edit_time(Some(2_000));
    let mv = doc.move_node("a", Position::new(5.0, 5.0)).unwrap();
    let cfg = doc
        .batch(|tx| {
            tx.relabel_node("b", "Fetch")?;
            tx.configure_node("b", "url", json!("https://x"))
        })
        .unwrap()
        .1;
    let del = doc.delete_node("b").unwrap();

    let all = doc.change_summaries(100, None).unwrap();
    let hashes: Vec<ChangeHash> = all.iter().map(|c| c.hash).collect();
    assert_eq!(hashes, [del, cfg, mv, add, genesis_hash()]);
    assert!(all[4].summary.is_empty(), "genesis shows nothing");

    let actor = doc.actor_hex();
    assert_eq!(all[0].actor, actor);
    assert_eq!(all[0].seq, 4);
    assert_eq!(all[0].deps, [cfg]);
    assert_eq!((all[3].timestamp, all[2].timestamp), (1_000, 2_000));

    assert_eq!(
        all[3].summary,
        EditSummary {
            nodes_added: vec!["a".into(), "b".into()],
            edges_added: vec!["ab".into()],
            ..Default::default()
        }
    );
    assert_eq!(all[2].summary.nodes_moved, ["a"]);
    assert_eq!(all[1].summary.nodes_relabelled, ["b"]);
    assert_eq!(
        all[1].summary.config_changed,
        [ConfigKey {
            node: "b".into(),
            key: "url".into()
        }]
    );
    assert_eq!(all[0].summary.nodes_removed, ["b"]);
    assert_eq!(all[0].summary.edges_removed, ["ab"]);

    // Paging: two at a time, continuing after the last hash of each page.
    let page1 = doc.change_summaries(2, None).unwrap();
    let page2 = doc.change_summaries(2, Some(page1[1].hash)).unwrap();
    let page3 = doc.change_summaries(2, Some(page2[1].hash)).unwrap();
    let paged: Vec<ChangeHash> = [page1, page2, page3]
        .concat()
        .iter()
        .map(|c| c.hash)
        .collect();
    assert_eq!(paged, hashes);

    let stranger = FlowDoc::new().set_name("x").unwrap();
    assert!(matches!(
        doc.change_summaries(2, Some(stranger)),
        Err(CrdtError::UnknownHeads(_))
    ));
}

#[test]
fn a_summary_is_relative_to_the_changes_own_deps_not_concurrent_ones() {
    let mut alice = abc();
    let mut bob = alice.fork();
    let a = alice.move_node("a", Position::new(1.0, 1.0)).unwrap();
    let b = bob.relabel_node("b", "Bob").unwrap();
    common::push_changes(&mut bob, &mut alice);
    let all = alice.change_summaries(2, None).unwrap();
    let of = |h| all.iter().find(|c| c.hash == h).unwrap().summary.clone();
    assert_eq!(of(a).nodes_moved, ["a"]);
    assert!(of(a).nodes_relabelled.is_empty());
    assert_eq!(of(b).nodes_relabelled, ["b"]);
    assert!(of(b).nodes_moved.is_empty());
}

fn change(n: u8, timestamp: i64, summary: EditSummary) -> ChangeSummary {
    ChangeSummary {
        hash: ChangeHash([n; 32]),
        actor: "00".into(),
        seq: 1,
        timestamp,
        deps: vec![],
        message: None,
        summary,
    }
}

#[test]
fn sessions_group_consecutive_changes_by_author_and_gap() {
    let moved = |id: &str| EditSummary {
        nodes_moved: vec![id.into()],
        ..Default::default()
    };
    // Newest first, as change_summaries lists them.
    let changes = [
        change(1, 10_000, moved("b")),
        change(2, 9_500, moved("a")),
        change(3, 9_000, moved("b")),
        change(4, 8_800, moved("c")),
        change(5, 1_000, moved("c")),
    ];
    let authors = ["ann", "ann", "ann", "bob", "bob"];
    let author = |c: &ChangeSummary| authors[usize::from(c.hash.0[0]) - 1];
    let sessions = group_sessions(&changes, author, 5_000);
    assert_eq!(sessions.len(), 3, "{sessions:?}");
    assert_eq!(sessions[0].author, "ann");
    assert_eq!(
        sessions[0].changes,
        [
            ChangeHash([1; 32]),
            ChangeHash([2; 32]),
            ChangeHash([3; 32])
        ]
    );
    assert_eq!((sessions[0].start, sessions[0].end), (9_000, 10_000));
    assert_eq!(sessions[0].summary.nodes_moved, ["a", "b"]);
    assert_eq!(sessions[1].changes, [ChangeHash([4; 32])]);
    assert_eq!(sessions[2].changes, [ChangeHash([5; 32])], "too long a gap");
}
