//! A repository to clone into a new workspace: its URL without credentials, and the user's
//! token as a header sent with the clone only (never in the repository's config, its remote
//! URL or a log).

/// A repository to clone into a new workspace.
#[derive(Clone, Debug, PartialEq)]
pub struct Clone {
    /// Without credentials: `https://github.com/owner/repo.git`.
    pub url: String,
    /// `Authorization: Basic …`, sent with the clone only.
    pub auth_header: Option<String>,
    pub branch: Option<String>,
}

impl Clone {
    /// The clone of `repository` (`owner/repo`) at `provider` (`github`, `gitlab`,
    /// `bitbucket`) with the user's token there; `host` is the token's (default the
    /// provider's public one); hosts in `plain_http` are reached without TLS.
    pub fn of(
        repository: &str,
        provider: &str,
        token: Option<&str>,
        host: Option<&str>,
        branch: Option<&str>,
        plain_http: &[String],
    ) -> Clone {
        use base64::Engine as _;
        let host = host.filter(|h| !h.is_empty()).unwrap_or(match provider {
            "gitlab" => "gitlab.com",
            "bitbucket" => "bitbucket.org",
            _ => "github.com",
        });
        let scheme = if plain_http.iter().any(|h| h == host) { "http" } else { "https" };
        let user = match provider {
            "gitlab" => "oauth2",
            "bitbucket" => "x-token-auth",
            _ => "x-access-token",
        };
        let auth_header = token.filter(|t| !t.is_empty()).map(|t| {
            format!("Authorization: Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{t}")))
        });
        Clone {
            url: format!("{scheme}://{host}/{}.git", repository.trim_end_matches(".git")),
            auth_header,
            branch: branch.filter(|b| !b.is_empty()).map(str::to_owned),
        }
    }
}
