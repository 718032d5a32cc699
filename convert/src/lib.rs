//! Disk image formats, sans-IO: what a source's first bytes hold ([`detect`]) and the
//! decompressors a raw disk may arrive in ([`wrappers`]). It never opens a file or a
//! connection, and never a path named inside an image: the importer's format layer
//! hands it bytes and readers.
//!
//! Random-access image readers ([`qcow2`], [`vmdk`], [`vhd`], [`vhdx`], [`vdi`]) share one
//! shape, [`image`]: an opener that asks for the header and directories it needs, then a
//! map from guest units to input offsets, zeroes, holes or compressed units.

#![forbid(unsafe_code)]
#![warn(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
#![cfg_attr(test, allow(clippy::cast_possible_truncation, clippy::cast_sign_loss))]

pub mod detect;
pub mod image;
pub mod qcow2;
pub mod tar;
pub mod vdi;
pub mod vhd;
pub mod vhdx;
pub mod vmdk;
pub mod wrappers;

pub use detect::{Format, HEAD_BYTES, TAIL_BYTES, detect};
