//! Loopback ports for test servers that must keep their ports across restarts.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// First port handed out: below Linux's ephemeral range (32768-60999), so no outgoing
/// connection of the servers started meanwhile can be given one as its local port.
const FIRST: u32 = 20_000;
/// Ports in the range handed out.
const SPAN: u32 = 12_000;

/// `n` listeners on distinct free loopback ports below the ephemeral range. The caller
/// reads their ports ([`port`]) and drops them just before its servers bind them: holding
/// them until then keeps the ports from other tests of the same process (each call takes
/// new ones) and of other processes (they are bound). Ports the kernel hands out (`:0`)
/// would not do for a server restarted after kill -9: meanwhile an outgoing connection
/// could have been given its old port (seen in CI: "Address already in use").
pub fn reserve(n: usize) -> Vec<TcpListener> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(
            k < SPAN * 4,
            "no free loopback port below the ephemeral range"
        );
        let port = FIRST + start.wrapping_add(k) % SPAN;
        let port = u16::try_from(port).unwrap_or_else(|_| unreachable!("below 32000"));
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            out.push(listener);
        }
    }
    out
}

/// The port a reserved listener holds.
pub fn port(listener: &TcpListener) -> u16 {
    listener
        .local_addr()
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("a bound listener has an address: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_are_distinct_and_below_the_ephemeral_range() {
        let a = reserve(3);
        let b = reserve(3);
        let mut ports: Vec<u16> = a.iter().chain(&b).map(port).collect();
        assert!(ports.iter().all(|&p| (20_000..32_000).contains(&p)));
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 6);
    }
}
