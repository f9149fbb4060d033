//! Who may read `/metrics` on a metrics port (the agent's, the controller's): the Kubernetes
//! convention for a component's metrics, as kubelet follows it (delegated authentication and
//! authorization).
//!
//! 1. The request's `Authorization: Bearer <token>` ([`bearer_token`]); none, or another
//!    scheme, answers 401.
//! 2. The token's SHA-256 looks up recent decisions ([`ReviewCache`]): a scraper every few
//!    seconds costs no API call, and the token itself is never kept.
//! 3. On a miss: a TokenReview (authentication.k8s.io/v1) says who the token is (401 if
//!    nobody); a SubjectAccessReview (authorization.k8s.io/v1) of that user, with its groups,
//!    uid and extra, for the non-resource URL `/metrics`, verb `get`, says whether it may
//!    (403 if not). `daemonset.yaml`'s ClusterRole `nodevirt-metrics-reader` grants it.
//! 4. At most [`MAX_REVIEWS_IN_FLIGHT`] reviews run at once, each within [`REVIEW_TIMEOUT`]:
//!    a flood of made-up tokens costs the API server that much, not one call per request.
//!    A review that fails (API server away, or the process's own RBAC missing) is not cached,
//!    is logged, and answers 503.
//!
//! `/healthz` and `/readyz` are not behind this: kubelet probes them without a token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Api;
use kube::api::PostParams;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::metrics::ResultLabel;

/// The URL and verb a scraper must be allowed, as for kubelet's or the API server's metrics.
pub const METRICS_PATH: &str = "/metrics";
pub const METRICS_VERB: &str = "get";

/// How long an allowed token stays allowed without asking again. Prometheus scrapes every
/// 15 s to 1 min: at 10 s nearly every scrape would cost two API calls. A minute bounds how long
/// a revoked token or a removed binding keeps working (kubelet caches 2 and 5 minutes).
pub const ALLOWED_TTL: Duration = Duration::from_secs(60);

/// How long a refused token (unknown, or without the role) stays refused: short, so that a
/// binding just created works within seconds, yet a scraper retrying a bad token, or a client
/// repeating one, costs at most one review pair per 10 s.
pub const DENIED_TTL: Duration = Duration::from_secs(10);

/// Tokens remembered at once. Scrapers are a handful (a Prometheus or two, a person); the
/// bound keeps a flood of made-up tokens from growing the process's memory. Full, the cache
/// drops expired entries, then the one closest to expiry.
pub const CACHE_CAPACITY: usize = 64;

/// Reviews in flight at once; the others wait for a turn within [`REVIEW_TIMEOUT`].
pub const MAX_REVIEWS_IN_FLIGHT: usize = 4;

/// How long one request may wait for its turn and its two reviews: the API server answers a
/// review in milliseconds; Prometheus gives a scrape 10 s in all.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request carries no usable bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BearerError {
    #[error("no Authorization header: send a bearer token (see docs/metrics.md)")]
    Missing,
    #[error("the Authorization header is not `Bearer <token>`")]
    NotBearer,
}

/// The token of `Authorization: Bearer <token>`. The scheme is case-insensitive (RFC 7235);
/// one header only, as the API server takes it.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, BearerError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(BearerError::Missing)?;
    if values.next().is_some() {
        return Err(BearerError::NotBearer);
    }
    let text = value.to_str().map_err(|_| BearerError::NotBearer)?.trim();
    let (scheme, token) = text.split_once(' ').ok_or(BearerError::NotBearer)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err(BearerError::NotBearer);
    }
    Ok(token)
}

/// What the reviews said of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// The TokenReview did not authenticate it.
    Unauthenticated,
    /// Authenticated as `user`, who may not get /metrics.
    Forbidden {
        user: String,
    },
}

impl Decision {
    fn label(&self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Unauthenticated => "unauthenticated",
            Decision::Forbidden { .. } => "forbidden",
        }
    }

    fn ttl(&self) -> Duration {
        match self {
            Decision::Allowed => ALLOWED_TTL,
            _ => DENIED_TTL,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("asking the API server who the token is (TokenReview)")]
    TokenReview(#[source] kube::Error),
    #[error("asking the API server whether {user} may get /metrics (SubjectAccessReview)")]
    AccessReview {
        user: String,
        #[source]
        source: kube::Error,
    },
    #[error("the token and access reviews took more than {0:?}")]
    Timeout(Duration),
}

/// SHA-256 of a token: what the cache keeps instead of the token.
pub type TokenHash = [u8; 32];

pub fn token_hash(token: &str) -> TokenHash {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest.as_ref());
    hash
}

/// Recent decisions by token hash, each until its expiry; at most `capacity` of them.
#[derive(Debug)]
pub struct ReviewCache {
    capacity: usize,
    entries: HashMap<TokenHash, (Decision, Instant)>,
}

impl ReviewCache {
    pub fn new(capacity: usize) -> Self {
        ReviewCache {
            capacity,
            entries: HashMap::new(),
        }
    }

    /// The decision for `hash` if it has not expired at `now`.
    pub fn get(&mut self, hash: &TokenHash, now: Instant) -> Option<Decision> {
        match self.entries.get(hash) {
            Some((decision, expiry)) if now < *expiry => Some(decision.clone()),
            Some(_) => {
                self.entries.remove(hash);
                None
            }
            None => None,
        }
    }

    /// Remembers `decision` for its TTL from `now`.
    pub fn insert(&mut self, hash: TokenHash, decision: Decision, now: Instant) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&hash) {
            self.entries.retain(|_, (_, expiry)| now < *expiry);
            if self.entries.len() >= self.capacity
                && let Some(soonest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, expiry))| *expiry)
                    .map(|(h, _)| *h)
            {
                self.entries.remove(&soonest);
            }
        }
        let expiry = now + decision.ttl();
        self.entries.insert(hash, (decision, expiry));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Asks who a token is and whether it may get /metrics (step 3); a seam for tests.
pub trait Reviewer: Send + Sync {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Decision, ReviewError>>;
}

/// The API server's TokenReview and SubjectAccessReview, with the process's own client (the
/// agent's and the controller's ClusterRoles may create both).
pub struct KubeReviewer {
    pub client: kube::Client,
}

impl Reviewer for KubeReviewer {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Decision, ReviewError>> {
        Box::pin(async move {
            let reviews: Api<TokenReview> = Api::all(self.client.clone());
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_string()),
                    audiences: None,
                },
                ..Default::default()
            };
            let status = reviews
                .create(&PostParams::default(), &review)
                .await
                .map_err(ReviewError::TokenReview)?
                .status
                .unwrap_or_default();
            let user = match (status.authenticated, status.user) {
                (Some(true), Some(user)) => user,
                _ => return Ok(Decision::Unauthenticated),
            };
            let name = user.username.clone().unwrap_or_default();
            let access: Api<SubjectAccessReview> = Api::all(self.client.clone());
            let review = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: user.username,
                    groups: user.groups,
                    uid: user.uid,
                    extra: user.extra,
                    non_resource_attributes: Some(NonResourceAttributes {
                        path: Some(METRICS_PATH.into()),
                        verb: Some(METRICS_VERB.into()),
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let allowed = access
                .create(&PostParams::default(), &review)
                .await
                .map_err(|source| ReviewError::AccessReview {
                    user: name.clone(),
                    source,
                })?
                .status
                .is_some_and(|s| s.allowed);
            Ok(if allowed {
                Decision::Allowed
            } else {
                Decision::Forbidden { user: name }
            })
        })
    }
}

/// Steps 2 to 4: the cache in front of a [`Reviewer`].
pub struct Authorizer {
    reviewer: Box<dyn Reviewer>,
    cache: Mutex<ReviewCache>,
    turns: Semaphore,
    reviews: Family<ResultLabel, Counter>,
}

impl Authorizer {
    /// `reviews` counts the reviews done (cache misses) by result.
    pub fn new(reviewer: Box<dyn Reviewer>, reviews: Family<ResultLabel, Counter>) -> Self {
        Authorizer {
            reviewer,
            cache: Mutex::new(ReviewCache::new(CACHE_CAPACITY)),
            turns: Semaphore::new(MAX_REVIEWS_IN_FLIGHT),
            reviews,
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, ReviewCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The decision for `token`, from the cache or from a review.
    pub async fn decide(&self, token: &str) -> Result<Decision, ReviewError> {
        let hash = token_hash(token);
        if let Some(decision) = self.cache().get(&hash, Instant::now()) {
            return Ok(decision);
        }
        let reviewed = tokio::time::timeout(REVIEW_TIMEOUT, async {
            let _turn = self.turns.acquire().await;
            // Another request may have reviewed the same token while this one waited.
            if let Some(decision) = self.cache().get(&hash, Instant::now()) {
                return Ok(decision);
            }
            let decision = self.reviewer.review(token).await?;
            self.reviews
                .get_or_create(&ResultLabel {
                    result: decision.label(),
                })
                .inc();
            self.cache().insert(hash, decision.clone(), Instant::now());
            Ok(decision)
        })
        .await
        .unwrap_or(Err(ReviewError::Timeout(REVIEW_TIMEOUT)));
        if reviewed.is_err() {
            self.reviews
                .get_or_create(&ResultLabel { result: "error" })
                .inc();
        }
        reviewed
    }
}

/// Middleware of `/metrics`: lets the request through only with a token allowed to get it.
pub async fn require_metrics_access(
    State(authorizer): State<Arc<Authorizer>>,
    request: Request,
    next: Next,
) -> Response {
    let token = match bearer_token(request.headers()) {
        Ok(token) => token,
        Err(why) => return unauthorized(&why.to_string()),
    };
    match authorizer.decide(token).await {
        Ok(Decision::Allowed) => next.run(request).await,
        Ok(Decision::Unauthenticated) => unauthorized("the token is not valid"),
        Ok(Decision::Forbidden { user }) => (
            StatusCode::FORBIDDEN,
            format!(
                "forbidden: {user} may not {METRICS_VERB} {METRICS_PATH} \
                 (bind the ClusterRole nodevirt-metrics-reader)\n"
            ),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %crate::k8s::error_chain(&e), "metrics: cannot review a scraper's token");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot review the token now; this process's log says why\n",
            )
                .into_response()
        }
    }
}

fn unauthorized(why: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"nodevirt\""),
        )],
        format!("unauthorized: {why}\n"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn bearer_tokens_are_read_from_one_authorization_header() {
        assert_eq!(bearer_token(&headers(&["Bearer abc.def"])), Ok("abc.def"));
        assert_eq!(bearer_token(&headers(&["bearer  abc "])), Ok("abc"));
        assert_eq!(bearer_token(&headers(&["BEARER abc"])), Ok("abc"));
        assert_eq!(bearer_token(&headers(&[])), Err(BearerError::Missing));
        for bad in [
            "Basic dXNlcjpwYXNz",
            "Bearer",
            "Bearer ",
            "Bearerabc",
            "Bearer a b",
            "abc",
        ] {
            assert_eq!(
                bearer_token(&headers(&[bad])),
                Err(BearerError::NotBearer),
                "{bad:?}"
            );
        }
        assert_eq!(
            bearer_token(&headers(&["Bearer a", "Bearer b"])),
            Err(BearerError::NotBearer),
            "two headers are ambiguous"
        );
        let mut binary = HeaderMap::new();
        binary.insert(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer \xff").unwrap(),
        );
        assert_eq!(bearer_token(&binary), Err(BearerError::NotBearer));
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_forgets_allowed_after_a_minute_and_refused_after_ten_seconds() {
        let mut cache = ReviewCache::new(8);
        let (good, bad) = (token_hash("good"), token_hash("bad"));
        let start = Instant::now();
        cache.insert(good, Decision::Allowed, start);
        cache.insert(bad, Decision::Unauthenticated, start);
        tokio::time::advance(DENIED_TTL - Duration::from_millis(1)).await;
        assert_eq!(
            cache.get(&bad, Instant::now()),
            Some(Decision::Unauthenticated)
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(cache.get(&bad, Instant::now()), None, "expired");
        assert_eq!(cache.len(), 1, "and dropped");
        assert_eq!(cache.get(&good, Instant::now()), Some(Decision::Allowed));
        tokio::time::advance(ALLOWED_TTL - DENIED_TTL).await;
        assert_eq!(cache.get(&good, Instant::now()), None);
        assert!(cache.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_cache_drops_the_expired_then_the_soonest_to_expire() {
        let mut cache = ReviewCache::new(3);
        let now = Instant::now();
        let second = Duration::from_secs(1);
        cache.insert(token_hash("a"), Decision::Unauthenticated, now);
        cache.insert(token_hash("b"), Decision::Allowed, now);
        cache.insert(token_hash("c"), Decision::Allowed, now + second);
        cache.insert(token_hash("d"), Decision::Allowed, now + second * 2);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&token_hash("a"), now), None, "closest to expiry");
        let later = now + DENIED_TTL;
        cache.insert(token_hash("e"), Decision::Unauthenticated, later);
        assert_eq!(cache.len(), 3);
        for kept in ["b", "c", "d"] {
            let present = cache.get(&token_hash(kept), later).is_some();
            let expected = kept != "b";
            assert_eq!(
                present, expected,
                "{kept}: the allowed one expiring first goes"
            );
        }
    }

    /// Counts reviews; "good" is allowed, "nobody" forbidden, the rest unknown.
    #[derive(Default)]
    struct Fake {
        calls: Arc<AtomicUsize>,
    }

    impl Reviewer for Fake {
        fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Decision, ReviewError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok(match token {
                    "good" => Decision::Allowed,
                    "nobody" => Decision::Forbidden {
                        user: "system:serviceaccount:ns:nobody".into(),
                    },
                    _ => Decision::Unauthenticated,
                })
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_is_reviewed_once_per_ttl_however_often_it_scrapes() {
        let calls = Arc::new(AtomicUsize::new(0));
        let reviews = Family::<ResultLabel, Counter>::default();
        let authorizer = Authorizer::new(
            Box::new(Fake {
                calls: Arc::clone(&calls),
            }),
            reviews.clone(),
        );
        // A scrape every 5 s for just under a minute: one review.
        for _ in 0..12 {
            assert_eq!(authorizer.decide("good").await.unwrap(), Decision::Allowed);
            tokio::time::advance(Duration::from_secs(5)).await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(authorizer.decide("good").await.unwrap(), Decision::Allowed);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "reviewed again once expired"
        );
        // Refused tokens are remembered too, for less time.
        for _ in 0..3 {
            let decision = authorizer.decide("nobody").await.unwrap();
            assert!(
                matches!(decision, Decision::Forbidden { .. }),
                "{decision:?}"
            );
        }
        tokio::time::advance(DENIED_TTL).await;
        let decision = authorizer.decide("nobody").await.unwrap();
        assert!(
            matches!(decision, Decision::Forbidden { .. }),
            "{decision:?}"
        );
        assert_eq!(
            authorizer.decide("junk").await.unwrap(),
            Decision::Unauthenticated
        );
        let by = |result| reviews.get_or_create(&ResultLabel { result }).get();
        assert_eq!(
            (by("allowed"), by("forbidden"), by("unauthenticated")),
            (2, 2, 1)
        );
    }
}
