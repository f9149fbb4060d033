//! The admin socket's routes: one enum that the server parses each request into and the
//! client (`nodevirt admin`) writes each request from, so that a path is spelled only here.
//!
//!   GET  /v1/vms                               ListVms    -> Vec<VmSummary>
//!   GET  /v1/vms/{namespace}/{name}            ShowVm     -> VmDetail
//!   GET  /v1/vms/{namespace}/{name}/xml        DomainXml  -> DomainXml
//!   GET  /v1/vms/{namespace}/{name}/console?lines=N  Console -> ConsoleTail
//!   GET  /v1/vms/{namespace}/{name}/console/attach[?force=true]  Attach -> 101, then the
//!        serial console's bytes both ways (`Upgrade: nodevirt-console`)
//!   GET  /v1/vms/{namespace}/{name}/vnc       Vnc        -> 101, then a connection to its
//!        VNC server (`Upgrade: nodevirt-vnc`)
//!   POST /v1/vms/{namespace}/{name}/resync     Resync     -> Accepted
//!   GET  /v1/health                            Health     -> Health
//!
//! 1. The path's shape is matched: an unknown one is refused with 404, listing the known ones.
//! 2. Its parts are read: namespace and name must be DNS labels (so they are never
//!    percent-decoded: a DNS label needs no escaping), `lines` one count and `force` true or
//!    false, or 400. Other query parameters are ignored.
//! 3. The method is the route's own ([`Route::method`]), or 405 naming it.

use std::fmt;

use http::{Method, StatusCode};

use crate::domain::FieldError;
use crate::domain::names::check_dns_label;

use super::api::DEFAULT_CONSOLE_LINES;

/// The paths, for the error that refuses an unknown one.
const KNOWN_PATHS: &str = "/v1/vms, /v1/vms/{namespace}/{name}, \
     /v1/vms/{namespace}/{name}/xml, /v1/vms/{namespace}/{name}/console?lines=N, \
     /v1/vms/{namespace}/{name}/console/attach?force=BOOL, /v1/vms/{namespace}/{name}/vnc, \
     /v1/vms/{namespace}/{name}/resync, /v1/health";

/// A VM as the admin paths name it; both parts are DNS labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRef {
    pub namespace: String,
    pub name: String,
}

impl VmRef {
    /// `NAMESPACE/NAME`, as `nodevirt admin` takes it.
    pub fn parse(arg: &str) -> Result<Self, RouteError> {
        let (namespace, name) = arg
            .split_once('/')
            .ok_or_else(|| RouteError::NotNamespaceName(arg.into()))?;
        Self::new(arg, namespace, name)
    }

    /// `namespace` and `name` checked; `whole` (an argument or a path) names them in errors.
    fn new(whole: &str, namespace: &str, name: &str) -> Result<Self, RouteError> {
        let invalid = |source| RouteError::InvalidName {
            path: whole.into(),
            source,
        };
        check_dns_label(namespace, "namespace").map_err(invalid)?;
        check_dns_label(name, "name").map_err(invalid)?;
        Ok(Self {
            namespace: namespace.into(),
            name: name.into(),
        })
    }
}

impl fmt::Display for VmRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One request to the admin socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The node's VMs.
    ListVms,
    /// One VM and its last events.
    ShowVm(VmRef),
    /// Its live domain XML.
    DomainXml(VmRef),
    /// The last `lines` lines of its serial console log.
    Console { vm: VmRef, lines: usize },
    /// Its serial console, interactive; `force` takes it over from another session.
    Attach { vm: VmRef, force: bool },
    /// A connection to its VNC server.
    Vnc(VmRef),
    /// Reconcile it now.
    Resync(VmRef),
    /// libvirt, hypervisor and watch state.
    Health,
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("{method} {path}: no such path; the admin socket serves {KNOWN_PATHS}")]
    UnknownPath { method: Method, path: String },
    #[error("{method} {path}: method not allowed; use {allowed}")]
    WrongMethod {
        method: Method,
        path: String,
        allowed: Method,
    },
    #[error("{path}: naming a VM")]
    InvalidName {
        path: String,
        #[source]
        source: FieldError,
    },
    #[error("{0:?} is not NAMESPACE/NAME")]
    NotNamespaceName(String),
    #[error("{path}: {problem}")]
    InvalidQuery { path: String, problem: String },
}

impl RouteError {
    /// The status the server answers this error with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnknownPath { .. } => StatusCode::NOT_FOUND,
            Self::WrongMethod { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::InvalidName { .. } | Self::NotNamespaceName(_) | Self::InvalidQuery { .. } => {
                StatusCode::BAD_REQUEST
            }
        }
    }
}

impl Route {
    pub fn method(&self) -> Method {
        match self {
            Self::Resync(_) => Method::POST,
            Self::ListVms
            | Self::ShowVm(_)
            | Self::DomainXml(_)
            | Self::Console { .. }
            | Self::Attach { .. }
            | Self::Vnc(_)
            | Self::Health => Method::GET,
        }
    }

    /// The path and query the client sends.
    pub fn path(&self) -> String {
        match self {
            Self::ListVms => "/v1/vms".into(),
            Self::ShowVm(vm) => format!("/v1/vms/{vm}"),
            Self::DomainXml(vm) => format!("/v1/vms/{vm}/xml"),
            Self::Console { vm, lines } => format!("/v1/vms/{vm}/console?lines={lines}"),
            Self::Attach { vm, force } => format!("/v1/vms/{vm}/console/attach?force={force}"),
            Self::Vnc(vm) => format!("/v1/vms/{vm}/vnc"),
            Self::Resync(vm) => format!("/v1/vms/{vm}/resync"),
            Self::Health => "/v1/health".into(),
        }
    }

    /// The route of a request's method, path and query (the steps of the module header).
    pub fn parse(method: &Method, path: &str, query: Option<&str>) -> Result<Self, RouteError> {
        let segments: Vec<&str> = path
            .strip_prefix("/v1/")
            .map(|rest| rest.split('/').collect())
            .unwrap_or_default();
        let vm = |namespace: &str, name: &str| VmRef::new(path, namespace, name);
        let route = match segments.as_slice() {
            ["vms"] => Self::ListVms,
            ["health"] => Self::Health,
            ["vms", namespace, name] => Self::ShowVm(vm(namespace, name)?),
            ["vms", namespace, name, "xml"] => Self::DomainXml(vm(namespace, name)?),
            ["vms", namespace, name, "console"] => Self::Console {
                vm: vm(namespace, name)?,
                lines: console_lines(path, query)?,
            },
            ["vms", namespace, name, "console", "attach"] => Self::Attach {
                vm: vm(namespace, name)?,
                force: force(path, query)?,
            },
            ["vms", namespace, name, "vnc"] => Self::Vnc(vm(namespace, name)?),
            ["vms", namespace, name, "resync"] => Self::Resync(vm(namespace, name)?),
            _ => {
                return Err(RouteError::UnknownPath {
                    method: method.clone(),
                    path: path.into(),
                });
            }
        };
        let allowed = route.method();
        if *method != allowed {
            return Err(RouteError::WrongMethod {
                method: method.clone(),
                path: path.into(),
                allowed,
            });
        }
        Ok(route)
    }
}

/// `lines=N` of a console request; [`DEFAULT_CONSOLE_LINES`] without it.
fn console_lines(path: &str, query: Option<&str>) -> Result<usize, RouteError> {
    query_value(
        path,
        query,
        "lines",
        DEFAULT_CONSOLE_LINES,
        "a number of lines",
    )
}

/// `force=BOOL` of an attach request; false without it.
fn force(path: &str, query: Option<&str>) -> Result<bool, RouteError> {
    query_value(path, query, "force", false, "true or false")
}

/// The one value of `key` in `query`, `default` without one.
fn query_value<T: std::str::FromStr>(
    path: &str,
    query: Option<&str>,
    key: &str,
    default: T,
    expected: &str,
) -> Result<T, RouteError> {
    let invalid = |problem: String| RouteError::InvalidQuery {
        path: path.into(),
        problem,
    };
    let mut values = query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.strip_prefix(key)?.strip_prefix('='));
    match (values.next(), values.next()) {
        (None, _) => Ok(default),
        (Some(value), None) => value
            .parse()
            .map_err(|_| invalid(format!("{key}={value:?} is not {expected}"))),
        (Some(_), Some(_)) => Err(invalid(format!("{key} is given more than once"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm() -> VmRef {
        VmRef::parse("default/testvm").unwrap()
    }

    /// One route of each variant; the match fails to compile when a variant is added.
    fn every_route() -> Vec<Route> {
        let routes = vec![
            Route::ListVms,
            Route::ShowVm(vm()),
            Route::DomainXml(vm()),
            Route::Console { vm: vm(), lines: 7 },
            Route::Attach {
                vm: vm(),
                force: true,
            },
            Route::Vnc(vm()),
            Route::Resync(vm()),
            Route::Health,
        ];
        for route in &routes {
            match route {
                Route::ListVms
                | Route::ShowVm(_)
                | Route::DomainXml(_)
                | Route::Console { .. }
                | Route::Attach { .. }
                | Route::Vnc(_)
                | Route::Resync(_)
                | Route::Health => {}
            }
        }
        routes
    }

    fn parse_uri(method: &Method, uri: &str) -> Result<Route, RouteError> {
        let (path, query) = match uri.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (uri, None),
        };
        Route::parse(method, path, query)
    }

    #[test]
    fn every_route_survives_a_round_trip() {
        for route in every_route() {
            let parsed = parse_uri(&route.method(), &route.path());
            assert_eq!(parsed.unwrap(), route, "{}", route.path());
        }
    }

    #[test]
    fn the_paths_are_the_documented_ones() {
        let paths: Vec<(Method, String)> = every_route()
            .iter()
            .map(|r| (r.method(), r.path()))
            .collect();
        let expected = [
            (Method::GET, "/v1/vms"),
            (Method::GET, "/v1/vms/default/testvm"),
            (Method::GET, "/v1/vms/default/testvm/xml"),
            (Method::GET, "/v1/vms/default/testvm/console?lines=7"),
            (
                Method::GET,
                "/v1/vms/default/testvm/console/attach?force=true",
            ),
            (Method::GET, "/v1/vms/default/testvm/vnc"),
            (Method::POST, "/v1/vms/default/testvm/resync"),
            (Method::GET, "/v1/health"),
        ];
        let expected: Vec<(Method, String)> = expected
            .iter()
            .map(|(m, p)| (m.clone(), p.to_string()))
            .collect();
        assert_eq!(paths, expected);
    }

    /// The error of `GET path`, which must answer `status`.
    fn refused(path: &str, status: StatusCode) -> RouteError {
        let err = Route::parse(&Method::GET, path, None).unwrap_err();
        assert_eq!(err.status(), status, "{path}: {err}");
        err
    }

    #[test]
    fn an_unknown_path_is_refused_with_the_known_ones() {
        for path in [
            "/",
            "/v1",
            "/v1/",
            "/v1/vms/",
            "/v2/vms",
            "/v1/vms/a/b/c",
            "/v1/nodes",
        ] {
            let message = refused(path, StatusCode::NOT_FOUND).to_string();
            assert!(
                message.starts_with(&format!("GET {path}: no such path")),
                "{message}"
            );
            assert!(
                message.contains("/v1/vms/{namespace}/{name}/resync"),
                "{message}"
            );
        }
    }

    #[test]
    fn a_known_path_with_another_method_names_the_right_one() {
        let err = Route::parse(&Method::DELETE, "/v1/vms/default/testvm", None).unwrap_err();
        assert_eq!(err.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            err.to_string(),
            "DELETE /v1/vms/default/testvm: method not allowed; use GET"
        );
        let err = Route::parse(&Method::GET, "/v1/vms/default/testvm/resync", None).unwrap_err();
        assert!(matches!(err, RouteError::WrongMethod { allowed, .. } if allowed == Method::POST));
    }

    #[test]
    fn names_must_be_dns_labels() {
        for path in [
            "/v1/vms/%64efault/testvm",
            "/v1/vms/default/Test",
            "/v1/vms//x/xml",
        ] {
            let err = refused(path, StatusCode::BAD_REQUEST);
            assert!(matches!(err, RouteError::InvalidName { .. }), "{err}");
        }
        assert!(matches!(
            VmRef::parse("testvm"),
            Err(RouteError::NotNamespaceName(_))
        ));
        let err = VmRef::parse("Default/testvm").unwrap_err();
        assert!(
            crate::k8s::error_chain(&err).contains("namespace: \"Default\" is not a valid name"),
            "{err}"
        );
    }

    #[test]
    fn console_lines_default_and_must_be_one_count() {
        let console = |query| Route::parse(&Method::GET, "/v1/vms/default/testvm/console", query);
        let lines = |route: Route| match route {
            Route::Console { lines, .. } => lines,
            other => panic!("{other:?}"),
        };
        assert_eq!(lines(console(None).unwrap()), DEFAULT_CONSOLE_LINES);
        assert_eq!(lines(console(Some("x=%ff&lines=3")).unwrap()), 3);
        for bad in [
            "lines=-1",
            "lines=99999999999999999999999999",
            "lines=1&lines=2",
        ] {
            let err = console(Some(bad)).unwrap_err();
            assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{bad}: {err}");
        }
    }
}
