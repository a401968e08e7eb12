//! Entra ID group membership as a graph of ids, and its flattening. Per group the graph holds
//! the direct user members and the direct child groups (groups that are members of it). A user
//! is in every group it is a direct member of and, with nested groups, in every group above
//! those through any chain of child groups. Graph allows cycles (A in B, B in A); they end here
//! because each group is visited once. Pure: no I/O, no Graph JSON.
//!
//! The groups above a group are computed once per group, not per user: the strongly connected
//! components of the child → parent links (Tarjan, iterative, so a deep chain needs no deep
//! stack), in the order Tarjan closes them, which is every component after the components
//! above it. What a component reaches is its own selected groups plus what the components
//! directly above it reach, already known. Only the groups `keep` selects (the `groups` globs)
//! are collected, so the sets stay as small as what reaches `user.groups`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Whether child groups pass their members on to the groups they are members of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nesting {
    /// Transitive membership (`nested_groups = true`, the default).
    Flatten,
    /// Direct membership only (`nested_groups = false`).
    DirectOnly,
}

impl Nesting {
    /// The setting `[source.entra] nested_groups` names.
    pub fn of(nested_groups: bool) -> Nesting {
        if nested_groups {
            Nesting::Flatten
        } else {
            Nesting::DirectOnly
        }
    }
}

/// Child-group links: a group's id → the ids of the groups that are its direct members.
pub type Children = BTreeMap<String, BTreeSet<String>>;

/// For every group, the selected groups a direct member of it is in: the group itself when
/// selected, and (with [`Nesting::Flatten`]) every selected group above it.
#[derive(Debug, Default)]
pub struct Closures {
    /// The selected groups, by index.
    kept: Vec<String>,
    /// Per group that reaches at least one selected group: the indexes of those, sorted.
    by_group: HashMap<String, Vec<u32>>,
}

impl Closures {
    /// The selected groups a direct member of `group` is in (none for an unknown group).
    pub fn of(&self, group: &str) -> impl Iterator<Item = &str> {
        self.by_group
            .get(group)
            .into_iter()
            .flatten()
            .map(|index| self.kept[*index as usize].as_str())
    }

    /// Whether a direct member of `group` is in any selected group.
    pub fn reaches_any(&self, group: &str) -> bool {
        self.by_group.contains_key(group)
    }

    /// The groups whose direct members are in a selected group.
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.by_group.keys().map(String::as_str)
    }
}

/// The closures of every group in `groups` or named in `children`, selecting the groups `keep`
/// accepts (by id).
pub fn closures<'a>(
    groups: impl IntoIterator<Item = &'a String>,
    children: &'a Children,
    nesting: Nesting,
    keep: impl Fn(&str) -> bool,
) -> Closures {
    // Index every group.
    let mut ids: Vec<&str> = Vec::new();
    let mut index: HashMap<&str, u32> = HashMap::new();
    let mut intern = |id: &'a str, ids: &mut Vec<&'a str>| -> u32 {
        *index.entry(id).or_insert_with(|| {
            ids.push(id);
            (ids.len() - 1) as u32
        })
    };
    for group in groups {
        intern(group, &mut ids);
    }
    // Edges from a child to each group it is a member of.
    let mut above: Vec<Vec<u32>> = Vec::new();
    let mut links = Vec::new();
    for (parent, kids) in children {
        let parent_index = intern(parent, &mut ids);
        for kid in kids {
            let kid_index = intern(kid, &mut ids);
            if nesting == Nesting::Flatten && kid_index != parent_index {
                links.push((kid_index, parent_index));
            }
        }
    }
    above.resize(ids.len(), Vec::new());
    for (kid, parent) in links {
        above[kid as usize].push(parent);
    }

    let mut kept: Vec<String> = Vec::new();
    let kept_index: Vec<Option<u32>> = ids
        .iter()
        .map(|id| {
            keep(id).then(|| {
                kept.push((*id).to_owned());
                (kept.len() - 1) as u32
            })
        })
        .collect();

    let (components, component_of) = strongly_connected(&above);
    let mut reach: Vec<Vec<u32>> = vec![Vec::new(); components.len()];
    for (component, members) in components.iter().enumerate() {
        let mut found: BTreeSet<u32> = members
            .iter()
            .filter_map(|member| kept_index[*member as usize])
            .collect();
        for member in members {
            for parent in &above[*member as usize] {
                let other = component_of[*parent as usize] as usize;
                if other != component {
                    found.extend(reach[other].iter().copied());
                }
            }
        }
        reach[component] = found.into_iter().collect();
    }
    let by_group = ids
        .iter()
        .enumerate()
        .filter_map(|(node, id)| {
            let found = &reach[component_of[node] as usize];
            (!found.is_empty()).then(|| ((*id).to_owned(), found.clone()))
        })
        .collect();
    Closures { kept, by_group }
}

/// The selected groups of every user: the union of the closures of the groups it is a direct
/// member of (`users_of`: group id → its direct user members).
pub fn flatten(
    users_of: &BTreeMap<String, BTreeSet<String>>,
    closures: &Closures,
) -> HashMap<String, BTreeSet<String>> {
    let mut groups: HashMap<String, BTreeSet<String>> = HashMap::new();
    for (group, users) in users_of {
        if !closures.reaches_any(group) {
            continue;
        }
        for user in users {
            groups
                .entry(user.clone())
                .or_default()
                .extend(closures.of(group).map(str::to_owned));
        }
    }
    groups
}

/// `group` and, with [`Nesting::Flatten`], every group below it through child groups (its
/// members' members, …); a cycle ends because each group is visited once.
pub fn below(children: &Children, group: &str, nesting: Nesting) -> BTreeSet<String> {
    let mut found = BTreeSet::from([group.to_owned()]);
    if nesting == Nesting::DirectOnly {
        return found;
    }
    let mut queue = vec![group.to_owned()];
    while let Some(next) = queue.pop() {
        for kid in children.get(&next).into_iter().flatten() {
            if found.insert(kid.clone()) {
                queue.push(kid.clone());
            }
        }
    }
    found
}

/// The strongly connected components of a graph given as adjacency lists (Tarjan's
/// algorithm, without recursion), in the order they close: a component comes after every
/// component it has an edge to. Returns the components and each node's component.
fn strongly_connected(edges: &[Vec<u32>]) -> (Vec<Vec<u32>>, Vec<u32>) {
    const UNSEEN: u32 = u32::MAX;
    let n = edges.len();
    let mut order = vec![UNSEEN; n];
    let mut low = vec![0u32; n];
    let mut on_stack = vec![false; n];
    let mut stack: Vec<u32> = Vec::new();
    let mut component_of = vec![UNSEEN; n];
    let mut components: Vec<Vec<u32>> = Vec::new();
    let mut next_order = 0u32;
    for root in 0..n {
        if order[root] != UNSEEN {
            continue;
        }
        // (node, how many of its edges were followed)
        let mut calls: Vec<(usize, usize)> = vec![(root, 0)];
        order[root] = next_order;
        low[root] = next_order;
        next_order += 1;
        stack.push(root as u32);
        on_stack[root] = true;
        while let Some(&mut (node, ref mut followed)) = calls.last_mut() {
            if let Some(&next) = edges[node].get(*followed) {
                *followed += 1;
                let next = next as usize;
                if order[next] == UNSEEN {
                    order[next] = next_order;
                    low[next] = next_order;
                    next_order += 1;
                    stack.push(next as u32);
                    on_stack[next] = true;
                    calls.push((next, 0));
                } else if on_stack[next] {
                    low[node] = low[node].min(order[next]);
                }
                continue;
            }
            calls.pop();
            if let Some(&(caller, _)) = calls.last() {
                low[caller] = low[caller].min(low[node]);
            }
            if low[node] == order[node] {
                let mut members = Vec::new();
                while let Some(member) = stack.pop() {
                    on_stack[member as usize] = false;
                    component_of[member as usize] = components.len() as u32;
                    members.push(member);
                    if member as usize == node {
                        break;
                    }
                }
                components.push(members);
            }
        }
    }
    (components, component_of)
}

#[cfg(test)]
mod tests;
