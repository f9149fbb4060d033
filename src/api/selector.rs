//! Label selectors (matchLabels + matchExpressions), evaluated as the apiserver does.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// A selector that can never be evaluated (unknown operator, values where none are allowed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SelectorError {
    pub field: String,
    pub message: String,
}

/// Whether `labels` match `selector`. An empty selector matches everything.
pub fn matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
    field: &str,
) -> Result<bool, SelectorError> {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let mut by_expressions = true;
    for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
        let field = format!("{field}.matchExpressions[{i}]");
        let values = expr.values.as_deref().unwrap_or_default();
        let value = labels.get(&expr.key);
        let needs_values = match expr.operator.as_str() {
            "In" | "NotIn" => true,
            "Exists" | "DoesNotExist" => false,
            other => {
                return Err(SelectorError {
                    field: format!("{field}.operator"),
                    message: format!(
                        "unknown operator {}; expected In, NotIn, Exists or DoesNotExist",
                        super::quoted(other)
                    ),
                });
            }
        };
        if needs_values == values.is_empty() {
            return Err(SelectorError {
                field: format!("{field}.values"),
                message: if needs_values {
                    format!("operator {} needs at least one value", expr.operator)
                } else {
                    format!("operator {} takes no values", expr.operator)
                },
            });
        }
        by_expressions &= match expr.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            _ => value.is_none(),
        };
    }
    Ok(by_labels && by_expressions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn match_labels_and_expressions() {
        let vm = labels(&[("kubevirt.io/size", "small"), ("guest", "a")]);
        let select = |match_labels: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>| {
            let selector = LabelSelector {
                match_labels: Some(labels(match_labels)),
                match_expressions: Some(exprs),
            };
            matches(&selector, &vm, "selector").unwrap()
        };
        assert!(select(&[], vec![]));
        assert!(select(&[("kubevirt.io/size", "small")], vec![]));
        assert!(!select(&[("kubevirt.io/size", "large")], vec![]));
        assert!(select(&[], vec![expr("guest", "In", &["a", "b"])]));
        assert!(!select(&[], vec![expr("guest", "NotIn", &["a"])]));
        assert!(select(&[], vec![expr("other", "NotIn", &["a"])]));
        assert!(select(&[], vec![expr("guest", "Exists", &[])]));
        assert!(select(&[], vec![expr("other", "DoesNotExist", &[])]));
        assert!(!select(
            &[("guest", "a")],
            vec![expr("guest", "DoesNotExist", &[])]
        ));
    }

    #[test]
    fn invalid_selectors_are_errors() {
        for (e, field) in [
            (expr("k", "Like", &["a"]), "s.matchExpressions[0].operator"),
            (expr("k", "In", &[]), "s.matchExpressions[0].values"),
            (expr("k", "Exists", &["a"]), "s.matchExpressions[0].values"),
        ] {
            let selector = LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![e]),
            };
            assert_eq!(
                matches(&selector, &BTreeMap::new(), "s").unwrap_err().field,
                field
            );
        }
    }
}
