//! The supervisor's HTTP API on its `supervisor` port (JSON):
//! - `POST /v1/standby` `{"node": NAME}` or `{"site": SITE}`, optional `"reason"`, `"requested_by"`,
//!   `"force"` (manual failover: needs `Authorization: Bearer <fabric.operator_token>`):
//!   `200 {"nodes": [{"node", "state": "serving"|"alive"|"cut-off"|"failed", "pid"?, "since_ms"?, "ready_ms"?, "error"?}]}`;
//! - `GET /v1/standby`: `{"standbys": [{"node", "role", "site", "pid", "container"?, "since_ms", "reason", "requested_by"}]}`;
//! - `DELETE /v1/standby/{node}`: retire (`Authorization: Bearer <fabric.operator_token>`: 401
//!   without, 403 wrong; the launcher's fail-back hook sends the topology's token); `200 {"node",
//!   "state": "retired"}`, 404 if none. A fabric without an operator token lets anyone retire (there
//!   is nothing to check, and fail-back must work).
//! - `POST /v1/notices` `{"event": "start"|"end", "user": ADDRESS}` (operator token, as a forced
//!   failover): queues the notice of one mailbox moved by `fabric failover/failback --mailbox` to
//!   its user, behind the site notices already queued; `202 {"queued": true}`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use serde::Deserialize;
use serde_json::json;
use topology::{Node, Topology};

use crate::continuity::Event;
use crate::standby::{Manager, Request};

/// Unknown fields are ignored: relays may say more (queue depth, since when) than this reads.
#[derive(Debug, Deserialize)]
struct StandbyRequest {
    node: Option<String>,
    site: Option<String>,
    reason: Option<String>,
    requested_by: Option<String>,
    #[serde(default)]
    force: bool,
}

pub fn router(manager: Arc<Manager>) -> Router {
    Router::new()
        .route("/v1/standby", post(invoke).get(list))
        .route("/v1/standby/{node}", delete(retire))
        .route("/v1/notices", post(notices))
        .fallback(|| async {
            error(StatusCode::NOT_FOUND, "not_found", "no such endpoint").into_response()
        })
        .with_state(manager)
}

/// An error answer: `{"error": CODE, "message": TEXT}` with its status.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({"error": self.code, "message": self.message})),
        )
            .into_response()
    }
}

fn error(status: StatusCode, code: &'static str, message: &str) -> ApiError {
    ApiError {
        status,
        code,
        message: message.to_string(),
    }
}

/// The operator's token must come with a forced failover and a retirement: 401 without one, 403 with
/// a wrong one (or, for a forced failover, when the fabric has none).
fn authorize(headers: &HeaderMap, token: Option<&str>) -> Result<(), ApiError> {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this needs Authorization: Bearer <operator_token> (fabric failover/failback --token)",
        ));
    };
    match token {
        Some(token) if constant_time_eq(given.trim().as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "wrong operator token",
        )),
        None => Err(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the fabric has no operator_token: manual failover is disabled",
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The nodes a request names, in phases to start one after the other, or the 400/404 to answer.
fn targets(topology: &Topology, request: &StandbyRequest) -> Result<Vec<Vec<Node>>, ApiError> {
    match (&request.node, &request.site) {
        (Some(name), None) => {
            let node = topology.node(name).ok_or_else(|| {
                error(
                    StatusCode::NOT_FOUND,
                    "unknown_node",
                    &format!("no node named {name:?} in the topology"),
                )
            })?;
            if !node.role().has_standby() {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "no_standby_for_role",
                    &format!(
                        "{name} is a {} node; standbys exist for stores, transfer, inet-mx, intranet, redirectors and routers",
                        node.role
                    ),
                ));
            }
            Ok(vec![vec![node.clone()]])
        }
        (None, Some(site)) => {
            if !topology.sites.iter().any(|s| &s.name == site) {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "unknown_site",
                    &format!("no site named {site:?} in the topology"),
                ));
            }
            Ok(topology
                .standby_phases(site)
                .into_iter()
                .map(|phase| phase.into_iter().cloned().collect())
                .collect())
        }
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "give exactly one of \"node\" and \"site\"",
        )),
    }
}

async fn invoke(State(manager): State<Arc<Manager>>, headers: HeaderMap, body: Bytes) -> Response {
    let request: StandbyRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(StatusCode::BAD_REQUEST, "bad_json", &e.to_string()).into_response();
        }
    };
    let phases = match targets(manager.topology(), &request) {
        Ok(phases) => phases,
        Err(e) => return e.into_response(),
    };
    if request.force
        && let Err(response) = authorize(
            &headers,
            manager.topology().fabric.operator_token.as_deref(),
        )
    {
        return response.into_response();
    }
    let ask = Request {
        force: request.force,
        reason: request.reason,
        requested_by: request.requested_by,
    };
    // One task for all the phases: a client that hangs up does not abandon a site half started.
    // Within a phase the nodes come up in parallel; a phase starts once the one before is settled
    // (a standby store has rebuilt before the mail servers that use it start).
    let work = tokio::spawn(async move {
        let mut outcomes = Vec::new();
        for phase in phases {
            let tasks: Vec<_> = phase
                .into_iter()
                .map(|node| {
                    let (manager, ask) = (manager.clone(), ask.clone());
                    tokio::spawn(async move { manager.invoke(&node, &ask).await })
                })
                .collect();
            for task in tasks {
                match task.await {
                    Ok(outcome) => outcomes.push(json!(outcome)),
                    Err(e) => outcomes.push(json!({"state": "failed", "error": e.to_string()})),
                }
            }
        }
        outcomes
    });
    let outcomes = work.await.unwrap_or_default();
    axum::Json(json!({"nodes": outcomes})).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoticeRequest {
    event: String,
    user: String,
}

async fn notices(State(manager): State<Arc<Manager>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(refused) = authorize(
        &headers,
        manager.topology().fabric.operator_token.as_deref(),
    ) {
        return refused.into_response();
    }
    let request: NoticeRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(StatusCode::BAD_REQUEST, "bad_json", &e.to_string()).into_response();
        }
    };
    let event = match request.event.as_str() {
        "start" => Event::Start,
        "end" => Event::End,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "event must be \"start\" or \"end\"",
            )
            .into_response();
        }
    };
    let user = request.user.trim().to_ascii_lowercase();
    let Some(site) = user
        .rsplit_once('@')
        .and_then(|(_, domain)| manager.topology().home_site(domain))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("{user:?} is not in a customer domain"),
        )
        .into_response();
    };
    let site = site.to_string();
    manager.continuity().announce_mailbox(event, &site, &user);
    (StatusCode::ACCEPTED, axum::Json(json!({"queued": true}))).into_response()
}

async fn list(State(manager): State<Arc<Manager>>) -> Response {
    axum::Json(json!({"standbys": manager.list()})).into_response()
}

async fn retire(
    State(manager): State<Arc<Manager>>,
    headers: HeaderMap,
    Path(node): Path<String>,
) -> Response {
    let token = manager.topology().fabric.operator_token.as_deref();
    if token.is_some()
        && let Err(refused) = authorize(&headers, token)
    {
        tracing::warn!(standby_for = %node, status = refused.status.as_u16(), "retirement refused");
        return refused.into_response();
    }
    match manager.retire(&node, "asked over the API", true).await {
        Some(_) => axum::Json(json!({"node": node, "state": "retired"})).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "no_standby",
            &format!("this supervisor runs no standby for {node:?}"),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn request(node: Option<&str>, site: Option<&str>) -> StandbyRequest {
        StandbyRequest {
            node: node.map(str::to_string),
            site: site.map(str::to_string),
            reason: None,
            requested_by: None,
            force: false,
        }
    }

    #[test]
    fn site_targets_come_in_phases_and_only_serving_roles_get_standbys() {
        let file =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../topology/two-site.toml");
        let t = Topology::load(&file).unwrap_or_else(|e| panic!("{e}"));
        let names = |r: Result<Vec<Vec<Node>>, ApiError>| {
            r.map(|phases| {
                phases
                    .into_iter()
                    .map(|p| p.into_iter().map(|n| n.name).collect::<Vec<_>>())
                    .collect::<Vec<_>>()
            })
            .map_err(|e| e.status)
        };
        let west = names(targets(&t, &request(None, Some("west")))).expect("west has targets");
        assert_eq!(
            west[0],
            vec!["store-w1".to_string(), "store-w2".to_string()]
        );
        for server in [
            "transfer-w1",
            "inet-mx-w1",
            "inet-mx-w2",
            "intranet-w1",
            "intranet-w2",
        ] {
            assert!(
                west[1].contains(&server.to_string()),
                "{server} in {west:?}"
            );
        }
        assert!(
            west[2].iter().all(|n| n.starts_with("redirector-")),
            "{west:?}"
        );
        assert!(west[3].iter().all(|n| n.starts_with("router-")), "{west:?}");
        let everyone: Vec<&String> = west.iter().flatten().collect();
        assert!(
            everyone.iter().all(|n| !n.starts_with("dns")
                && !n.starts_with("relay")
                && !n.starts_with("supervisor")
                && t.node(n).is_some_and(|node| node.site == "west")),
            "{everyone:?}"
        );
        assert_eq!(
            names(targets(&t, &request(Some("intranet-e1"), None))),
            Ok(vec![vec!["intranet-e1".to_string()]])
        );
        assert_eq!(
            names(targets(&t, &request(Some("store-w1"), None))),
            Ok(vec![vec!["store-w1".to_string()]])
        );
        let refused = |r: Result<Vec<Vec<Node>>, ApiError>| r.err().map(|e| e.status);
        assert_eq!(
            refused(targets(&t, &request(Some("supervisor-e"), None))),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            refused(targets(&t, &request(Some("relay-e1"), None))),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            refused(targets(&t, &request(Some("nope"), None))),
            Some(StatusCode::NOT_FOUND)
        );
        assert_eq!(
            refused(targets(&t, &request(None, Some("north")))),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            refused(targets(&t, &request(None, None))),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            refused(targets(&t, &request(Some("intranet-w1"), Some("west")))),
            Some(StatusCode::BAD_REQUEST)
        );
    }

    #[test]
    fn token_rules() {
        let mut headers = HeaderMap::new();
        let status = |r: Result<(), ApiError>| r.err().map(|r| r.status);
        assert_eq!(
            status(authorize(&headers, Some("t"))),
            Some(StatusCode::UNAUTHORIZED)
        );
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(
            status(authorize(&headers, Some("t"))),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            status(authorize(&headers, None)),
            Some(StatusCode::FORBIDDEN)
        );
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        assert_eq!(status(authorize(&headers, Some("t"))), None);
    }
}
