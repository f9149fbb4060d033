//! The bench's one table: a row per figure, with its target and its ratio to the limit it is
//! compared with; printed at the end and written as JSON.

use serde_json::json;

use super::Memory;

/// One line of the table.
pub struct Row {
    name: String,
    value: f64,
    unit: &'static str,
    target: Option<Target>,
    /// `value` divided by the matching limit of step 1.
    vs_limit: Option<f64>,
}

#[derive(Clone, Copy)]
pub enum Target {
    Below(f64),
    Exactly(f64),
}

impl Target {
    fn met(self, value: f64) -> bool {
        match self {
            Target::Below(t) => value < t,
            Target::Exactly(t) => value == t,
        }
    }

    fn text(self) -> String {
        match self {
            Target::Below(t) => format!("< {}", format_value(t)),
            Target::Exactly(t) => format!("= {}", format_value(t)),
        }
    }
}

#[derive(Default)]
pub struct Table(Vec<Row>);

impl Table {
    /// The agent's RSS `when`, against a target in MiB, and the anonymous part of it (heap,
    /// stacks): the rest is mapped code, shared with other processes.
    pub fn add_rss(&mut self, when: &str, memory: &Memory, target_mib: f64) {
        self.add(format!("agent: RSS {when}"), memory.rss, "MiB")
            .target(Target::Below(target_mib));
        self.add(
            format!("agent: RSS {when}, anonymous (heap, stacks)"),
            memory.anonymous,
            "MiB",
        );
    }

    pub fn add(&mut self, name: impl Into<String>, value: f64, unit: &'static str) -> &mut Row {
        self.0.push(Row {
            name: name.into(),
            value,
            unit,
            target: None,
            vs_limit: None,
        });
        let row = self.0.last_mut().unwrap();
        eprintln!("  {}: {:.4} {}", row.name, row.value, row.unit);
        row
    }

    pub fn print(&self) {
        println!(
            "\n{:<58} {:>12} {:<5} {:>9} {:>5} {:>10}",
            "measure", "value", "unit", "target", "met", "vs limit"
        );
        for row in &self.0 {
            let target = row.target.map(Target::text).unwrap_or_default();
            let met = match row.target {
                Some(t) if t.met(row.value) => "yes",
                Some(_) => "NO",
                None => "",
            };
            let ratio = row.vs_limit.map(|r| format!("{r:.1}x")).unwrap_or_default();
            println!(
                "{:<58} {:>12} {:<5} {:>9} {:>5} {:>10}",
                row.name,
                format_value(row.value),
                row.unit,
                target,
                met,
                ratio
            );
        }
    }

    pub fn json(&self) -> serde_json::Value {
        self.0
            .iter()
            .map(|row| {
                json!({
                    "measure": row.name,
                    "value": row.value,
                    "unit": row.unit,
                    "target": row.target.map(Target::text),
                    "met": row.target.map(|t| t.met(row.value)),
                    "vs_limit": row.vs_limit,
                })
            })
            .collect()
    }
}

impl Row {
    pub fn target(&mut self, target: Target) -> &mut Row {
        self.target = Some(target);
        self
    }

    pub fn vs(&mut self, limit: f64) -> &mut Row {
        if limit > 0.0 {
            self.vs_limit = Some(self.value / limit);
        }
        self
    }
}

fn format_value(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.4}")
    }
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(values, 50.0)
}
