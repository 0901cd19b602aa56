//! Replica comparison by `flotilla.v1.Inspect/Digest`: every replica of every table, in
//! the leader cluster and in the follower cluster, must end with the same keys and
//! SHA-256, and each follower replica must reflect the leader cluster's applied index.

use std::time::Duration;

use flotilla_proto::flotilla::v1::{DigestRequest, DigestResponse, inspect_client::InspectClient};
use tonic::Status;
use tonic::transport::Channel;

use crate::cluster::Cluster;
use crate::eventually;
use crate::workload::REQUEST_TIMEOUT;

/// The digest of `table` on the node behind `channel`.
pub async fn digest(channel: Channel, table: &str) -> Result<DigestResponse, Status> {
    let mut req = tonic::Request::new(DigestRequest {
        table: table.as_bytes().to_vec(),
    });
    req.set_timeout(REQUEST_TIMEOUT);
    Ok(InspectClient::new(channel).digest(req).await?.into_inner())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One line about a digest, for reports.
fn describe(d: &DigestResponse) -> String {
    format!(
        "{} keys, sha256 {}.., applied {}, leader index {}",
        d.keys,
        hex(d.sha256.get(..6).unwrap_or(&d.sha256)),
        d.applied_index,
        d.leader_index
    )
}

/// Whether every replica of `table` agrees now: `Ok` with a summary line, or the first
/// disagreement.
async fn agree(
    leader: &Cluster,
    follower: Option<&Cluster>,
    table: &str,
) -> Result<String, String> {
    let mut reference: Option<(u64, DigestResponse)> = None;
    for id in Cluster::ids() {
        let d = digest(leader.channel(id), table)
            .await
            .map_err(|e| format!("{table}: leader node {id}: {e}"))?;
        match &reference {
            None => reference = Some((id, d)),
            Some((rid, r)) => {
                if (d.keys, &d.sha256, d.applied_index) != (r.keys, &r.sha256, r.applied_index) {
                    return Err(format!(
                        "{table}: leader node {id} ({}) differs from leader node {rid} ({})",
                        describe(&d),
                        describe(r)
                    ));
                }
            }
        }
    }
    let (_, r) = reference.expect("the leader cluster has nodes");
    if let Some(follower) = follower {
        for id in Cluster::ids() {
            let d = digest(follower.channel(id), table)
                .await
                .map_err(|e| format!("{table}: follower node {id}: {e}"))?;
            if (d.keys, &d.sha256, d.leader_index) != (r.keys, &r.sha256, r.applied_index) {
                return Err(format!(
                    "{table}: follower node {id} ({}) differs from the leader cluster ({})",
                    describe(&d),
                    describe(&r)
                ));
            }
        }
    }
    Ok(format!("{table}: {}", describe(&r)))
}

/// Waits up to `timeout` until every replica of every table agrees (see the module
/// docs); one summary line per table, or the last disagreement seen.
pub async fn wait_agree(
    leader: &Cluster,
    follower: Option<&Cluster>,
    tables: &[String],
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let mut last = Err("never compared".to_owned());
    // Agreement ends the wait with `last` Ok; a timeout leaves the last problem in it.
    eventually(timeout, async || {
        let mut lines = Vec::new();
        for table in tables {
            match agree(leader, follower, table).await {
                Ok(line) => lines.push(line),
                Err(problem) => {
                    last = Err(problem);
                    return false;
                }
            }
        }
        last = Ok(lines);
        true
    })
    .await;
    last.map_err(|problem| format!("replicas did not agree within {timeout:?}: {problem}"))
}
