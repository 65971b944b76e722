//! Signature checks on the raw body, before anything parses it; every comparison constant-time
//! (`hmac`'s `verify_slice`, or a byte-wise fold for the plain GitLab token).

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a delivery is refused (the audit log records the reason, never the values).
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(crate) enum Refusal {
    /// The signature (or token) header is absent.
    Missing,
    /// Present but not of the provider's form.
    Malformed,
    /// The timestamp is outside the provider's window (a replay, or a clock far off).
    Stale,
    /// It does not match.
    Mismatch,
}

impl Refusal {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => "signature missing",
            Refusal::Malformed => "signature malformed",
            Refusal::Stale => "timestamp outside the allowed window",
            Refusal::Mismatch => "signature does not match",
        }
    }
}

fn mac(secret: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac
}

fn verify_hex(secret: &[u8], parts: &[&[u8]], sig_hex: &str) -> Result<(), Refusal> {
    let sig = hex::decode(sig_hex.trim()).map_err(|_| Refusal::Malformed)?;
    mac(secret, parts).verify_slice(&sig).map_err(|_| Refusal::Mismatch)
}

/// GitHub `X-Hub-Signature-256`, and Jira (Cloud and DC) `X-Hub-Signature`:
/// `sha256=<hex HMAC-SHA256(secret, body)>`.
pub(crate) fn hub_signature(secret: &str, body: &[u8], header: Option<&str>) -> Result<(), Refusal> {
    let header = header.ok_or(Refusal::Missing)?;
    let hex = header.trim().strip_prefix("sha256=").ok_or(Refusal::Malformed)?;
    verify_hex(secret.as_bytes(), &[body], hex)
}

/// Slack: `X-Slack-Signature: v0=<hex HMAC-SHA256(secret, "v0:{ts}:{body}")>` with
/// `X-Slack-Request-Timestamp` within five minutes of `now`.
pub(crate) fn slack(
    secret: &str,
    body: &[u8],
    signature: Option<&str>,
    timestamp: Option<&str>,
    now: i64,
) -> Result<(), Refusal> {
    let (signature, timestamp) = (signature.ok_or(Refusal::Missing)?, timestamp.ok_or(Refusal::Missing)?);
    let ts: i64 = timestamp.trim().parse().map_err(|_| Refusal::Malformed)?;
    if (now - ts).abs() > 5 * 60 {
        return Err(Refusal::Stale);
    }
    let hex = signature.trim().strip_prefix("v0=").ok_or(Refusal::Malformed)?;
    verify_hex(secret.as_bytes(), &[b"v0:", timestamp.trim().as_bytes(), b":", body], hex)
}

/// GitLab's classic secret token, sent as is in `X-Gitlab-Token`: equal, in constant time.
pub(crate) fn gitlab_token(secret: &str, header: Option<&str>) -> Result<(), Refusal> {
    let given = header.ok_or(Refusal::Missing)?.as_bytes();
    let expected = secret.as_bytes();
    // Lengths differ: refuse, still after a full-length pass.
    let mut diff = u8::from(given.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= e ^ given.get(i).copied().unwrap_or(0);
    }
    if diff == 0 {
        Ok(())
    } else {
        Err(Refusal::Mismatch)
    }
}

/// GitLab's signing tokens (the Standard Webhooks scheme): `webhook-signature` holds one or
/// more space-separated `v1,<base64 HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")>`
/// (any may match: a key being rotated), the key is the base64 after `whsec_`, and the
/// timestamp must be within five minutes of `now`.
pub(crate) fn standard_webhooks(
    secret: &str,
    body: &[u8],
    id: Option<&str>,
    timestamp: Option<&str>,
    signatures: Option<&str>,
    now: i64,
) -> Result<(), Refusal> {
    use base64::Engine as _;
    let (id, timestamp, signatures) =
        (id.ok_or(Refusal::Missing)?, timestamp.ok_or(Refusal::Missing)?, signatures.ok_or(Refusal::Missing)?);
    let ts: i64 = timestamp.trim().parse().map_err(|_| Refusal::Malformed)?;
    if (now - ts).abs() > 5 * 60 {
        return Err(Refusal::Stale);
    }
    // A classic token where a signing token is expected can never match.
    let key = secret.strip_prefix("whsec_").ok_or(Refusal::Mismatch)?;
    let key = base64::engine::general_purpose::STANDARD.decode(key).map_err(|_| Refusal::Mismatch)?;
    let mac = mac(&key, &[id.as_bytes(), b".", timestamp.trim().as_bytes(), b".", body]);
    let mut seen = false;
    for sig in signatures.split_whitespace() {
        let Some(b64) = sig.strip_prefix("v1,") else { continue };
        seen = true;
        if let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64) {
            if mac.clone().verify_slice(&raw).is_ok() {
                return Ok(());
            }
        }
    }
    Err(if seen { Refusal::Mismatch } else { Refusal::Malformed })
}

/// Linear: `Linear-Signature: <hex HMAC-SHA256(secret, body)>` and the body's
/// `webhookTimestamp` (milliseconds) within a minute of `now_ms`.
pub(crate) fn linear(
    secret: &str,
    body: &[u8],
    signature: Option<&str>,
    webhook_timestamp_ms: Option<i64>,
    now_ms: i64,
) -> Result<(), Refusal> {
    let signature = signature.ok_or(Refusal::Missing)?;
    verify_hex(secret.as_bytes(), &[body], signature)?;
    let ts = webhook_timestamp_ms.ok_or(Refusal::Malformed)?;
    if (now_ms - ts).abs() > 60_000 {
        return Err(Refusal::Stale);
    }
    Ok(())
}

/// `sha256=<hex>` over `body`, as GitHub and Jira sign (tests and the bench sign with it).
pub fn hub_sign(secret: &str, body: &[u8]) -> String {
    format!("sha256={}", hex::encode(mac(secret.as_bytes(), &[body]).finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn githubs_published_vector() {
        // docs.github.com "Testing the webhook payload validation".
        let header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(hub_signature("It's a Secret to Everybody", b"Hello, World!", Some(header)), Ok(()));
        assert_eq!(hub_sign("It's a Secret to Everybody", b"Hello, World!"), header);
        assert_eq!(hub_signature("another secret", b"Hello, World!", Some(header)), Err(Refusal::Mismatch));
        assert_eq!(hub_signature("It's a Secret to Everybody", b"Hello, World?", Some(header)), Err(Refusal::Mismatch));
        assert_eq!(hub_signature("s", b"x", None), Err(Refusal::Missing));
        assert_eq!(hub_signature("s", b"x", Some("sha1=00")), Err(Refusal::Malformed));
        assert_eq!(hub_signature("s", b"x", Some("sha256=zz")), Err(Refusal::Malformed));
        assert_eq!(hub_signature("s", b"x", Some("sha256=00")), Err(Refusal::Mismatch));
    }

    #[test]
    fn slacks_published_vector() {
        // api.slack.com "Verifying requests from Slack", the worked example.
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let secret = "8f742231b10e8888abcd99yyyzzz85a5";
        let sig = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        assert_eq!(slack(secret, body, Some(sig), Some("1531420618"), 1_531_420_618 + 60), Ok(()));
        assert_eq!(slack(secret, body, Some(sig), Some("1531420618"), 1_531_420_618 + 301), Err(Refusal::Stale));
        assert_eq!(slack(secret, body, Some(sig), Some("1531420619"), 1_531_420_618), Err(Refusal::Mismatch));
        assert_eq!(slack(secret, body, None, Some("1"), 1), Err(Refusal::Missing));
        assert_eq!(slack(secret, body, Some(sig), Some("soon"), 1), Err(Refusal::Malformed));
    }

    #[test]
    fn gitlab_tokens_must_be_equal() {
        assert_eq!(gitlab_token("s3cret", Some("s3cret")), Ok(()));
        assert_eq!(gitlab_token("s3cret", Some("s3cre")), Err(Refusal::Mismatch));
        assert_eq!(gitlab_token("s3cret", Some("s3cret!")), Err(Refusal::Mismatch));
        assert_eq!(gitlab_token("s3cret", Some("")), Err(Refusal::Mismatch));
        assert_eq!(gitlab_token("s3cret", None), Err(Refusal::Missing));
    }

    #[test]
    fn the_standard_webhooks_vector() {
        // The Standard Webhooks specification's example (re-computed with Python's hmac).
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let id = Some("msg_p5jXN8AQM9LWM0D4loKWxJek");
        let sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let at = 1_614_265_330;
        assert_eq!(standard_webhooks(secret, body, id, Some("1614265330"), Some(sig), at), Ok(()));
        let rotated = format!("v1,AAAA {sig}");
        assert_eq!(standard_webhooks(secret, body, id, Some("1614265330"), Some(&rotated), at), Ok(()));
        assert_eq!(standard_webhooks(secret, body, id, Some("1614265330"), Some(sig), at + 301), Err(Refusal::Stale));
        assert_eq!(standard_webhooks(secret, b"{}", id, Some("1614265330"), Some(sig), at), Err(Refusal::Mismatch));
        assert_eq!(
            standard_webhooks("plain-token", body, id, Some("1614265330"), Some(sig), at),
            Err(Refusal::Mismatch)
        );
        assert_eq!(
            standard_webhooks(secret, body, id, Some("1614265330"), Some("v2,xyz"), at),
            Err(Refusal::Malformed)
        );
        assert_eq!(standard_webhooks(secret, body, None, Some("1614265330"), Some(sig), at), Err(Refusal::Missing));
    }

    #[test]
    fn linear_signature_and_its_minute() {
        // Computed with Python's hmac (Linear publishes no vector).
        let body = br#"{"action":"create","type":"Comment","webhookTimestamp":1700000000000}"#;
        let sig = "09d1563eee21c7b1516176e5efca451fcf7be66398d7a7499a510d4a8c2e2384";
        let ts = Some(1_700_000_000_000);
        assert_eq!(linear("linear-secret", body, Some(sig), ts, 1_700_000_030_000), Ok(()));
        assert_eq!(linear("linear-secret", body, Some(sig), ts, 1_700_000_061_000), Err(Refusal::Stale));
        assert_eq!(linear("other", body, Some(sig), ts, 1_700_000_000_000), Err(Refusal::Mismatch));
        assert_eq!(linear("linear-secret", body, Some(sig), None, 1_700_000_000_000), Err(Refusal::Malformed));
    }
}
