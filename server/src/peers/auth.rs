//! Which raft ids a peer connection may speak for. With peer TLS, a connection speaks for
//! the members whose raft address host its verified certificate covers (SAN DNS name or
//! IP, as a client checks a server), so a node can neither send messages as another nor
//! rewrite another's MemberList entry. Without TLS every connection is trusted (a
//! trusted network, as the README says).

use std::collections::{BTreeMap, BTreeSet};

use flotilla_tls::{ConnInfo, certificate_covers_host};
use prometheus::{IntCounterVec, Opts, Registry};

/// The members' hosts and the counter of refused traffic.
#[derive(Debug, Clone)]
pub struct PeerAuth {
    /// Whether connections carry verified certificates (peer TLS on).
    verified: bool,
    /// Raft id -> host of its raft address.
    hosts: BTreeMap<u64, String>,
    rejected: IntCounterVec,
}

/// Why peer traffic was dropped (the `reason` label).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Rejected {
    /// A batch's `from` is a member the connection's certificate does not cover.
    UnverifiedSender,
    /// A raft message's `from` differs from its batch's.
    ForgedFrom,
    /// A snapshot from a member the connection's certificate does not cover.
    UnverifiedSnapshot,
}

impl Rejected {
    fn label(self) -> &'static str {
        match self {
            Self::UnverifiedSender => "unverified_sender",
            Self::ForgedFrom => "forged_from",
            Self::UnverifiedSnapshot => "unverified_snapshot",
        }
    }
}

impl PeerAuth {
    /// `verified` when the raft listener runs mTLS; `members` are raft id -> raft address.
    pub fn new(
        verified: bool,
        members: &BTreeMap<u64, String>,
        registry: &Registry,
    ) -> prometheus::Result<Self> {
        let rejected = IntCounterVec::new(
            Opts::new(
                "flotilla_peer_messages_rejected_total",
                "Raft messages and snapshots from peers dropped because the connection's \
                 certificate does not speak for their sender",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(rejected.clone()))?;
        let hosts = members
            .iter()
            .map(|(id, addr)| (*id, host_of(addr).to_owned()))
            .collect();
        Ok(Self {
            verified,
            hosts,
            rejected,
        })
    }

    /// The raft ids a connection may speak for; `None` = any (no peer TLS).
    pub(crate) fn speaks_for(&self, conn: Option<&ConnInfo>) -> Option<BTreeSet<u64>> {
        if !self.verified {
            return None;
        }
        let Some(leaf) = conn
            .and_then(|c| c.peer_certificates.as_ref())
            .and_then(|chain| chain.first())
        else {
            return Some(BTreeSet::new());
        };
        Some(
            self.hosts
                .iter()
                .filter(|(_, host)| certificate_covers_host(leaf, host))
                .map(|(id, _)| *id)
                .collect(),
        )
    }

    /// Counts `n` dropped messages.
    pub(crate) fn reject(&self, why: Rejected, n: usize) {
        self.rejected
            .with_label_values(&[why.label()])
            .inc_by(n as u64);
    }
}

/// `host` of `host:port` (brackets of an IPv6 literal removed).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn hosts() {
        assert_eq!(host_of("127.0.0.2:5012"), "127.0.0.2");
        assert_eq!(host_of("[::1]:5012"), "::1");
        assert_eq!(host_of("node-a.example:1"), "node-a.example");
    }
}
