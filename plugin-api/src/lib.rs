//! The oh-host plugin contract.
//!
//! Everything that crosses between the host and a plugin library is defined here, and nothing
//! else: stable-ABI (`abi_stable`) types for identifiers, errors, contexts and HTTP frames; one
//! `#[sabi_trait]` per extension point; the root module ([`PluginLib`]) every library exports;
//! and the serde data models ([`models`]) whose JSON text crosses the boundary, so that a field
//! added to a document later does not break a plugin built earlier.
//!
//! Plugin authors do not implement these traits by hand: the `plugin-sdk` crate adapts ordinary
//! `async fn` Rust to them and exports the root module.
//!
//! Compatibility (`docs/plugin-api.md`): a library built against 1.k loads in every host 1.m
//! with m >= k. The host checks [`ApiInfo::major`]/[`ApiInfo::minor`] (same major, the
//! library's minor not above its own) and abi_stable checks the layout of every type reachable
//! from [`PluginLib`]. A minor only appends: fields to the prefix types ([`PluginLib`],
//! [`HostApi`]), methods with a default body to the traits, constants to the open codes
//! ([`ErrorCode`], [`ExtensionPoint`], [`AppMode`], [`AuthType`]), optional fields to the JSON
//! documents. `plugin-api/releases.toml` lists the released contracts, and a test loads a
//! library built from each into today's host.

// abi_stable's derives and `#[sabi_trait]` expand to unsafe impls; this crate writes none itself.
#![allow(unsafe_code)]
#![allow(non_camel_case_types)]

mod context;
mod error;
mod ext;
pub mod host_calls;
pub mod models;
mod root;
pub mod v1_0;

pub use context::{AppMode, CallContext, ExtensionPoint, ImplementationInfo};
pub use error::{ErrorCode, PResult, PluginError};
pub use ext::*;
pub use root::{ApiInfo, HostApi, HostApi_Ref, Label, LogLevel, PluginLib, PluginLib_Ref};

/// Re-exports so that plugins and the host use the very same versions.
pub use abi_stable;
pub use async_ffi;
pub use async_ffi::FfiFuture;

/// Major version of this contract. A library built against another major is refused.
pub const API_MAJOR: u32 = 1;
/// Minor version of this contract. A library built against a higher minor than the host's is
/// refused (it may call what this host lacks); a lower one loads.
pub const API_MINOR: u32 = 2;
/// First field of [`ApiInfo`]: tells an oh-host plugin apart from any other abi_stable library.
pub const API_MAGIC: u64 = 0x6f68_2d68_6f73_7401; // "oh-host" + 1
