//! Bearer tokens for the services WIRE.md §5.6/§5.7 protect (Tables, Maintenance), and
//! the answer for services switched off.

use flotilla_ops::settings::Secret;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Refuses calls without `authorization: Bearer <token>` when a token is configured.
#[derive(Clone)]
pub struct BearerToken {
    /// `None` = the service is open.
    token: Option<Secret>,
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerToken")
            .field("required", &self.token.is_some())
            .finish()
    }
}

impl BearerToken {
    /// Checks `token` if it is set; lets everything through otherwise.
    pub fn new(token: &Secret) -> Self {
        Self {
            token: token.is_set().then(|| token.clone()),
        }
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.token else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            });
        match presented {
            None => Err(Status::unauthenticated(
                "Request unauthenticated with bearer",
            )),
            Some(token) if constant_time_eq(token.as_bytes(), expected.expose().as_bytes()) => {
                Ok(request)
            }
            Some(_) => Err(Status::unauthenticated("Invalid token")),
        }
    }
}

/// Compares without stopping at the first difference, so response timing does not tell
/// a caller how much of a guessed token was right (the length is not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The answer for a service that is not served (switched off, or not on this port), as
/// grpc-go gives it: UNIMPLEMENTED `unknown service <package.Service>`.
pub async fn unknown_service(uri: axum::http::Uri) -> axum::response::Response {
    let service = uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    Status::unimplemented(format!("unknown service {service}")).into_http()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(token: &str, header: Option<&str>) -> Result<(), Status> {
        let mut check = BearerToken::new(&Secret::new(token));
        let mut req = Request::new(());
        if let Some(h) = header {
            req.metadata_mut()
                .insert("authorization", h.parse().expect("header"));
        }
        check.call(req).map(|_| ())
    }

    #[test]
    fn wire_messages() {
        assert!(call("", None).is_ok());
        assert!(call("s3cret", Some("Bearer s3cret")).is_ok());
        let missing = call("s3cret", None).expect_err("no header");
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert_eq!(missing.message(), "Request unauthenticated with bearer");
        let basic = call("s3cret", Some("Basic s3cret")).expect_err("other scheme");
        assert_eq!(basic.message(), "Request unauthenticated with bearer");
        let wrong = call("s3cret", Some("Bearer s3cre")).expect_err("wrong token");
        assert_eq!(wrong.message(), "Invalid token");
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(constant_time_eq(b"abc", b"abc"));
    }
}
