//! `PUT /metrics`: where the metrics are written.

use vmm::rpc::{MetricsSettings, VmmAction};

use super::{from_json, RequestError};

/// Parses `PUT /metrics`.
pub(super) fn parse_put(body: &[u8]) -> Result<VmmAction, RequestError> {
    Ok(VmmAction::PutMetrics(from_json::<MetricsSettings>(body)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_settings() {
        assert_eq!(
            parse_put(br#"{"metrics_path": "/tmp/metrics.fifo"}"#).unwrap(),
            VmmAction::PutMetrics(MetricsSettings {
                metrics_path: "/tmp/metrics.fifo".into()
            })
        );
    }

    #[test]
    fn refuses_bad_bodies() {
        for (body, expected) in [
            (r#"{}"#, "missing field `metrics_path`"),
            (
                r#"{"metrics_path": false}"#,
                "invalid type: boolean `false`",
            ),
            (
                r#"{"metrics_path": "/m", "format": "json"}"#,
                "unknown field `format`",
            ),
        ] {
            let err = parse_put(body.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(expected), "{body}: {err}");
        }
    }
}
