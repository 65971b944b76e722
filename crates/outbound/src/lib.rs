//! Where a user-chosen URL may lead (an `llm_base_url`, a git provider's host). In SaaS mode
//! the server would otherwise call any address with the user's credentials, including its own
//! loopback and private network (and show the answer's error text): such destinations are
//! refused unless the operator allows them by name. Literal IPs are checked when the URL is
//! read; names are checked when they resolve, by the HTTP client's resolver, so a name cannot
//! be re-pointed after the check.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

/// Which destinations a user's URL may reach.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Loopback, private, link-local and other non-public addresses are refused.
    pub public_only: bool,
    /// Host names or IPs allowed even when they are not public (an internal LLM gateway).
    pub allowed_hosts: Vec<String>,
    /// What the URL is, for messages: "the LLM base URL".
    pub subject: &'static str,
    /// The setting an operator uses to allow a host, for messages.
    pub allow_setting: &'static str,
}

impl Policy {
    fn allows_name(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }

    /// Checks a URL's host when it is an IP literal (names are checked when resolved).
    pub fn check_url(&self, url: &str) -> Result<(), String> {
        if !self.public_only {
            return Ok(());
        }
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("{} `{url}` is not a URL: {e}", self.subject))?;
        let host = parsed.host_str().unwrap_or("");
        if self.allows_name(host) {
            return Ok(());
        }
        let ip = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>();
        match ip {
            Ok(ip) if !is_public(ip) => Err(self.refusal(host)),
            _ if host.eq_ignore_ascii_case("localhost") || host.ends_with(".localhost") => Err(self.refusal(host)),
            _ => Ok(()),
        }
    }

    fn refusal(&self, host: &str) -> String {
        format!(
            "{} names `{host}`, a local or private address, which this server does not call \
             (an operator can allow it with {})",
            self.subject, self.allow_setting
        )
    }
}

/// Whether an address is on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)) // documentation
}

/// A resolver that gives only public addresses (or any, for allowed names).
struct PublicOnly(Policy);

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let name = name.as_str().to_owned();
        let allowed = self.0.allows_name(&name);
        let policy = self.0.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = addrs.into_iter().filter(|a| allowed || is_public(a.ip())).collect();
            if kept.is_empty() {
                return Err(policy.refusal(&name).into());
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// How many redirects a client follows.
const MAX_REDIRECTS: usize = 5;

/// An HTTP client for user-chosen URLs under `policy`. Every redirect is checked as the first
/// URL was (a public server may answer 307 to `http://127.0.0.1/...`, which the resolver never
/// sees: a literal address is not resolved).
pub fn client(policy: &Policy, builder: reqwest::ClientBuilder) -> reqwest::Result<reqwest::Client> {
    let builder = if policy.public_only {
        let checker = policy.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            match checker.check_url(attempt.url().as_str()) {
                Ok(()) => attempt.follow(),
                Err(why) => attempt.error(format!("refused redirect: {why}")),
            }
        });
        builder.dns_resolver(Arc::new(PublicOnly(policy.clone()))).redirect(redirects)
    } else {
        builder
    };
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_local_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn literal_private_urls_are_refused_unless_allowed() {
        let policy = Policy {
            public_only: true,
            allowed_hosts: vec!["10.0.0.5".into()],
            subject: "the LLM base URL",
            allow_setting: "llm_private_hosts_allowed",
        };
        for url in
            ["http://127.0.0.1:8080/v1", "http://[::1]/v1", "http://169.254.169.254/latest", "http://localhost:4000"]
        {
            let refused = policy.check_url(url).unwrap_err();
            assert!(refused.starts_with("the LLM base URL names") && refused.contains("llm_private_hosts_allowed"));
        }
        assert!(policy.check_url("http://10.0.0.5:4000/v1").is_ok());
        assert!(policy.check_url("https://api.openai.com/v1").is_ok());
        assert!(Policy::default().check_url("http://127.0.0.1/v1").is_ok(), "OSS: anything");
    }

    /// A server on an allowed name answers 307 to a loopback address: the redirect is
    /// refused, not followed.
    #[tokio::test]
    async fn redirects_are_checked_at_every_hop() {
        let secret = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let secret_port = secret.local_addr().unwrap().port();
        let redirector = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = redirector.local_addr().unwrap().port();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for stream in redirector.incoming().take(2) {
                let mut stream = stream.unwrap();
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let answer = format!(
                    "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:{secret_port}/internal\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        let policy = Policy {
            public_only: true,
            allowed_hosts: vec!["localhost".to_owned()],
            subject: "the LLM base URL",
            allow_setting: "llm_private_hosts_allowed",
        };
        let client = client(&policy, reqwest::Client::builder()).unwrap();
        let err = client.get(format!("http://localhost:{port}/v1/chat/completions")).send().await.unwrap_err();
        assert!(format!("{err:?}").contains("refused redirect"), "{err:?}");
        secret.set_nonblocking(true).unwrap();
        assert!(secret.accept().is_err(), "the loopback address was reached");
    }
}
