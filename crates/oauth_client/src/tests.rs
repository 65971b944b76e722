//! Against a server that answers each request with one canned HTTP answer, as the providers
//! do: what the client sends, and how each kind of answer is classified.

use super::*;
use std::sync::{Arc, Mutex};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// Serves `status` and `body` to every request; the requests' bodies are kept.
async fn server(status: u16, body: &'static str) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then as many bytes as Content-Length says.
            loop {
                let n = socket.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length || n == 0 {
                        kept.lock().unwrap().push(text[end + 4..].to_owned());
                        break;
                    }
                }
            }
            let answer = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(answer.as_bytes()).await.unwrap();
        }
    });
    (url, seen)
}

fn provider(token_url: &str) -> Provider<'_> {
    Provider {
        label: "Test IdP",
        client_id: "app",
        client_secret: "s3cret",
        authorize_url: "https://idp.test/authorize",
        token_url,
    }
}

#[test]
fn the_authorization_url_carries_the_flow_and_the_pkce_challenge() {
    let verifier = pkce_verifier();
    let url = provider("https://idp.test/token")
        .authorize_url("https://app.test/callback", "st4te", Some(&verifier), &[("scope", "openid email")])
        .unwrap();
    let url = reqwest::Url::parse(&url).unwrap();
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], "app");
    assert_eq!(q["redirect_uri"], "https://app.test/callback");
    assert_eq!(q["state"], "st4te");
    assert_eq!(q["scope"], "openid email");
    assert_eq!(q["code_challenge_method"], "S256");
    let expected = PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(verifier));
    assert_eq!(&q["code_challenge"], expected.as_str());
}

#[tokio::test]
async fn a_code_is_exchanged_with_the_client_in_the_body_and_the_answer_kept_whole() {
    let (url, seen) = server(
        200,
        r#"{"ok":true,"access_token":"xoxb-1","token_type":"bot","team":{"id":"T1"},"refresh_token":"r1","expires_in":60}"#,
    )
    .await;
    let token_url = format!("{url}/token");
    let tokens = provider(&token_url)
        .exchange_code(&reqwest::Client::new(), "c0de", "https://app.test/cb", Some("v3rifier"))
        .await
        .unwrap();
    assert_eq!(tokens.access(), "xoxb-1");
    assert_eq!(tokens.refresh(), Some("r1"));
    assert_eq!(tokens.kind(), "bot");
    assert_eq!(tokens.expires_in(), Some(Duration::from_secs(60)));
    assert_eq!(tokens.field("team")["id"], "T1");
    let body = seen.lock().unwrap()[0].clone();
    let form: std::collections::HashMap<_, _> =
        reqwest::Url::parse(&format!("http://x/?{body}")).unwrap().query_pairs().into_owned().collect();
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["code"], "c0de");
    assert_eq!(form["redirect_uri"], "https://app.test/cb");
    assert_eq!(form["code_verifier"], "v3rifier");
    assert_eq!(form["client_id"], "app");
    assert_eq!(form["client_secret"], "s3cret");
}

#[tokio::test]
async fn a_missing_token_type_is_a_bearer_token() {
    let (url, _) = server(200, r#"{"access_token":"a"}"#).await;
    let token_url = format!("{url}/token");
    let tokens = provider(&token_url).refresh(&reqwest::Client::new(), "r").await.unwrap();
    assert_eq!((tokens.access(), tokens.kind().as_str(), tokens.refresh()), ("a", "bearer", None));
}

#[tokio::test]
async fn each_kind_of_failure_is_told_apart() {
    let http = reqwest::Client::new();
    let (url, _) = server(400, r#"{"error":"invalid_grant","error_description":"used"}"#).await;
    let token_url = format!("{url}/token");
    let e = provider(&token_url).refresh(&http, "r").await.unwrap_err();
    assert!(e.is_invalid_grant(), "{e:?}");
    assert_eq!(e.to_string(), "Test IdP refused: invalid_grant (used)");

    // Slack: 200 with ok false.
    let (url, _) = server(200, r#"{"ok":false,"error":"invalid_code"}"#).await;
    let token_url = format!("{url}/token");
    let e = provider(&token_url).exchange_code(&http, "c", "https://a.test/cb", None).await.unwrap_err();
    assert_eq!(e, Error::Refused { label: "Test IdP".into(), error: "invalid_code".into(), description: None });

    let (url, _) = server(502, "<html>bad gateway</html>").await;
    let token_url = format!("{url}/token");
    let e = provider(&token_url).client_credentials(&http).await.unwrap_err();
    assert!(matches!(e, Error::Unavailable(ref m) if m.contains("bad gateway")), "{e:?}");

    let (url, _) = server(503, r#"{"error":"temporarily_unavailable"}"#).await;
    let token_url = format!("{url}/token");
    let e = provider(&token_url).client_credentials(&http).await.unwrap_err();
    assert!(matches!(e, Error::Unavailable(_)), "{e:?}");

    let e = provider("http://127.0.0.1:9/token").client_credentials(&http).await.unwrap_err();
    assert!(matches!(e, Error::Unavailable(ref m) if m.starts_with("cannot reach Test IdP")), "{e:?}");
}

#[tokio::test]
async fn a_revocation_needs_tls() {
    // RFC 7009 section 2: the revocation endpoint MUST use TLS; the crate refuses plain HTTP.
    let e = provider("https://idp.test/token")
        .revoke(&reqwest::Client::new(), "http://127.0.0.1:9/revoke", "r-1", false)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Malformed(ref m) if m.contains("HTTPS")), "{e:?}");
}
