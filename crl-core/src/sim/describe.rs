//! One-line descriptions of messages, for traces and logs.

use crate::wire::{Message, PRIORITY_NONE};

fn prio(priority: u64) -> String {
    if priority == PRIORITY_NONE {
        String::new()
    } else {
        format!(" p{priority}")
    }
}

/// A one-line description of a message for logs and traces (`GetShared r0.1`, …).
pub fn describe_message(msg: &Message) -> String {
    let region = msg.region().map(|r| r.to_string()).unwrap_or_default();
    let detail = match msg {
        Message::Data { grant, image, .. } => match image {
            Some(i) => format!(" {grant:?} v{} ({} bytes)", i.version, i.bytes.len()),
            None => format!(" {grant:?} upgrade"),
        },
        Message::RecallAck { image, .. } | Message::Flush { image, .. } => match image {
            Some(i) => format!(" with data v{}", i.version),
            None => String::new(),
        },
        Message::Recall { kind, priority, .. } => format!(" {kind:?}{}", prio(*priority)),
        Message::GetShared { priority, .. } | Message::GetExclusive { priority, .. } => {
            prio(*priority)
        }
        Message::Contend { priority, .. } => format!(" p{priority}"),
        Message::Refused { reason, .. } => format!(" {reason:?}"),
        Message::Hello {
            cluster_id,
            node,
            epoch,
            generation,
            peer_epoch,
            peer_generation,
        } => format!(
            "{node} cluster {cluster_id:#x} epoch {epoch}.{generation} (peer {peer_epoch}.{peer_generation})"
        ),
        Message::HelloAck {
            epoch,
            generation,
            received,
        } => format!(" epoch {epoch}.{generation} received {received}"),
        Message::Ack { received } => format!(" {received}"),
        Message::Ping { nonce } | Message::Pong { nonce } => format!(" {nonce}"),
        Message::TxCommit {
            txid,
            writes,
            deletes,
            participants,
        } => format!(
            "tx {txid}: {} writes, {} deletes, participants {participants:?}",
            writes.len(),
            deletes.len()
        ),
        Message::TxPrepare {
            txid,
            coordinator,
            writes,
            deletes,
        } => format!(
            "tx {txid} (coordinator {coordinator}): {} writes, {} deletes",
            writes.len(),
            deletes.len()
        ),
        Message::TxReply { txid, ok, reason } => {
            if *ok {
                format!("tx {txid}: ok")
            } else {
                format!("tx {txid}: refused: {reason}")
            }
        }
        Message::TxDecide { txid, commit } => {
            format!("tx {txid}: {}", if *commit { "commit" } else { "abort" })
        }
        Message::TxDone { txid } | Message::TxInquire { txid } => format!("tx {txid}"),
        _ => String::new(),
    };
    format!("{} {region}{detail}", msg.kind_name())
}
