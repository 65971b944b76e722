//! End-to-end tests: one binary, one module per area (matklad's "one integration test crate").

mod agent;
mod billing;
mod browser;
mod cli;
mod cluster;
mod conversations;
mod failures;
mod feedback;
mod git_providers;
mod hardening;
mod http;
mod hygiene;
mod integrations;
mod newcomer;
mod observability;
mod routes;
mod saas_auth;
mod sandbox;
mod shapes;
mod sso;
mod stores;
mod surfaces;
mod tenancy;
mod token_auth;
mod web_client;
