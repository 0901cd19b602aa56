//! One table's replication worker. It runs on every follower node but pulls only while
//! this node's replica leads the table's local raft group: raft leadership is the lease,
//! kept in the follower's own raft, so exactly one node pulls at a time (two briefly
//! during a leader change, which the FSM's leader-index check makes harmless).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use flotilla_proto::mvcc::v1::{Command, command::CommandType};
use flotilla_proto::replication::v1::log_client::LogClient;
use flotilla_proto::replication::v1::{ReplicateError, ReplicateRequest, replicate_response};
use flotilla_tables::Table;
use flotilla_tables::import::LoadMarker;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::source::MAX_LEADER_MESSAGE_BYTES;
use crate::error::{Error, Result};
use crate::identity;
use crate::leader::FOLLOW_HEADER;

/// How often a worker that does not hold its table checks whether it does now.
const LEASE_CHECK: Duration = Duration::from_millis(100);
/// First wait after a failed pull; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Wait after LEADER_BEHIND (Armada: 10 poll intervals).
const LEADER_BEHIND_BACKOFF: Duration = Duration::from_secs(10);
/// A followed stream that says nothing for this long is dead (the leader sends progress
/// every second while idle).
const STREAM_SILENCE: Duration = Duration::from_secs(5);

/// How a pull ended.
enum Ended {
    /// Lease lost or stream closed normally: start over at once.
    Again,
    /// The leader is behind this follower.
    LeaderBehind,
}

pub(super) async fn run(shared: std::sync::Arc<Shared>, table: Table, cancel: CancellationToken) {
    let name = table.name().to_owned();
    let mut backoff = MIN_BACKOFF;
    loop {
        // Wait for the lease (local raft leadership).
        while !holds_lease(&shared, &table) {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = table.stopped() => return,
                _ = tokio::time::sleep(LEASE_CHECK) => {}
            }
        }
        shared.metrics.leased.with_label_values(&[&name]).set(1);
        let outcome = tokio::select! {
            _ = cancel.cancelled() => None,
            _ = table.stopped() => None,
            r = pull(&shared, &table) => Some(r),
        };
        shared.metrics.leased.with_label_values(&[&name]).set(0);
        let wait = match outcome {
            None => {
                shared.metrics.forget(&name);
                return;
            }
            Some(Ok(Ended::Again)) => {
                backoff = MIN_BACKOFF;
                shared.clear_error(&name);
                continue;
            }
            Some(Ok(Ended::LeaderBehind)) => {
                shared.count_error(&name, "leader_behind");
                shared.set_error(
                    &name,
                    "LEADER_BEHIND: the leader cluster has less than this follower applied".into(),
                );
                LEADER_BEHIND_BACKOFF
            }
            Some(Err(e)) => {
                let kind = match &e {
                    Error::Leader(s) if s.code() == tonic::Code::NotFound => "table_not_found",
                    Error::Leader(_) | Error::Connect(_) | Error::StreamSilent => "stream",
                    Error::Tables(_) => "propose",
                    // The leader sent something the protocol does not allow.
                    Error::LeaderGap { .. } | Error::MissingCommand { .. } => "protocol",
                    _ => "snapshot",
                };
                if kind == "table_not_found" {
                    shared.reconcile_now.notify_one();
                }
                let e = e.to_string();
                // Once per distinct failure: every message received clears the error,
                // so a long outage logs once rather than on every retry.
                if !shared.has_error(&name, &e) {
                    tracing::warn!(table = name, "replication: {e}");
                }
                shared.count_error(&name, kind);
                shared.set_error(&name, e);
                let wait = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                wait
            }
        };
        // Anything applied locally meanwhile (e.g. a Maintenance/Reset load) ends the
        // wait: it may be what the failure was waiting for.
        let mut applied = table.applied_watch();
        applied.borrow_and_update(); // only what is applied from now on counts
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = table.stopped() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = applied.changed() => {}
        }
    }
}

fn holds_lease(shared: &Shared, table: &Table) -> bool {
    table.status().leader.load(Ordering::Relaxed) == shared.node_id
}

/// Pulls until the lease is lost or something fails.
async fn pull(shared: &Shared, table: &Table) -> Result<Ended> {
    let name = table.name().to_owned();
    // Everything committed in the local group is applied here first, so the leader index
    // read next is the group's, not a lagging replica's.
    table.read_barrier().await?;
    let state = table.applied_state().await?;
    let mut applied = match state.leader_index {
        // Reset (Maintenance/Reset): load everything afresh.
        Some(0) => recover(shared, table).await?,
        other => other.unwrap_or(0),
    };
    let mut request = tonic::Request::new(ReplicateRequest {
        table: name.as_bytes().to_vec(),
        leader_index: applied + 1,
    });
    request.metadata_mut().insert(
        FOLLOW_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    if let Some(id) = table.source_id() {
        identity::write_table_id(request.metadata_mut(), id);
    }
    let mut client =
        LogClient::new(shared.channel.clone()).max_decoding_message_size(MAX_LEADER_MESSAGE_BYTES);
    let mut stream = client.replicate(request).await?.into_inner();
    let mut behind_since: Option<Instant> = None;
    let m = &shared.metrics;
    loop {
        let next = tokio::select! {
            r = tokio::time::timeout(STREAM_SILENCE, stream.message()) => {
                r.map_err(|_| Error::StreamSilent)??
            }
            _ = tokio::time::sleep(LEASE_CHECK) => {
                // A Reset (or a load) moved this replica's leader index back: start over
                // from what it holds now.
                if holds_lease(shared, table) && table.applied_leader_index() >= applied {
                    continue;
                }
                return Ok(Ended::Again);
            }
        };
        let Some(msg) = next else {
            return Ok(Ended::Again);
        };
        let seen = msg.leader_index;
        match msg.response {
            Some(replicate_response::Response::CommandsResponse(batch)) => {
                let Some(first) = batch.commands.first().map(|c| c.leader_index) else {
                    continue;
                };
                let last = batch.commands.last().map_or(first, |c| c.leader_index);
                if first > applied + 1 {
                    return Err(Error::LeaderGap { applied, first });
                }
                let sequence = batch
                    .commands
                    .into_iter()
                    .map(|rc| {
                        let mut cmd = rc.command.ok_or(Error::MissingCommand {
                            leader_index: rc.leader_index,
                        })?;
                        cmd.leader_index = Some(rc.leader_index);
                        Ok(cmd)
                    })
                    .collect::<Result<Vec<_>>>()?;
                let seq = Command {
                    table: name.as_bytes().to_vec(),
                    r#type: CommandType::Sequence as i32,
                    sequence,
                    leader_index: Some(last),
                    ..Default::default()
                };
                // The batch continues from `applied`: every replica refuses it if its own
                // state is behind that (a gap), rather than skip commands.
                table.propose_replicated(applied, &seq).await?;
                applied = applied.max(last);
            }
            Some(replicate_response::Response::ErrorResponse(e)) => {
                return match e.error() {
                    ReplicateError::UseSnapshot => {
                        recover(shared, table).await?;
                        Ok(Ended::Again)
                    }
                    ReplicateError::LeaderBehind => Ok(Ended::LeaderBehind),
                };
            }
            None => {}
        }
        let seen = seen.max(applied);
        m.leader_index.with_label_values(&[&name]).set(seen as i64);
        m.applied_leader_index
            .with_label_values(&[&name])
            .set(applied as i64);
        m.lag_entries
            .with_label_values(&[&name])
            .set((seen - applied) as i64);
        if seen > applied {
            let since = *behind_since.get_or_insert_with(Instant::now);
            m.lag_seconds
                .with_label_values(&[&name])
                .set(since.elapsed().as_secs_f64());
        } else {
            behind_since = None;
            m.lag_seconds.with_label_values(&[&name]).set(0.0);
        }
        shared.clear_error(&name);
    }
}

/// Loads the leader's current snapshot into every replica of the table (see
/// `flotilla_tables::import`); returns the leader index this replica now holds.
async fn recover(shared: &Shared, table: &Table) -> Result<u64> {
    let name = table.name();
    tracing::info!(table = name, "recovering from a leader snapshot");
    let leader_index = shared
        .source
        .prefetch(name, table.id(), table.source_id())
        .await?;
    let marker = LoadMarker::leader_snapshot(leader_index, shared.node_id);
    let out = table.propose_load(marker).await?;
    tracing::info!(
        table = name,
        leader_index = out.revision,
        "snapshot recovery done"
    );
    Ok(out.revision)
}
