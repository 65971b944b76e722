//! The agent loop shared by conversation managers (docs/decisions.md §6): an OpenAI-compatible streaming
//! chat client ([`llm`]) and OpenHands-shaped events ([`events`]). It has no state of its own;
//! a manager drives it one turn at a time.

pub mod clients;
pub mod config;
pub mod events;
pub mod llm;
pub mod session;
