//! The insider suite: every way around a guarantee that someone close to the appliance could try
//! (an administrator who edits config.toml or the token, one officer acting alone, someone with
//! a copy of the disk, an issuer with stolen credentials, a client behind the same balancer),
//! each driven through the real daemon, CLI and files, and each refused with a specific error
//! while nothing changes. `SECURITY.md` maps each guarantee to its test here.

mod daemon;

#[path = "insider/audit_anchor.rs"]
mod audit_anchor;
#[path = "insider/dsc_chain.rs"]
mod dsc_chain;
#[path = "insider/dual_control.rs"]
mod dual_control;
#[path = "insider/idempotency.rs"]
mod idempotency;
#[path = "insider/proxy.rs"]
mod proxy;
#[path = "insider/records.rs"]
mod records;
#[path = "insider/shredding.rs"]
mod shredding;
