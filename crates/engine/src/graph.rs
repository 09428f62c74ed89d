//! The step DAG (petgraph): cycles, ancestry, execution waves, and mermaid/dot output.

use crate::model::{Plan, When};
use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Dfs, Reversed};
use std::collections::{BTreeSet, HashMap};

/// The DAG of a plan's steps; node weights are indexes into `plan.steps`.
pub struct StepGraph {
    graph: DiGraph<usize, ()>,
    nodes: Vec<NodeIndex>,
}

impl StepGraph {
    /// Builds the graph; unknown needs are skipped (validation reports them).
    pub fn build(plan: &Plan) -> Self {
        let mut graph = DiGraph::new();
        let nodes: Vec<NodeIndex> = (0..plan.steps.len()).map(|i| graph.add_node(i)).collect();
        let by_id: HashMap<&str, usize> = plan
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.as_str(), i))
            .collect();
        for (i, step) in plan.steps.iter().enumerate() {
            for need in &step.needs {
                if let Some(&j) = by_id.get(need.as_str()) {
                    graph.update_edge(nodes[j], nodes[i], ());
                }
            }
        }
        Self { graph, nodes }
    }

    /// Each cycle as step indexes in order, e.g. [a, b, c] for a → b → c → a.
    pub fn cycles(&self) -> Vec<Vec<usize>> {
        let mut out = Vec::new();
        for scc in tarjan_scc(&self.graph) {
            let self_loop = scc.len() == 1 && self.graph.contains_edge(scc[0], scc[0]);
            if scc.len() > 1 || self_loop {
                out.push(self.order_cycle(&scc));
            }
        }
        out
    }

    /// Walks a strongly connected component to print it as a path that closes.
    fn order_cycle(&self, scc: &[NodeIndex]) -> Vec<usize> {
        let members: BTreeSet<NodeIndex> = scc.iter().copied().collect();
        let Some(&start) = members.iter().min_by_key(|n| self.graph[**n]) else {
            return Vec::new();
        };
        let mut path = vec![start];
        let mut seen = BTreeSet::from([start]);
        let mut cur = start;
        while let Some(next) = self
            .graph
            .neighbors(cur)
            .filter(|n| members.contains(n) && !seen.contains(n))
            .min_by_key(|n| self.graph[*n])
        {
            path.push(next);
            seen.insert(next);
            cur = next;
        }
        path.iter().map(|n| self.graph[*n]).collect()
    }

    /// Indexes of every step that `step` depends on, directly or not.
    pub fn ancestors(&self, step: usize) -> BTreeSet<usize> {
        let reversed = Reversed(&self.graph);
        let mut dfs = Dfs::new(reversed, self.nodes[step]);
        let mut out = BTreeSet::new();
        while let Some(n) = dfs.next(reversed) {
            if n != self.nodes[step] {
                out.insert(self.graph[n]);
            }
        }
        out
    }

    /// Steps grouped by depth: wave 0 has no needs, wave n needs something of wave n-1.
    /// Only meaningful for an acyclic graph (empty otherwise).
    pub fn waves(&self) -> Vec<Vec<usize>> {
        let Ok(order) = toposort(&self.graph, None) else {
            return Vec::new();
        };
        let mut depth = vec![0usize; self.nodes.len()];
        for n in order {
            let d = self
                .graph
                .neighbors_directed(n, petgraph::Direction::Incoming)
                .map(|p| depth[self.graph[p]] + 1)
                .max()
                .unwrap_or(0);
            depth[self.graph[n]] = d;
        }
        let max = depth.iter().copied().max().unwrap_or(0);
        let mut waves = vec![Vec::new(); if self.nodes.is_empty() { 0 } else { max + 1 }];
        for (i, d) in depth.iter().enumerate() {
            waves[*d].push(i);
        }
        waves
    }
}

/// Mermaid flowchart of the plan.
pub fn mermaid(plan: &Plan) -> String {
    let mut out = String::from("flowchart TD\n");
    for s in &plan.steps {
        let shape = if s.background {
            format!("{}([\"{}<br/>{} · background\"])", s.id, s.id, s.uses)
        } else {
            format!("{}[\"{}<br/>{}\"]", s.id, s.id, s.uses)
        };
        out.push_str(&format!("    {shape}\n"));
    }
    for s in &plan.steps {
        for n in &s.needs {
            let label = edge_label(s.when);
            out.push_str(&format!("    {n} -->{label} {}\n", s.id));
        }
        if let Some(u) = &s.until {
            out.push_str(&format!("    {u} -. until .-> {}\n", s.id));
        }
    }
    out
}

fn edge_label(when: When) -> &'static str {
    match when {
        When::Success => "",
        When::Failure => "|on failure|",
        When::Always => "|always|",
    }
}

/// Graphviz dot of the plan.
pub fn dot(plan: &Plan) -> String {
    let mut out = format!(
        "digraph \"{}\" {{\n    rankdir=TB;\n",
        plan.name.replace('"', "'")
    );
    for s in &plan.steps {
        let style = if s.background { ", style=dashed" } else { "" };
        out.push_str(&format!(
            "    \"{}\" [label=\"{}\\n{}\"{style}];\n",
            s.id, s.id, s.uses
        ));
    }
    for s in &plan.steps {
        for n in &s.needs {
            let label = match s.when {
                When::Success => String::new(),
                When::Failure => " [label=\"on failure\"]".into(),
                When::Always => " [label=\"always\"]".into(),
            };
            out.push_str(&format!("    \"{n}\" -> \"{}\"{label};\n", s.id));
        }
        if let Some(u) = &s.until {
            out.push_str(&format!(
                "    \"{u}\" -> \"{}\" [style=dotted, label=\"until\"];\n",
                s.id
            ));
        }
    }
    out.push_str("}\n");
    out
}
