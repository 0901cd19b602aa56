//! How the client subcommands (`backup`, `restore`) reach a node: the address forms
//! Armada's tools take, TLS (CA, client certificate), and the bearer token.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Arg, ArgAction, ArgMatches, Command};
use flotilla_tls::{ClientTlsFiles, FileFlag, TlsConnector};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// A channel that sends the token (if any) with every call.
pub type Authed = InterceptedService<Channel, BearerToken>;

/// Adds the connection flags every client subcommand shares.
pub fn args(cmd: Command) -> Command {
    cmd.arg(
        Arg::new("address")
            .long("address")
            .env("FLOTILLA_ADDRESS")
            .value_name("ADDRESS")
            .default_value("127.0.0.1:8443")
            .help(
                "The node's API address: host:port dials TLS (as `armada backup` does); \
                 http://host:port is plaintext, https://host:port TLS",
            ),
    )
    .arg(
        Arg::new("token")
            .long("token")
            .env("FLOTILLA_TOKEN")
            .value_name("TOKEN")
            .help("Bearer token for the Maintenance API (--maintenance.token on the node)"),
    )
    .arg(
        Arg::new("ca")
            .long("ca")
            .env("FLOTILLA_CA")
            .value_name("FILE")
            .help("CA bundle the server's certificate must chain to [default: the system's]"),
    )
    .arg(
        Arg::new("cert")
            .long("cert")
            .env("FLOTILLA_CERT")
            .value_name("FILE")
            .requires("key")
            .help("Client certificate for mTLS (with --key)"),
    )
    .arg(
        Arg::new("key")
            .long("key")
            .env("FLOTILLA_KEY")
            .value_name("FILE")
            .requires("cert")
            .help("Client key for mTLS (with --cert)"),
    )
    .arg(
        Arg::new("insecure-skip-verify")
            .long("insecure-skip-verify")
            .action(ArgAction::SetTrue)
            .help("Accept any server certificate (testing only)"),
    )
}

/// Where to dial, over TLS or not.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    uri: String,
    tls: bool,
}

/// Reads an address in one of the accepted forms.
fn target(address: &str) -> anyhow::Result<Target> {
    let (tls, rest) = if let Some(rest) = address.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = address.strip_prefix("http://") {
        (false, rest)
    } else if address.contains("://") {
        anyhow::bail!("--address {address}: only http:// and https:// (or host:port) are accepted");
    } else {
        (true, address)
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || !rest.contains(':') || rest.contains('/') {
        anyhow::bail!("--address {address}: expected host:port");
    }
    let scheme = if tls { "https" } else { "http" };
    Ok(Target {
        uri: format!("{scheme}://{rest}"),
        tls,
    })
}

/// Connects as the flags say (lazily: the first call dials).
pub fn channel(matches: &ArgMatches) -> anyhow::Result<Authed> {
    let address = matches
        .get_one::<String>("address")
        .context("--address is required")?;
    let target = target(address)?;
    let file = |flag: &'static str| {
        matches
            .get_one::<String>(flag)
            .map(|p| FileFlag::new(flag, PathBuf::from(p)))
    };
    let connector = if target.tls {
        let files = ClientTlsFiles {
            ca: file("ca"),
            identity: file("cert").zip(file("key")),
            insecure_skip_verify: matches.get_flag("insecure-skip-verify"),
        };
        TlsConnector::tls(files.load()?, None, "--address")?
    } else {
        if matches.get_one::<String>("ca").is_some() || matches.get_one::<String>("cert").is_some()
        {
            anyhow::bail!("--address {address} is plaintext (http://): TLS flags do not apply");
        }
        TlsConnector::plain()
    };
    let endpoint = Endpoint::from_shared(target.uri)
        .with_context(|| format!("--address {address}"))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20));
    let channel = endpoint.connect_with_connector_lazy(connector);
    let token = match matches.get_one::<String>("token") {
        Some(t) if !t.is_empty() => Some(
            MetadataValue::try_from(format!("Bearer {t}"))
                .context("--token: not a valid header value")?,
        ),
        _ => None,
    };
    Ok(InterceptedService::new(channel, BearerToken(token)))
}

/// Sends `authorization: Bearer <token>` with every call (when a token is set).
#[derive(Debug, Clone)]
pub struct BearerToken(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            req.metadata_mut().insert("authorization", token.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_variable_is_one_a_node_lets_through() {
        let cmd = args(Command::new("t"));
        let read: Vec<String> = cmd
            .get_arguments()
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .collect();
        assert_eq!(read.len(), 5, "{read:?}");
        for name in read {
            assert!(
                flotilla_ops::settings::CLIENT_ENV.contains(&name.as_str()),
                "{name}"
            );
        }
    }

    #[test]
    fn addresses_say_whether_to_dial_tls() {
        let t = |a: &str| target(a).map_err(|e| e.to_string());
        assert_eq!(
            t("127.0.0.1:8443"),
            Ok(Target {
                uri: "https://127.0.0.1:8443".into(),
                tls: true
            })
        );
        assert_eq!(
            t("http://localhost:8443/"),
            Ok(Target {
                uri: "http://localhost:8443".into(),
                tls: false
            })
        );
        assert!(t("https://h:1").is_ok_and(|x| x.tls));
        assert!(t("unix:///tmp/s").is_err());
        assert!(t("localhost").is_err());
        assert!(t("http://h:1/path").is_err());
    }
}
