//! What the importer (`ferry import`) and a controller share, in one place: CDI's
//! environment names and the parsers of their values ([`env`]), the termination message
//! ([`termination`]), the round marker and the other files a target carries ([`round`]),
//! metric names and phases ([`metrics`]), exit statuses ([`exit`]).
//!
//! No I/O and no Kubernetes types: the importer reads and writes these, a controller
//! builds pods from them and reads them back.

#![forbid(unsafe_code)]
#![warn(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
#![cfg_attr(test, allow(clippy::cast_possible_truncation, clippy::cast_sign_loss))]

pub mod env;
pub mod exit;
pub mod metrics;
pub mod round;
pub mod termination;
pub mod upload;
