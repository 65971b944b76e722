//! The agent loop shared by conversation managers (docs/decisions.md §6): an OpenAI-compatible streaming
//! chat client ([`llm`]), OpenHands-shaped events ([`events`]), and, with a runtime configured,
//! the agent's tools ([`tools`]) acting in a workspace per conversation through the deployment's
//! runtime extension point. It has no state of its own;
//! a manager drives it one turn at a time.

pub mod clients;
pub mod config;
pub mod events;
pub mod llm;
pub mod session;
pub mod tools;
pub mod toolspec;
