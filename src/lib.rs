//! xbackend-controller: validates Gateway API XBackends and reports their status
//! per Gateway ancestor.

pub mod addresses;
pub mod analyze;
pub mod api;
pub mod cli;
pub mod conditions;
pub mod decode;
pub mod dns;
pub mod egress;
pub mod fit;
pub mod gatewayclass;
pub mod guardrails;
pub mod index;
pub mod judge;
pub mod model;
pub mod names;
pub mod object;
pub mod policy;
pub mod reach;
pub mod refs;
pub mod routecel;
pub mod runtime;
pub mod status;
#[cfg(test)]
pub mod testing;
pub mod tls;
pub mod validate;
pub mod verdict;
