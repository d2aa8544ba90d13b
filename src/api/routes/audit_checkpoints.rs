//! `GET /v1/audit/checkpoints?from=N&limit=M` (officer): the audit log's published checkpoint
//! heads ([`crate::audit::anchor::Head`]), oldest first, a page at a time. The answer, saved as is,
//! is an anchor file for `hcert-signer audit verify --anchor`.
//!
//! Officers only, like the log itself: the heads carry no personal data, but their sequence
//! numbers and times trace the appliance's whole activity (how much was signed, when), which is
//! not an issuer's business. Officers fetch and keep them; the same heads also go to the journal
//! as they are made, for log shipping to a place the appliance's administrators cannot edit.

use std::sync::Arc;

use http::{Response, StatusCode};

use crate::api::{ApiError, AppState, Body, json};

/// Heads per page when `limit` is not given, and the most one page holds.
pub const MAX_LIMIT: usize = 1000;

/// One page of heads from checkpoint sequence number `from` on.
pub async fn handle(state: &Arc<AppState>, query: Option<&str>) -> Response<Body> {
    let (from, limit) = match parse_query(query.unwrap_or("")) {
        Ok(q) => q,
        Err(m) => return ApiError::new(StatusCode::BAD_REQUEST, "bad_query", m).into_response(),
    };
    let st = state.clone();
    // One more than asked tells whether another page follows.
    let page = match super::blocking(move || st.store.audit_checkpoints(from, limit + 1)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return super::batches_create::store_error(e).into_response(),
        Err(e) => return e.into_response(),
    };
    let next = page.get(limit).map(|(seq, _)| *seq);
    let mut heads = Vec::with_capacity(limit);
    for (seq, stored) in page.iter().take(limit) {
        match state.audit.head(stored) {
            Some(h) => heads.push(h),
            None => {
                return ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("audit entry {seq} is indexed as a checkpoint but is not one"),
                )
                .into_response();
            }
        }
    }
    json(StatusCode::OK, &serde_json::json!({ "checkpoints": heads, "next": next }))
}

/// `from` (default 1) and `limit` (default and at most [`MAX_LIMIT`]).
fn parse_query(query: &str) -> Result<(u64, usize), String> {
    let (mut from, mut limit) = (1u64, MAX_LIMIT);
    for p in query.split('&').filter(|p| !p.is_empty()) {
        match p.split_once('=') {
            Some(("from", v)) => from = v.parse().map_err(|_| "from must be a sequence number".to_owned())?,
            Some(("limit", v)) => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| format!("limit must be a number from 1 to {MAX_LIMIT}"))?;
            }
            _ => return Err("the only query parameters are from and limit".into()),
        }
    }
    Ok((from, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_bounds() {
        assert_eq!(parse_query(""), Ok((1, MAX_LIMIT)));
        assert_eq!(parse_query("from=7&limit=2"), Ok((7, 2)));
        assert!(parse_query("limit=0").unwrap_err().contains("limit"));
        assert!(parse_query("limit=1001").unwrap_err().contains("1 to 1000"));
        assert!(parse_query("from=x").unwrap_err().contains("from"));
        assert!(parse_query("after=3").unwrap_err().contains("only"));
    }
}
