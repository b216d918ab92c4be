//! Checks across steps: unique names, `after` naming steps, and no cycle through `after`.

use std::collections::HashMap;

use crate::suggest::closest;
use crate::{LineIndex, Span};

/// What the order checks need of a step with a valid name, whatever else is wrong with it.
#[derive(Debug, Clone)]
pub(crate) struct NamedStep {
    pub(crate) name: String,
    pub(crate) name_span: Span,
    /// Each step named in `after`, with the span of its entry.
    pub(crate) after: Vec<(String, Span)>,
    pub(crate) after_key_span: Option<Span>,
}

/// Every problem across `steps`, each with the span it points at.
pub(crate) fn check(lines: &LineIndex<'_>, steps: &[NamedStep]) -> Vec<(Span, String)> {
    let mut problems = Vec::new();
    // The first step of each name; later ones are the duplicates.
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, step) in steps.iter().enumerate() {
        match index.get(step.name.as_str()) {
            Some(&first) => {
                let line = lines.location(steps[first].name_span.start).line;
                problems.push((
                    step.name_span.clone(),
                    format!(
                        "a step named {:?} already exists at line {line}; step names must be unique",
                        step.name
                    ),
                ));
            }
            None => {
                index.insert(step.name.as_str(), i);
            }
        }
    }
    for step in steps {
        for (dep, span) in &step.after {
            if index.contains_key(dep.as_str()) {
                continue;
            }
            let others = steps
                .iter()
                .map(|s| s.name.as_str())
                .filter(|n| *n != step.name);
            let suggestion = closest(dep, others)
                .map(|n| format!("; did you mean {n:?}?"))
                .unwrap_or_default();
            problems.push((
                span.clone(),
                format!(
                    "step {:?} comes after {dep:?}, which is not a step of this plan{suggestion}",
                    step.name
                ),
            ));
        }
    }
    for cycle in cycles(steps, &index) {
        let first = &steps[cycle[0]];
        let span = first
            .after_key_span
            .clone()
            .unwrap_or_else(|| first.name_span.clone());
        let names: Vec<&str> = cycle.iter().map(|&i| steps[i].name.as_str()).collect();
        problems.push((
            span,
            format!("steps form a cycle through `after`: {}", names.join(" -> ")),
        ));
    }
    problems
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    New,
    OnPath,
    Done,
}

/// Cycles along `after`, one per edge that closes one in a depth-first walk, each as the
/// indices of its steps with the first repeated at the end.
///
/// The walk keeps its own stack rather than recursing, so a long chain of steps cannot
/// overflow the thread's stack.
fn cycles(steps: &[NamedStep], index: &HashMap<&str, usize>) -> Vec<Vec<usize>> {
    let deps = |i: usize| -> Vec<usize> {
        steps[i]
            .after
            .iter()
            .filter_map(|(dep, _)| index.get(dep.as_str()).copied())
            .collect()
    };
    let mut marks = vec![Mark::New; steps.len()];
    let mut found = Vec::new();
    for root in 0..steps.len() {
        // Duplicates are reported as such; walking them again would repeat their cycles.
        let is_first = index.get(steps[root].name.as_str()) == Some(&root);
        if marks[root] != Mark::New || !is_first {
            continue;
        }
        // The current path: each step with the dependencies still to visit.
        let mut path: Vec<(usize, Vec<usize>)> = vec![(root, deps(root))];
        marks[root] = Mark::OnPath;
        while let Some((node, pending)) = path.last_mut() {
            let node = *node;
            let Some(next) = pending.pop() else {
                marks[node] = Mark::Done;
                path.pop();
                continue;
            };
            match marks[next] {
                Mark::New => {
                    marks[next] = Mark::OnPath;
                    path.push((next, deps(next)));
                }
                Mark::OnPath => {
                    let from = path.iter().position(|(i, _)| *i == next).unwrap_or(0);
                    let mut cycle: Vec<usize> = path[from..].iter().map(|(i, _)| *i).collect();
                    cycle.push(next);
                    found.push(cycle);
                }
                Mark::Done => {}
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Steps from `(name, after)` pairs, with made-up spans, and the cycles among them by name.
    fn check(steps: &[(&str, &[&str])], expected: &[&str]) {
        let steps: Vec<NamedStep> = steps
            .iter()
            .map(|(name, after)| NamedStep {
                name: name.to_string(),
                name_span: 0..0,
                after: after.iter().map(|a| (a.to_string(), 0..0)).collect(),
                after_key_span: None,
            })
            .collect();
        let got: Vec<String> = super::check(&LineIndex::new(""), &steps)
            .into_iter()
            .map(|(_, message)| message)
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn accepts_a_diamond() {
        check(
            &[("a", &[]), ("b", &["a"]), ("c", &["a"]), ("d", &["b", "c"])],
            &[],
        );
    }

    #[test]
    fn reports_each_separate_cycle() {
        check(
            &[("a", &["b"]), ("b", &["a"]), ("c", &["c"]), ("d", &["a"])],
            &[
                "steps form a cycle through `after`: a -> b -> a",
                "steps form a cycle through `after`: c -> c",
            ],
        );
    }

    #[test]
    fn walks_long_chains_without_recursion() {
        let names: Vec<String> = (0..100_000).map(|i| format!("s{i}")).collect();
        let steps: Vec<NamedStep> = names
            .iter()
            .enumerate()
            .map(|(i, name)| NamedStep {
                name: name.clone(),
                name_span: 0..0,
                after: if i == 0 {
                    vec![(names[names.len() - 1].clone(), 0..0)]
                } else {
                    vec![(names[i - 1].clone(), 0..0)]
                },
                after_key_span: None,
            })
            .collect();
        let problems = super::check(&LineIndex::new(""), &steps);
        assert_eq!(problems.len(), 1);
        assert!(problems[0]
            .1
            .starts_with("steps form a cycle through `after`: s0 -> s99999 -> "));
    }
}
