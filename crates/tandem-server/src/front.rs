//! The service in front of the router: the hottest routes, a plain
//! `GET /v1/predict/{entity_id}` and a KServe `POST
//! /v2/models/{model}/infer` with a declared length within the body limit,
//! are answered here without the router's per-request work (route table
//! walk, matched-path and parameter extensions, the boxed method router and
//! middleware services cloned for each call); everything else, including
//! any such request whose path needs percent-decoding or whose body comes
//! chunked, goes to the router. Both take the same handlers, the same
//! query parsing and the same metrics and tracing
//! ([`crate::metrics::observe`]), so the answers are the same.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use tower_service::Service;

use crate::AppState;

/// The route templates answered here, as the router names them.
const ENTITY_ROUTE: &str = "/v1/predict/{entity_id}";
const INFER_ROUTE: &str = "/v2/models/{model}/infer";

/// The router with the hottest routes answered in front of it.
#[derive(Clone)]
pub struct Front {
    router: Router,
    state: AppState,
    body_limit: usize,
}

impl Front {
    /// `router` must route [`ENTITY_ROUTE`] to [`crate::native::get_one`]
    /// and [`INFER_ROUTE`] to [`crate::kserve::infer`] with `state` and
    /// `body_limit` (as [`crate::router`] does), so that both ways answer
    /// alike.
    pub(crate) fn new(router: Router, state: AppState, body_limit: usize) -> Front {
        Front {
            router,
            state,
            body_limit,
        }
    }
}

/// A request this service answers itself.
#[derive(Debug, PartialEq)]
enum Hot<'a> {
    /// `GET /v1/predict/{entity_id}`.
    Entity(&'a str),
    /// `POST /v2/models/{model}/infer`.
    Infer(&'a str),
}

/// [`Hot`] with its path segment owned, for the answer's future.
enum Owned {
    Entity(String),
    Infer(String),
}

/// Which hot route `req` is, if its path segment needs no decoding and, for
/// an infer, its body's declared length is within `body_limit` (a chunked
/// or oversized body goes to the router, which refuses it as before).
fn hot(req: &Request, body_limit: usize) -> Option<Hot<'_>> {
    let plain = |s: &str| !s.is_empty() && !s.contains(['/', '%']);
    let path = req.uri().path();
    if req.method() == Method::GET {
        let id = path.strip_prefix("/v1/predict/")?;
        return plain(id).then_some(Hot::Entity(id));
    }
    if req.method() == Method::POST {
        let model = path.strip_prefix("/v2/models/")?.strip_suffix("/infer")?;
        let declared = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)?
            .to_str()
            .ok()?
            .parse::<usize>()
            .ok()?;
        return (plain(model) && declared <= body_limit).then_some(Hot::Infer(model));
    }
    None
}

impl Service<Request> for Front {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let hot = match hot(&req, self.body_limit) {
            Some(Hot::Entity(id)) => Owned::Entity(id.to_owned()),
            Some(Hot::Infer(model)) => Owned::Infer(model.to_owned()),
            None => return Box::pin(self.router.call(req)),
        };
        let (state, limit) = (self.state.clone(), self.body_limit);
        Box::pin(async move {
            let id = crate::trace::request_id(req.headers());
            let response = match hot {
                Owned::Entity(entity) => {
                    let query = match crate::native::plain_query(req.uri().query()) {
                        Some(q) => Ok(Query(q)),
                        None => Query::try_from_uri(req.uri()),
                    };
                    let answer = async {
                        crate::native::get_one(State(state.clone()), Path(entity), query)
                            .await
                            .into_response()
                    };
                    crate::metrics::observe(&state, Some(ENTITY_ROUTE), &Method::GET, id, answer)
                        .await
                }
                Owned::Infer(model) => {
                    let (parts, body) = req.into_parts();
                    let answer = async {
                        match axum::body::to_bytes(body, limit).await {
                            Ok(body) => crate::kserve::run_infer(
                                &state,
                                &model,
                                None,
                                &parts.headers,
                                &body,
                            )
                            .await
                            .into_response(),
                            // The body ended before its declared length:
                            // the client went away mid-request.
                            Err(e) => crate::error::ApiError::invalid(
                                crate::error::Protocol::KServe,
                                format!("cannot read the request body: {e}"),
                            )
                            .into_response(),
                        }
                    };
                    crate::metrics::observe(&state, Some(INFER_ROUTE), &Method::POST, id, answer)
                        .await
                }
            };
            Ok(response)
        })
    }
}

/// One [`Front`] per connection, as the router's own make-service does.
impl<L: Listener> Service<IncomingStream<'_, L>> for Front {
    type Response = Front;
    type Error = Infallible;
    type Future = Ready<Result<Front, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: IncomingStream<'_, L>) -> Self::Future {
        ready(Ok(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, uri: &str, length: Option<usize>) -> Request {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(n) = length {
            b = b.header("content-length", n.to_string());
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn only_plain_hot_requests_are_answered_in_front() {
        let ours = [
            (
                Method::GET,
                "/v1/predict/user-1",
                None,
                Hot::Entity("user-1"),
            ),
            (
                Method::GET,
                "/v1/predict/user-1?mode=realtime_only",
                None,
                Hot::Entity("user-1"),
            ),
            (
                Method::GET,
                "/v1/predict/a.b_c~d",
                None,
                Hot::Entity("a.b_c~d"),
            ),
            (
                Method::POST,
                "/v2/models/m1/infer",
                Some(100),
                Hot::Infer("m1"),
            ),
            (
                Method::POST,
                "/v2/models/m1/infer",
                Some(1000),
                Hot::Infer("m1"),
            ),
        ];
        for (method, uri, length, want) in ours {
            assert_eq!(
                hot(&request(method, uri, length), 1000),
                Some(want),
                "{uri}"
            );
        }
        let routers = [
            (Method::GET, "/v1/predict/", None),
            (Method::GET, "/v1/predict", None),
            (Method::GET, "/v1/predict/user%2D1", None),
            (Method::GET, "/v1/predict/a/b", None),
            (Method::GET, "/v1/predictx/a", None),
            (Method::HEAD, "/v1/predict/user-1", None),
            (Method::POST, "/v1/predict/user-1", Some(10)),
            // Chunked, over the limit, an encoded or nested name, a version.
            (Method::POST, "/v2/models/m1/infer", None),
            (Method::POST, "/v2/models/m1/infer", Some(1001)),
            (Method::POST, "/v2/models/m%31/infer", Some(10)),
            (Method::POST, "/v2/models//infer", Some(10)),
            (Method::POST, "/v2/models/m1/versions/1/infer", Some(10)),
            (Method::GET, "/v2/models/m1/infer", None),
            (Method::POST, "/v2/models/m1/inferx", Some(10)),
        ];
        for (method, uri, length) in routers {
            assert_eq!(
                hot(&request(method.clone(), uri, length), 1000),
                None,
                "{method} {uri}"
            );
        }
    }
}
