//! The service in front of the router: the hottest route, a plain
//! `GET /v1/predict/{entity_id}`, is answered here without the router's
//! per-request work (route table walk, matched-path and parameter
//! extensions, the boxed method router and middleware services cloned for
//! each call); everything else, including any such request whose id needs
//! percent-decoding, goes to the router. Both take the same handler, the
//! same query parsing and the same metrics and tracing
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

/// The route template answered here, as the router names it.
const ENTITY_ROUTE: &str = "/v1/predict/{entity_id}";

/// The router with the entity route answered in front of it.
#[derive(Clone)]
pub struct Front {
    router: Router,
    state: AppState,
}

impl Front {
    /// `router` must route [`ENTITY_ROUTE`] to [`crate::native::get_one`]
    /// with `state` (as [`crate::router`] does), so that both ways answer
    /// alike.
    pub(crate) fn new(router: Router, state: AppState) -> Front {
        Front { router, state }
    }
}

/// The entity id of a request this service answers itself: `GET` on
/// `/v1/predict/` followed by one path segment that needs no decoding.
fn entity_of(req: &Request) -> Option<&str> {
    if req.method() != Method::GET {
        return None;
    }
    let id = req.uri().path().strip_prefix("/v1/predict/")?;
    (!id.is_empty() && !id.contains(['/', '%'])).then_some(id)
}

impl Service<Request> for Front {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let Some(entity) = entity_of(&req).map(str::to_owned) else {
            return Box::pin(self.router.call(req));
        };
        let state = self.state.clone();
        Box::pin(async move {
            let id = crate::trace::request_id(req.headers());
            let query = Query::try_from_uri(req.uri());
            let answer = async {
                crate::native::get_one(State(state.clone()), Path(entity), query)
                    .await
                    .into_response()
            };
            Ok(crate::metrics::observe(&state, Some(ENTITY_ROUTE), &Method::GET, id, answer).await)
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

    fn request(method: Method, uri: &str) -> Request {
        Request::builder()
            .method(method)
            .uri(uri)
            .body(axum::body::Body::empty())
            .unwrap()
    }

    #[test]
    fn only_plain_entity_gets_are_answered_in_front() {
        let ours = [
            ("/v1/predict/user-1", "user-1"),
            ("/v1/predict/user-1?mode=realtime_only", "user-1"),
            ("/v1/predict/a.b_c~d", "a.b_c~d"),
        ];
        for (uri, id) in ours {
            assert_eq!(entity_of(&request(Method::GET, uri)), Some(id), "{uri}");
        }
        let routers = [
            (Method::GET, "/v1/predict/"),
            (Method::GET, "/v1/predict"),
            (Method::GET, "/v1/predict/user%2D1"),
            (Method::GET, "/v1/predict/a/b"),
            (Method::GET, "/v1/predictx/a"),
            (Method::HEAD, "/v1/predict/user-1"),
            (Method::POST, "/v1/predict/user-1"),
        ];
        for (method, uri) in routers {
            assert_eq!(
                entity_of(&request(method.clone(), uri)),
                None,
                "{method} {uri}"
            );
        }
    }
}
