//! Stop signals: a `watch::Sender<bool>` flipped to `true` tells every task of a
//! workload to wind down.

use tokio::sync::watch;

/// Resolves once the signal is `true` (or its sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here, not in a caller's
    // `select!` arm.
    let _ = rx.wait_for(|s| *s).await;
}
