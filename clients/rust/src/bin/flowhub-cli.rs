//! `flowhub-cli`: dump, edit and watch flows on a flowhub hub.
//!
//! ```text
//! flowhub-cli [--url ws://127.0.0.1:7878] [--token JWT | env FLOWHUB_TOKEN] <command>
//!   dump <flow>                 print the flow as pretty JSON (HTTP API)
//!   edit <flow> [--http [--key K]] <op> ...
//!                               apply one edit, wait for the hub's ack (10 s); with
//!                               --http as JSON over HTTP (no Automerge), idempotent with --key
//!   watch <flow> [--pretty] [--sse]
//!                               print the flow as JSON on every change, until Ctrl-C;
//!                               --sse: JSON patches over Server-Sent Events (no Automerge)
//! ```
//!
//! `edit` prints `{"ok":true,"id":...,"changes":[...]}` and exits 0 once the hub
//! stored the edit; if the hub (or the local schema check) refuses it, it prints
//! `{"ok":false,"error":{"code":...,"message":...}}` and exits 1.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use flowhub_client::{
    fetch_flow, Client, ClientError, CrdtError, Edit, Endpoint, FlowApi, FlowDoc, NewNode, Position,
};
use serde_json::{json, Value};

/// How long `edit` waits for the hub's ack.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(
    name = "flowhub-cli",
    version,
    about = "Dump, edit and watch flowhub flows"
)]
struct Cli {
    /// Hub base URL (ws://, wss://, http:// or https://).
    #[arg(long, global = true, default_value = "ws://127.0.0.1:7878")]
    url: String,
    /// Access token (JWT).
    #[arg(long, global = true, env = "FLOWHUB_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a flow as pretty JSON (GET /v1/flows/{flow}).
    Dump { flow: String },
    /// Apply one edit to a flow and wait for the hub to store it.
    Edit {
        flow: String,
        /// Send the edit as JSON over HTTP (`POST /v1/flows/{flow}/edits`): the hub
        /// makes the change; no Automerge replica here.
        #[arg(long)]
        http: bool,
        /// With --http: an idempotency key, so a retry applies the edit once.
        #[arg(long, requires = "http")]
        key: Option<String>,
        #[command(subcommand)]
        op: Op,
    },
    /// Print the flow as JSON (one line per version) every time it changes.
    Watch {
        flow: String,
        /// Pretty-print each version instead of one JSON document per line.
        #[arg(long)]
        pretty: bool,
        /// Follow the flow as JSON patches over Server-Sent Events
        /// (`GET /v1/flows/{flow}/stream`) instead of an Automerge replica.
        #[arg(long)]
        sse: bool,
    },
}

#[derive(Subcommand, Debug, Clone)]
enum Op {
    /// Add a node.
    AddNode {
        #[arg(long)]
        kind: String,
        #[arg(long)]
        label: String,
        #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
        x: f64,
        #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
        y: f64,
        /// Explicit node id (generated when omitted).
        #[arg(long)]
        id: Option<String>,
    },
    /// Move a node.
    MoveNode {
        id: String,
        #[arg(long, allow_negative_numbers = true)]
        x: f64,
        #[arg(long, allow_negative_numbers = true)]
        y: f64,
    },
    /// Change a node's label.
    Relabel { id: String, label: String },
    /// Set one config key of a node to a JSON value.
    Configure {
        id: String,
        key: String,
        json: String,
    },
    /// Delete a node and its edges.
    DeleteNode { id: String },
    /// Connect two nodes.
    Connect {
        src: String,
        dst: String,
        #[arg(long, default_value = "out")]
        source_port: String,
        #[arg(long, default_value = "in")]
        target_port: String,
        /// Explicit edge id (generated when omitted).
        #[arg(long)]
        id: Option<String>,
    },
    /// Remove an edge.
    Disconnect { id: String },
    /// Rename the flow.
    SetName { name: String },
}

impl Op {
    /// The same edit as data, for the HTTP API.
    fn into_edit(self) -> anyhow::Result<Edit> {
        Ok(match self {
            Op::AddNode {
                kind,
                label,
                x,
                y,
                id,
            } => Edit::AddNode {
                id,
                kind,
                label,
                position: Position::new(x, y),
                config: Default::default(),
            },
            Op::MoveNode { id, x, y } => Edit::MoveNode {
                id,
                to: Position::new(x, y),
            },
            Op::Relabel { id, label } => Edit::RelabelNode { id, label },
            Op::Configure { id, key, json } => Edit::ConfigureNode {
                id,
                key,
                value: serde_json::from_str(&json).context("config value is not JSON")?,
            },
            Op::DeleteNode { id } => Edit::DeleteNode { id },
            Op::Connect {
                src,
                dst,
                source_port,
                target_port,
                id,
            } => Edit::Connect {
                id,
                source: Endpoint::new(src, source_port),
                target: Endpoint::new(dst, target_port),
            },
            Op::Disconnect { id } => Edit::Disconnect { id },
            Op::SetName { name } => Edit::SetName { name },
        })
    }

    /// Applies the edit; returns the id of the node or edge it concerns (none for
    /// `set-name`).
    fn apply(self, doc: &mut FlowDoc) -> Result<Option<String>, CrdtError> {
        Ok(match self {
            Op::AddNode {
                kind,
                label,
                x,
                y,
                id,
            } => {
                let mut node = NewNode::new(kind, label, Position::new(x, y));
                node.id = id;
                Some(doc.add_node(node)?.0)
            }
            Op::MoveNode { id, x, y } => {
                doc.move_node(&id, Position::new(x, y))?;
                Some(id)
            }
            Op::Relabel { id, label } => {
                doc.relabel_node(&id, &label)?;
                Some(id)
            }
            Op::Configure { id, key, json } => {
                let value: Value = serde_json::from_str(&json).map_err(|e| {
                    CrdtError::InvalidEdit(format!("config value is not JSON: {e}"))
                })?;
                doc.configure_node(&id, &key, value)?;
                Some(id)
            }
            Op::DeleteNode { id } => {
                doc.delete_node(&id)?;
                Some(id)
            }
            Op::Connect {
                src,
                dst,
                source_port,
                target_port,
                id,
            } => {
                let source = Endpoint::new(src, source_port);
                let target = Endpoint::new(dst, target_port);
                Some(doc.connect(id, source, target)?.0)
            }
            Op::Disconnect { id } => {
                doc.disconnect(&id)?;
                Some(id)
            }
            Op::SetName { name } => {
                doc.set_name(&name)?;
                None
            }
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let token = cli
        .token
        .context("no token: pass --token or set FLOWHUB_TOKEN")?;
    match cli.command {
        Command::Dump { flow } => {
            let doc = fetch_flow(&cli.url, &flow, &token).await?;
            println!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Edit {
            flow,
            http: true,
            key,
            op,
        } => edit_http(&cli.url, &token, &flow, key.as_deref(), op).await,
        Command::Edit { flow, op, .. } => edit(&cli.url, &token, &flow, op).await,
        Command::Watch {
            flow,
            pretty,
            sse: true,
        } => watch_sse(&cli.url, &token, &flow, pretty).await,
        Command::Watch { flow, pretty, .. } => watch(&cli.url, &token, &flow, pretty).await,
    }
}

async fn edit(url: &str, token: &str, flow_id: &str, op: Op) -> anyhow::Result<ExitCode> {
    let client = Client::connect(url, token).await.context("connecting")?;
    let outcome = async {
        let flow = client.subscribe(flow_id).await?;
        let (id, ticket) = flow.edit(|doc| op.apply(doc)).await?;
        flow.wait_acked(&ticket, ACK_TIMEOUT).await?;
        Ok::<_, ClientError>((id, ticket))
    }
    .await;
    client.close().await;
    match outcome {
        Ok((id, ticket)) => {
            println!(
                "{}",
                json!({"ok": true, "id": id, "changes": ticket.hashes})
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let code = match &e {
                ClientError::Crdt(CrdtError::Schema(_)) => "schema_violation".to_owned(),
                ClientError::Crdt(CrdtError::NodeNotFound(_) | CrdtError::EdgeNotFound(_)) => {
                    "not_found".to_owned()
                }
                ClientError::Crdt(_) => "bad_request".to_owned(),
                ClientError::Timeout(_) => "timeout".to_owned(),
                ClientError::Closed { .. } => "closed".to_owned(),
                other => other
                    .code()
                    .map(|c| c.as_str().to_owned())
                    .unwrap_or_else(|| "error".to_owned()),
            };
            let message = match &e {
                ClientError::Rejected { message, .. } | ClientError::Server { message, .. } => {
                    message.clone()
                }
                other => other.to_string(),
            };
            println!(
                "{}",
                json!({"ok": false, "error": {"code": code, "message": message}})
            );
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `edit --http`: prints `{"ok":true,"change":…,"heads":[…],"replayed":…}`, or the
/// hub's typed error as `edit` does.
async fn edit_http(
    url: &str,
    token: &str,
    flow_id: &str,
    key: Option<&str>,
    op: Op,
) -> anyhow::Result<ExitCode> {
    let api = FlowApi::new(url, flow_id, token)?;
    match api.edit(&[op.into_edit()?], key).await {
        Ok(applied) => {
            println!(
                "{}",
                json!({"ok": true, "change": applied.change, "heads": applied.heads, "replayed": applied.replayed})
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let (code, message) = match &e {
                ClientError::Server { code, message } => {
                    (code.as_str().to_owned(), message.clone())
                }
                other => (
                    other
                        .code()
                        .map(|c| c.as_str().to_owned())
                        .unwrap_or_else(|| "error".to_owned()),
                    other.to_string(),
                ),
            };
            println!(
                "{}",
                json!({"ok": false, "error": {"code": code, "message": message}})
            );
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `watch --sse`: the flow as JSON patches over Server-Sent Events, resuming from the
/// last heads when the hub ends the stream (a node draining).
async fn watch_sse(
    url: &str,
    token: &str,
    flow_id: &str,
    pretty: bool,
) -> anyhow::Result<ExitCode> {
    let api = FlowApi::new(url, flow_id, token)?;
    let mut resume = None;
    loop {
        let mut stream = api
            .watch_json(resume)
            .await
            .context("opening the flow stream")?;
        while let Some(flow) = stream.next().await? {
            if pretty {
                println!("{}", serde_json::to_string_pretty(flow)?);
            } else {
                println!("{flow}");
            }
        }
        resume = stream.into_resume();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn watch(url: &str, token: &str, flow_id: &str, pretty: bool) -> anyhow::Result<ExitCode> {
    let client = Client::connect(url, token).await.context("connecting")?;
    let flow = client.subscribe(flow_id).await.context("subscribing")?;
    let render = |mut doc: Value| -> anyhow::Result<String> {
        if let Value::Object(map) = &mut doc {
            map.insert("id".into(), Value::String(flow_id.to_owned()));
        }
        Ok(if pretty {
            serde_json::to_string_pretty(&doc)?
        } else {
            serde_json::to_string(&doc)?
        })
    };
    let mut last = flow.to_json();
    println!("{}", render(last.clone())?);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => {
                client.close().await;
                return Ok(ExitCode::SUCCESS);
            }
            _ = flow.changed() => {}
        }
        if let Some((code, reason)) = client.close_reason() {
            eprintln!("connection closed ({code}): {reason}");
            return Ok(ExitCode::FAILURE);
        }
        let now = flow.to_json();
        if now != last {
            println!("{}", render(now.clone())?);
            last = now;
        }
    }
}
