//! Reading a node's Prometheus `/metrics` page over plain HTTP/1.0 (no client crate).

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The text of `GET /metrics` on `addr` (`host:port`), or `None` if it cannot be read.
pub async fn scrape(addr: &str) -> Option<String> {
    let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    conn.write_all(request.as_bytes()).await.ok()?;
    let mut body = String::new();
    conn.read_to_string(&mut body).await.ok()?;
    Some(body)
}

/// The value of series `series` (its name with labels exactly as rendered, e.g.
/// `flotilla_raft_applied_index{table="t"}`) in a scraped page.
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The value of `series` on `addr`'s `/metrics` now.
pub async fn read(addr: &str, series: &str) -> Option<f64> {
    value(&scrape(addr).await?, series)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_series_by_its_exact_labels() {
        let page = "# HELP x\nx{table=\"a\"} 1\nx{table=\"ab\"} 2\ny 3.5\n";
        assert_eq!(value(page, "x{table=\"a\"}"), Some(1.0));
        assert_eq!(value(page, "x{table=\"ab\"}"), Some(2.0));
        assert_eq!(value(page, "y"), Some(3.5));
        assert_eq!(value(page, "x"), None);
    }
}
