//! Typed edits: the only writes clients and the hub should make.
//!
//! Each edit checks its input against the schema first (so a typed edit can never
//! produce a document `validate` rejects) and commits exactly one Automerge
//! change, returning its hash. [`FlowDoc::batch`] runs any number of them as
//! one change.
//!
//! Cost: almost all of a typed edit is automerge's own work — inserting its
//! ops into the columnar op set (one splice across every column per call,
//! which is why a move's new position map is written with one
//! `batch_create_object`, see `put_position`) and committing. The checks add
//! no document reads beyond the existence lookups that the error cases need,
//! and those go through the edit cache (see `flow_doc::EditCache`). The
//! `typed_edits` and `floor` benchmarks compare the two.

use std::collections::{BTreeSet, HashMap};

use automerge::transaction::Transactable;
use automerge::{hydrate, AutoCommit, ChangeHash, ObjId, ObjType, ReadDoc, ScalarValueRef, ROOT};

use crate::error::{CrdtError, Result};
use crate::flow_doc::{map_child, FlowDoc};
use crate::json;
use crate::model::{Endpoint, NewNode, Position};
use crate::schema::{self, Path};
use crate::tree::{Tree, Val};

/// Typed edits collected into one Automerge change; see [`FlowDoc::batch`].
///
/// Every method checks its input exactly like the [`FlowDoc`] method of the
/// same name and fails the same way, but nothing is committed until the batch
/// closure returns `Ok`. Edits see the effect of earlier edits in the batch
/// (a node added in the batch can be moved, connected or deleted in it).
pub struct FlowTx<'a> {
    flow: &'a mut FlowDoc,
    /// Moves not written yet, by node: see [`FlowTx::move_node`].
    moves: Vec<(String, ObjId, Position)>,
    /// Whether the batch is still open; dropping an open batch rolls it back.
    open: bool,
}

impl Drop for FlowTx<'_> {
    fn drop(&mut self) {
        // Reached with `open` set only on failure or when the closure
        // panicked: never leave half a batch pending for the next commit.
        if self.open {
            self.flow.abort_edit();
        }
    }
}

impl FlowDoc {
    /// Run `f` as a batch of typed edits committed as **one** change (even if
    /// they change nothing, as with single edits); returns `f`'s value and the
    /// change hash.
    ///
    /// If `f` or any edit in it fails, every op of the batch is rolled back and
    /// the error returned: the batch is all or nothing. A panic inside `f` also
    /// rolls the batch back (before unwinding on).
    ///
    /// Consecutive moves in a batch are coalesced per node (see
    /// [`FlowTx::move_node`]), so a drag that emits hundreds of moves costs
    /// about one move per node dragged.
    ///
    /// ```
    /// # use flowhub_crdt::{FlowDoc, NewNode, Position};
    /// let mut doc = FlowDoc::new();
    /// let (id, _hash) = doc
    ///     .batch(|tx| {
    ///         let id = tx.add_node(NewNode::new("http", "Fetch", Position::new(0.0, 0.0)))?;
    ///         for i in 0..100 {
    ///             tx.move_node(&id, Position::new(i as f64, 0.0))?;
    ///         }
    ///         Ok(id)
    ///     })
    ///     .unwrap();
    /// assert_eq!(doc.node(&id).unwrap().position, Position::new(99.0, 0.0));
    /// ```
    pub fn batch<T>(
        &mut self,
        f: impl FnOnce(&mut FlowTx<'_>) -> Result<T>,
    ) -> Result<(T, ChangeHash)> {
        self.begin_edit();
        let mut tx = FlowTx {
            flow: self,
            moves: Vec::new(),
            open: true,
        };
        let value = f(&mut tx)?;
        tx.flush_moves()?;
        tx.open = false;
        Ok((value, tx.flow.commit_edit()))
    }

    /// Rename the flow.
    pub fn set_name(&mut self, name: &str) -> Result<ChangeHash> {
        Ok(self.batch(|tx| tx.set_name(name))?.1)
    }

    /// Add a node; generates a unique id when `node.id` is `None`.
    pub fn add_node(&mut self, node: NewNode) -> Result<(String, ChangeHash)> {
        self.batch(|tx| tx.add_node(node))
    }

    /// Move a node.
    ///
    /// Writes a *new* `position` map holding both coordinates instead of
    /// updating `x` and `y` in place. Concurrent moves of one node then conflict
    /// on the single `position` key, and Automerge picks one whole map as the
    /// winner on every replica: the node lands exactly where one user dropped it,
    /// never at x from one user and y from another.
    pub fn move_node(&mut self, id: &str, to: Position) -> Result<ChangeHash> {
        Ok(self.batch(|tx| tx.move_node(id, to))?.1)
    }

    /// Change a node's label.
    pub fn relabel_node(&mut self, id: &str, label: &str) -> Result<ChangeHash> {
        Ok(self.batch(|tx| tx.relabel_node(id, label))?.1)
    }

    /// Set one key of a node's config to a (possibly nested) JSON value.
    ///
    /// Only that key is written, so concurrent edits of different keys merge.
    /// Objects and arrays become Automerge maps and lists; `null` is stored as a
    /// null scalar (the key stays present).
    pub fn configure_node(
        &mut self,
        id: &str,
        key: &str,
        value: serde_json::Value,
    ) -> Result<ChangeHash> {
        Ok(self.batch(|tx| tx.configure_node(id, key, value))?.1)
    }

    /// Remove one key of a node's config (a no-op if the key is absent).
    ///
    /// `configure_node(id, key, null)` keeps the key with a null value; this is
    /// the edit that makes it absent again, which undo and diffs need to restore
    /// a config exactly.
    pub fn unconfigure_node(&mut self, id: &str, key: &str) -> Result<ChangeHash> {
        Ok(self.batch(|tx| tx.unconfigure_node(id, key))?.1)
    }

    /// Change a node's kind in place, keeping its label, position, config and
    /// edges.
    ///
    /// Typed edits otherwise only change a kind by deleting the node and adding
    /// it again under the same id, which drops its edges; diffs and undo need to
    /// express "kind old -> new" as one edit.
    pub fn set_node_kind(&mut self, id: &str, kind: &str) -> Result<ChangeHash> {
        Ok(self.batch(|tx| tx.set_node_kind(id, kind))?.1)
    }

    /// Delete a node and, in the same change, every edge touching it, so no
    /// replica ever observes the node gone but its edges still there.
    pub fn delete_node(&mut self, id: &str) -> Result<ChangeHash> {
        Ok(self.batch(|tx| tx.delete_node(id))?.1)
    }

    /// Connect `source` to `target`; both nodes must exist. Generates a unique
    /// id when `id` is `None`.
    pub fn connect(
        &mut self,
        id: Option<String>,
        source: Endpoint,
        target: Endpoint,
    ) -> Result<(String, ChangeHash)> {
        self.batch(|tx| tx.connect(id, source, target))
    }

    /// Remove an edge.
    pub fn disconnect(&mut self, edge_id: &str) -> Result<ChangeHash> {
        Ok(self.batch(|tx| tx.disconnect(edge_id))?.1)
    }

    /// Delete every dangling edge (an endpoint's node id is no longer a key of
    /// `nodes`, typically because another replica deleted the node while this one
    /// connected to it) in one change.
    ///
    /// Returns `None` when there is nothing to repair, so calling it after every
    /// merge is cheap and idempotent. Replicas repairing concurrently both delete
    /// the same keys, which merges cleanly.
    pub fn repair(&mut self) -> Result<Option<ChangeHash>> {
        let dangling = self.dangling_edges()?;
        if dangling.is_empty() {
            return Ok(None);
        }
        let (_, hash) = self.batch(|tx| {
            tx.flush_moves()?;
            let edges = tx.flow.require_root_map("edges")?;
            for edge in &dangling {
                tx.flow.doc.delete(&edges, edge.as_str())?;
            }
            Ok(())
        })?;
        Ok(Some(hash))
    }

    /// Ids of edges whose source or target is not a key of `nodes`.
    pub fn dangling_edges(&self) -> Result<Vec<String>> {
        let nodes = self
            .root_map("nodes")
            .ok_or_else(|| CrdtError::InvalidDocument("nodes: root map missing".into()))?;
        let edges = self
            .root_map("edges")
            .ok_or_else(|| CrdtError::InvalidDocument("edges: root map missing".into()))?;
        let node_ids: BTreeSet<String> = self.doc.keys(&nodes).collect();
        let exists = |n: &Option<String>| n.as_ref().is_some_and(|n| node_ids.contains(n));
        Ok(edge_endpoints(&self.doc, &edges)
            .into_iter()
            .filter(|(_, s, t)| {
                // A malformed edge lacking an endpoint is a schema problem, not a
                // concurrency one: leave it for validation to report.
                (s.is_some() && !exists(s)) || (t.is_some() && !exists(t))
            })
            .map(|(edge, _, _)| edge)
            .collect())
    }
}

impl FlowTx<'_> {
    /// Rename the flow.
    pub fn set_name(&mut self, name: &str) -> Result<()> {
        schema::check_label(&Path::ROOT.key("name"), name)?;
        self.flush_moves()?;
        self.flow.doc.put(ROOT, "name", name)?;
        Ok(())
    }

    /// Add a node; generates a unique id when `node.id` is `None`. Returns the id.
    pub fn add_node(&mut self, node: NewNode) -> Result<String> {
        self.flush_moves()?;
        let nodes = self.flow.require_root_map("nodes")?;
        let nodes_path = Path::ROOT.key("nodes");
        let id = match node.id {
            Some(id) => {
                schema::check_id(&nodes_path.key(&id), &id)?;
                if matches!(self.flow.doc.get(&nodes, id.as_str()), Ok(Some(_))) {
                    return Err(CrdtError::DuplicateId(id));
                }
                id
            }
            None => self.flow.fresh_id("n", &nodes),
        };
        let path = nodes_path.key(&id);
        schema::check_kind(&path.key("kind"), &node.kind)?;
        schema::check_label(&path.key("label"), &node.label)?;
        check_position(&path, node.position)?;
        let config = serde_json::Value::Object(node.config);
        schema::check_config_value(&path.key("config"), &config, 0)?;
        let serde_json::Value::Object(config) = config else {
            return Err(CrdtError::InvalidEdit("config must be an object".into()));
        };

        let doc = &mut self.flow.doc;
        let obj = doc.put_object(&nodes, id.as_str(), ObjType::Map)?;
        doc.put(&obj, "kind", node.kind.as_str())?;
        doc.put(&obj, "label", node.label.as_str())?;
        put_position(doc, &obj, node.position)?;
        let cfg = doc.put_object(&obj, "config", ObjType::Map)?;
        json::put_entries(doc, &cfg, &config)?;
        self.flow.set_node_obj(&id, Some(obj));
        Ok(id)
    }

    /// Move a node (see [`FlowDoc::move_node`] for why a move writes a whole
    /// new `position` map).
    ///
    /// The move is checked now but written when the batch reaches its next
    /// other edit or its end, and only the last of consecutive moves of a node
    /// is written. No one can observe the difference: a change is applied
    /// atomically, so the intermediate positions would never be visible to
    /// anyone, and concurrent moves still conflict on the one `position` key.
    pub fn move_node(&mut self, id: &str, to: Position) -> Result<()> {
        // Pending moves never change which nodes exist, so no flush is needed
        // before looking the node up.
        let pending = self.moves.iter().position(|(n, _, _)| n == id);
        let obj = match pending {
            Some(_) => None,
            None => Some(self.flow.node_obj(id)?),
        };
        check_position(&Path::ROOT.key("nodes").key(id), to)?;
        match (pending, obj) {
            (Some(i), _) => self.moves[i].2 = to,
            (None, Some(obj)) => self.moves.push((id.to_owned(), obj, to)),
            (None, None) => {}
        }
        Ok(())
    }

    /// Change a node's label.
    pub fn relabel_node(&mut self, id: &str, label: &str) -> Result<()> {
        self.flush_moves()?;
        let obj = self.flow.node_obj(id)?;
        schema::check_label(&Path::ROOT.key("nodes").key(id).key("label"), label)?;
        self.flow.doc.put(&obj, "label", label)?;
        Ok(())
    }

    /// Set one key of a node's config (see [`FlowDoc::configure_node`]).
    pub fn configure_node(&mut self, id: &str, key: &str, value: serde_json::Value) -> Result<()> {
        self.flush_moves()?;
        let obj = self.flow.node_obj(id)?;
        let nodes_path = Path::ROOT.key("nodes");
        let node_path = nodes_path.key(id);
        let path = node_path.key("config");
        let cfg = map_child(&self.flow.doc, &obj, "config")
            .ok_or_else(|| CrdtError::InvalidDocument(format!("{}: not a map", path.render())))?;
        schema::check_config_value(&path.key(key), &value, 1)?;
        json::put_value(&mut self.flow.doc, &cfg, key, &value)?;
        Ok(())
    }

    /// Remove one key of a node's config (see [`FlowDoc::unconfigure_node`]).
    pub fn unconfigure_node(&mut self, id: &str, key: &str) -> Result<()> {
        self.flush_moves()?;
        let obj = self.flow.node_obj(id)?;
        let cfg = map_child(&self.flow.doc, &obj, "config")
            .ok_or_else(|| CrdtError::InvalidDocument(format!("nodes/{id}/config: not a map")))?;
        // Deleting an absent key would still write a delete op; skip it so the
        // edit stays a no-op.
        if matches!(self.flow.doc.get(&cfg, key), Ok(Some(_))) {
            self.flow.doc.delete(&cfg, key)?;
        }
        Ok(())
    }

    /// Change a node's kind in place (see [`FlowDoc::set_node_kind`]).
    pub fn set_node_kind(&mut self, id: &str, kind: &str) -> Result<()> {
        self.flush_moves()?;
        let obj = self.flow.node_obj(id)?;
        schema::check_kind(&Path::ROOT.key("nodes").key(id).key("kind"), kind)?;
        self.flow.doc.put(&obj, "kind", kind)?;
        Ok(())
    }

    /// Delete a node and every edge touching it (see [`FlowDoc::delete_node`]).
    pub fn delete_node(&mut self, id: &str) -> Result<()> {
        self.flush_moves()?;
        self.flow.node_obj(id)?;
        let nodes = self.flow.require_root_map("nodes")?;
        let edges = self.flow.require_root_map("edges")?;
        let touching: Vec<String> = edge_endpoints(&self.flow.doc, &edges)
            .into_iter()
            .filter(|(_, s, t)| s.as_deref() == Some(id) || t.as_deref() == Some(id))
            .map(|(edge, _, _)| edge)
            .collect();
        for edge in &touching {
            self.flow.doc.delete(&edges, edge.as_str())?;
        }
        self.flow.doc.delete(&nodes, id)?;
        self.flow.set_node_obj(id, None);
        Ok(())
    }

    /// Connect `source` to `target`; both nodes must exist. Generates a unique
    /// id when `id` is `None`. Returns the id.
    pub fn connect(
        &mut self,
        id: Option<String>,
        source: Endpoint,
        target: Endpoint,
    ) -> Result<String> {
        self.flush_moves()?;
        self.flow.node_obj(&source.node)?;
        self.flow.node_obj(&target.node)?;
        let edges = self.flow.require_root_map("edges")?;
        let id = match id {
            Some(id) => {
                schema::check_id(&Path::ROOT.key("edges").key(&id), &id)?;
                if matches!(self.flow.doc.get(&edges, id.as_str()), Ok(Some(_))) {
                    return Err(CrdtError::DuplicateId(id));
                }
                id
            }
            None => self.flow.fresh_id("e", &edges),
        };
        let doc = &mut self.flow.doc;
        let obj = doc.put_object(&edges, id.as_str(), ObjType::Map)?;
        doc.put(&obj, "source", source.node.as_str())?;
        doc.put(&obj, "source_port", source.port.as_str())?;
        doc.put(&obj, "target", target.node.as_str())?;
        doc.put(&obj, "target_port", target.port.as_str())?;
        Ok(id)
    }

    /// Remove an edge.
    pub fn disconnect(&mut self, edge_id: &str) -> Result<()> {
        self.flush_moves()?;
        self.flow.edge_obj(edge_id)?;
        let edges = self.flow.require_root_map("edges")?;
        self.flow.doc.delete(&edges, edge_id)?;
        Ok(())
    }

    /// The document as edited so far in this batch (pending moves included).
    pub fn flow(&mut self) -> Result<&FlowDoc> {
        self.flush_moves()?;
        Ok(&*self.flow)
    }

    /// Write the pending moves.
    fn flush_moves(&mut self) -> Result<()> {
        for (_, obj, to) in self.moves.drain(..) {
            put_position(&mut self.flow.doc, &obj, to)?;
        }
        Ok(())
    }
}

fn check_position(node_path: &Path<'_>, p: Position) -> Result<(), schema::SchemaError> {
    let path = node_path.key("position");
    schema::check_coordinate(&path.key("x"), p.x)?;
    schema::check_coordinate(&path.key("y"), p.y)
}

/// Write a fresh `position` map `{x, y}` into `node`.
///
/// The ops are exactly those of `put_object(node, "position", Map)`, then
/// `put(x)`, then `put(y)` — same op ids, same change bytes (a test checks
/// this) — but written with automerge's `batch_create_object`, which inserts
/// the new map's two entries into the op set in one splice instead of one
/// each. Every splice touches each of the op set's columns, so this is a
/// third fewer instructions per move.
fn put_position(
    doc: &mut AutoCommit,
    node: &ObjId,
    p: Position,
) -> Result<(), automerge::AutomergeError> {
    let entries: HashMap<&str, hydrate::Value> = HashMap::from([
        ("x", hydrate::Value::from(p.x)),
        ("y", hydrate::Value::from(p.y)),
    ]);
    doc.batch_create_object(node, "position", &hydrate::Value::from(entries), false)?;
    Ok(())
}

/// `(edge id, source node, target node)` for every edge map; endpoints are
/// `None` when missing or not strings. One pass over the edges (see the
/// `tree` module).
fn edge_endpoints(
    doc: &AutoCommit,
    edges: &ObjId,
) -> Vec<(String, Option<String>, Option<String>)> {
    let tree = Tree::load(doc, edges, ObjType::Map, None);
    tree.entries(0)
        .iter()
        .filter_map(|(id, val)| {
            let slot = tree.as_map(val)?;
            let (mut source, mut target) = (None, None);
            for (key, field) in tree.entries(slot) {
                if let Val::Scalar(ScalarValueRef::Str(s)) = field {
                    match key.as_ref() {
                        "source" => source = Some(s.to_string()),
                        "target" => target = Some(s.to_string()),
                        _ => {}
                    }
                }
            }
            Some((id.to_string(), source, target))
        })
        .collect()
}
