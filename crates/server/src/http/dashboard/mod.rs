//! The web dashboard: one self-contained page, and the JSON API behind it.

use axum::response::Html;
use axum::routing::get;
use axum::Router;

use super::HttpState;

/// The dashboard's routes, to be nested under `/ui`.
pub fn routes(state: HttpState) -> Router {
    Router::new()
        .route("/", get(|| async { Html("<!doctype html><title>Concord</title><p>Concord dashboard</p>") }))
        .with_state(state)
}
