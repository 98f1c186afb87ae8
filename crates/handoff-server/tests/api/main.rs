//! HTTP-level tests of the whole service: a real server on 127.0.0.1:0, a real HTTP client, assertions on what a
//! user sees (status, headers, bodies, bytes and hashes).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod backends;
mod files;
mod helpers;
mod openapi;
mod ranges;
mod tokens;
mod tus;
