//! Listen addresses as Armada writes them: `http://host:port` (h2c), `https://host:port`
//! (TLS), bare `host:port` (h2c), and for the API `unix://path` / `unixs://path`.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{SettingsError, invalid};

/// Where a listener binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP socket.
    Tcp(SocketAddr),
    /// A Unix domain socket at this path.
    Unix(PathBuf),
}

/// A parsed listen address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// What to bind.
    pub addr: ListenAddr,
    /// Whether the scheme asks for TLS (`https://`, `unixs://`).
    pub tls: bool,
}

impl Listen {
    /// The TCP address, for listeners that cannot be Unix sockets.
    pub fn tcp(&self, key: &'static str) -> Result<SocketAddr, SettingsError> {
        match &self.addr {
            ListenAddr::Tcp(addr) => Ok(*addr),
            ListenAddr::Unix(_) => Err(invalid(key, "must be a host:port address")),
        }
    }
}

/// Parses `value` of setting `key`; `unix` says whether Unix sockets are allowed.
pub(crate) fn parse_listen(
    key: &'static str,
    value: &str,
    unix: bool,
) -> Result<Listen, SettingsError> {
    let (rest, tls, is_unix) = if let Some(rest) = value.strip_prefix("https://") {
        (rest, true, false)
    } else if let Some(rest) = value.strip_prefix("http://") {
        (rest, false, false)
    } else if let Some(rest) = value.strip_prefix("unixs://") {
        (rest, true, true)
    } else if let Some(rest) = value.strip_prefix("unix://") {
        (rest, false, true)
    } else if value.contains("://") {
        return Err(invalid(
            key,
            format!("{value:?}: use http://, https://, unix:// or unixs://"),
        ));
    } else {
        (value, false, false)
    };
    if is_unix {
        if !unix {
            return Err(invalid(
                key,
                format!("{value:?}: Unix sockets are not supported here"),
            ));
        }
        if rest.is_empty() {
            return Err(invalid(key, format!("{value:?}: no socket path")));
        }
        return Ok(Listen {
            addr: ListenAddr::Unix(PathBuf::from(rest)),
            tls,
        });
    }
    let addr = rest
        .trim_end_matches('/')
        .parse()
        .map_err(|e| invalid(key, format!("{value:?}: {e}")))?;
    Ok(Listen {
        addr: ListenAddr::Tcp(addr),
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        let l = parse_listen("k", "https://127.0.0.1:1", false).expect("https");
        assert!(l.tls);
        assert_eq!(l.tcp("k").expect("tcp").port(), 1);
        assert!(!parse_listen("k", "127.0.0.1:1", false).expect("bare").tls);
        let u = parse_listen("k", "unix:///tmp/f.sock", true).expect("unix");
        assert_eq!(u.addr, ListenAddr::Unix(PathBuf::from("/tmp/f.sock")));
        assert!(
            parse_listen("k", "unixs:///tmp/f.sock", true)
                .expect("unixs")
                .tls
        );
        assert!(parse_listen("k", "unix:///tmp/f.sock", false).is_err());
        assert!(parse_listen("k", "ftp://x:1", true).is_err());
        assert!(parse_listen("k", "nowhere", true).is_err());
    }
}
