//! The boundary around the agent's workspace, shared by the host (its workspace routes) and
//! the conversation managers (the agent's tools): `fs` reaches a workspace's files without
//! following a link out, `bwrap` is the sandbox a command runs in, `cgroup` bounds a
//! command's processes and memory together, `git` runs git on a workspace without running
//! anything the workspace controls, `reaper` puts a process in a PID namespace that dies with
//! the host, and `repo` says how a repository is cloned with a token kept out of it.
//! `docs/sandbox.md` is the threat model these implement.

pub mod bwrap;
pub mod cgroup;
pub mod fs;
pub mod git;
pub mod reaper;
pub mod repo;
