//! Choosing a node for a VM. Pure: the caller gives the nodes and what is already placed.
//!
//! 1. Candidates are nodes whose agent is alive: label `kubevirt.io/schedulable=true` and a
//!    heartbeat newer than the timeout.
//! 2. Filters, in order: nodeSelector, required node affinity, then memory and CPU requests
//!    against allocatable minus the requests of the VMs already placed there.
//! 3. Among the nodes left, the highest sum of preferred-affinity weights wins; ties go to the
//!    node with the most free memory, then to the name.
//!
//! When none is left, the error counts why each node was refused, as the kube-scheduler does:
//! "0/3 nodes are available: 2 don't match nodeSelector, 1 have too little memory".

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::VirtualMachineSpec;
use crate::api::quantity::{parse_bytes, parse_millicores};

/// What placement needs to know of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub schedulable: bool,
    pub heartbeat: Option<Timestamp>,
    pub allocatable_memory: u64,
    pub allocatable_millicores: u64,
}

/// Requests of the VMs already placed on a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub memory: u64,
    pub millicores: u64,
}

/// What a VM asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requests {
    pub memory: u64,
    pub millicores: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("0/{total} nodes are available: {reasons}")]
    NoNode { total: usize, reasons: String },
    #[error("{0}")]
    InvalidSpec(String),
}

/// Why a node was refused, in the order the filters run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Refusal {
    NotReady,
    NodeSelector,
    Affinity,
    Memory,
    Cpu,
}

impl Refusal {
    fn describe(self) -> &'static str {
        match self {
            Refusal::NotReady => "have no live nodevirt agent",
            Refusal::NodeSelector => "don't match nodeSelector",
            Refusal::Affinity => "don't match node affinity",
            Refusal::Memory => "have too little memory",
            Refusal::Cpu => "have too little cpu",
        }
    }
}

/// The VM's memory and CPU requests (`requests`, else `limits`).
pub fn requests(spec: &VirtualMachineSpec) -> Result<Requests, PlacementError> {
    let resources = spec.domain.resources.clone().unwrap_or_default();
    let get = |key: &str| {
        resources
            .requests
            .get(key)
            .map(|q| (q, format!("spec.domain.resources.requests.{key}")))
            .or_else(|| {
                resources
                    .limits
                    .get(key)
                    .map(|q| (q, format!("spec.domain.resources.limits.{key}")))
            })
    };
    let invalid =
        |e: crate::api::quantity::QuantityError| PlacementError::InvalidSpec(e.to_string());
    Ok(Requests {
        memory: get("memory")
            .map(|(q, f)| parse_bytes(&q.0, &f))
            .transpose()
            .map_err(invalid)?
            .unwrap_or(0),
        millicores: get("cpu")
            .map(|(q, f)| parse_millicores(&q.0, &f))
            .transpose()
            .map_err(invalid)?
            .unwrap_or(0),
    })
}

fn requirement_matches(
    req: &NodeSelectorRequirement,
    labels: &BTreeMap<String, String>,
) -> Result<bool, PlacementError> {
    let values = req.values.as_deref().unwrap_or_default();
    let value = labels.get(&req.key);
    let number = |v: &str| v.parse::<i64>().ok();
    let bound = || {
        values.first().and_then(|v| number(v)).ok_or_else(|| {
            PlacementError::InvalidSpec(format!(
                "node affinity: operator {} on key {:?} needs one integer value",
                req.operator, req.key
            ))
        })
    };
    Ok(match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => {
            let bound = bound()?;
            value.and_then(|v| number(v)).is_some_and(|v| v > bound)
        }
        "Lt" => {
            let bound = bound()?;
            value.and_then(|v| number(v)).is_some_and(|v| v < bound)
        }
        other => {
            return Err(PlacementError::InvalidSpec(format!(
                "node affinity: unknown operator {other:?}; expected In, NotIn, Exists, DoesNotExist, Gt or Lt"
            )));
        }
    })
}

/// A term matches when all its expressions match (matchFields are not supported: VMs have no
/// use for metadata.name matching beyond nodeSelector).
fn term_matches(
    term: &NodeSelectorTerm,
    labels: &BTreeMap<String, String>,
) -> Result<bool, PlacementError> {
    for req in term.match_expressions.iter().flatten() {
        if !requirement_matches(req, labels)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn heartbeat_is_fresh(node: &NodeInfo, now: Timestamp, timeout: SignedDuration) -> bool {
    node.heartbeat
        .is_some_and(|beat| now.duration_since(beat) <= timeout)
}

/// Whether a node's agent counts as alive.
pub fn is_live(node: &NodeInfo, now: Timestamp, timeout: SignedDuration) -> bool {
    node.schedulable && heartbeat_is_fresh(node, now, timeout)
}

/// Chooses the node for a VM with `spec`; see the module docs.
pub fn choose_node(
    spec: &VirtualMachineSpec,
    nodes: &[NodeInfo],
    usage: &BTreeMap<String, Usage>,
    now: Timestamp,
    heartbeat_timeout: SignedDuration,
) -> Result<String, PlacementError> {
    let wanted = requests(spec)?;
    let affinity = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref());
    let required = affinity.and_then(|a| {
        a.required_during_scheduling_ignored_during_execution
            .as_ref()
    });
    let preferred = affinity
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .clone()
        })
        .unwrap_or_default();
    let mut refusals: BTreeMap<Refusal, usize> = BTreeMap::new();
    let mut best: Option<(i64, u64, &str)> = None;
    for node in nodes {
        let used = usage.get(&node.name).copied().unwrap_or_default();
        let refusal = if !is_live(node, now, heartbeat_timeout) {
            Some(Refusal::NotReady)
        } else if !spec
            .node_selector
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v))
        {
            Some(Refusal::NodeSelector)
        } else if let Some(required) = required
            && !required
                .node_selector_terms
                .iter()
                .map(|t| term_matches(t, &node.labels))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .any(|m| m)
        {
            Some(Refusal::Affinity)
        } else if used.memory.saturating_add(wanted.memory) > node.allocatable_memory {
            Some(Refusal::Memory)
        } else if used.millicores.saturating_add(wanted.millicores) > node.allocatable_millicores {
            Some(Refusal::Cpu)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            *refusals.entry(refusal).or_default() += 1;
            continue;
        }
        let mut score = 0i64;
        for term in &preferred {
            if term_matches(&term.preference, &node.labels)? {
                score += i64::from(term.weight);
            }
        }
        let free = node.allocatable_memory - used.memory - wanted.memory;
        let candidate = (score, free, node.name.as_str());
        let better = match best {
            None => true,
            Some((s, f, n)) => {
                (score, free) > (s, f) || ((score, free) == (s, f) && node.name.as_str() < n)
            }
        };
        if better {
            best = Some(candidate);
        }
    }
    best.map(|(_, _, name)| name.to_string())
        .ok_or_else(|| PlacementError::NoNode {
            total: nodes.len(),
            reasons: if refusals.is_empty() {
                "no nodes".into()
            } else {
                refusals
                    .iter()
                    .map(|(r, n)| format!("{n} {}", r.describe()))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: SignedDuration = SignedDuration::from_secs(300);

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn node(name: &str, labels: &[(&str, &str)], memory_mi: u64) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            schedulable: true,
            heartbeat: Some(now()),
            allocatable_memory: memory_mi << 20,
            allocatable_millicores: 2000,
        }
    }

    fn spec(yaml: &str) -> VirtualMachineSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn place(spec: &VirtualMachineSpec, nodes: &[NodeInfo]) -> Result<String, PlacementError> {
        choose_node(spec, nodes, &BTreeMap::new(), now(), TIMEOUT)
    }

    #[test]
    fn node_selector() {
        let nodes = [
            node("a", &[("disk", "hdd")], 1024),
            node("b", &[("disk", "ssd")], 1024),
        ];
        let s = spec("{domain: {}, nodeSelector: {disk: ssd}}");
        assert_eq!(place(&s, &nodes).unwrap(), "b");
    }

    #[test]
    fn required_affinity_with_every_operator() {
        let nodes = [
            node("a", &[("zone", "z1"), ("gen", "3")], 1024),
            node("b", &[("zone", "z2"), ("gen", "5"), ("gpu", "yes")], 1024),
        ];
        let with = |expr: &str| {
            spec(&format!(
                "{{domain: {{}}, affinity: {{nodeAffinity: {{requiredDuringSchedulingIgnoredDuringExecution: \
                 {{nodeSelectorTerms: [{{matchExpressions: [{expr}]}}]}}}}}}}}"
            ))
        };
        assert_eq!(
            place(&with("{key: zone, operator: In, values: [z2]}"), &nodes).unwrap(),
            "b"
        );
        assert_eq!(
            place(&with("{key: zone, operator: NotIn, values: [z2]}"), &nodes).unwrap(),
            "a"
        );
        assert_eq!(
            place(&with("{key: gpu, operator: Exists}"), &nodes).unwrap(),
            "b"
        );
        assert_eq!(
            place(&with("{key: gpu, operator: DoesNotExist}"), &nodes).unwrap(),
            "a"
        );
        assert_eq!(
            place(&with("{key: gen, operator: Gt, values: ['4']}"), &nodes).unwrap(),
            "b"
        );
        assert_eq!(
            place(&with("{key: gen, operator: Lt, values: ['4']}"), &nodes).unwrap(),
            "a"
        );
        let err = place(&with("{key: zone, operator: In, values: [z9]}"), &nodes).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/2 nodes are available: 2 don't match node affinity"
        );
        assert!(matches!(
            place(&with("{key: gen, operator: Gt, values: [x]}"), &nodes),
            Err(PlacementError::InvalidSpec(_))
        ));
    }

    #[test]
    fn preferred_affinity_weights_decide() {
        let nodes = [
            node("a", &[("zone", "z1")], 4096),
            node("b", &[("zone", "z2")], 1024),
        ];
        let s = spec(
            "{domain: {}, affinity: {nodeAffinity: {preferredDuringSchedulingIgnoredDuringExecution: [\
             {weight: 10, preference: {matchExpressions: [{key: zone, operator: In, values: [z2]}]}}, \
             {weight: 5, preference: {matchExpressions: [{key: zone, operator: In, values: [z1]}]}}]}}}",
        );
        assert_eq!(place(&s, &nodes).unwrap(), "b");
        assert_eq!(
            place(&spec("{domain: {}}"), &nodes).unwrap(),
            "a",
            "without preferences: most free memory"
        );
    }

    #[test]
    fn memory_and_cpu_requests_count_what_is_placed() {
        let nodes = [node("a", &[], 1024), node("b", &[], 1024)];
        let s = spec("{domain: {resources: {requests: {memory: 512Mi, cpu: 500m}}}}");
        let usage: BTreeMap<String, Usage> = [(
            "a".to_string(),
            Usage {
                memory: 768 << 20,
                millicores: 0,
            },
        )]
        .into();
        assert_eq!(
            choose_node(&s, &nodes, &usage, now(), TIMEOUT).unwrap(),
            "b"
        );
        let usage: BTreeMap<String, Usage> = [
            (
                "a".to_string(),
                Usage {
                    memory: 768 << 20,
                    millicores: 0,
                },
            ),
            (
                "b".to_string(),
                Usage {
                    memory: 0,
                    millicores: 1800,
                },
            ),
        ]
        .into();
        let err = choose_node(&s, &nodes, &usage, now(), TIMEOUT).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/2 nodes are available: 1 have too little memory, 1 have too little cpu"
        );
    }

    #[test]
    fn only_nodes_with_a_live_agent() {
        let mut stale = node("stale", &[], 1024);
        stale.heartbeat = Some(now() - SignedDuration::from_secs(600));
        let mut cordoned = node("cordoned", &[], 1024);
        cordoned.schedulable = false;
        let selective = node("other", &[("x", "y")], 1024);
        let s = spec("{domain: {}, nodeSelector: {x: z}}");
        let err = place(&s, &[stale, cordoned, selective]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/3 nodes are available: 2 have no live nodevirt agent, 1 don't match nodeSelector"
        );
        assert_eq!(
            place(&s, &[]).unwrap_err().to_string(),
            "0/0 nodes are available: no nodes"
        );
    }
}
