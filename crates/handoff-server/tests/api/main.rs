//! HTTP-level tests of the whole service: a real server on 127.0.0.1:0, a real HTTP client, assertions on what a
//! user sees (status, headers, bodies, bytes and hashes).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin_audit;
mod api_tokens;
mod auth;
mod backends;
mod cors;
mod direct;
mod files;
mod helpers;
mod mass_assignment;
mod oidc;
mod oidc_provider;
mod openapi;
mod quotas;
mod ranges;
mod retention;
mod shares;
mod teams;
mod tokens;
mod tus;
mod tus_links;
mod upload_links;
